import { DebounceSchema, type DebounceSettings } from '../src/config/schema.js';
import { normaliseInput } from '../src/image/normalise.js';
import { loadBundle } from '../src/model/bundle.js';
import { inferImages } from '../src/model/infer.js';
import type { Variant } from '../src/model/manifest.js';
import { EventTracker, type EndReason, type EventMessage } from '../src/scoring/events.js';
import { decodeVideoFrames } from '../src/source/decode.js';

export interface ReplayOptions {
  model: string;
  video: string;
  /** Frames per second to sample, as a camera's `fps`. */
  fps: number;
  variant: Variant;
  /** onnxruntime intra-op threads (default 1, as `run`). */
  threads?: number;
  /** Frames per model run (default 16; 1 times frames one at a time, as a camera scores them). */
  batch?: number;
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
  /** Model inference plus scoring per frame (decoding excluded), at `batch`. */
  msPerFrame: number;
}

/**
 * Replays a video through a model bundle exactly as `linewatch run` scores a camera
 * (same ffmpeg scaling, same scorer, same debouncer), as fast as possible: the score
 * of every frame and the events the camera would publish.
 */
export async function replayVideo(options: ReplayOptions): Promise<Replay> {
  const { fps } = options;
  const bundle = await loadBundle(options.model, { variant: options.variant, threads: options.threads ?? 1 });
  try {
    const { input } = bundle.manifest;
    const decoded = await decodeVideoFrames(options.video, { width: input.width, height: input.height, channels: input.channels, fps });
    const images = decoded.map((frame) => normaliseInput(frame, input.normalisation));
    const began = performance.now();
    const outputs = await inferImages(bundle.model, images, options.batch ?? 16);
    const frames = images.map((image, i) => {
      const { score, recon, latent } = bundle.scorer.score(image, outputs.recon[i]!, outputs.mu[i]!, undefined, outputs.map?.[i]);
      return { t: i / fps, score, recon, latent };
    });
    const msPerFrame = (performance.now() - began) / frames.length;
    if (!bundle.calibration) throw new Error(`${options.model} has no calibration for ${options.variant}: no threshold to raise events with`);
    const { threshold } = bundle.calibration;
    const tracker = new EventTracker({ camera: 'replay', threshold, ...DebounceSchema.parse(options.debounce ?? {}) });
    const messages: EventMessage[] = [];
    frames.forEach((frame, i) => messages.push(...tracker.push(frame.score, Math.round((i * 1000) / fps))));
    messages.push(...tracker.close('shutdown', Math.round((frames.length * 1000) / fps)));
    const events = messages
      .filter((m) => m.type === 'end')
      .map((m) => ({ start: Date.parse(m.startedAt) / 1000, end: Date.parse(m.endedAt!) / 1000, peak: m.peakScore, reason: m.reason! }));
    return { threshold, fps, frames, events, msPerFrame };
  } finally {
    await bundle.dispose();
  }
}
