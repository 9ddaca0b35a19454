import { replayRecording } from '../src/agent/replay.js';
import { configFromObject, resolveCameras, type DebounceSettings } from '../src/config/index.js';
import type { Variant } from '../src/model/manifest.js';
import type { EndReason } from '../src/scoring/events.js';

export interface ReplayOptions {
  model: string;
  video: string;
  /** Frames per second to sample, as a camera's `fps`. */
  fps: number;
  variant: Variant;
  /** onnxruntime intra-op threads (default 1, as `run`). */
  threads?: number;
  /** Debounce settings as in the config file; absent ones take the defaults. */
  debounce?: Partial<DebounceSettings>;
}

export interface ReplayFrame {
  /** Capture time, seconds from the start of the video. */
  t: number;
  score: number;
  recon: number;
  latent: number;
}

export interface ReplayEvent {
  /** Seconds from the start of the video. */
  start: number;
  end: number;
  peak: number;
  reason: EndReason;
}

export interface Replay {
  threshold: number;
  fps: number;
  frames: ReplayFrame[];
  events: ReplayEvent[];
  /** Model inference plus scoring per frame (decoding excluded), one frame at a time as a camera. */
  msPerFrame: number;
}

/**
 * The benchmarks' view of `linewatch replay` (src/agent/replay.ts): the same camera
 * pipeline the agent runs, with events reduced to their start, end and peak.
 */
export async function replayVideo(options: ReplayOptions): Promise<Replay> {
  const config = configFromObject({
    mqtt: { url: 'mqtt://127.0.0.1:1' },
    defaults: { model: options.model, fps: options.fps, variant: options.variant, threads: options.threads ?? 1, debounce: options.debounce ?? {} },
    cameras: [{ name: 'replay', url: options.video }],
  });
  const [camera] = resolveCameras(config);
  const result = await replayRecording({ camera: camera! });
  const events = result.messages
    .filter((message) => message.type === 'end')
    .map((message) => ({ start: Date.parse(message.startedAt) / 1000, end: Date.parse(message.endedAt!) / 1000, peak: message.peakScore, reason: message.reason! }));
  return { threshold: result.threshold, fps: result.fps, frames: result.frames, events, msPerFrame: result.msPerFrame };
}
