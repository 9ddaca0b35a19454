import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AnomalyEventType, CameraState, MqttCounters } from '../publish/payloads.js';
import { FAULT_KINDS } from '../scoring/faults.js';

/**
 * The agent's Prometheus metrics. They live in their own Registry, not prom-client's
 * global one, so tests and a second agent in one process never share counters.
 * Every metric is named `linewatch_*`; per-camera metrics carry a `camera` label.
 */

export interface AgentMetricsOptions {
  /** Also export prom-client's process metrics (CPU, memory, event loop lag, GC). Default true. */
  processMetrics?: boolean;
}

/** Inference takes ~0.4 ms per 64 px frame on a desktop CPU and tens of ms on small boards. */
const INFERENCE_BUCKETS_S = [0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1];
/** A local SSD syncs in about a millisecond; an SD card or a busy virtual disk can take a hundred or more. */
const EVENT_WRITE_BUCKETS_S = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2];

export class AgentMetrics {
  readonly registry = new Registry();

  readonly #framesIn: Counter<'camera'>;
  readonly #framesScored: Counter<'camera'>;
  readonly #scoringFailures: Counter<'camera'>;
  readonly #framesDropped: Counter<'camera'>;
  readonly #ffmpegRestarts: Counter<'camera'>;
  readonly #cameraUp: Gauge<'camera'>;
  readonly #frameScore: Gauge<'camera'>;
  readonly #threshold: Gauge<'camera'>;
  readonly #inferenceSeconds: Histogram<'camera'>;
  readonly #eventMessages: Counter<'camera' | 'type'>;
  readonly #inspections: Counter<'camera' | 'outcome'>;
  readonly #cameraFault: Gauge<'camera' | 'kind'>;
  readonly #cameraFaults: Counter<'camera' | 'kind'>;
  readonly #anomalyFramesWithheld: Counter<'camera'>;
  readonly #anomalyEventsSuppressed: Counter<'camera'>;
  readonly #mqttConnected: Gauge;
  readonly #mqttOutboxSize: Gauge;
  readonly #mqttEventsDropped: Counter;
  readonly #mqttOutboxDurable: Gauge;
  readonly #eventWriteSeconds: Histogram;
  /** The publisher's running total at the last mqtt() call: the counter grows by the difference. */
  #mqttDroppedSeen = 0;

  constructor(options: AgentMetricsOptions = {}) {
    const registers = [this.registry];
    if (options.processMetrics ?? true) collectDefaultMetrics({ register: this.registry });
    this.#framesIn = new Counter({ name: 'linewatch_frames_in_total', help: 'Frames decoded by ffmpeg and received.', labelNames: ['camera'], registers });
    this.#framesScored = new Counter({ name: 'linewatch_frames_scored_total', help: 'Frames scored by the model.', labelNames: ['camera'], registers });
    this.#scoringFailures = new Counter({
      name: 'linewatch_scoring_failures_total',
      help: 'Frames that could not be scored (inference failed or the score was not a finite number).',
      labelNames: ['camera'],
      registers,
    });
    this.#framesDropped = new Counter({
      name: 'linewatch_frames_dropped_total',
      help: 'Frames dropped because scoring fell behind (the queue keeps the newest).',
      labelNames: ['camera'],
      registers,
    });
    this.#ffmpegRestarts = new Counter({ name: 'linewatch_ffmpeg_restarts_total', help: 'ffmpeg restarts after an exit or a stall.', labelNames: ['camera'], registers });
    this.#cameraUp = new Gauge({ name: 'linewatch_camera_up', help: '1 while the camera is streaming, else 0.', labelNames: ['camera'], registers });
    this.#frameScore = new Gauge({ name: 'linewatch_frame_score', help: 'Anomaly score of the last scored frame.', labelNames: ['camera'], registers });
    this.#threshold = new Gauge({ name: 'linewatch_score_threshold', help: 'Score at or above which a frame counts as anomalous.', labelNames: ['camera'], registers });
    this.#inferenceSeconds = new Histogram({
      name: 'linewatch_inference_seconds',
      help: 'Model inference time per frame (a batch is shared out over its frames).',
      labelNames: ['camera'],
      buckets: INFERENCE_BUCKETS_S,
      registers,
    });
    this.#eventMessages = new Counter({
      name: 'linewatch_event_messages_total',
      help: 'Anomaly event messages emitted, by type (start, update, end).',
      labelNames: ['camera', 'type'],
      registers,
    });
    this.#inspections = new Counter({
      name: 'linewatch_inspections_total',
      help: 'Replies to accepted inspect commands, by outcome (pass, fail, timeout, scoring-failed, shutdown).',
      labelNames: ['camera', 'outcome'],
      registers,
    });
    this.#cameraFault = new Gauge({
      name: 'linewatch_camera_fault',
      help: '1 while the camera fault of this kind (bright, covered, dark, frozen, blur, moved) holds, else 0.',
      labelNames: ['camera', 'kind'],
      registers,
    });
    this.#cameraFaults = new Counter({ name: 'linewatch_camera_faults_total', help: 'Camera faults started, by kind.', labelNames: ['camera', 'kind'], registers });
    this.#anomalyFramesWithheld = new Counter({
      name: 'linewatch_anomaly_frames_withheld_total',
      help: 'Frames kept from the anomaly debouncer because they failed a camera-fault check or a fault held (faults.suppressEvents).',
      labelNames: ['camera'],
      registers,
    });
    this.#anomalyEventsSuppressed = new Counter({
      name: 'linewatch_anomaly_events_suppressed_total',
      help: 'Anomaly events that would have started while a camera fault held, and were not sent.',
      labelNames: ['camera'],
      registers,
    });
    this.#mqttConnected = new Gauge({ name: 'linewatch_mqtt_connected', help: '1 while connected to the MQTT broker, else 0.', registers });
    this.#mqttOutboxSize = new Gauge({ name: 'linewatch_mqtt_outbox_size', help: 'Event messages waiting for the broker to acknowledge them.', registers });
    this.#mqttEventsDropped = new Counter({
      name: 'linewatch_mqtt_events_dropped_total',
      help: 'Event messages dropped, never to be delivered, because the outbox reached its bound (the broker was away too long).',
      registers,
    });
    this.#mqttOutboxDurable = new Gauge({
      name: 'linewatch_mqtt_outbox_durable',
      help: '1 while the MQTT outbox is written to dataDir; 0 while it cannot be (full or read-only disk) and events wait in memory only.',
      registers,
    });
    this.#mqttOutboxDurable.set(1);
    this.#eventWriteSeconds = new Histogram({
      name: 'linewatch_event_write_seconds',
      help: 'Time to put a batch of event messages on disk (open-events journal and outbox, each synced) before they are published: a slow disk delays every event by this much.',
      buckets: EVENT_WRITE_BUCKETS_S,
      registers,
    });
  }

  /**
   * Makes a camera's series appear (at zero) before its first frame, so dashboards
   * and alerts see a camera that never delivered anything.
   */
  addCamera(camera: string, threshold?: number): void {
    this.#framesIn.inc({ camera }, 0);
    this.#framesScored.inc({ camera }, 0);
    this.#scoringFailures.inc({ camera }, 0);
    this.#framesDropped.inc({ camera }, 0);
    this.#ffmpegRestarts.inc({ camera }, 0);
    this.#cameraUp.set({ camera }, 0);
    for (const kind of FAULT_KINDS) {
      this.#cameraFault.set({ camera, kind }, 0);
      this.#cameraFaults.inc({ camera, kind }, 0);
    }
    this.#anomalyFramesWithheld.inc({ camera }, 0);
    this.#anomalyEventsSuppressed.inc({ camera }, 0);
    if (threshold !== undefined) this.#threshold.set({ camera }, threshold);
  }

  frameIn(camera: string): void {
    this.#framesIn.inc({ camera });
  }

  /** `count` newly dropped frames (a delta, not the source's running total). */
  frameDropped(camera: string, count = 1): void {
    this.#framesDropped.inc({ camera }, checkCount(count));
  }

  scoringFailed(camera: string): void {
    this.#scoringFailures.inc({ camera });
  }

  frameScored(camera: string, score: number, inferenceSeconds: number): void {
    this.#framesScored.inc({ camera });
    this.#frameScore.set({ camera }, score);
    this.#inferenceSeconds.observe({ camera }, inferenceSeconds);
  }

  threshold(camera: string, threshold: number): void {
    this.#threshold.set({ camera }, threshold);
  }

  ffmpegRestart(camera: string, count = 1): void {
    this.#ffmpegRestarts.inc({ camera }, checkCount(count));
  }

  cameraState(camera: string, state: CameraState): void {
    this.#cameraUp.set({ camera }, state === 'streaming' ? 1 : 0);
  }

  eventMessage(camera: string, type: AnomalyEventType): void {
    this.#eventMessages.inc({ camera, type });
  }

  faultMessage(camera: string, kind: string, type: 'start' | 'end'): void {
    this.#cameraFault.set({ camera, kind }, type === 'start' ? 1 : 0);
    if (type === 'start') this.#cameraFaults.inc({ camera, kind });
  }

  anomalyWithheld(camera: string, eventSuppressed: boolean): void {
    this.#anomalyFramesWithheld.inc({ camera });
    if (eventSuppressed) this.#anomalyEventsSuppressed.inc({ camera });
  }

  /** The reply to an accepted inspect command: its result, or its error code. */
  inspection(camera: string, outcome: string): void {
    this.#inspections.inc({ camera, outcome });
  }

  /** One batch of event messages written durably (MqttPublisherOptions.onEventWrite). */
  eventWrite(seconds: number): void {
    this.#eventWriteSeconds.observe(seconds);
  }

  /** `counters.dropped` is the publisher's running total (MqttPublisher.metrics()), not a delta. */
  mqtt(counters: Pick<MqttCounters, 'connected' | 'outboxSize'> & Partial<Pick<MqttCounters, 'dropped' | 'durable'>>): void {
    this.#mqttConnected.set(counters.connected ? 1 : 0);
    this.#mqttOutboxSize.set(counters.outboxSize);
    if (counters.durable !== undefined) this.#mqttOutboxDurable.set(counters.durable ? 1 : 0);
    const dropped = counters.dropped;
    if (dropped !== undefined && Number.isFinite(dropped)) {
      // A smaller total is a new publisher counting from 0 again: all of it is new.
      const added = dropped >= this.#mqttDroppedSeen ? dropped - this.#mqttDroppedSeen : dropped;
      if (added > 0) this.#mqttEventsDropped.inc(added);
      this.#mqttDroppedSeen = dropped;
    }
  }

  /** The Prometheus text exposition of every metric. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

function checkCount(count: number): number {
  if (!Number.isFinite(count) || count < 0) throw new RangeError(`a counter only grows: got ${count}`);
  return count;
}
