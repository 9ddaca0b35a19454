import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { InferenceScheduler, type ScoringCamera } from '../../src/agent/scheduler.js';
import { loadBundle, type LoadedBundle } from '../../src/model/bundle.js';
import type { FrameScore } from '../../src/scoring/frame.js';
import type { Frame } from '../../src/source/index.js';

// The shipped demo bundle on the real onnxruntime: the scheduler is tested with the real model.
let bundle: LoadedBundle;
beforeAll(async () => {
  bundle = await loadBundle('models/demo', { variant: 'int8' });
});
afterAll(async () => bundle?.dispose());

function frame(seq: number, value = 128): Frame {
  const { width, height, channels } = bundle.manifest.input;
  const data = new Uint8Array(width * height * channels);
  for (let i = 0; i < data.length; i++) data[i] = (value + ((i * 7 + seq) % 31)) & 255;
  return { cameraId: 'cam', seq, capturedAt: Date.now(), monotonicAt: performance.now(), width, height, channels, data };
}

class TestCamera implements ScoringCamera {
  readonly queue: Frame[] = [];
  readonly scores: { seq: number; score: number }[] = [];
  readonly failures: { seq: number; message: string }[] = [];
  ignoreMask = undefined;
  constructor(
    readonly name: string,
    public bundle: LoadedBundle,
  ) {}
  take(): Frame | undefined {
    return this.queue.shift();
  }
  scored(frame: Frame, score: { score: number }): void {
    this.scores.push({ seq: frame.seq, score: score.score });
  }
  failed(frame: Frame, error: Error): void {
    this.failures.push({ seq: frame.seq, message: error.message });
  }
}

/** Waits until `count` frames of the given cameras came back (scored or failed). */
async function settled(cameras: TestCamera[], count: number): Promise<void> {
  const done = () => cameras.reduce((sum, camera) => sum + camera.scores.length + camera.failures.length, 0) >= count;
  for (let i = 0; i < 400 && !done(); i++) await new Promise((resolve) => setTimeout(resolve, 5));
  // A little longer: nothing more may arrive.
  await new Promise((resolve) => setTimeout(resolve, 30));
}

describe('InferenceScheduler', () => {
  it('scores every waiting frame of every camera, in order per camera, batching cameras that share a model', async () => {
    const runs: number[] = [];
    const counting: LoadedBundle = { ...bundle, model: { ...bundle.model, providers: bundle.model.providers, run: (input, count) => (runs.push(count), bundle.model.run(input, count)), dispose: async () => {} } };
    const a = new TestCamera('a', counting);
    const b = new TestCamera('b', counting);
    const scheduler = new InferenceScheduler();
    scheduler.add(a);
    scheduler.add(b);
    for (let seq = 1; seq <= 5; seq++) a.queue.push(frame(seq));
    for (let seq = 1; seq <= 3; seq++) b.queue.push(frame(seq));
    scheduler.wake();
    scheduler.wake(); // a second wake while busy does not start a second loop
    await settled([a, b], 8);
    expect(a.failures).toEqual([]);
    expect(a.scores.map((s) => s.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(b.scores.map((s) => s.seq)).toEqual([1, 2, 3]);
    expect(a.scores.every((s) => Number.isFinite(s.score))).toBe(true);
    // Three rounds with both cameras in one batch of two, then two rounds of one.
    expect(runs).toEqual([2, 2, 2, 1, 1]);
    expect(scheduler.rounds).toBe(5);
  });

  it('scores each frame of a batch as it scores that frame alone, and what a camera keeps survives the rounds after it', async () => {
    class KeepingCamera extends TestCamera {
      readonly kept: FrameScore[] = [];
      override scored(frame: Frame, score: FrameScore): void {
        super.scored(frame, score);
        this.kept.push(score);
      }
    }
    const levels = [40, 128, 200];
    // Alone: one camera, one frame per round.
    const alone = new KeepingCamera('alone', bundle);
    const single = new InferenceScheduler();
    single.add(alone);
    for (const value of levels) {
      alone.queue.push(frame(value, value));
      single.wake();
      await settled([alone], alone.kept.length + 1);
    }
    // Batched: three cameras, rounds of three, then two more rounds that reuse the input buffer.
    const cameras = levels.map((value) => new KeepingCamera(`v${value}`, bundle));
    const batched = new InferenceScheduler();
    for (const camera of cameras) batched.add(camera);
    for (let round = 0; round < 3; round++) cameras.forEach((camera, i) => camera.queue.push(frame(levels[i]!, levels[i]! + round * 20)));
    batched.wake();
    await settled(cameras, 9);
    cameras.forEach((camera, i) => {
      const first = camera.kept[0]!;
      const reference = alone.kept[i]!;
      expect(camera.kept).toHaveLength(3);
      expect(first.score).toBeCloseTo(reference.score, 4);
      let worst = 0;
      first.map.forEach((v, j) => (worst = Math.max(worst, Math.abs(v - reference.map[j]!))));
      expect(worst).toBeLessThan(1e-6);
    });
    expect(new Set(cameras.map((camera) => camera.kept[0]!.score)).size).toBe(3);
  });

  it('reports frames whose score is not finite as failures instead of scoring them', async () => {
    const broken: LoadedBundle = {
      ...bundle,
      model: {
        providers: ['cpu'],
        run: async (input, count) => {
          const out = await bundle.model.run(input, count);
          const nan = (values: Float32Array | undefined) => values && new Float32Array(values.length).fill(Number.NaN);
          return { recon: nan(out.recon)!, mu: nan(out.mu)!, ...(out.map ? { map: nan(out.map) } : {}) };
        },
        dispose: async () => {},
      },
    };
    const camera = new TestCamera('broken', broken);
    const scheduler = new InferenceScheduler();
    scheduler.add(camera);
    camera.queue.push(frame(1), frame(2));
    scheduler.wake();
    await settled([camera], 2);
    expect(camera.scores).toEqual([]);
    expect(camera.failures.map((failure) => failure.seq)).toEqual([1, 2]);
    expect(camera.failures[0]!.message).toMatch(/non-finite score/);
  });

  it('hands an inference error to each camera of the batch and keeps going with the next frames', async () => {
    let fail = true;
    const flaky: LoadedBundle = {
      ...bundle,
      model: {
        providers: ['cpu'],
        run: (input, count) => (fail ? ((fail = false), Promise.reject(new Error('device lost'))) : bundle.model.run(input, count)),
        dispose: async () => {},
      },
    };
    const camera = new TestCamera('flaky', flaky);
    const scheduler = new InferenceScheduler();
    scheduler.add(camera);
    camera.queue.push(frame(1), frame(2));
    scheduler.wake();
    await settled([camera], 2);
    expect(camera.failures).toEqual([{ seq: 1, message: 'inference failed: device lost' }]);
    expect(camera.scores.map((s) => s.seq)).toEqual([2]);
  });

  it('shows a hung inference round in busyForMs, and stop() waits for the round in progress', async () => {
    let release: () => void = () => {};
    const slow: LoadedBundle = {
      ...bundle,
      model: {
        providers: ['cpu'],
        run: async (input, count) => {
          await new Promise<void>((resolve) => (release = resolve));
          return bundle.model.run(input, count);
        },
        dispose: async () => {},
      },
    };
    const camera = new TestCamera('slow', slow);
    const scheduler = new InferenceScheduler();
    scheduler.add(camera);
    camera.queue.push(frame(1), frame(2));
    scheduler.wake();
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(scheduler.busyForMs()).toBeGreaterThanOrEqual(100);
    const stopped = scheduler.stop();
    let done = false;
    void stopped.then(() => (done = true));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(done).toBe(false);
    release();
    await stopped;
    // The round in progress finished; no round started after stop().
    expect(camera.scores.map((s) => s.seq)).toEqual([1]);
    expect(camera.queue.map((f) => f.seq)).toEqual([2]);
    expect(scheduler.busyForMs()).toBe(0);
  });

  it('reports how long a hung round has run on the clock it was given (fake timers)', async () => {
    vi.useFakeTimers({ toFake: ['performance', 'setImmediate', 'setTimeout'] });
    try {
      const hung: LoadedBundle = { ...bundle, model: { providers: ['cpu'], run: () => new Promise(() => {}), dispose: async () => {} } };
      const camera = new TestCamera('hung', hung);
      const scheduler = new InferenceScheduler();
      scheduler.add(camera);
      camera.queue.push(frame(1));
      expect(scheduler.busyForMs()).toBe(0);
      scheduler.wake();
      await vi.advanceTimersByTimeAsync(0); // the round starts on the next turn of the event loop
      await vi.advanceTimersByTimeAsync(45_000);
      expect(scheduler.busyForMs()).toBe(45_000);
      expect(scheduler.rounds).toBe(0);
      expect(camera.scores).toEqual([]);
    } finally {
      vi.useRealTimers();
    }
  });
  describe('batch window', () => {
    const countingBundle = (runs: number[]): LoadedBundle => ({
      ...bundle,
      model: { ...bundle.model, providers: bundle.model.providers, run: (input, count) => (runs.push(count), bundle.model.run(input, count)), dispose: async () => {} },
    });
    /**
     * Turns of the event loop without moving the (fake) clock: enough for a round to run and hand back its
     * scores. setImmediate stays real: the fake one does not run an immediate queued by another one.
     */
    const turns = async () => {
      for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    };
    /** Cameras named `names` on one model, scored by a scheduler with the given window. */
    const camerasSharing = (model: LoadedBundle, batchWindowMs: number, names: string[]) => {
      const cameras = names.map((name) => new TestCamera(name, model));
      const scheduler = new InferenceScheduler({ batchWindowMs });
      for (const camera of cameras) scheduler.add(camera);
      return { cameras, scheduler };
    };
    // Fake timers: the window is measured on the clock the scheduler was given, and no test waits it out in real time.
    const withFakeTimers = async (body: () => Promise<void>) => {
      vi.useFakeTimers({ toFake: ['performance', 'setTimeout', 'clearTimeout'] });
      try {
        await body();
      } finally {
        vi.useRealTimers();
      }
    };

    it('holds the first frame after an idle spell for the window, and scores the frames of other cameras that came meanwhile in the same run', () =>
      withFakeTimers(async () => {
        const runs: number[] = [];
        const { cameras, scheduler } = camerasSharing(countingBundle(runs), 20, ['a', 'b', 'c']);
        const [a, b, c] = cameras as [TestCamera, TestCamera, TestCamera];
        a.queue.push(frame(1));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(8);
        b.queue.push(frame(1));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(11);
        expect(runs).toEqual([]); // 19 ms: still inside the window
        await vi.advanceTimersByTimeAsync(1);
        await turns();
        expect(runs).toEqual([2]);
        expect(a.scores.map((s) => s.seq)).toEqual([1]);
        expect(b.scores.map((s) => s.seq)).toEqual([1]);
        // The next idle spell opens a new window; c's frame alone is scored when it ends.
        c.queue.push(frame(2));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(19);
        expect(runs).toEqual([2]);
        await vi.advanceTimersByTimeAsync(1);
        await turns();
        expect(runs).toEqual([2, 1]);
        expect(c.scores.map((s) => s.seq)).toEqual([2]);
      }));

    it('starts a round that follows a round at once: frames that came during a round have waited already', () =>
      withFakeTimers(async () => {
        const runs: number[] = [];
        let release: () => void = () => {};
        const gated: LoadedBundle = {
          ...bundle,
          model: {
            providers: ['cpu'],
            run: async (input, count) => {
              runs.push(count);
              if (runs.length === 1) await new Promise<void>((resolve) => (release = resolve));
              return bundle.model.run(input, count);
            },
            dispose: async () => {},
          },
        };
        const { cameras, scheduler } = camerasSharing(gated, 50, ['a', 'b']);
        const [a, b] = cameras as [TestCamera, TestCamera];
        a.queue.push(frame(1));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(50);
        expect(runs).toEqual([1]); // the first round is running (held)
        a.queue.push(frame(2));
        b.queue.push(frame(2));
        scheduler.wake();
        release();
        await turns();
        expect(runs).toEqual([1, 2]); // no second window
        expect(a.scores.map((s) => s.seq)).toEqual([1, 2]);
        expect(b.scores.map((s) => s.seq)).toEqual([2]);
      }));

    it('does not hold frames when only one camera is scored: no other camera can join its run', () =>
      withFakeTimers(async () => {
        const runs: number[] = [];
        const { cameras, scheduler } = camerasSharing(countingBundle(runs), 200, ['only']);
        const camera = cameras[0]!;
        camera.queue.push(frame(1));
        scheduler.wake();
        await turns();
        expect(runs).toEqual([1]);
        expect(camera.scores.map((s) => s.seq)).toEqual([1]);
      }));

    it('stop() does not wait out an open window: the frames taken so far are scored at once and no round follows', () =>
      withFakeTimers(async () => {
        const runs: number[] = [];
        const { cameras, scheduler } = camerasSharing(countingBundle(runs), 500, ['a', 'b']);
        const [a, b] = cameras as [TestCamera, TestCamera];
        a.queue.push(frame(1));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(10);
        let stopped = false;
        void scheduler.stop().then(() => (stopped = true));
        await turns();
        expect(stopped).toBe(true);
        expect(runs).toEqual([1]);
        expect(a.scores.map((s) => s.seq)).toEqual([1]);
        // Nothing runs after stop(), window or not.
        b.queue.push(frame(1));
        scheduler.wake();
        await vi.advanceTimersByTimeAsync(600);
        expect(runs).toEqual([1]);
        expect(vi.getTimerCount()).toBe(0);
      }));
  });
});
