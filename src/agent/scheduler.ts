import { systemClock, type Clock } from '../clock.js';
import { normaliseInput, standardisedBytes } from '../image/normalise.js';
import { fromInterleavedBytes, type ImageTensor } from '../image/tensor.js';
import type { LoadedBundle } from '../model/bundle.js';
import type { ModelOutputs } from '../model/types.js';
import type { FrameScore } from '../scoring/frame.js';
import type { Frame } from '../source/index.js';

/** What the scheduler needs from a camera: its frames, its model, and where results go. */
export interface ScoringCamera {
  readonly name: string;
  readonly bundle: LoadedBundle;
  /** Model-resolution ignore mask (1 = ignore), the same array for every frame. */
  readonly ignoreMask: Uint8Array | undefined;
  /** The next waiting frame, if any (the camera's bounded queue). */
  take(): Frame | undefined;
  scored(frame: Frame, score: FrameScore, inferenceSeconds: number): void;
  /** The frame could not be scored (inference threw, or the score came out non-finite). */
  failed(frame: Frame, error: Error): void;
}

export interface SchedulerOptions {
  clock?: Clock;
  /** Called after every round that scored or failed frames (metrics sync). */
  onRound?: () => void;
  /**
   * Runs the hand-back of one batch's scores to its cameras; the agent passes the publisher's
   * batchWrites, so the events those frames start or end are written to disk together.
   */
  handBack?: (scored: () => void) => void;
  /**
   * How long the first frame after an idle spell waits for frames of other cameras before its
   * round starts (ms; 0, the default: it does not wait). See InferenceScheduler.
   */
  batchWindowMs?: number;
}

/**
 * Owns take -> tensor -> infer -> score for every camera. One round takes at most
 * one frame per camera and runs the frames of cameras that share a model as one
 * batch; rounds repeat while frames wait. Frames that arrive meanwhile wait in
 * their camera's bounded queue (the oldest dropped and counted when inference
 * falls behind), so nothing here grows without bound.
 *
 * With a batch window, a frame that finds the scheduler idle waits up to that long for
 * frames of other cameras, so that one inference run scores several of them. Why: an
 * onnxruntime run costs nearly as much for one image as for a few when it comes alone
 * (bench:burst-cost), so on a box with many cameras the window trades that much latency
 * for CPU. Rounds that follow a round start at once (their frames have waited already),
 * and with one camera there is nothing to wait for.
 */
export class InferenceScheduler {
  private readonly cameras: ScoringCamera[] = [];
  private readonly clock: Clock;
  private readonly onRound: () => void;
  private readonly handBack: (scored: () => void) => void;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  /** Monotonic ms at which the round in progress began; undefined while idle. */
  private roundStartedAt: number | undefined;
  private roundsCompleted = 0;
  /** Each bundle's input buffer, as large as its largest round so far (batchInput). */
  private readonly inputBuffers = new WeakMap<LoadedBundle, Float32Array>();
  /** Work that must not overlap a round (a model swap), run before the next round starts. */
  private betweenRounds: (() => void)[] = [];
  private readonly batchWindowMs: number;
  /** Ends the batch window in progress at once (stop() does not wait it out). */
  private endWindow: (() => void) | undefined;

  constructor(options: SchedulerOptions = {}) {
    this.clock = options.clock ?? systemClock;
    this.onRound = options.onRound ?? (() => {});
    this.handBack = options.handBack ?? ((scored) => scored());
    this.batchWindowMs = options.batchWindowMs ?? 0;
  }

  add(camera: ScoringCamera): void {
    this.cameras.push(camera);
  }

  /** A frame arrived somewhere: score what waits, now or right after the round in progress. */
  wake(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.firstRoundDue()
      .then(() => this.drain())
      .finally(() => {
        this.running = undefined;
        this.runBetweenRounds();
      });
  }

  /** When the round that a frame arriving at an idle scheduler wakes may start: the next turn, or the end of the batch window. */
  private firstRoundDue(): Promise<void> {
    if (this.batchWindowMs <= 0 || this.cameras.length < 2) return new Promise<void>((resolve) => setImmediate(resolve));
    return new Promise<void>((resolve) => {
      const timer = this.clock.setTimeout(() => end(), this.batchWindowMs);
      const end = () => {
        this.clock.clearTimeout(timer);
        this.endWindow = undefined;
        resolve();
      };
      this.endWindow = end;
    });
  }

  /**
   * Runs `change` while no round holds any camera's frame, model or threshold: now when idle,
   * else as soon as the round in progress has handed back its scores and before the next one
   * takes frames. So a camera's model can be swapped without a frame scored by one model being
   * judged against the other's threshold. `change` must be synchronous for that to hold.
   */
  between(change: () => void): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const run = () => {
        try {
          change();
          resolve();
        } catch (error) {
          reject(error);
        }
      };
      if (this.running) this.betweenRounds.push(run);
      else run();
    });
  }

  /** No new rounds; resolves once the round in progress finished, so no frame is scored after its camera closed its events. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.endWindow?.();
    await this.running;
  }

  /** Rounds finished since start (liveness). */
  get rounds(): number {
    return this.roundsCompleted;
  }

  /** How long the round in progress has been running (ms), or 0 while idle: a stuck inference shows here. */
  busyForMs(): number {
    return this.roundStartedAt === undefined ? 0 : this.clock.monotonic() - this.roundStartedAt;
  }

  private async drain(): Promise<void> {
    do {
      this.runBetweenRounds();
      this.again = false;
      const ready: { camera: ScoringCamera; frame: Frame }[] = [];
      for (const camera of this.cameras) {
        const frame = camera.take();
        if (frame) ready.push({ camera, frame });
      }
      if (ready.length === 0) return;
      this.again = true;
      this.roundStartedAt = this.clock.monotonic();
      try {
        await this.round(ready);
      } finally {
        this.roundStartedAt = undefined;
        this.roundsCompleted++;
      }
      this.onRound();
    } while (this.again && !this.stopped);
  }

  /**
   * The model input of one round of `count` frames for `bundle`, reused from round to round: rounds never overlap
   * and nothing keeps the input past its round, so the hot path allocates no input tensors (fewer dead buffers
   * between garbage collections, which is resident memory).
   */
  private batchInput(bundle: LoadedBundle, count: number): Float32Array {
    const { width, height, channels } = bundle.manifest.input;
    const size = width * height * channels * count;
    let buffer = this.inputBuffers.get(bundle);
    if (buffer === undefined || buffer.length < size) {
      buffer = new Float32Array(size);
      this.inputBuffers.set(bundle, buffer);
    }
    return buffer.subarray(0, size);
  }

  private runBetweenRounds(): void {
    const waiting = this.betweenRounds;
    this.betweenRounds = [];
    for (const run of waiting) run();
  }

  private async round(ready: { camera: ScoringCamera; frame: Frame }[]): Promise<void> {
    const byBundle = new Map<LoadedBundle, typeof ready>();
    for (const item of ready) {
      const group = byBundle.get(item.camera.bundle) ?? [];
      group.push(item);
      byBundle.set(item.camera.bundle, group);
    }
    for (const [bundle, group] of byBundle) {
      let images: ImageTensor[];
      let outputs: ModelOutputs;
      let seconds: number;
      try {
        const input = this.batchInput(bundle, group.length);
        images = group.map(({ frame }, i) => tensorOf(bundle, frame, imageRow(input, i, group.length)));
        const began = performance.now();
        outputs = await bundle.model.run(input, group.length);
        seconds = (performance.now() - began) / 1000 / group.length;
      } catch (error) {
        const failure = new Error(`inference failed: ${(error as Error).message}`, { cause: error });
        for (const { camera, frame } of group) camera.failed(frame, failure);
        continue;
      }
      // The blurred map comes from the graph (loadBundle asks for it where the scoring takes it); without it the scorer blurs in JS.
      const { recon, mu, map, blurredMap: blurred } = outputs;
      // Views into the batch's outputs, not copies: the scorer reads them within this round and keeps none of them.
      const imageOf = (values: Float32Array, i: number) => imageRow(values, i, group.length);
      this.handBack(() => group.forEach(({ camera, frame }, i) => {
        let score: FrameScore;
        try {
          score = bundle.scorer.score(images[i]!, imageOf(recon, i), imageOf(mu, i), camera.ignoreMask, map && imageOf(map, i), blurred && imageOf(blurred, i));
        } catch (error) {
          camera.failed(frame, error as Error);
          return;
        }
        if (!Number.isFinite(score.score)) {
          camera.failed(
            frame,
            new Error(`the model gave a non-finite score (${score.score}); its outputs or calibration are broken: retrain or re-export ${bundle.dir}`),
          );
          return;
        }
        try {
          camera.scored(frame, score, seconds);
        } catch (error) {
          camera.failed(frame, error as Error);
        }
      }));
    }
  }
}

/** Image `i` of `count` packed one after another in `values`, as a view. */
function imageRow(values: Float32Array, i: number, count: number): Float32Array {
  const size = values.length / count;
  return values.subarray(i * size, (i + 1) * size);
}

/** The model input for a raw frame: bytes to a CHW float tensor, normalised as the bundle was trained. */
export function tensorOf(bundle: LoadedBundle, frame: Frame, out?: Float32Array): ImageTensor {
  const { input } = bundle.manifest;
  if (input.normalisation === 'standardise') return standardisedBytes(frame.data, input.width, input.height, input.channels, out);
  const image = normaliseInput(fromInterleavedBytes(frame.data, input.width, input.height, input.channels), input.normalisation);
  if (out === undefined) return image;
  out.set(image.data);
  return { ...image, data: out };
}
