import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type IClientPublishOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { UsageError } from '../errors.js';
import { defaultLogger } from '../log.js';
import { scrubSecrets } from '../redact.js';
import { systemClock, type Clock, type Timer } from '../clock.js';
import type { FaultMessage } from '../scoring/faults.js';
import { interruptedEnd, isFaultMessage, OpenEventJournal, type OpenMessage } from './open-events.js';
import { DurableOutbox, OUTBOX_DEFAULTS, type OutboxEntry } from './outbox.js';
import type {
  AnomalyEventPayload,
  CameraStats,
  CameraStatusPayload,
  MqttCounters,
  ScorePayload,
  StatsPayload,
} from './payloads.js';

/** Paths of PEM files, as `mqtt.tls` in the config resolves them. */
export interface MqttTlsFiles {
  /** The CA that signed the broker's certificate. */
  ca?: string;
  /** Client certificate and key, for brokers that authenticate clients by certificate. */
  cert?: string;
  key?: string;
  /** Default true; false accepts any broker certificate (testing only). */
  rejectUnauthorized?: boolean;
}

export interface PublisherLogger {
  info(message: string): void;
  warn(message: string): void;
}

/** How to reach the broker: shared by the publisher and the Sparkplug node's own connection. */
export interface MqttConnectionOptions {
  username?: string;
  password?: string;
  /** 4 = MQTT 3.1.1 (default), 5 = MQTT 5. */
  protocolVersion?: 4 | 5;
  tls?: MqttTlsFiles;
  keepaliveSec?: number;
  reconnectPeriodMs?: number;
  connectTimeoutMs?: number;
}

export interface MqttPublisherOptions extends MqttConnectionOptions {
  /** mqtt://, mqtts://, ws:// or wss:// URL of the broker. */
  url: string;
  /** Names this agent in topics and in the default client id. */
  deviceId: string;
  /** Default `linewatch/<deviceId>`. */
  baseTopic?: string;
  /** Default `linewatch-<deviceId>`. */
  clientId?: string;
  /** The durable outbox lives at `<dataDir>/mqtt-outbox.jsonl`, the open events at `<dataDir>/mqtt-open-events.jsonl`. */
  dataDir: string;
  outbox?: { maxEvents?: number; maxBytes?: number; fsync?: boolean };
  /** While dataDir cannot be written (full, read-only), how often to try again. */
  diskRetryMs?: number;
  clock?: Clock;
  /** Events handed to the client before their PUBACK; bounds memory during a replay. */
  maxInFlight?: number;
  /** Per-camera rate limit of `<base>/<camera>/score` (default 2 Hz, as the config); 0 turns the topic off. */
  scoreMaxRateHz?: number;
  /** Period of `<base>/stats`; 0 turns it off. */
  statsIntervalMs?: number;
  statsProvider?: () => { cameras: Record<string, CameraStats> };
  /** How long close() waits for outstanding PUBACKs. */
  closeTimeoutMs?: number;
  /**
   * Called with the seconds each batch of event messages took to reach the disk (journal and outbox, each synced),
   * which every one of them waited for before it was handed to the broker.
   */
  onEventWrite?: (seconds: number) => void;
  logger?: PublisherLogger;
}

export const MQTT_DEFAULTS = {
  protocolVersion: 4,
  keepaliveSec: 30,
  reconnectPeriodMs: 5000,
  connectTimeoutMs: 10_000,
  maxInFlight: 32,
  scoreMaxRateHz: 2,
  statsIntervalMs: 60_000,
  closeTimeoutMs: 3000,
  diskRetryMs: 5000,
} as const;

export const OUTBOX_FILE_NAME = 'mqtt-outbox.jsonl';
export const OPEN_EVENTS_FILE_NAME = 'mqtt-open-events.jsonl';
/** Where versions before the append-only journal kept the open events (read once, then removed). */
const LEGACY_OPEN_EVENTS_FILE_NAME = 'mqtt-open-events.json';

export interface MqttTopics {
  /** Retained `online` / `offline`; `offline` is the last will. */
  readonly availability: string;
  readonly stats: string;
  cameraStatus(camera: string): string;
  events(camera: string): string;
  score(camera: string): string;
  /** Commands to a camera (triggered inspection). */
  inspect(camera: string): string;
  /** Results of triggered inspections. */
  inspections(camera: string): string;
  /** Camera faults' start and end (scoring/faults.ts). */
  faults(camera: string): string;
}

export function mqttTopics(baseTopic: string): MqttTopics {
  assertTopicPath(baseTopic, 'mqtt.baseTopic');
  const cameraTopic = (camera: string, leaf: string): string => {
    assertTopicLevel(camera, 'camera name');
    return `${baseTopic}/${camera}/${leaf}`;
  };
  return {
    availability: `${baseTopic}/status`,
    stats: `${baseTopic}/stats`,
    cameraStatus: (camera) => cameraTopic(camera, 'status'),
    events: (camera) => cameraTopic(camera, 'events'),
    score: (camera) => cameraTopic(camera, 'score'),
    inspect: (camera) => cameraTopic(camera, 'inspect'),
    inspections: (camera) => cameraTopic(camera, 'inspections'),
    faults: (camera) => cameraTopic(camera, 'faults'),
  };
}

/** A topic path may contain `/` but no wildcards, no empty levels and no NUL. */
function assertTopicPath(topic: string, what: string): void {
  if (topic === '' || /[+#\u0000]/.test(topic) || topic.split('/').some((level) => level === '')) {
    throw new UsageError(`${what} "${topic}" is not a valid MQTT topic`, {
      hint: 'use letters, digits, - and _ separated by single /, without + or #',
    });
  }
}

function assertTopicLevel(name: string, what: string): void {
  if (name === '' || /[/+#\u0000]/.test(name)) {
    throw new UsageError(`${what} "${name}" cannot be used in an MQTT topic`, {
      hint: 'use letters, digits, - and _ (no /, + or #)',
    });
  }
}

/** The broker URL with its credentials masked, for log lines and the status page (the one scrubber, src/redact.ts). */
export function redactUrl(url: string): string {
  return scrubSecrets(url);
}

// Node's codes for certificate and handshake failures.
function isTlsErrorCode(code: string): boolean {
  return (
    code.startsWith('ERR_SSL_') ||
    code.startsWith('ERR_TLS_') ||
    /CERT|SELF_SIGNED|UNABLE_TO_(GET|VERIFY)|HOSTNAME_MISMATCH/.test(code)
  );
}

export function describeConnectionError(error: Error & { code?: string | number }): { text: string; hint?: string } {
  if (typeof error.code === 'string' && isTlsErrorCode(error.code)) {
    return {
      text: `TLS handshake failed (${error.code}: ${error.message})`,
      hint: 'check mqtt.tls.ca, mqtt.tls.cert and mqtt.tls.key',
    };
  }
  if (typeof error.code === 'string') return { text: `unreachable (${error.code})` };
  if (typeof error.code === 'number') {
    // CONNACK refusals: 4/5 in MQTT 3.1.1, 134/135 in MQTT 5.
    const authRefusal = [4, 5, 134, 135].includes(error.code);
    return {
      text: `refused the connection: ${error.message}`,
      hint: authRefusal ? 'check mqtt.username and mqtt.password' : undefined,
    };
  }
  return { text: `unreachable (${error.message})` };
}

const BROKER_PROTOCOLS = ['mqtt:', 'mqtts:', 'tcp:', 'tls:', 'ssl:', 'ws:', 'wss:'];

export function connectClient(url: string, options: IClientOptions): MqttClient {
  const unusable = (reason: string, cause?: unknown): UsageError =>
    new UsageError(`mqtt.url "${redactUrl(url)}" cannot be used: ${reason}`, {
      hint: 'use mqtt://host:1883, mqtts://host:8883, ws://host/mqtt or wss://host/mqtt',
      cause,
    });
  let protocol: string;
  try {
    protocol = new URL(url).protocol;
  } catch (error) {
    throw unusable('it is not a URL', error);
  }
  if (!BROKER_PROTOCOLS.includes(protocol)) throw unusable(`${protocol}// is not an MQTT protocol`);
  try {
    // writeCache off: otherwise mqtt-packet fills a cache of 65,536 two-byte Buffers (one per
    // packet id or length) at the first packet, about 7 MB of the agent's heap for good.
    return mqtt.connect(url, { writeCache: false, ...options });
  } catch (error) {
    throw unusable((error as Error).message, error);
  }
}

export function readTlsFile(path: string | undefined, key: string): Buffer | undefined {
  if (path === undefined) return undefined;
  try {
    return readFileSync(path);
  } catch (error) {
    throw new UsageError(`cannot read the MQTT TLS file ${path} (mqtt.tls.${key}): ${(error as Error).message}`, {
      hint: `point mqtt.tls.${key} at a readable PEM file`,
      cause: error,
    });
  }
}


/**
 * Publishes availability, camera status, events, scores and stats.
 *
 * Events are at-least-once: each is written to a durable outbox before
 * publish and removed only on PUBACK, so events raised while the broker is
 * down, or never acknowledged before a crash, are delivered later in order
 * (consumers dedupe on `id` + `type` + `at`). Nothing here throws because the
 * broker is unreachable: the agent keeps running and catches up on connect.
 *
 * Every event that started is ended for subscribers, even across a crash: the
 * open-event journal keeps each open event's last message until its end is
 * safe, and the next run ends what is left there with reason `interrupted`.
 *
 * A data folder that cannot be written (full, read-only) does not stop
 * publishing: events wait in memory (`durable: false` in metrics(), one
 * warning), the folder is retried every diskRetryMs, and once it can be
 * written again every pending event is put back on disk (one info line).
 */
export class MqttPublisher {
  readonly topics: MqttTopics;
  readonly outboxFile: string;
  private readonly options: MqttPublisherOptions;
  private readonly logger: PublisherLogger;
  private readonly client: MqttClient;
  private readonly outbox: DurableOutbox;
  private readonly journal: OpenEventJournal;
  private readonly clock: Clock;
  /** Outbox seq of an end that is in memory only -> its event id: the journal keeps the event until the end is safe. */
  private readonly endsNotYetSafe = new Map<number, string>();
  /** Event and fault messages held by batchWrites, oldest first. */
  private batched: { event: OpenMessage; topic: string }[] = [];
  private batchDepth = 0;
  /** Why dataDir cannot be written; undefined while it can. */
  private diskFailure: string | undefined;
  private diskRetry: Timer | undefined;
  private readonly cameraStatuses = new Map<string, CameraStatusPayload>();
  private readonly subscriptions = new Map<string, { handler: (topic: string, payload: Buffer, packet: IPublishPacket) => void; qos: 0 | 1 }>();
  private readonly lastScoreAt = new Map<string, number>();
  private readonly inFlight = new Set<number>();
  private readonly connectionListeners = new Set<(connected: boolean) => void>();
  private readonly maxInFlight: number;
  private readonly displayUrl: string;
  private statsTimer: NodeJS.Timeout | undefined;
  private ready = false;
  private started = false;
  private closing = false;
  private everConnected = false;
  private outageLogged = false;
  private dropWarned = false;
  private readonly drainWaiters = new Set<() => void>();
  private published = 0;
  private reconnects = 0;
  private firstAttempt: { promise: Promise<void>; settle: () => void };

  constructor(options: MqttPublisherOptions) {
    this.options = options;
    this.logger = options.logger ?? defaultLogger();
    this.clock = options.clock ?? systemClock;
    assertTopicLevel(options.deviceId, 'deviceId');
    this.topics = mqttTopics(options.baseTopic ?? `linewatch/${options.deviceId}`);
    this.maxInFlight = Math.max(1, options.maxInFlight ?? MQTT_DEFAULTS.maxInFlight);
    this.displayUrl = redactUrl(options.url);
    this.outboxFile = join(options.dataDir, OUTBOX_FILE_NAME);
    // Before the outbox opens, so that a bad TLS path leaves no file open.
    const clientOptions = this.clientOptions();
    this.outbox = DurableOutbox.open({
      file: this.outboxFile,
      maxEntries: options.outbox?.maxEvents,
      maxBytes: options.outbox?.maxBytes,
      fsync: options.outbox?.fsync ?? true,
      onDrop: (entry) => this.onOutboxDrop(entry, options.outbox),
      // The publisher retries (outbox and journal together), so the outbox keeps no timer of its own.
      retryMs: 0,
      clock: this.clock,
      onDurabilityChange: (durable, reason) => {
        if (!durable) this.diskFailed(`${this.outboxFile}: ${reason}`);
      },
    });
    if (this.outbox.recovered > 0) {
      this.logger.info(`MQTT outbox: ${this.outbox.recovered} event(s) from a previous run will be delivered on connect`);
    }
    if (this.outbox.skippedLines > 0) {
      this.logger.warn(`MQTT outbox: skipped ${this.outbox.skippedLines} unreadable line(s) in ${this.outboxFile}`);
    }
    this.journal = new OpenEventJournal(join(options.dataDir, OPEN_EVENTS_FILE_NAME), options.outbox?.fsync ?? true, join(options.dataDir, LEGACY_OPEN_EVENTS_FILE_NAME));
    if (this.journal.unreadable) {
      this.logger.warn(`MQTT open events: ignoring ${this.journal.file} (${this.journal.unreadable})`);
    }
    this.endInterruptedEvents();

    let settle = (): void => undefined;
    const promise = new Promise<void>((resolve) => (settle = resolve));
    this.firstAttempt = { promise, settle };
    this.client = connectClient(options.url, { ...clientOptions, manualConnect: true });
    this.client.on('connect', () => this.onConnect());
    this.client.on('close', () => this.onClose());
    this.client.on('error', (error) => this.onError(error));
    this.client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet));
  }

  /**
   * Starts connecting. Resolves once connected or once the first attempt has
   * failed (the client keeps retrying); rejects only on configuration errors.
   */
  async connect(): Promise<void> {
    if (!this.started) {
      this.started = true;
      this.client.connect();
      const interval = this.options.statsIntervalMs ?? MQTT_DEFAULTS.statsIntervalMs;
      if (interval > 0 && this.options.statsProvider) {
        this.statsTimer = setInterval(() => this.publishStats(), interval);
        this.statsTimer.unref();
      }
    }
    const connectTimeout = this.options.connectTimeoutMs ?? MQTT_DEFAULTS.connectTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.firstAttempt.promise,
      new Promise<void>((resolve) => (timer = setTimeout(resolve, connectTimeout))),
    ]);
    clearTimeout(timer);
  }

  get connected(): boolean {
    return this.ready;
  }

  metrics(): MqttCounters {
    return {
      connected: this.ready,
      published: this.published,
      outboxSize: this.outbox.size,
      dropped: this.outbox.dropped,
      reconnects: this.reconnects,
      durable: this.diskFailure === undefined,
      notDurableReason: this.diskFailure ?? null,
    };
  }

  /** Calls `listener(true)` on every (re)connect and `listener(false)` on every loss; returns an unsubscribe. */
  onConnectionChange(listener: (connected: boolean) => void): () => void {
    this.connectionListeners.add(listener);
    return () => this.connectionListeners.delete(listener);
  }

  /**
   * Durable once this returns (inside batchWrites: once that returns); published now if connected, else on (re)connect.
   * After close() the event still reaches the outbox file, for the next run.
   */
  publishEvent(event: AnomalyEventPayload): void {
    this.enqueueEvent(event);
    this.pumpOutbox();
  }

  /** A camera fault's start or end: durable like an event, and journalled so that a crash cannot leave a start without its end. */
  publishFault(fault: FaultMessage): void {
    this.enqueueEvent(fault);
    this.pumpOutbox();
  }

  /**
   * Any message at QoS 1 through the durable outbox (an inspection result, an
   * integration's message that must not be lost): at least once, in order with events.
   */
  publishDurable(topic: string, payload: string): void {
    // After the events held by batchWrites: in order with them.
    this.writeBatch();
    this.outbox.add(topic, payload);
    this.pumpOutbox();
  }

  /**
   * A retained message (an integration's discovery config). Not queued: while
   * disconnected it is dropped, so the owner re-sends on `onConnectionChange(true)`.
   */
  publishRetained(topic: string, payload: string, qos: 0 | 1 = 1): boolean {
    if (!this.ready) return false;
    this.publish(topic, payload, { qos, retain: true });
    return true;
  }

  /** A QoS 0 message sent now if connected (a command's error reply); returns whether it was sent. */
  publishNow(topic: string, payload: string): boolean {
    if (!this.ready) return false;
    this.publish(topic, payload, { qos: 0 });
    return true;
  }

  /**
   * Calls `handler` for every message on `filter` (MQTT wildcards allowed); the
   * subscription is renewed on every reconnect. Returns an unsubscribe. The packet
   * tells a retained message (re-sent on every subscribe) from a new one.
   */
  subscribe(filter: string, handler: (topic: string, payload: Buffer, packet: IPublishPacket) => void, qos: 0 | 1 = 1): () => void {
    this.subscriptions.set(filter, { handler, qos });
    if (this.ready) this.client.subscribe(filter, { qos });
    return () => {
      this.subscriptions.delete(filter);
      if (this.ready) this.client.unsubscribe(filter);
    };
  }

  /** Retained; the latest status per camera is re-published on every reconnect. */
  publishCameraStatus(camera: string, status: CameraStatusPayload): void {
    const topic = this.topics.cameraStatus(camera);
    this.cameraStatuses.set(camera, status);
    if (this.ready) this.publish(topic, JSON.stringify(status), { qos: 1, retain: true });
  }

  /**
   * Live score for dashboards: QoS 0, dropped while offline and beyond
   * `scoreMaxRateHz`. Returns whether it was sent.
   */
  publishScore(camera: string, score: ScorePayload): boolean {
    const maxRateHz = this.options.scoreMaxRateHz ?? MQTT_DEFAULTS.scoreMaxRateHz;
    if (maxRateHz <= 0 || !this.ready) return false;
    // Monotonic: a wall-clock step back must not mute the scores for as long as the step.
    const now = performance.now();
    const last = this.lastScoreAt.get(camera);
    if (last !== undefined && now - last < 1000 / maxRateHz) return false;
    this.lastScoreAt.set(camera, now);
    this.publish(this.topics.score(camera), JSON.stringify(score), { qos: 0 });
    return true;
  }

  /** Publishes `<base>/stats` now (the timer calls this every statsIntervalMs). */
  publishStats(): void {
    if (!this.ready || !this.options.statsProvider) return;
    let cameras: StatsPayload['cameras'];
    try {
      cameras = this.options.statsProvider().cameras;
    } catch (error) {
      // Runs on a timer: a failing provider must cost one stats message, not the process.
      this.logger.warn(`MQTT stats not published: the stats provider failed (${(error as Error).message})`);
      return;
    }
    const { published, outboxSize, dropped, reconnects } = this.metrics();
    const payload: StatsPayload = {
      at: new Date().toISOString(),
      uptimeSec: Math.round(process.uptime()),
      rssBytes: process.memoryUsage.rss(),
      mqtt: { published, outboxSize, dropped, reconnects },
      cameras,
    };
    this.publish(this.topics.stats, JSON.stringify(payload), { qos: 0 });
  }

  /**
   * Marks the cameras and the agent offline (retained), waits a bounded time
   * for outstanding PUBACKs, then disconnects. Events still unacknowledged stay
   * in the outbox for the next run.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.writeBatch();
    clearInterval(this.statsTimer);
    this.clock.clearInterval(this.diskRetry);
    this.diskRetry = undefined;
    this.firstAttempt.settle();
    const timeoutMs = this.options.closeTimeoutMs ?? MQTT_DEFAULTS.closeTimeoutMs;
    let allAcknowledged = false;
    if (this.ready) {
      const acks: Promise<unknown>[] = [];
      const since = new Date().toISOString();
      for (const [camera, status] of this.cameraStatuses) {
        if (status.state === 'offline') continue;
        const offline: CameraStatusPayload = { ...status, state: 'offline', reason: 'agent stopped', since, fps: 0, faults: [] };
        this.cameraStatuses.set(camera, offline);
        acks.push(this.publishAcknowledged(this.topics.cameraStatus(camera), JSON.stringify(offline)));
      }
      acks.push(this.publishAcknowledged(this.topics.availability, 'offline'));
      acks.push(this.outboxDrained());
      allAcknowledged = await withTimeout(Promise.all(acks).then(() => true), timeoutMs, false);
    }
    this.ready = false;
    if (this.started) {
      // A clean DISCONNECT cancels the last will, which is right: `offline` was just published.
      await withTimeout(this.client.endAsync(!allAcknowledged), timeoutMs, undefined);
      if (!this.client.disconnected) this.client.end(true);
    }
    // The last chance to put what only memory holds on disk, in case space came back since the last retry.
    if (this.diskFailure !== undefined) this.retryDisk();
    this.outbox.close();
  }

  private clientOptions(): IClientOptions {
    const { options } = this;
    const tls = options.tls;
    return {
      clientId: options.clientId ?? `linewatch-${options.deviceId}`,
      username: options.username,
      password: options.password,
      protocolVersion: options.protocolVersion ?? MQTT_DEFAULTS.protocolVersion,
      keepalive: options.keepaliveSec ?? MQTT_DEFAULTS.keepaliveSec,
      reconnectPeriod: options.reconnectPeriodMs ?? MQTT_DEFAULTS.reconnectPeriodMs,
      connectTimeout: options.connectTimeoutMs ?? MQTT_DEFAULTS.connectTimeoutMs,
      clean: true,
      // Scores and stats are only worth sending live; events have the outbox.
      queueQoSZero: false,
      will: { topic: this.topics.availability, payload: Buffer.from('offline'), qos: 1, retain: true },
      ca: readTlsFile(tls?.ca, 'ca'),
      cert: readTlsFile(tls?.cert, 'cert'),
      key: readTlsFile(tls?.key, 'key'),
      rejectUnauthorized: tls?.rejectUnauthorized ?? true,
    };
  }

  private onConnect(): void {
    if (this.closing) return;
    this.ready = true;
    if (this.everConnected) this.reconnects++;
    this.everConnected = true;
    this.outageLogged = false;
    this.dropWarned = false;
    this.logger.info(`MQTT connected to ${this.displayUrl} as ${this.client.options.clientId}`);
    // Events and inspection results are small: without this, Nagle's algorithm can hold one back
    // until the broker acknowledges the previous packet (tens of ms with delayed ACKs).
    // WebSocket streams have no such switch.
    (this.client.stream as { setNoDelay?: (noDelay: boolean) => void } | undefined)?.setNoDelay?.(true);
    this.publish(this.topics.availability, 'online', { qos: 1, retain: true });
    for (const [camera, status] of this.cameraStatuses) {
      this.publish(this.topics.cameraStatus(camera), JSON.stringify(status), { qos: 1, retain: true });
    }
    for (const [filter, { qos }] of this.subscriptions) this.client.subscribe(filter, { qos });
    this.pumpOutbox();
    this.notify(true);
    this.firstAttempt.settle();
  }

  private onMessage(topic: string, payload: Buffer, packet: IPublishPacket): void {
    for (const [filter, { handler }] of this.subscriptions) {
      if (!topicMatches(filter, topic)) continue;
      try {
        handler(topic, payload, packet);
      } catch (error) {
        // A handler bug costs that message, never the connection or the process.
        this.logger.warn(`MQTT message on ${topic} not handled: ${(error as Error).message}`);
      }
    }
  }

  private onClose(): void {
    if (this.ready && !this.closing && !this.outageLogged) {
      this.logger.warn(`MQTT connection to ${this.displayUrl} lost; ${this.retryText()}`);
      this.outageLogged = true;
    }
    const wasReady = this.ready;
    this.ready = false;
    this.wakeDrainWaiters();
    if (wasReady) this.notify(false);
    this.firstAttempt.settle();
  }

  private onError(error: Error & { code?: string | number }): void {
    if (!this.outageLogged && !this.closing) {
      const { text, hint } = describeConnectionError(error);
      this.logger.warn(`MQTT broker ${this.displayUrl} ${text}; ${this.retryText()}` + (hint ? ` (${hint})` : ''));
      this.outageLogged = true;
    }
    this.firstAttempt.settle();
  }

  private retryText(): string {
    const periodMs = this.options.reconnectPeriodMs ?? MQTT_DEFAULTS.reconnectPeriodMs;
    return periodMs > 0 ? `retrying every ${periodMs / 1000} s` : 'not retrying (reconnectPeriodMs is 0)';
  }

  private notify(connected: boolean): void {
    for (const listener of this.connectionListeners) listener(connected);
  }

  /**
   * Journal first for a start or update, outbox first for an end: whichever
   * crash comes in between, no event that went out is left without an end (at
   * worst the next run ends one whose start never went out, or finds the end
   * already queued and sends no second one).
   */
  private enqueueEvent(event: OpenMessage): void {
    // The topic now: a camera name that cannot be one throws here, not in someone else's batch.
    const topic = isFaultMessage(event) ? this.topics.faults(event.camera) : this.topics.events(event.camera);
    this.batched.push({ event, topic });
    if (this.batchDepth === 0) this.writeBatch();
  }

  /**
   * Writes the queued messages with one journal append and one outbox fdatasync for all of them,
   * in the order that keeps every start paired with its end across a crash or power cut: the
   * starts and updates into the journal first, then every message into the outbox, then the
   * ended events out of the journal, each step on disk before the next.
   */
  private writeBatch(): void {
    const batch = this.batched;
    if (batch.length === 0) return;
    this.batched = [];
    const began = this.clock.monotonic();
    let opened = false;
    for (const { event } of batch) {
      if (event.type === 'end') continue;
      this.journal.record(event);
      opened = true;
    }
    if (opened) this.persistJournal();
    const ends: { seq: number; id: string }[] = [];
    for (const { event, topic } of batch) {
      const entry = this.outbox.add(topic, JSON.stringify(event), true);
      if (event.type === 'end' && this.journal.has(event.id)) ends.push({ seq: entry.seq, id: event.id });
    }
    this.outbox.sync();
    if (ends.length > 0 && this.outbox.durable) {
      for (const { id } of ends) this.journal.forget(id);
      this.persistJournal();
    } else {
      for (const { seq, id } of ends) this.endsNotYetSafe.set(seq, id);
    }
    this.options.onEventWrite?.((this.clock.monotonic() - began) / 1000);
  }

  /**
   * Runs `write`, holding the event and fault messages it publishes until it returns and then
   * writing them together (writeBatch): a round that starts events on many cameras at once
   * costs one journal write and one fdatasync, not two per event. The messages are durable when
   * this returns, as publishEvent's are outside it.
   */
  batchWrites<T>(write: () => T): T {
    this.batchDepth++;
    try {
      return write();
    } finally {
      this.batchDepth--;
      if (this.batchDepth === 0 && this.batched.length > 0) {
        this.writeBatch();
        this.pumpOutbox();
      }
    }
  }

  /** Ends, before any new event, what a previous run left open (it died mid-event). */
  private endInterruptedEvents(): void {
    if (this.journal.leftovers.length === 0) return;
    const leftovers = new Set(this.journal.leftovers.map((event) => event.id));
    // A crash between queueing an end and updating the journal leaves the end in the outbox already.
    for (const entry of this.outbox.entries()) {
      const queued = parseEvent(entry.payload);
      if (queued?.type === 'end' && leftovers.delete(queued.id)) this.journal.forget(queued.id);
    }
    const ended = this.journal.leftovers.filter((event) => leftovers.has(event.id));
    for (const event of ended) this.enqueueEvent(interruptedEnd(event));
    this.persistJournal();
    if (ended.length > 0) {
      this.logger.warn(
        `MQTT: ${ended.length} event(s) were still open when the previous run stopped without ending them; ` +
          `ending them now with reason interrupted (${ended.map((event) => `${event.camera} ${event.id}`).join(', ')})`,
      );
    }
  }

  private persistJournal(): void {
    // Memory-only until the retry succeeds: one failing write per retry, not per event.
    if (this.diskFailure !== undefined) return;
    try {
      this.journal.persist();
    } catch (error) {
      this.diskFailed(`${this.journal.file}: ${(error as Error).message}`);
    }
  }

  /** The first write failure of an episode: say it once, then retry quietly. */
  private diskFailed(reason: string): void {
    if (this.diskFailure !== undefined) return;
    this.diskFailure = reason;
    const periodMs = Math.max(1, this.options.diskRetryMs ?? MQTT_DEFAULTS.diskRetryMs);
    this.logger.warn(
      `MQTT outbox not durable: cannot write ${reason}; events are kept in memory only (a crash now loses them) ` +
        `and are written to disk again once it can be written (retrying every ${periodMs / 1000} s)`,
    );
    if (this.closing) return;
    this.diskRetry = this.clock.setInterval(() => this.retryDisk(), periodMs);
    (this.diskRetry as { unref?: () => void }).unref?.();
  }

  private retryDisk(): void {
    if (!this.outbox.persist()) return;
    // Every end that was in memory only is on disk now.
    for (const id of this.endsNotYetSafe.values()) this.journal.forget(id);
    this.endsNotYetSafe.clear();
    try {
      this.journal.persist();
    } catch {
      return;
    }
    const reason = this.diskFailure;
    this.diskFailure = undefined;
    this.clock.clearInterval(this.diskRetry);
    this.diskRetry = undefined;
    this.logger.info(`MQTT outbox durable again: ${this.outbox.size} pending event(s) written to ${this.outboxFile} (had failed: ${reason})`);
  }

  /** The broker has an end that was in memory only: its event no longer needs the journal. */
  private settleEnd(seq: number): void {
    const id = this.endsNotYetSafe.get(seq);
    if (id === undefined) return;
    this.endsNotYetSafe.delete(seq);
    this.journal.forget(id);
    this.persistJournal();
  }

  private onOutboxDrop(entry: OutboxEntry, bounds: MqttPublisherOptions['outbox']): void {
    // A dropped end never reaches the broker: the journal keeps its event, for the next run to end.
    this.endsNotYetSafe.delete(entry.seq);
    // Once per outage is enough to explain the `dropped` counter.
    if (this.dropWarned) return;
    this.dropWarned = true;
    const maxEvents = bounds?.maxEvents ?? OUTBOX_DEFAULTS.maxEntries;
    const maxBytes = bounds?.maxBytes ?? OUTBOX_DEFAULTS.maxBytes;
    this.logger.warn(
      `MQTT outbox full (${maxEvents} events / ${maxBytes} bytes): dropping the oldest events, ` +
        `first one queued ${entry.enqueuedAt}; the dropped counter says how many`,
    );
  }

  /** Hands outbox entries to the client, oldest first, up to maxInFlight awaiting PUBACK. */
  private pumpOutbox(): void {
    if (!this.ready) return;
    for (const entry of this.outbox.entries()) {
      if (this.inFlight.size >= this.maxInFlight) return;
      if (this.inFlight.has(entry.seq)) continue;
      this.inFlight.add(entry.seq);
      // The client keeps unacknowledged QoS 1 packets across reconnects and
      // resends them before its next 'connect', so in-flight entries are not resent here.
      this.client.publish(entry.topic, entry.payload, { qos: 1 }, (error) => {
        this.inFlight.delete(entry.seq);
        if (error) return; // still in the outbox: the next connect replays it
        this.published++;
        this.outbox.remove(entry.seq);
        this.settleEnd(entry.seq);
        if (this.outbox.size === 0) this.wakeDrainWaiters();
        this.pumpOutbox();
      });
    }
  }

  /** Resolves when the outbox is empty or the connection is lost (then the rest waits for the next run). */
  private outboxDrained(): Promise<void> {
    if (this.outbox.size === 0 || !this.ready) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.add(resolve));
  }

  private wakeDrainWaiters(): void {
    for (const wake of this.drainWaiters) wake();
    this.drainWaiters.clear();
  }

  private publish(topic: string, payload: string, options: IClientPublishOptions): void {
    this.client.publish(topic, payload, options, (error) => {
      if (!error) this.published++;
    });
  }

  private publishAcknowledged(topic: string, payload: string): Promise<void> {
    return new Promise((resolve) =>
      this.client.publish(topic, payload, { qos: 1, retain: true }, (error) => {
        if (!error) this.published++;
        resolve();
      }),
    );
  }
}

function parseEvent(payload: string): Pick<AnomalyEventPayload, 'type' | 'id'> | undefined {
  try {
    const value = JSON.parse(payload) as Partial<AnomalyEventPayload> | null;
    return typeof value?.type === 'string' && typeof value.id === 'string' ? { type: value.type, id: value.id } : undefined;
  } catch {
    return undefined;
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), timeoutMs))),
  ]);
}

/** Whether `topic` matches the subscription `filter` (`+` one level, `#` the rest). */
export function topicMatches(filter: string, topic: string): boolean {
  const wanted = filter.split('/');
  const actual = topic.split('/');
  for (let i = 0; i < wanted.length; i++) {
    if (wanted[i] === '#') return true;
    if (i >= actual.length) return false;
    if (wanted[i] !== '+' && wanted[i] !== actual[i]) return false;
  }
  return wanted.length === actual.length;
}
