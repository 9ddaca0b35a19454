import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CameraSource, type CameraStatusChange } from '../../src/source/camera.js';
import { rtspServerUnavailable, startRtspServer, type RtspServer } from '../helpers/rtsp.js';
import { cameraFactory, DEMO_VIDEO, waitForStatus } from '../helpers/camera.js';

const VIDEO = DEMO_VIDEO;
const haveFfmpeg = spawnSync('ffmpeg', ['-version'], { stdio: 'ignore' }).status === 0;
const skipReason = !existsSync(VIDEO)
  ? `${VIDEO} is absent (see /work/shared/data/README.md)`
  : !haveFfmpeg
    ? 'ffmpeg is not installed'
    : rtspServerUnavailable();
if (skipReason !== undefined) console.warn(`source-rtsp tests skipped: ${skipReason}`);

const camera = cameraFactory('rtsp-test');


async function framesWithin(source: CameraSource, count: number, timeoutMs: number): Promise<number> {
  const start = source.stats().framesIn;
  const deadline = Date.now() + timeoutMs;
  while (source.stats().framesIn - start < count) {
    if (Date.now() > deadline) throw new Error(`only ${source.stats().framesIn - start} of ${count} frames within ${timeoutMs} ms; status ${source.status} (${source.statusReason})`);
    source.takeLatest();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return source.stats().framesIn - start;
}

function ourFfmpegPids(): number[] {
  const result = spawnSync('pgrep', ['-P', String(process.pid), '-x', 'ffmpeg'], { encoding: 'utf8' });
  return result.stdout.split('\n').filter(Boolean).map(Number);
}

describe.skipIf(skipReason !== undefined)('CameraSource over RTSP (real GStreamer RTSP server, real ffmpeg)', () => {
  let server: RtspServer;
  beforeAll(async () => {
    server = await startRtspServer({ file: VIDEO, path: 'bottles' });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it('streams exact-size frames at the analysis rate, parses 640x360 and scrubs the credentials from the stderr ring', async () => {
    const url = server.url.replace('rtsp://', 'rtsp://operator:s3cret-pw@');
    const source = camera({ url, width: 64, height: 64, fps: 10, stallTimeoutMs: 3000 });
    const sizes = new Set<number>();
    source.on('frame', () => {
      for (let frame = source.take(); frame !== undefined; frame = source.take()) sizes.add(frame.data.length);
    });
    const startedAt = Date.now();
    await source.start();
    await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming');
    const streamingAt = Date.now();
    // ffmpeg probes the first second of the stream before decoding, then catches up in a burst: measure after it.
    await framesWithin(source, 20, 5000);
    const windowStart = { frames: source.stats().framesIn, at: Date.now() };
    await new Promise((resolve) => setTimeout(resolve, 2000));
    const rate = (source.stats().framesIn - windowStart.frames) / ((Date.now() - windowStart.at) / 1000);
    console.log(`rtsp: first frame after ${streamingAt - startedAt} ms, ${rate.toFixed(1)} frames/s delivered at fps=10`);

    expect([...sizes]).toEqual([64 * 64]);
    // Served in real time: far fewer frames than a file decoded as fast as possible.
    expect(rate).toBeGreaterThan(7);
    expect(rate).toBeLessThan(13);
    expect(source.sourceSize).toEqual({ width: 640, height: 360 });
    const log = source.stderrTail().join('\n');
    expect(log).toContain(`rtsp://***@127.0.0.1:${server.port}/bottles`);
    expect(log).not.toContain('s3cret');
    expect(log).not.toContain('operator');
  });

  it('keeps streaming with the JPEG preview on: frames and previews flow, ffmpeg is never restarted', async () => {
    // Regression: RTSP streams can start with frames of equal timestamps, which once made the preview's
    // mjpeg encoder fail and ffmpeg restart every few seconds.
    for (let attempt = 0; attempt < 3; attempt++) {
      const source = camera({ url: server.url, width: 112, height: 64, fps: 10, stallTimeoutMs: 3000, preview: { fps: 1, maxWidth: 640 } });
      source.on('frame', () => {
        while (source.take() !== undefined);
      });
      await source.start();
      await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming');
      await new Promise((resolve) => setTimeout(resolve, 2500));
      expect(source.stats().restarts, source.stderrTail().join('\n')).toBe(0);
      expect(source.status).toBe('streaming');
      expect(source.stats().previewsIn).toBeGreaterThan(0);
      await source.stop();
    }
  }, 60_000);

  it('a stalled server (SIGSTOP) trips the stall watchdog; the camera recovers once it resumes', async () => {
    const source = camera({
      url: server.url,
      width: 32,
      height: 32,
      fps: 5,
      stallTimeoutMs: 2000,
      startTimeoutMs: 3000,
      // Longer than the watchdog: the watchdog, not ffmpeg's own timeout, must notice.
      ioTimeoutMs: 30_000,
      backoff: { initialMs: 500, maxMs: 2000 },
    });
    await source.start();
    await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming');
    process.kill(server.pid ?? 0, 'SIGSTOP');
    try {
      const stalled = await waitForStatus(source, (change) => change.status === 'reconnecting', 6000, 'the stall');
      expect(stalled.reason).toBe('no frame for 2 s (stalled)');
      expect(stalled.retryInMs).toBeGreaterThan(0);
    } finally {
      process.kill(server.pid ?? 0, 'SIGCONT');
    }
    await waitForStatus(source, (change) => change.status === 'streaming', 15_000, 'streaming again');
    expect(await framesWithin(source, 5, 5000)).toBeGreaterThanOrEqual(5);
    expect(source.stats().restarts).toBeGreaterThanOrEqual(1);
  });

  it('survives a 15 s server outage: reconnecting (with backoff) while down, streaming again once it is back on the same port', async () => {
    const source = camera({ url: server.url, width: 64, height: 64, fps: 5, stallTimeoutMs: 3000, ioTimeoutMs: 2000, backoff: { initialMs: 500, maxMs: 2000 } });
    const statuses: CameraStatusChange[] = [];
    source.on('status', (change) => statuses.push(change));
    await source.start();
    await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming');
    await framesWithin(source, 5, 5000);

    const framesBefore = source.stats().framesIn;
    const wentDownAt = Date.now();
    await server.stop();
    const down = await waitForStatus(source, (change) => change.status === 'reconnecting', 8000, 'reconnecting after the server went away');
    console.log(`rtsp outage: noticed after ${down.at - wentDownAt} ms: ${down.reason}`);
    await new Promise((resolve) => setTimeout(resolve, 15_000));
    expect(source.status).toBe('reconnecting');
    const whileDown = statuses.filter((change) => change.at >= down.at);
    const retryDelays = whileDown.map((change) => change.retryInMs).filter((delay) => delay !== undefined);
    // 500 ms growing to the 2 s cap: several attempts in 15 s, each refused.
    expect(retryDelays.length).toBeGreaterThanOrEqual(4);
    expect(Math.max(...retryDelays)).toBeLessThanOrEqual(2000);
    expect(Math.max(...retryDelays)).toBeGreaterThan(1000);
    expect(whileDown.slice(1).every((change) => /Connection refused/.test(change.reason))).toBe(true);
    const restartsWhileDown = source.stats().restarts;

    server = await startRtspServer({ file: VIDEO, path: 'bottles', port: server.port });
    const backAfter = Date.now();
    await waitForStatus(source, (change) => change.status === 'streaming', 10_000, 'streaming after the server came back');
    console.log(`rtsp outage: streaming again ${Date.now() - backAfter} ms after the server came back (${restartsWhileDown} restarts while down)`);
    expect(await framesWithin(source, 5, 5000)).toBeGreaterThanOrEqual(5);
    expect(source.stats().framesIn).toBeGreaterThan(framesBefore);
    await source.stop();
    expect(ourFfmpegPids()).toEqual([]);
  }, 60_000);
});
