import { randomUUID } from 'node:crypto';
import { systemClock, type Clock } from '../clock.js';
import type { CameraConfig, CameraMode } from '../config/index.js';
import type { CameraSnapshot } from '../health/agent-snapshot.js';
import type { AgentMetrics } from '../health/metrics.js';
import type { Logger } from '../log.js';
import type { LoadedBundle } from '../model/bundle.js';
import type { AnomalyEventPayload, CameraStats } from '../publish/payloads.js';
import type { SnapshotStore } from '../publish/snapshot.js';
import { EventTracker, type EventMessage } from '../scoring/events.js';
import type { FrameScore } from '../scoring/frame.js';
import { rasteriseIgnoreMask } from '../scoring/mask.js';
import { resolveThreshold } from '../scoring/threshold.js';
import {
  CameraSource,
  type CameraCounters,
  type CameraSourceEvents,
  type CameraStatusChange,
  type Frame,
  type PreviewImage,
  type SourceLogLevel,
  type SourceSize,
} from '../source/index.js';
import { CameraState } from './camera-state.js';
import { EventPictures } from './event-pictures.js';
import type { EventSink } from './event-sink.js';
import { CameraInspections } from './inspection.js';
import type { ScoringCamera } from './scheduler.js';

export interface CameraPipelineDeps {
  camera: CameraConfig;
  bundle: LoadedBundle;
  ffmpegPath: string;
  sink: EventSink;
  metrics: AgentMetrics;
  snapshots: SnapshotStore | undefined;
  log: Logger;
  clock?: Clock;
  /** Frames from elsewhere than a live ffmpeg (linewatch replay); default: a CameraSource for the camera's URL. */
  source?: FrameSource;
}

/** What the pipeline needs of its frame source: CameraSource, or a recording being replayed. */
export interface FrameSource {
  readonly sourceSize: SourceSize | undefined;
  start(): Promise<void>;
  stop(): Promise<void>;
  take(): Frame | undefined;
  stats(): CameraCounters;
  previewNear(monotonicMs: number): PreviewImage | undefined;
  on<K extends keyof CameraSourceEvents>(event: K, listener: (...args: CameraSourceEvents[K]) => void): unknown;
}

/**
 * One camera from frames to events: its ffmpeg source, the debouncer, its state
 * and counters, its event pictures. Inference is the scheduler's (it batches
 * frames of cameras that share a model); it hands back each frame's score.
 * Outputs go to an EventSink, never to MQTT directly.
 */
export class CameraPipeline implements ScoringCamera {
  readonly name: string;
  readonly source: FrameSource;
  readonly bundle: LoadedBundle;
  readonly threshold: number;
  readonly ignoreMask: Uint8Array | undefined;
  readonly mode: CameraMode;
  /** Inspect commands waiting for this camera's next frame (InspectionDesk routes them here). */
  readonly inspections: CameraInspections;
  private readonly camera: CameraConfig;
  private readonly sink: EventSink;
  private readonly clock: Clock;
  private readonly tracker: EventTracker;
  private readonly state: CameraState;
  private readonly pictures: EventPictures;
  private stopping = false;

  constructor(deps: CameraPipelineDeps) {
    const { camera, bundle, log } = deps;
    this.camera = camera;
    this.name = camera.name;
    this.bundle = bundle;
    this.sink = deps.sink;
    this.clock = deps.clock ?? systemClock;
    const { input } = bundle.manifest;
    const resolved = resolveThreshold(camera.threshold, bundle.calibration, `camera ${camera.name}`);
    this.threshold = resolved.threshold;
    log.info(`camera ${camera.name}: threshold ${resolved.threshold.toFixed(4)} (${resolved.note}), model ${bundle.dir} (${bundle.variant})`);
    this.tracker = new EventTracker({ camera: camera.name, threshold: this.threshold, ...camera.debounce });
    this.ignoreMask = rasteriseIgnoreMask(camera.ignore, { width: input.width, height: input.height }, camera.crop);
    const wantPreview = camera.preview.enabled || (camera.snapshots.enabled && deps.snapshots !== undefined);
    this.source = deps.source ?? new CameraSource({
      id: camera.name,
      url: camera.url,
      width: input.width,
      height: input.height,
      pixelFormat: input.channels === 1 ? 'gray' : 'rgb24',
      fps: camera.fps,
      cropFraction: camera.crop,
      rtspTransport: camera.transport,
      ioTimeoutMs: camera.socketTimeoutS * 1000,
      loop: camera.loop,
      realtime: camera.realtime,
      hwaccel: camera.hwaccel,
      inputArgs: camera.inputArgs,
      outputArgs: camera.outputArgs,
      preview: wantPreview ? { fps: camera.preview.fps, maxWidth: camera.preview.width } : false,
      ffmpegPath: deps.ffmpegPath,
      queueCapacity: camera.queueSize,
      stallTimeoutMs: camera.stallTimeoutS * 1000,
      backoff: { initialMs: camera.backoff.initialS * 1000, maxMs: camera.backoff.maxS * 1000 },
      clock: this.clock,
      log: (level: SourceLogLevel, message: string) => log[level](message),
    });
    this.state = new CameraState(camera.name, this.threshold, { metrics: deps.metrics, log, clock: this.clock, sourceStats: () => this.source.stats() });
    this.pictures = new EventPictures({ camera, bundle, source: this.source, snapshots: deps.snapshots, log, keep: camera.debounce.n + 1 });
    this.mode = camera.mode;
    this.inspections = new CameraInspections({
      camera: camera.name,
      threshold: this.threshold,
      fps: camera.fps,
      clock: this.clock,
      deliver: (reply) => this.sink.inspection?.(reply),
      describeSource: () => {
        const status = this.state.current();
        return status.reason ? `${status.state}: ${status.reason}` : status.state;
      },
      onError: (error) => log.error(`camera ${camera.name}: inspection reply failed: ${(error as Error).stack ?? String(error)}`),
    });
    this.source.on('status', (change) => this.onStatus(change));
    this.source.on('sourceSize', (size) => this.checkAspect(size, log));
  }

  async start(): Promise<void> {
    await this.source.start();
  }

  /** Stop ffmpeg, then end an open event with reason `shutdown` and answer waiting inspections likewise. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.source.stop();
    this.emit(this.tracker.close('shutdown', { monotonicMs: this.clock.monotonic(), wallMs: this.clock.now() }));
    this.inspections.close();
  }

  take(): Frame | undefined {
    if (this.mode === 'continuous') return this.source.take();
    // Triggered: ffmpeg keeps streaming so that a fresh frame is always at most one period
    // away, but only a frame read after a waiting command is scored. The others are passed
    // over, not counted as dropped: nobody asked for them.
    for (let frame = this.source.take(); frame !== undefined; frame = this.source.take()) {
      if (this.inspections.wants(frame)) return frame;
    }
    return undefined;
  }

  scored(frame: Frame, result: FrameScore, inferenceSeconds: number): void {
    this.state.scored(result.score, frame.monotonicAt, inferenceSeconds);
    // Before the events: a line that waits on the verdict should not wait on the debouncer.
    this.inspections.scored(frame, result.score, (failed) =>
      failed ? this.pictures.still(frame, result.map, `inspection-${randomUUID()}`) : { box: null, snapshot: null },
    );
    // Always: integrations (Sparkplug) want scores whatever scorePublish says; the MQTT sink applies it.
    this.sink.score(this.name, { at: new Date(frame.capturedAt).toISOString(), score: result.score, threshold: this.threshold });
    if (this.mode === 'triggered') return;
    const messages = this.tracker.push(result.score, { monotonicMs: frame.monotonicAt, wallMs: frame.capturedAt });
    this.pictures.scored(frame, result.map, this.tracker.peak);
    this.emit(messages);
  }

  failed(frame: Frame, error: Error): void {
    this.state.failed(error);
    this.inspections.failed(frame, error);
  }

  /** Counters for `<base>/stats`. */
  stats(): CameraStats {
    return this.state.stats();
  }

  /** The camera as the operator page shows it. */
  snapshot(): CameraSnapshot {
    return this.state.snapshot();
  }

  private onStatus(change: CameraStatusChange): void {
    const status = this.state.statusChanged(change);
    if (change.status !== 'streaming') {
      this.emit(this.tracker.close(this.stopping ? 'shutdown' : 'camera-offline', { monotonicMs: change.monotonicAt, wallMs: change.at }));
    }
    this.sink.cameraStatus(this.name, status);
  }

  /**
   * The bundle was trained on frames of its own shape; a camera whose (cropped) view has
   * another aspect ratio is stretched differently, which the model has never seen.
   */
  private checkAspect(size: { width: number; height: number }, log: Logger): void {
    const crop = this.camera.crop ?? { width: 1, height: 1 };
    const { width, height } = this.bundle.manifest.input;
    const cameraAspect = (size.width * crop.width) / (size.height * crop.height);
    const modelAspect = width / height;
    if (Math.abs(Math.log(cameraAspect / modelAspect)) > Math.log(1.15)) {
      log.warn(
        `camera ${this.name}: its view is ${cameraAspect.toFixed(2)}:1 but ${this.bundle.dir} was trained on ${width}x${height} (${modelAspect.toFixed(2)}:1) frames; ` +
          'scores may be off: train on this camera (linewatch train --video ...) or set a crop of the trained shape',
      );
    }
  }

  private emit(messages: EventMessage[]): void {
    for (const message of messages) {
      const payload: AnomalyEventPayload = { ...message, ...this.pictures.picture(message) };
      if (message.type === 'start') this.state.eventStarted();
      this.sink.event(payload);
    }
  }
}

/** One human line per event message (stdout of `linewatch run` and `linewatch replay`). */
export function describeEvent(event: AnomalyEventPayload): string {
  const time = event.at.slice(11, 19);
  const box = event.box ? ` at ${event.box.x},${event.box.y} ${event.box.width}x${event.box.height}` : '';
  if (event.type === 'start') return `${time} ${event.camera}: anomaly started, score ${event.score.toFixed(2)} > ${event.threshold.toFixed(2)}${box}`;
  if (event.type === 'update') return `${time} ${event.camera}: anomaly rising, peak ${event.peakScore.toFixed(2)}${box}`;
  return `${time} ${event.camera}: anomaly ended (${event.reason}) after ${(event.durationMs / 1000).toFixed(1)} s, peak ${event.peakScore.toFixed(2)}, ${event.frames} frames`;
}
