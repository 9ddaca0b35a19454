/**
 * CameraSource's supervision on fake time: backoff growth and cap, the stable-run reset, the start and
 * stall watchdogs, and what a stepped wall clock must not change. Time is vitest's fake timers, reached
 * through the injected clock; the only real part is a tiny shell script in place of ffmpeg, which
 * writes frames, fails or hangs as each test's plan says.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { systemClock, type Clock } from '../../src/clock.js';
import { CameraSource, type CameraSourceOptions, type CameraStatusChange, type Frame, type PreviewImage } from '../../src/source/camera.js';

/** Taken before any test fakes them: waits for the script (real time) must not hang on fake timers. */
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const HOUR = 3_600_000;

/** A minimal SOI..EOI byte string: all the source's JPEG splitter looks at. */
const FAKE_JPEG = "'\\377\\330preview\\377\\331'";

/**
 * The stand-in for ffmpeg. Run n does what line n of `plan` says (the last line repeats):
 * - `fail`: an error line and exit 1 at once;
 * - `stall`: one 8x8 gray frame, then silence until killed;
 * - `hang`: no frame at all until killed;
 * - `stream`: a frame every 20 ms (plus a preview JPEG on fd 3 with `stream+preview`) until the file `stop.<n>` appears, then exit 1.
 */
function fakeFfmpeg(dir: string, plan: string[]): string {
  writeFileSync(path.join(dir, 'plan'), `${plan.join('\n')}\n`);
  const script = path.join(dir, 'ffmpeg');
  writeFileSync(
    script,
    `#!/bin/sh
dir='${dir}'
n=$(cat "$dir/count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "$dir/count"
mode=$(sed -n "\${n}p" "$dir/plan"); [ -n "$mode" ] || mode=$(tail -n 1 "$dir/plan")
case "$mode" in
  fail) echo "[error] run $n: Connection refused" >&2; exit 1 ;;
  stall) head -c 64 /dev/zero; exec sleep 600 ;;
  hang) exec sleep 600 ;;
  stream|stream+preview)
    while [ ! -e "$dir/stop.$n" ]; do
      head -c 64 /dev/zero
      [ "$mode" = stream+preview ] && printf ${FAKE_JPEG} >&3
      sleep 0.02
    done
    echo "[error] run $n: stream closed" >&2; exit 1 ;;
esac
`,
  );
  chmodSync(script, 0o755);
  return script;
}

/** Resolves with the first future event value that matches, on real time. */
function nextEvent<T>(source: CameraSource, event: 'status' | 'preview', match: (value: T) => boolean, what: string, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const listener = (value: T): void => {
      if (!match(value)) return;
      realClearTimeout(timer);
      source.off(event, listener as never);
      resolve(value);
    };
    const timer = realSetTimeout(() => {
      source.off(event, listener as never);
      reject(new Error(`no ${what} within ${timeoutMs} ms (real); status ${source.status}: ${source.statusReason}`));
    }, timeoutMs);
    source.on(event, listener as never);
  });
}

const nextRetry = (source: CameraSource, what = 'retry') =>
  nextEvent<CameraStatusChange>(source, 'status', (change) => change.retryInMs !== undefined, what);

/** The next frame the script writes (real time); older queued ones are dropped. */
async function freshFrame(source: CameraSource): Promise<Frame> {
  source.takeLatest();
  const frame = await Promise.race([
    source.next(),
    new Promise<undefined>((resolve) => realSetTimeout(() => resolve(undefined), 5000)),
  ]);
  if (frame === undefined) throw new Error(`no frame within 5 s (real); status ${source.status}: ${source.statusReason}`);
  return frame;
}

describe('CameraSource supervision on fake time (a script stands in for ffmpeg)', () => {
  let dir: string;
  let sources: CameraSource[];
  let clock: Clock;

  beforeEach(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-timers-'));
    sources = [];
    // Only timers, Date and performance: child processes and streams need the real event loop.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'Date', 'performance'] });
    vi.setSystemTime(new Date('2026-03-29T01:30:00Z'));
    // Reads the faked globals at call time; passed explicitly, as the agent passes its clock.
    clock = systemClock;
  });

  afterEach(async () => {
    // Stopping waits for the scripts to exit; SIGTERM ends them, the SIGKILL timer is never needed.
    await Promise.all(sources.map((source) => source.stop()));
    vi.useRealTimers();
    rmSync(dir, { recursive: true, force: true });
  });

  function source(plan: string[], options: Partial<CameraSourceOptions> = {}): CameraSource {
    const created = new CameraSource({
      id: 'cam1',
      url: 'rtsp://camera.invalid/stream',
      width: 8,
      height: 8,
      ffmpegPath: fakeFfmpeg(dir, plan),
      ffmpegMajorVersion: 5,
      stallTimeoutMs: 5000,
      startTimeoutMs: 10_000,
      stableAfterMs: 12_000,
      backoff: { initialMs: 1000, maxMs: 8000, factor: 2, jitter: 0 },
      clock,
      ...options,
    });
    sources.push(created);
    return created;
  }

  it('backoff doubles per failed start up to its cap, and each restart waits exactly that long', async () => {
    const camera = source(['fail']);
    const spawns: number[] = [];
    camera.on('spawn', (pid) => spawns.push(pid));
    let retry = nextRetry(camera, 'first retry');
    await camera.start();
    const delays = [(await retry).retryInMs!];
    for (let i = 0; i < 5; i++) {
      const delay = delays.at(-1)!;
      vi.advanceTimersByTime(delay - 1);
      expect(spawns, `no restart before ${delay} ms`).toHaveLength(i + 1);
      retry = nextRetry(camera);
      vi.advanceTimersByTime(1);
      expect(spawns).toHaveLength(i + 2);
      const change = await retry;
      expect(change.reason).toBe(`ffmpeg exited with code 1: run ${i + 2}: Connection refused`);
      delays.push(change.retryInMs!);
    }
    expect(delays).toEqual([1000, 2000, 4000, 8000, 8000, 8000]);
    expect(camera.stats().restarts).toBe(5);
  });

  it('only a run that streamed stableAfterMs of monotonic time resets the backoff, whichever way the wall clock steps', async () => {
    const camera = source(['fail', 'fail', 'fail', 'stream', 'stream']);
    let retry = nextRetry(camera);
    await camera.start();
    expect((await retry).retryInMs).toBe(1000);
    for (const [delay, next] of [[1000, 2000], [2000, 4000]] as const) {
      retry = nextRetry(camera);
      vi.advanceTimersByTime(delay);
      expect((await retry).retryInMs).toBe(next);
    }

    // Run 4 streams 3 s, during which NTP steps the wall clock forward 2 h: not a stable run.
    let streaming = nextEvent<CameraStatusChange>(camera, 'status', (change) => change.status === 'streaming', 'streaming (run 4)');
    vi.advanceTimersByTime(4000);
    await streaming;
    await freshFrame(camera);
    vi.setSystemTime(Date.now() + 2 * HOUR);
    for (let i = 0; i < 3; i++) {
      vi.advanceTimersByTime(1000);
      await freshFrame(camera);
    }
    retry = nextRetry(camera, 'retry after run 4');
    writeFileSync(path.join(dir, 'stop.4'), '');
    expect((await retry).retryInMs, 'a 3 s run does not reset the backoff').toBe(8000);

    // Run 5 streams 13 s, during which the wall clock steps back 1 h: a stable run all the same.
    streaming = nextEvent<CameraStatusChange>(camera, 'status', (change) => change.status === 'streaming', 'streaming (run 5)');
    vi.advanceTimersByTime(8000);
    await streaming;
    await freshFrame(camera);
    vi.setSystemTime(Date.now() - HOUR);
    for (let i = 0; i < 13; i++) {
      vi.advanceTimersByTime(1000);
      await freshFrame(camera);
    }
    retry = nextRetry(camera, 'retry after run 5');
    writeFileSync(path.join(dir, 'stop.5'), '');
    expect((await retry).retryInMs, 'a 13 s run resets the backoff').toBe(1000);
  });

  it('the stall watchdog restarts a camera silent for stallTimeoutMs, the start watchdog one that never sent a frame', async () => {
    const camera = source(['stall', 'hang']);
    const streaming = nextEvent<CameraStatusChange>(camera, 'status', (change) => change.status === 'streaming', 'streaming');
    await camera.start();
    await streaming;
    const pid = camera.pid;

    vi.advanceTimersByTime(4999);
    expect(camera.status).toBe('streaming');
    expect(camera.pid).toBe(pid);
    let retry = nextRetry(camera, 'retry after the stall');
    vi.advanceTimersByTime(1);
    const stalled = await retry;
    expect(stalled.reason).toBe('no frame for 5 s (stalled)');
    expect(stalled.retryInMs).toBe(1000);

    vi.advanceTimersByTime(1000);
    expect(camera.pid).not.toBe(pid);
    vi.advanceTimersByTime(9999);
    expect(camera.status).toBe('reconnecting');
    retry = nextRetry(camera, 'retry after the start timeout');
    vi.advanceTimersByTime(1);
    const hung = await retry;
    expect(hung.reason).toBe('no frame within 10 s of starting ffmpeg');
    // The stall run streamed 5 s, short of stableAfterMs: the backoff keeps growing.
    expect(hung.retryInMs).toBe(2000);
  });

  it('frames, previews and status changes carry monotonic time beside the wall clock; previewNear() matches on it', async () => {
    const camera = source(['stream+preview'], { preview: { fps: 1 }, previewKeep: 8 });
    const statuses: CameraStatusChange[] = [];
    camera.on('status', (change) => statuses.push(change));
    const previews: PreviewImage[] = [];
    camera.on('preview', (preview) => previews.push(preview));
    await camera.start();

    await nextEvent(camera, 'preview', () => true, 'a preview');
    const before = await freshFrame(camera);
    vi.advanceTimersByTime(500);
    await nextEvent(camera, 'preview', () => true, 'a preview after 500 ms');
    const previewsBeforeStep = previews.length;
    vi.setSystemTime(Date.now() - HOUR);
    vi.advanceTimersByTime(500);
    await nextEvent(camera, 'preview', () => true, 'a preview after the step');
    const after = await freshFrame(camera);

    expect(after.capturedAt - before.capturedAt).toBe(1000 - HOUR);
    expect(after.monotonicAt - before.monotonicAt).toBe(1000);
    expect(camera.stats().lastFrameMonotonicAt).toBe(after.monotonicAt);
    // On the wall clock, the frame after the step lies an hour before every earlier preview.
    const afterStep = previews.slice(previewsBeforeStep);
    expect(camera.previewNear(after.monotonicAt)?.monotonicAt).toBe(after.monotonicAt);
    expect(camera.previewNear(after.monotonicAt)).toBe(afterStep.at(-1));
    expect(camera.previewNear(before.monotonicAt + 500)?.monotonicAt).toBe(before.monotonicAt + 500);
    for (const change of statuses) expect(typeof change.monotonicAt).toBe('number');
    expect(statuses.at(-1)?.status).toBe('streaming');
  });
});
