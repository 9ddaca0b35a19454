import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';

import { UsageError } from '../../src/errors.js';
import { CameraSource, FFMPEG_NICE, type CameraStatusChange, type Frame } from '../../src/source/camera.js';
import { buildFrameFilter } from '../../src/source/ffmpeg-args.js';
import { freeTcpPort } from '../helpers/rtsp.js';
import { cameraFactory, DEMO_VIDEO, waitForStatus } from '../helpers/camera.js';

const VIDEO = DEMO_VIDEO;
const haveVideo = existsSync(VIDEO);
const haveFfmpeg = spawnSync('ffmpeg', ['-version'], { stdio: 'ignore' }).status === 0;
if (!haveVideo) console.warn(`source-camera tests skipped: ${VIDEO} is absent (see /work/shared/data/README.md)`);
if (!haveFfmpeg) console.warn('source-camera tests skipped: ffmpeg is not installed');

const camera = cameraFactory('test');


function recordStatuses(source: CameraSource): CameraStatusChange[] {
  const changes: CameraStatusChange[] = [];
  source.on('status', (change) => changes.push(change));
  return changes;
}

/** pids of ffmpeg processes whose parent is this test process. */
function ourFfmpegPids(): number[] {
  const result = spawnSync('pgrep', ['-P', String(process.pid), '-x', 'ffmpeg'], { encoding: 'utf8' });
  return result.stdout.split('\n').filter(Boolean).map(Number);
}

/** The nice value of each thread of a process (os.getPriority reads the main thread's only). */
function threadNiceValues(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).map((task) => {
    const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
    // Fields after the parenthesised name start at the third (state); nice is the 19th.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]);
  });
}

function processExists(pid: number): boolean {
  return spawnSync('ps', ['-o', 'pid=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim() !== '';
}

/** The same frames decoded by a plain ffmpeg run, as the reference for what CameraSource must deliver. */
function referenceFrames(options: Parameters<typeof buildFrameFilter>[0] & { fps: number }): Uint8Array[] {
  const args = ['-nostdin', '-loglevel', 'error', '-i', VIDEO, '-vf', buildFrameFilter(options), '-fps_mode', 'passthrough', '-f', 'rawvideo', 'pipe:1'];
  const raw = execFileSync('ffmpeg', args, {
    maxBuffer: 256 * 1024 * 1024,
  });
  const frameBytes = options.width * options.height * (options.pixelFormat === 'rgb24' ? 3 : 1);
  return Array.from({ length: raw.length / frameBytes }, (_, index) => raw.subarray(index * frameBytes, (index + 1) * frameBytes));
}

describe.skipIf(!haveVideo || !haveFfmpeg)('CameraSource on a file (real ffmpeg)', () => {
  it('delivers every frame at the exact size, byte-identical to plain ffmpeg, parses 640x360, then goes offline at the end', async () => {
    const options = { width: 64, height: 48, fps: 5 } as const;
    const source = camera({ url: VIDEO, ...options, overflow: 'pause', queueCapacity: 2 });
    const statuses = recordStatuses(source);
    let ended = false;
    source.on('end', () => {
      ended = true;
    });
    await source.start();
    const frames: Frame[] = [];
    for await (const frame of source) frames.push(frame);

    const reference = referenceFrames(options);
    // 39.86 s at 5 frames a second.
    expect(Math.abs(reference.length - 39.86 * 5)).toBeLessThanOrEqual(2);
    expect(frames.length).toBe(reference.length);
    for (const [index, frame] of frames.entries()) {
      expect(frame.data.length).toBe(64 * 48);
      expect(frame.seq).toBe(index + 1);
      expect(Buffer.from(frame.data).equals(reference[index] ?? Buffer.alloc(0))).toBe(true);
    }
    expect(frames[0]).toMatchObject({ cameraId: 'test', width: 64, height: 48, channels: 1 });
    expect(source.sourceSize).toEqual({ width: 640, height: 360 });
    expect(source.stats()).toMatchObject({ framesIn: reference.length, framesDropped: 0, restarts: 0 });
    expect(statuses.map((change) => change.status)).toEqual(['reconnecting', 'streaming', 'offline']);
    expect(statuses.at(-1)?.reason).toBe('end of input');
    expect(ended).toBe(true);
  });

  it('rgb24 with a crop: exact sizes; preview JPEGs of the whole source frame are kept, bounded, and found by time', async () => {
    const source = camera({
      url: VIDEO,
      width: 32,
      height: 32,
      fps: 10,
      pixelFormat: 'rgb24',
      crop: { x: 100, y: 50, width: 300, height: 300 },
      preview: { fps: 2, maxWidth: 320 },
      previewKeep: 3,
      overflow: 'pause',
    });
    const previewTimes: number[] = [];
    source.on('preview', (preview) => previewTimes.push(preview.monotonicAt));
    await source.start();
    let count = 0;
    for await (const frame of source) {
      expect(frame.data.length).toBe(32 * 32 * 3);
      expect(frame.channels).toBe(3);
      count += 1;
    }
    expect(count).toBeGreaterThan(390);
    expect(source.stats().previewsIn).toBeGreaterThanOrEqual(75);
    const latest = source.latestPreview();
    expect(latest).toBeDefined();
    const metadata = await sharp(Buffer.from(latest?.jpeg ?? [])).metadata();
    expect([metadata.format, metadata.width, metadata.height]).toEqual(['jpeg', 320, 180]);
    // Only the last three are kept: asking for the first one's time gets the oldest kept one.
    const kept = previewTimes.slice(-3);
    expect(source.previewNear(previewTimes[0] ?? 0)?.monotonicAt).toBe(kept[0]);
    expect(source.previewNear((kept[2] ?? 0) + 60_000)).toBe(latest);
  });

  it('an analysis rate above the source rate passes each of the 1189 frames once, never duplicated', async () => {
    const source = camera({ url: VIDEO, width: 8, height: 8, fps: 60, overflow: 'pause', queueCapacity: 16 });
    await source.start();
    let count = 0;
    for await (const frame of source) count += frame.data.length === 64 ? 1 : 0;
    expect(count).toBe(1189);
  });

  it('cropFraction crops the same pixels as the equivalent pixel crop', async () => {
    const options = { width: 24, height: 16, fps: 2 } as const;
    const source = camera({ url: VIDEO, ...options, cropFraction: { x: 0.25, y: 0.25, width: 0.5, height: 0.5 }, overflow: 'pause' });
    await source.start();
    const frames: Frame[] = [];
    for await (const frame of source) frames.push(frame);
    const reference = referenceFrames({ ...options, crop: { x: 160, y: 90, width: 320, height: 180 } });
    expect(frames.length).toBe(reference.length);
    expect(frames.every((frame, index) => Buffer.from(frame.data).equals(reference[index] ?? Buffer.alloc(0)))).toBe(true);
  });

  it('stop() returns while a paused pipe still holds frames (pause overflow)', async () => {
    const source = camera({ url: VIDEO, width: 64, height: 64, fps: 10, queueCapacity: 2, overflow: 'pause' });
    await source.start();
    const deadline = Date.now() + 10_000;
    while (source.queued < 2 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setTimeout(resolve, 300));
    // ffmpeg is blocked on a full pipe: nothing more was read.
    expect(source.stats().framesIn).toBeLessThan(60);
    const pid = source.pid;
    await source.stop();
    expect(processExists(pid ?? 0)).toBe(false);
    expect(ourFfmpegPids()).toEqual([]);
  });

  it('a slow consumer makes the oldest frames drop, counted, while the queue stays bounded', async () => {
    const capacity = 3;
    const source = camera({ url: VIDEO, width: 64, height: 64, fps: 10, queueCapacity: capacity });
    let maxQueued = 0;
    source.on('frame', () => {
      maxQueued = Math.max(maxQueued, source.queued);
    });
    const ended = new Promise<void>((resolve) => source.once('end', resolve));
    await source.start();
    const consumed: Frame[] = [];
    let done = false;
    void ended.then(() => {
      done = true;
    });
    while (!done) {
      const frame = source.take();
      if (frame !== undefined) consumed.push(frame);
      await new Promise((resolve) => setTimeout(resolve, 40));
    }
    const leftover: Frame[] = [];
    for (let frame = source.take(); frame !== undefined; frame = source.take()) leftover.push(frame);

    const stats = source.stats();
    expect(maxQueued).toBeLessThanOrEqual(capacity);
    expect(stats.framesDropped).toBeGreaterThan(0);
    expect(stats.framesIn).toBeGreaterThan(390);
    expect(consumed.length + leftover.length + stats.framesDropped).toBe(stats.framesIn);
    const seqs = [...consumed, ...leftover].map((frame) => frame.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(seqs.at(-1)).toBe(stats.framesIn);
  });

  it('takeLatest hands over the newest frame and counts the skipped ones as dropped', async () => {
    const source = camera({ url: VIDEO, width: 16, height: 16, fps: 10, queueCapacity: 8, overflow: 'pause' });
    await source.start();
    const deadline = Date.now() + 10_000;
    while (source.queued < 8 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
    const queued = source.queued;
    expect(queued).toBeGreaterThanOrEqual(8);
    const latest = source.takeLatest();
    expect(latest?.seq).toBe(source.stats().framesIn);
    expect(source.stats().framesDropped).toBe(queued - 1);
  });

  it('stop() ends ffmpeg (SIGTERM) and leaves no process behind', async () => {
    const source = camera({ url: VIDEO, width: 64, height: 64, fps: 5, loop: true, realtime: true });
    const pids: number[] = [];
    source.on('spawn', (pid) => pids.push(pid));
    await source.start();
    await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming');
    expect(pids).toHaveLength(1);
    expect(processExists(pids[0] ?? 0)).toBe(true);
    expect(ourFfmpegPids()).toContain(pids[0]);
    // Decoding runs at the lowest priority, every thread of it, so that many ffmpeg processes cannot hold the event loop back.
    const threads = threadNiceValues(pids[0]!);
    expect(threads.length).toBeGreaterThan(1);
    expect(new Set(threads)).toEqual(new Set([FFMPEG_NICE]));
    await source.stop();
    expect(processExists(pids[0] ?? 0)).toBe(false);
    expect(ourFfmpegPids()).toEqual([]);
    expect(source.status).toBe('offline');
    expect(source.statusReason).toBe('stopped');
    expect(await source.next()).toBeUndefined();
  });
});

describe.skipIf(!haveFfmpeg)('CameraSource failures (real ffmpeg)', () => {
  it('an unreachable RTSP URL: reconnecting with a clear, scrubbed reason and growing backoff; stop() leaves nothing running', async () => {
    const port = await freeTcpPort();
    const source = camera({
      url: `rtsp://admin:secret@127.0.0.1:${port}/cam`,
      width: 64,
      height: 64,
      backoff: { initialMs: 300, maxMs: 1000, jitter: 0 },
      ioTimeoutMs: 2000,
      log: (level, message, fields) => logged.push({ level, message, fields }),
    });
    const logged: { level: string; message: string; fields?: Record<string, unknown> }[] = [];
    const statuses = recordStatuses(source);
    const pids: number[] = [];
    source.on('spawn', (pid) => pids.push(pid));
    await source.start();
    await waitForStatus(source, () => statuses.filter((change) => change.retryInMs !== undefined).length >= 3, 15_000, 'three retries');

    const retries = statuses.filter((change) => change.retryInMs !== undefined);
    expect(retries.map((change) => change.status)).toEqual(['reconnecting', 'reconnecting', 'reconnecting']);
    expect(retries.map((change) => change.retryInMs)).toEqual([300, 600, 1000]);
    for (const change of retries) {
      expect(change.reason).toBe(`ffmpeg exited with code 1: rtsp://***@127.0.0.1:${port}/cam: Connection refused`);
    }
    expect(source.stats().restarts).toBeGreaterThanOrEqual(2);
    expect(source.stderrTail().join('\n')).toContain(`rtsp://***@127.0.0.1:${port}/cam`);
    expect(source.stderrTail().join('\n')).not.toContain('secret');
    // The same failure on every retry: ffmpeg's lines are logged once, not per attempt.
    const failureLogs = logged.filter((entry) => entry.level === 'warn');
    expect(failureLogs).toHaveLength(1);
    expect(String(failureLogs[0]?.fields?.stderr)).toContain('Connection refused');
    expect(failureLogs[0]?.message).toContain(`ffmpeg's last lines: `);
    expect(JSON.stringify(logged)).not.toContain('secret');
    await source.stop();
    expect(source.status).toBe('offline');
    expect(pids.filter(processExists)).toEqual([]);
    expect(ourFfmpegPids()).toEqual([]);
  });

  it('a server that accepts but never answers: the start watchdog kills the hung ffmpeg and retries', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((socket) => {
      sockets.add(socket);
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const address = silent.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    try {
      // ioTimeout far beyond the watchdog, so only the watchdog can end these runs.
      const source = camera({ url: `rtsp://127.0.0.1:${port}/cam`, width: 8, height: 8, stallTimeoutMs: 800, startTimeoutMs: 1200, ioTimeoutMs: 60_000, backoff: { initialMs: 200, jitter: 0 } });
      const pids: number[] = [];
      source.on('spawn', (pid) => pids.push(pid));
      await source.start();
      const change = await waitForStatus(source, (c) => c.retryInMs !== undefined, 8000, 'a retry');
      expect(change.reason).toBe('no frame within 1.2 s of starting ffmpeg');
      expect(change.status).toBe('reconnecting');
      expect(processExists(pids[0] ?? 0)).toBe(false);
      await waitForStatus(source, () => pids.length >= 2, 5000, 'a second ffmpeg');
      await source.stop();
      expect(ourFfmpegPids()).toEqual([]);
    } finally {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it('stop() right after start() spawns nothing; start() after stop() runs one ffmpeg', async () => {
    const source = camera({ url: '/dev/null', width: 8, height: 8, backoff: { initialMs: 5000 } });
    const pids: number[] = [];
    source.on('spawn', (pid) => pids.push(pid));
    const first = source.start();
    await source.stop();
    await first;
    expect(pids).toEqual([]);
    expect(source.status).toBe('offline');
    const second = source.start();
    const third = source.start();
    await Promise.all([second, third]);
    await waitForStatus(source, (change) => change.retryInMs !== undefined, 5000, 'ffmpeg to fail on /dev/null');
    expect(pids).toHaveLength(1);
  });

  it('a missing ffmpeg binary is a status with a hint, not an exception', async () => {
    const source = camera({ url: '/tmp/none.mp4', width: 8, height: 8, ffmpegPath: '/nonexistent/ffmpeg', backoff: { initialMs: 5000 } });
    const retry = waitForStatus(source, (change) => change.retryInMs !== undefined, 5000, 'a retry');
    await source.start();
    const change = await retry;
    expect(change.status).toBe('reconnecting');
    expect(change.reason).toMatch(/^cannot start ffmpeg '\/nonexistent\/ffmpeg' \(.*ENOENT.*\): install ffmpeg or set ffmpegPath$/);
  });

  it('invalid options are a UsageError at construction', () => {
    expect(() => new CameraSource({ id: 'a', url: 'rtsp://cam/1', width: 64, height: 64, fps: 0.2, stallTimeoutMs: 5000 })).toThrow(
      /stallTimeoutMs 5000 is shorter than two frames at fps 0.2/,
    );
    expect(() => new CameraSource({ id: 'a', url: 'rtsp://cam/1', width: 64, height: 64, queueCapacity: 0 })).toThrow(UsageError);
    expect(() => new CameraSource({ id: '', url: 'rtsp://cam/1', width: 64, height: 64 })).toThrow(/camera id is empty/);
    expect(() => new CameraSource({ id: 'a', url: 'rtsp://cam/1', width: 64, height: 64, backoff: { initialMs: 5000, maxMs: 1000 } })).toThrow(/invalid backoff/);
  });
});
