import { EventEmitter } from 'node:events';
import type { CameraConfig } from '../config/index.js';
import { AgentMetrics } from '../health/metrics.js';
import { toInterleavedBytes } from '../image/tensor.js';
import { systemClock } from '../clock.js';
import { silentLogger, type Logger } from '../log.js';
import { loadBundle } from '../model/bundle.js';
import type { AnomalyEventPayload } from '../publish/payloads.js';
import type { FaultMessage } from '../scoring/faults.js';
import type { FrameScore } from '../scoring/frame.js';
import { decodeVideoFrames } from '../source/decode.js';
import type { CameraCounters, CameraSourceEvents, Frame, PreviewImage, SourceSize } from '../source/index.js';
import { CameraPipeline } from './camera.js';
import { InferenceScheduler } from './scheduler.js';

export interface ReplayOptions {
  /** The camera as configured (or as the defaults make it): model, mask, crop, threshold, debounce, fps. */
  camera: CameraConfig;
  /** The recording; default the camera's own URL. */
  video?: string;
  ffmpegPath?: string;
  log?: Logger;
  /** Each event message as the agent would publish it. */
  onEvent?: (payload: AnomalyEventPayload) => void;
  /** Each camera-fault message as the agent would publish it. */
  onFault?: (message: FaultMessage) => void;
}

export interface ReplayFrame {
  /** Seconds from the start of the recording. */
  t: number;
  score: number;
  recon: number;
  latent: number;
}

export interface ReplayResult {
  threshold: number;
  fps: number;
  frames: ReplayFrame[];
  /** Every event message, in order. */
  messages: AnomalyEventPayload[];
  /** Every camera-fault message, in order. */
  faults: FaultMessage[];
  /** Model inference plus scoring per frame (decoding excluded), as the agent runs it: one frame per camera per round. */
  msPerFrame: number;
}

/**
 * Scores a recording exactly as `linewatch run` scores a camera: the same ffmpeg
 * filter graph (rate, crop, scale), the same inference scheduler and camera
 * pipeline (ignore mask, threshold, debouncer, event boxes), as fast as the CPU
 * allows. Only the clock differs: frame i is stamped i / fps seconds into the
 * recording (exact for a constant-rate video whose rate is a multiple of fps),
 * and the end of the file closes an open event as a camera going offline would.
 */
export async function replayRecording(options: ReplayOptions): Promise<ReplayResult> {
  const { camera } = options;
  const log = options.log ?? silentLogger;
  const bundle = await loadBundle(camera.model, { variant: camera.variant, providers: camera.providers, threads: camera.threads, providerOptions: camera.providerOptions });
  try {
    const { input } = bundle.manifest;
    const decoded = await decodeVideoFrames(options.video ?? camera.url, {
      width: input.width,
      height: input.height,
      channels: input.channels,
      fps: camera.fps,
      cropFraction: camera.crop,
      ffmpegPath: options.ffmpegPath,
    });
    const source = new RecordingSource(camera.name, decoded.map((image) => toInterleavedBytes(image)), input, camera.fps);
    const messages: AnomalyEventPayload[] = [];
    const faults: FaultMessage[] = [];
    const frames: ReplayFrame[] = [];
    const pipeline = new CameraPipeline({
      // A triggered camera is replayed as a continuous one: replay shows what the model makes of every frame.
      camera: { ...camera, mode: 'continuous' },
      bundle,
      ffmpegPath: options.ffmpegPath ?? 'ffmpeg',
      sink: {
        event: (payload) => {
          messages.push(payload);
          options.onEvent?.(payload);
        },
        cameraStatus: () => {},
        score: () => {},
        fault: (message) => {
          faults.push(message);
          options.onFault?.(message);
        },
      },
      metrics: new AgentMetrics({ processMetrics: false }),
      snapshots: undefined,
      log,
      source,
      // The recording's timeline is the pipeline's clock, so its closing `shutdown` lands after the last frame.
      clock: { ...systemClock, now: () => source.time, monotonic: () => source.time },
    });
    const scheduler = new InferenceScheduler();
    scheduler.add({
      name: pipeline.name,
      bundle: pipeline.bundle,
      ignoreMask: pipeline.ignoreMask,
      take: () => pipeline.take(),
      scored: (frame: Frame, score: FrameScore, seconds: number) => {
        frames.push({ t: frame.monotonicAt / 1000, score: score.score, recon: score.recon, latent: score.latent });
        pipeline.scored(frame, score, seconds);
      },
      failed: (frame: Frame, error: Error) => {
        throw new Error(`frame ${frame.seq} of ${options.video ?? camera.url} could not be scored: ${error.message}`);
      },
    });
    await pipeline.start();
    const began = performance.now();
    await source.drain(() => scheduler.wake());
    // The round in progress finishes before the end of the stream closes an open event.
    await scheduler.stop();
    const msPerFrame = frames.length > 0 ? (performance.now() - began) / frames.length : 0;
    source.end();
    await pipeline.stop();
    return { threshold: pipeline.threshold, fps: camera.fps, frames, messages, faults, msPerFrame };
  } finally {
    await bundle.dispose();
  }
}

/**
 * Decoded frames of a recording behind the camera source's interface, stamped on
 * the recording's timeline. It ends the way a file camera does: status `offline`
 * with reason "stream ended", once every frame was taken.
 */
export class RecordingSource extends EventEmitter<CameraSourceEvents> {
  private next = 0;
  private taken = 0;
  private readonly counters: CameraCounters = {
    framesIn: 0,
    framesDropped: 0,
    restarts: 0,
    lastFrameAt: undefined,
    lastFrameMonotonicAt: undefined,
    previewsIn: 0,
  };

  constructor(
    private readonly id: string,
    private readonly frames: Uint8Array[],
    private readonly size: { width: number; height: number; channels: 1 | 3 },
    private readonly fps: number,
  ) {
    super();
  }

  /** Milliseconds into the recording: the time of the frame after the last one taken. */
  get time(): number {
    return (this.next * 1000) / this.fps;
  }

  get sourceSize(): SourceSize | undefined {
    return undefined;
  }

  async start(): Promise<void> {
    this.emit('status', { cameraId: this.id, status: 'streaming', previous: 'offline', reason: 'replaying a recording', at: 0, monotonicAt: 0 });
  }

  async stop(): Promise<void> {}

  take(): Frame | undefined {
    if (this.next >= this.frames.length) return undefined;
    const seq = this.next++;
    const at = (seq * 1000) / this.fps;
    this.counters.framesIn++;
    this.counters.lastFrameAt = at;
    this.counters.lastFrameMonotonicAt = at;
    this.taken++;
    return { cameraId: this.id, seq: seq + 1, capturedAt: at, monotonicAt: at, ...this.size, data: this.frames[seq]! };
  }

  stats(): CameraCounters {
    return { ...this.counters };
  }

  previewNear(_monotonicMs: number): PreviewImage | undefined {
    return undefined;
  }

  /** Offers every frame to the scheduler until all were taken. */
  async drain(wake: () => void): Promise<void> {
    while (this.taken < this.frames.length) {
      wake();
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** The recording is over: status `offline`, as a file camera reports the end of its stream. */
  end(): void {
    const at = (this.frames.length * 1000) / this.fps;
    this.emit('status', { cameraId: this.id, status: 'offline', previous: 'streaming', reason: 'stream ended (end of the recording)', at, monotonicAt: at });
  }
}
