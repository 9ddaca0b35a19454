import { randomUUID } from 'node:crypto';
import { systemClock, type Clock } from '../clock.js';
import type { CameraConfig, CameraMode } from '../config/index.js';
import { ModelError } from '../errors.js';
import type { CameraSnapshot } from '../health/agent-snapshot.js';
import type { AgentMetrics } from '../health/metrics.js';
import type { Logger } from '../log.js';
import type { LoadedBundle } from '../model/bundle.js';
import type { AnomalyEventPayload, CameraStats } from '../publish/payloads.js';
import type { SnapshotStore } from '../publish/snapshot.js';
import { EventTracker, type EventMessage } from '../scoring/events.js';
import { expectedOf, type FaultMessage } from '../scoring/faults.js';
import type { QualitySignals } from '../scoring/quality.js';
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
import type { FfmpegArgsOptions } from '../source/ffmpeg-args.js';
import { CameraFaults } from './camera-faults.js';
import { CameraState } from './camera-state.js';
import { CameraView } from './camera-view.js';
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
  // Replaced as a whole by useModel(), which the agent runs only between scheduler rounds.
  private active: PreparedModel;
  readonly mode: CameraMode;
  /** Inspect commands waiting for this camera's next frame (InspectionDesk routes them here). */
  readonly inspections: CameraInspections;
  /** The latest frame, anomaly map, preview and recent scores, for the REST API. */
  readonly view: CameraView;
  private readonly camera: CameraConfig;
  private readonly sink: EventSink;
  private readonly clock: Clock;
  private tracker: EventTracker;
  /** Capture time of the last frame the tracker judged: where a model change ends an open event. */
  private lastJudgedAt: { monotonicMs: number; wallMs: number } | undefined;
  private readonly state: CameraState;
  private readonly pictures: EventPictures;
  /** The sensor-fault guard: a broken camera told from a broken part. */
  readonly faults: CameraFaults;
  private readonly log: Logger;
  private stopping = false;
  /** Called with every scored frame (the model's input): feedback captures add and remove themselves here. */
  readonly frameTaps = new Set<(frame: Frame) => void>();

  constructor(deps: CameraPipelineDeps) {
    const { camera, bundle, log } = deps;
    this.camera = camera;
    this.name = camera.name;
    this.sink = deps.sink;
    this.clock = deps.clock ?? systemClock;
    this.log = log;
    const { input } = bundle.manifest;
    this.active = prepareModel(camera, bundle);
    log.info(`camera ${camera.name}: threshold ${this.threshold.toFixed(4)} (${this.active.thresholdNote}), model ${bundle.dir} (${bundle.variant})`);
    this.tracker = new EventTracker({ camera: camera.name, threshold: this.threshold, ...camera.debounce });
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
      ...decodeOptionsOf(camera),
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
    this.faults = new CameraFaults(camera, bundle, () => this.threshold, log);
    this.pictures = new EventPictures({ camera, bundle, source: this.source, snapshots: deps.snapshots, log, keep: camera.debounce.n + 1 });
    this.view = new CameraView({ source: this.source, clock: this.clock, fps: camera.fps, previews: wantPreview, crop: () => this.pictures.cropPixels() });
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

  get bundle(): LoadedBundle {
    return this.active.bundle;
  }

  get threshold(): number {
    return this.active.threshold;
  }

  /** Model-resolution ignore mask (1 = ignore), the same array for every frame of one model. */
  get ignoreMask(): Uint8Array | undefined {
    return this.active.ignoreMask;
  }

  /** The running model's threshold and where it came from. */
  get thresholdNote(): string {
    return this.active.thresholdNote;
  }

  /**
   * Checks that `bundle` can replace this camera's model and works out its threshold and
   * mask, changing nothing; throws saying why not. ffmpeg scales frames to the running
   * model's input size, so a model of another size is refused (ModelSizeError): the camera
   * would need a new ffmpeg, which a restart of the agent gives it.
   */
  prepareModel(bundle: LoadedBundle): PreparedModel {
    const now = this.active.bundle.manifest.input;
    const next = bundle.manifest.input;
    if (next.width !== now.width || next.height !== now.height || next.channels !== now.channels) {
      throw new ModelSizeError(
        `camera ${this.name}: ${bundle.dir} takes ${next.width}x${next.height}x${next.channels} frames, but the camera's ffmpeg delivers ${now.width}x${now.height}x${now.channels} (the running model's size)`,
        { file: bundle.dir, hint: 'a model of another input size needs a restart of the agent: put it in the config and restart linewatch' },
      );
    }
    return prepareModel(this.camera, bundle);
  }

  /**
   * Switches to a prepared model. Call only while no scheduler round holds this camera
   * (InferenceScheduler.between). An open event ends with reason `model-changed`: its scores
   * and threshold are the old model's; if the anomaly persists the new model starts a new
   * event after k of n frames. Returns the id of the event it ended, if any.
   */
  useModel(next: PreparedModel): string | null {
    // Ended at the last frame the old model judged, not now: frames still queued were captured
    // before now, and the new model's next event must not seem to start before this one ended.
    const ended = this.tracker.close('model-changed', this.lastJudgedAt ?? { monotonicMs: this.clock.monotonic(), wallMs: this.clock.now() });
    this.emit(ended);
    this.active = next;
    this.tracker = new EventTracker({ camera: this.name, threshold: next.threshold, ...this.camera.debounce });
    this.state.thresholdChanged(next.threshold);
    this.inspections.useThreshold(next.threshold);
    this.pictures.useBundle(next.bundle);
    this.faults.useBundle(next.bundle, this.log);
    return ended[0]?.id ?? null;
  }

  async start(): Promise<void> {
    await this.source.start();
  }

  /** Stop ffmpeg, then end an open event with reason `shutdown` and answer waiting inspections likewise. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.source.stop();
    const now = { monotonicMs: this.clock.monotonic(), wallMs: this.clock.now() };
    this.emit(this.tracker.close('shutdown', now));
    this.emitFaults(this.faults.close('shutdown', now));
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
    this.view.scored(frame, result.map, result.score);
    for (const tap of this.frameTaps) tap(frame);
    // Before the events: a line that waits on the verdict should not wait on the debouncer.
    this.inspections.scored(frame, result.score, (failed) =>
      failed ? this.pictures.still(frame, result.map, `inspection-${randomUUID()}`) : { box: null, snapshot: null },
    );
    // Always: integrations (Sparkplug) want scores whatever scorePublish says; the MQTT sink applies it.
    this.sink.score(this.name, { at: new Date(frame.capturedAt).toISOString(), score: result.score, threshold: this.threshold });
    const capturedAt = { monotonicMs: frame.monotonicAt, wallMs: frame.capturedAt };
    const verdict = this.faults.judge(frame, capturedAt);
    this.emitFaults(verdict.messages);
    if (this.mode === 'triggered') return;
    this.lastJudgedAt = capturedAt;
    if (verdict.withhold) {
      // A covered lens or a dark line says nothing about the part: no anomaly event from this frame.
      this.state.anomalyFrameWithheld(this.faults.withheld(result.score, capturedAt));
      return;
    }
    const messages = this.tracker.push(result.score, capturedAt);
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
    const signals = this.faults.signals();
    return {
      ...this.state.snapshot(),
      faultChecks: {
        enabled: this.faults.enabled,
        rules: this.faults.limits().map((rule) => ({ kind: rule.kind, signal: rule.signal, ...expectedOf(rule), source: rule.source })),
        signals: signals ? roundSignals(signals) : null,
        suppressed: this.faults.suppressed(),
      },
    };
  }

  private onStatus(change: CameraStatusChange): void {
    if (change.status !== 'streaming') {
      const at = { monotonicMs: change.monotonicAt, wallMs: change.at };
      this.emit(this.tracker.close(this.stopping ? 'shutdown' : 'camera-offline', at));
      // Published with the status below, which then lists no fault.
      this.emitFaults(this.faults.close(this.stopping ? 'shutdown' : 'camera-offline', at), false);
    }
    this.sink.cameraStatus(this.name, this.state.statusChanged(change));
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

  /**
   * Fault starts and ends to the sink; a start ends an open anomaly event (reason camera-fault)
   * when events are suppressed during faults. The status, which lists the faults, follows.
   */
  private emitFaults(messages: FaultMessage[], publishStatus = true): void {
    if (messages.length === 0) return;
    for (const message of messages) {
      if (message.type === 'start' && this.camera.faults.suppressEvents && this.tracker.active) {
        const at = this.lastJudgedAt ?? { monotonicMs: this.clock.monotonic(), wallMs: this.clock.now() };
        this.emit(this.tracker.close('camera-fault', at));
      }
      this.state.faultMessage(message);
      this.sink.fault?.(message);
    }
    const status = this.state.faultsChanged(this.faults.active());
    if (publishStatus) this.sink.cameraStatus(this.name, status);
  }

  private emit(messages: EventMessage[]): void {
    for (const message of messages) {
      const payload: AnomalyEventPayload = { ...message, ...this.pictures.picture(message) };
      if (message.type === 'start') this.state.eventStarted();
      this.sink.event(payload);
    }
  }
}

/** A model ready to run on a camera: the bundle with the camera's threshold and ignore mask for it. */
export interface PreparedModel {
  readonly bundle: LoadedBundle;
  readonly threshold: number;
  readonly thresholdNote: string;
  readonly ignoreMask: Uint8Array | undefined;
}

/** A model whose input size differs from the frames the camera's ffmpeg delivers. */
export class ModelSizeError extends ModelError {
  override readonly name: string = 'ModelSizeError';
}

function prepareModel(camera: CameraConfig, bundle: LoadedBundle): PreparedModel {
  const { input } = bundle.manifest;
  const resolved = resolveThreshold(camera.threshold, bundle.calibration, `camera ${camera.name}`);
  return {
    bundle,
    threshold: resolved.threshold,
    thresholdNote: resolved.note,
    ignoreMask: rasteriseIgnoreMask(camera.ignore, { width: input.width, height: input.height }, camera.crop),
  };
}

function roundSignals(signals: QualitySignals): Record<keyof QualitySignals, number | null> {
  const rounded = {} as Record<keyof QualitySignals, number | null>;
  for (const [name, value] of Object.entries(signals) as [keyof QualitySignals, number][]) rounded[name] = Number.isFinite(value) ? Math.round(value * 1e4) / 1e4 : null;
  return rounded;
}

/** One human line per event message (stdout of `linewatch run` and `linewatch replay`). */
export function describeEvent(event: AnomalyEventPayload): string {
  const time = event.at.slice(11, 19);
  const box = event.box ? ` at ${event.box.x},${event.box.y} ${event.box.width}x${event.box.height}` : '';
  if (event.type === 'start') return `${time} ${event.camera}: anomaly started, score ${event.score.toFixed(2)} > ${event.threshold.toFixed(2)}${box}`;
  if (event.type === 'update') return `${time} ${event.camera}: anomaly rising, peak ${event.peakScore.toFixed(2)}${box}`;
  return `${time} ${event.camera}: anomaly ended (${event.reason}) after ${(event.durationMs / 1000).toFixed(1)} s, peak ${event.peakScore.toFixed(2)}, ${event.frames} frames`;
}

/** One human line per camera-fault message. */
export function describeFault(fault: FaultMessage): string {
  const time = fault.at.slice(11, 19);
  const range = [fault.expected.min === undefined ? '' : `>= ${round3(fault.expected.min)}`, fault.expected.max === undefined ? '' : `<= ${round3(fault.expected.max)}`].filter(Boolean).join(' and ');
  if (fault.type === 'start') return `${time} ${fault.camera}: camera fault ${fault.kind}: ${fault.signal} ${round3(fault.value)}, expected ${range}`;
  return `${time} ${fault.camera}: camera fault ${fault.kind} ended (${fault.reason}) after ${((fault.durationMs ?? 0) / 1000).toFixed(1)} s`;
}

function round3(value: number): string {
  return String(Math.round(value * 1000) / 1000);
}

/** The camera's decoding keys as ffmpeg-args options (hardware preset, codec, decoder, threads, key frames only). */
export function decodeOptionsOf(
  camera: Pick<CameraConfig, 'hwaccel' | 'codec' | 'decoder' | 'decodeThreads' | 'keyframesOnly' | 'vaapiDevice'>,
): Pick<FfmpegArgsOptions, 'hwaccel' | 'inputCodec' | 'decoder' | 'decodeThreads' | 'keyframesOnly' | 'vaapiDevice'> {
  return {
    hwaccel: camera.hwaccel,
    inputCodec: camera.codec,
    decoder: camera.decoder,
    decodeThreads: camera.decodeThreads,
    keyframesOnly: camera.keyframesOnly,
    vaapiDevice: camera.vaapiDevice,
  };
}
