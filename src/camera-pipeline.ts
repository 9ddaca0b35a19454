import type { CameraConfig } from './config/index.js';
import type { AgentMetrics } from './health/metrics.js';
import type { CameraSnapshot, RecentEvent } from './health/agent-snapshot.js';
import { normaliseInput } from './image/normalise.js';
import { fromInterleavedBytes, type ImageTensor } from './image/tensor.js';
import type { Logger } from './log.js';
import type { LoadedBundle } from './model/bundle.js';
import type { MqttPublisher } from './publish/mqtt.js';
import type { AnomalyEventPayload, CameraStats, CameraStatusPayload } from './publish/payloads.js';
import type { SnapshotStore } from './publish/snapshot.js';
import { EventTracker, type EventMessage } from './scoring/events.js';
import type { FrameScore } from './scoring/frame.js';
import { rasteriseIgnoreMask } from './scoring/mask.js';
import { anomalyBox, toSourceBox, type Box } from './scoring/region.js';
import { resolveThreshold } from './scoring/threshold.js';
import { CameraSource, type CameraStatusChange, type Frame, type SourceLogLevel } from './source/index.js';

/** A scored frame kept for a short while, so the peak of a starting event can be pictured. */
interface ScoredEntry {
  frame: Frame;
  score: number;
  map: Float32Array;
}

/** Share of the map's maximum above which pixels count as the anomalous region. */
const BOX_LEVEL = 0.5;

export interface CameraPipelineDeps {
  camera: CameraConfig;
  bundle: LoadedBundle;
  ffmpegPath: string;
  publisher: MqttPublisher;
  metrics: AgentMetrics;
  snapshots: SnapshotStore | undefined;
  log: Logger;
  /** One human line per event message (stdout in `linewatch run`). */
  announce: (line: string) => void;
  /** Called with every event message after it was handed to MQTT (recent events for the page). */
  onEvent: (event: RecentEvent) => void;
}

/**
 * One camera from frames to events: its ffmpeg source, the tracker that debounces
 * its scores, the pictures and boxes of its events. Inference happens outside (the
 * app batches frames of all cameras that share a model); `score()` receives the
 * model's output for one of this camera's frames.
 */
export class CameraPipeline {
  readonly name: string;
  readonly source: CameraSource;
  readonly bundle: LoadedBundle;
  readonly threshold: number;
  private readonly deps: CameraPipelineDeps;
  private readonly tracker: EventTracker;
  private readonly ignoreMask: Uint8Array | undefined;
  private readonly recent: ScoredEntry[] = [];
  private readonly recentLimit: number;
  /** Peak frame of the open event and what was derived from it. */
  private peak: { entry: ScoredEntry; box: Box | null; snapshot: string | null } | undefined;
  private statusPayload: CameraStatusPayload;
  private framesScored = 0;
  private events = 0;
  private lastScore: number | null = null;
  private fpsEstimate = 0;
  private lastScoredAt: number | undefined;
  private reportedDrops = 0;
  private reportedRestarts = 0;
  private stopping = false;

  constructor(deps: CameraPipelineDeps) {
    const { camera, bundle } = deps;
    this.deps = deps;
    this.name = camera.name;
    this.bundle = bundle;
    const { input } = bundle.manifest;
    const resolved = resolveThreshold(camera.threshold, bundle.calibration, `camera ${camera.name}`);
    this.threshold = resolved.threshold;
    deps.log.info(`camera ${camera.name}: threshold ${resolved.threshold.toFixed(4)} (${resolved.note}), model ${bundle.dir} (${bundle.variant})`);
    this.tracker = new EventTracker({ camera: camera.name, threshold: this.threshold, ...camera.debounce });
    this.ignoreMask = rasteriseIgnoreMask(camera.ignore, { width: input.width, height: input.height }, camera.crop);
    this.recentLimit = camera.debounce.n + 1;
    const wantPreview = camera.preview.enabled || (camera.snapshots.enabled && deps.snapshots !== undefined);
    this.source = new CameraSource({
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
      log: (level: SourceLogLevel, message: string) => deps.log[level](message),
    });
    this.statusPayload = {
      state: 'offline',
      reason: 'not started',
      since: new Date().toISOString(),
      fps: 0,
      restarts: 0,
      framesDropped: 0,
      lastFrameAt: null,
    };
    deps.metrics.addCamera(camera.name, this.threshold);
    this.source.on('status', (change) => this.onStatus(change));
    this.source.on('sourceSize', (size) => this.checkAspect(size));
  }

  async start(): Promise<void> {
    await this.source.start();
  }

  /** Stop ffmpeg, then end an open event with reason `shutdown`. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.source.stop();
    this.emit(this.tracker.close('shutdown', Date.now()));
  }

  /** The model input for a frame. */
  tensorOf(frame: Frame): ImageTensor {
    const { input } = this.bundle.manifest;
    return normaliseInput(fromInterleavedBytes(frame.data, input.width, input.height, input.channels), input.normalisation);
  }

  /** Score one frame with its model outputs, update the event state and publish what it changed. */
  score(frame: Frame, image: ImageTensor, recon: Float32Array, mu: Float32Array, inferenceSeconds: number, learnedMap?: Float32Array): FrameScore {
    const result = this.bundle.scorer.score(image, recon, mu, this.ignoreMask, learnedMap);
    const { metrics, publisher, camera } = this.deps;
    this.framesScored++;
    this.lastScore = result.score;
    if (this.lastScoredAt !== undefined) {
      const interval = (frame.capturedAt - this.lastScoredAt) / 1000;
      if (interval > 0) this.fpsEstimate = this.fpsEstimate === 0 ? 1 / interval : 0.9 * this.fpsEstimate + 0.1 / interval;
    }
    this.lastScoredAt = frame.capturedAt;
    metrics.frameScored(this.name, result.score, inferenceSeconds);
    this.syncCounters();
    if (camera.scorePublish) {
      publisher.publishScore(this.name, { at: new Date(frame.capturedAt).toISOString(), score: result.score, threshold: this.threshold });
    }

    const entry: ScoredEntry = { frame, score: result.score, map: result.map };
    this.recent.push(entry);
    if (this.recent.length > this.recentLimit) this.recent.shift();
    const messages = this.tracker.push(result.score, frame.capturedAt);
    const peak = this.tracker.peak;
    if (peak && (!this.peak || this.peak.entry.frame.capturedAt !== peak.timestampMs)) {
      const peakEntry = this.recent.find((candidate) => candidate.frame.capturedAt === peak.timestampMs) ?? entry;
      this.peak = { entry: peakEntry, box: this.boxOf(peakEntry), snapshot: this.peak?.snapshot ?? null };
    }
    this.emit(messages);
    return result;
  }

  /** Counters for `<base>/stats`. */
  stats(): CameraStats {
    const counters = this.source.stats();
    return {
      state: this.source.status,
      fps: round(this.fpsEstimate),
      frames: this.framesScored,
      framesDropped: counters.framesDropped,
      restarts: counters.restarts,
      events: this.events,
    };
  }

  /** The camera as the operator page shows it. */
  snapshot(): CameraSnapshot {
    const counters = this.source.stats();
    return {
      ...this.currentStatus(),
      name: this.name,
      framesIn: counters.framesIn,
      lastScore: this.lastScore,
      threshold: this.threshold,
    };
  }

  private currentStatus(): CameraStatusPayload {
    const counters = this.source.stats();
    return {
      ...this.statusPayload,
      fps: round(this.fpsEstimate),
      restarts: counters.restarts,
      framesDropped: counters.framesDropped,
      lastFrameAt: counters.lastFrameAt === undefined ? null : new Date(counters.lastFrameAt).toISOString(),
    };
  }

  private onStatus(change: CameraStatusChange): void {
    const { metrics, publisher } = this.deps;
    this.statusPayload = {
      ...this.statusPayload,
      state: change.status,
      reason: change.status === 'streaming' ? null : change.reason,
      since: new Date(change.at).toISOString(),
    };
    metrics.cameraState(this.name, change.status);
    this.syncCounters();
    if (change.status !== 'streaming') {
      this.fpsEstimate = 0;
      this.lastScoredAt = undefined;
      this.emit(this.tracker.close(this.stopping ? 'shutdown' : 'camera-offline', change.at));
    }
    publisher.publishCameraStatus(this.name, this.currentStatus());
  }

  /**
   * The bundle was trained on frames of its own shape; a camera whose (cropped) view has
   * another aspect ratio is stretched differently, which the model has never seen.
   */
  private checkAspect(size: { width: number; height: number }): void {
    const crop = this.deps.camera.crop ?? { width: 1, height: 1 };
    const { width, height } = this.bundle.manifest.input;
    const cameraAspect = (size.width * crop.width) / (size.height * crop.height);
    const modelAspect = width / height;
    if (Math.abs(Math.log(cameraAspect / modelAspect)) > Math.log(1.15)) {
      this.deps.log.warn(
        `camera ${this.name}: its view is ${cameraAspect.toFixed(2)}:1 but ${this.bundle.dir} was trained on ${width}x${height} (${modelAspect.toFixed(2)}:1) frames; ` +
          'scores may be off: train on this camera (linewatch train --video ...) or set a crop of the trained shape',
      );
    }
  }

  private syncCounters(): void {
    const counters = this.source.stats();
    const { metrics } = this.deps;
    if (counters.framesDropped > this.reportedDrops) metrics.frameDropped(this.name, counters.framesDropped - this.reportedDrops);
    if (counters.restarts > this.reportedRestarts) metrics.ffmpegRestart(this.name, counters.restarts - this.reportedRestarts);
    this.reportedDrops = counters.framesDropped;
    this.reportedRestarts = counters.restarts;
  }

  private boxOf(entry: ScoredEntry): Box | null {
    const { width, height } = this.bundle.manifest.input;
    let max = 0;
    for (const value of entry.map) if (value > max) max = value;
    if (!(max > 0)) return null;
    const box = anomalyBox(entry.map, width, height, max * BOX_LEVEL);
    const source = this.source.sourceSize ?? { width, height };
    return box && toSourceBox(box, { width, height }, source, this.cropPixels());
  }

  private cropPixels(): Box | undefined {
    const crop = this.deps.camera.crop;
    const source = this.source.sourceSize;
    if (!crop || !source) return undefined;
    return { x: crop.x * source.width, y: crop.y * source.height, width: crop.width * source.width, height: crop.height * source.height };
  }

  /** Attach box and snapshot to each message, publish it, and write the snapshot without holding the message back. */
  private emit(messages: EventMessage[]): void {
    const { publisher, metrics, announce, onEvent } = this.deps;
    for (const message of messages) {
      const peak = this.peak;
      let snapshot = peak?.snapshot ?? null;
      if (peak && message.type !== 'end' && this.deps.snapshots) {
        snapshot = this.writeSnapshot(message.id, peak.entry, peak.box);
        peak.snapshot = snapshot;
      }
      const payload: AnomalyEventPayload = { ...message, box: peak?.box ?? null, snapshot };
      publisher.publishEvent(payload);
      metrics.eventMessage(this.name, message.type);
      if (message.type === 'start') this.events++;
      if (message.type === 'end') this.peak = undefined;
      announce(describeEvent(payload));
      onEvent({
        id: payload.id,
        camera: payload.camera,
        type: payload.type,
        at: payload.at,
        score: payload.score,
        peakScore: payload.peakScore,
        threshold: payload.threshold,
        snapshot: payload.snapshot,
      });
    }
  }

  private writeSnapshot(eventId: string, entry: ScoredEntry, box: Box | null): string | null {
    const store = this.deps.snapshots!;
    const { width, height, channels } = this.bundle.manifest.input;
    const preview = this.source.previewNear(entry.frame.capturedAt);
    const target = store.pathFor(this.name, eventId);
    store
      .save({
        camera: this.name,
        eventId,
        image: preview ? { jpeg: Buffer.from(preview.jpeg) } : { pixels: entry.frame.data, width, height, channels },
        map: entry.map,
        mapWidth: width,
        mapHeight: height,
        box,
        source: this.source.sourceSize,
        crop: this.cropPixels(),
      })
      .catch((error: unknown) => this.deps.log.warn(`camera ${this.name}: snapshot ${target} not written: ${(error as Error).message}`));
    return target;
  }
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}

function describeEvent(event: AnomalyEventPayload): string {
  const time = event.at.slice(11, 19);
  const box = event.box ? ` at ${event.box.x},${event.box.y} ${event.box.width}x${event.box.height}` : '';
  if (event.type === 'start') return `${time} ${event.camera}: anomaly started, score ${event.score.toFixed(2)} > ${event.threshold.toFixed(2)}${box}`;
  if (event.type === 'update') return `${time} ${event.camera}: anomaly rising, peak ${event.peakScore.toFixed(2)}${box}`;
  return `${time} ${event.camera}: anomaly ended (${event.reason}) after ${(event.durationMs / 1000).toFixed(1)} s, peak ${event.peakScore.toFixed(2)}, ${event.frames} frames`;
}
