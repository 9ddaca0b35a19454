import sharp from 'sharp';
import type { Clock } from '../clock.js';
import { renderSnapshot } from '../publish/snapshot.js';
import type { Box } from '../scoring/region.js';
import type { Frame, PreviewImage } from '../source/index.js';
import type { FrameSource } from './camera.js';
import { detached, keepInto, type KeptFrame } from './kept-frame.js';

/** How far back the score history reaches, and the longest window GET .../scores may ask for. */
export const SCORE_HISTORY_SECONDS = 3600;
/**
 * Points one camera's history holds at most, whatever its fps: 24 bytes each, so at most
 * 1.7 MB per camera. A camera above 20 fps keeps less than SCORE_HISTORY_SECONDS.
 */
export const SCORE_HISTORY_MAX_POINTS = 72_000;
/** Long side of the JPEG made from the small model-input frame (the snapshots' size, so frame and heat map line up). */
const UPSCALED_LONG_SIDE = 640;
const JPEG_QUALITY = 85;

export interface ScorePoint {
  /** Wall-clock ms of the frame's capture. */
  at: number;
  score: number;
}

export interface CameraViewOptions {
  source: FrameSource;
  clock: Clock;
  /** The camera's analysis rate: sizes the score history. */
  fps: number;
  /** Whether the source emits preview JPEGs (camera.preview, or snapshots). */
  previews: boolean;
  /** The part of the source the model sees, in source pixels; undefined without a crop or before the source size is known. */
  crop: () => Box | undefined;
}

/**
 * What the REST API shows of a camera beyond its counters: the latest scored frame with
 * its anomaly map, the latest preview JPEG, and a bounded history of scores. Updated
 * from the pipeline's scored(); holds one frame and one map, never a backlog.
 */
export class CameraView {
  readonly previews: boolean;
  private readonly history: ScoreHistory;
  /** The latest scored frame and map, copied into arrays reused from frame to frame (keepInto says why). */
  private latest: KeptFrame | undefined;
  private preview: PreviewImage | undefined;
  private readonly previewListeners = new Set<(preview: PreviewImage) => void>();
  /** One rendering per scored frame, shared by every request that asks while it is the latest. */
  private rendered: { seq: number; frame?: Promise<Buffer>; heatmap?: Promise<Buffer> } | undefined;

  constructor(private readonly options: CameraViewOptions) {
    this.previews = options.previews;
    this.history = new ScoreHistory(Math.min(SCORE_HISTORY_MAX_POINTS, Math.ceil(SCORE_HISTORY_SECONDS * options.fps * 1.05) + 1));
    options.source.on('preview', (preview) => {
      this.preview = preview;
      for (const listener of this.previewListeners) listener(preview);
    });
  }

  scored(frame: Frame, map: Float32Array, score: number): void {
    this.latest = keepInto(this.latest, frame, map);
    this.history.push(frame.capturedAt, frame.monotonicAt, score);
  }

  get hasScoredFrame(): boolean {
    return this.latest !== undefined;
  }

  get latestPreview(): PreviewImage | undefined {
    return this.preview;
  }

  /** Scores of the frames captured in the last `seconds`, oldest first. */
  scores(seconds: number): ScorePoint[] {
    return this.history.since(this.options.clock.monotonic() - seconds * 1000);
  }

  /** Scores of the frames captured between two wall-clock times (an event's span), and whether the history reaches back to `fromMs`. */
  scoresBetween(fromMs: number, toMs: number): { points: ScorePoint[]; complete: boolean } {
    return this.history.between(fromMs, toMs);
  }

  /** The latest picture of the camera: its newest preview JPEG, else the latest scored frame as a JPEG; undefined before either. */
  async frameJpeg(): Promise<Buffer | undefined> {
    if (this.preview) return Buffer.from(this.preview.jpeg);
    if (!this.latest) return undefined;
    const cache = this.cacheFor(this.latest.frame);
    // A copy: the next frame reuses the latest's arrays while sharp may still be reading them.
    cache.frame ??= encodeFrame(detached(this.latest).frame, this.view(this.latest.frame));
    return cache.frame;
  }

  /** The latest scored frame with its anomaly map over it, drawn as event snapshots are; undefined before the first. */
  async heatmapJpeg(): Promise<Buffer | undefined> {
    if (!this.latest) return undefined;
    const cache = this.cacheFor(this.latest.frame);
    // A copy: the rendering spans several turns of the event loop, in which later frames reuse the latest's arrays.
    cache.heatmap ??= this.renderHeatmap(detached(this.latest));
    return cache.heatmap;
  }

  /** Calls `listener` with each new preview JPEG until the returned function is called. */
  onPreview(listener: (preview: PreviewImage) => void): () => void {
    this.previewListeners.add(listener);
    return () => this.previewListeners.delete(listener);
  }

  get previewSubscribers(): number {
    return this.previewListeners.size;
  }

  private cacheFor(frame: Frame): NonNullable<CameraView['rendered']> {
    if (this.rendered?.seq !== frame.seq) this.rendered = { seq: frame.seq };
    return this.rendered;
  }

  private renderHeatmap({ frame, map }: KeptFrame): Promise<Buffer> {
    const { source } = this.options;
    // The preview taken nearest the frame, as event snapshots pick it: the full source picture is the better base.
    const preview = source.previewNear(frame.monotonicAt);
    return renderSnapshot({
      camera: frame.cameraId,
      eventId: `frame-${frame.seq}`,
      image: preview ? { jpeg: Buffer.from(preview.jpeg) } : { pixels: frame.data, width: frame.width, height: frame.height, channels: frame.channels },
      map,
      mapWidth: frame.width,
      mapHeight: frame.height,
      source: source.sourceSize,
      crop: this.options.crop(),
    });
  }

  /** The frame's size once shown at the aspect ratio of the part of the source it was cut from. */
  private view(frame: Frame): { width: number; height: number } {
    const region = this.options.crop() ?? this.options.source.sourceSize ?? frame;
    const enlarge = UPSCALED_LONG_SIDE / Math.max(region.width, region.height);
    return { width: Math.max(1, Math.round(region.width * enlarge)), height: Math.max(1, Math.round(region.height * enlarge)) };
  }
}

function encodeFrame(frame: Frame, size: { width: number; height: number }): Promise<Buffer> {
  return sharp(frame.data, { raw: { width: frame.width, height: frame.height, channels: frame.channels } })
    .resize(size.width, size.height, { fit: 'fill', kernel: 'cubic' })
    .jpeg({ quality: JPEG_QUALITY })
    .toBuffer();
}

/** A ring of (wall time, monotonic time, score), oldest overwritten first; typed arrays so it costs the same full or empty. */
export class ScoreHistory {
  private readonly wall: Float64Array;
  private readonly monotonic: Float64Array;
  private readonly score: Float64Array;
  private next = 0;
  private size = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`score history capacity must be a whole number >= 1, got ${capacity}`);
    this.wall = new Float64Array(capacity);
    this.monotonic = new Float64Array(capacity);
    this.score = new Float64Array(capacity);
  }

  get length(): number {
    return this.size;
  }

  push(wallMs: number, monotonicMs: number, score: number): void {
    this.wall[this.next] = wallMs;
    this.monotonic[this.next] = monotonicMs;
    this.score[this.next] = score;
    this.next = (this.next + 1) % this.capacity;
    this.size = Math.min(this.size + 1, this.capacity);
  }

  /** Points at or after `monotonicMs`, oldest first. */
  since(monotonicMs: number): ScorePoint[] {
    const points: ScorePoint[] = [];
    this.forEach((i) => {
      if (this.monotonic[i]! >= monotonicMs) points.push(this.point(i));
    });
    return points;
  }

  /** Points whose wall time lies in [fromMs, toMs], oldest first; complete when the oldest point kept is not after `fromMs`. */
  between(fromMs: number, toMs: number): { points: ScorePoint[]; complete: boolean } {
    const points: ScorePoint[] = [];
    this.forEach((i) => {
      const at = this.wall[i]!;
      if (at >= fromMs && at <= toMs) points.push(this.point(i));
    });
    const oldest = this.size === 0 ? undefined : this.wall[(this.next - this.size + this.capacity) % this.capacity]!;
    return { points, complete: oldest !== undefined && oldest <= fromMs };
  }

  private forEach(visit: (index: number) => void): void {
    const first = (this.next - this.size + this.capacity) % this.capacity;
    for (let k = 0; k < this.size; k++) visit((first + k) % this.capacity);
  }

  private point(i: number): ScorePoint {
    return { at: this.wall[i]!, score: this.score[i]! };
  }
}
