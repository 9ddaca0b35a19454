import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { IClientOptions, MqttClient } from 'mqtt';
import type sparkplugPayload from 'sparkplug-payload';
import type { TypeStr, UMetric, UPayload } from 'sparkplug-payload/lib/sparkplugbpayload.js';
import type { Component } from '../agent/controller.js';
import type { EventSink } from '../agent/event-sink.js';
import { systemClock, type Clock, type Timer } from '../clock.js';
import type { Config } from '../config/index.js';
import type { Logger } from '../log.js';
import { LINEWATCH_VERSION } from '../version.js';
import { writeFileAtomic } from './disk.js';
import { connectClient, describeConnectionError, MQTT_DEFAULTS, readTlsFile, redactUrl, type MqttConnectionOptions } from './mqtt.js';
import type { AnomalyEventPayload, CameraStats, CameraStatusPayload, ScorePayload } from './payloads.js';

type Codec = NonNullable<ReturnType<typeof sparkplugPayload.get>>;
let codec: Codec | undefined;

/** sparkplug-payload (protobufjs and the Sparkplug B schema, about 1 MB of heap) is loaded only when a node starts. */
async function loadCodec(): Promise<Codec> {
  codec ??= (await import('sparkplug-payload')).default.get('spBv1.0')!;
  return codec;
}

function loadedCodec(): Codec {
  if (codec === undefined) throw new Error('the Sparkplug B codec is not loaded: SparkplugNode.start() loads it');
  return codec;
}

export const SPARKPLUG_NAMESPACE = 'spBv1.0';
export const SPARKPLUG_STATE_FILE = 'sparkplug.json';
export const REBIRTH_METRIC = 'Node Control/Rebirth';
export const BDSEQ_METRIC = 'bdSeq';

/** Both seq and bdSeq run 0..255 and wrap (Sparkplug 3.0, payloads section). */
const SEQ_MODULUS = 256;

type MetricValue = boolean | number | string | null;

interface MetricDefinition {
  name: string;
  type: TypeStr;
}

/**
 * The edge node's own metrics. bdSeq has no alias: it never appears in a DATA
 * message, and hosts look it up by name in NBIRTH and NDEATH.
 */
const NODE_METRICS = {
  rebirth: { name: REBIRTH_METRIC, type: 'Boolean', alias: 1 },
  version: { name: 'Properties/Version', type: 'String', alias: 2 },
  cameras: { name: 'Properties/Cameras', type: 'UInt32', alias: 3 },
} as const satisfies Record<string, MetricDefinition & { alias: number }>;

/** Every camera (Sparkplug device) has these, in this order: the index is part of the alias. */
export const CAMERA_METRICS = [
  { name: 'Anomaly/Active', type: 'Boolean' },
  { name: 'Anomaly/Score', type: 'Double' },
  { name: 'Anomaly/Threshold', type: 'Double' },
  { name: 'Events/Started', type: 'UInt64' },
  { name: 'Events/Ended', type: 'UInt64' },
  { name: 'Stream/FPS', type: 'Double' },
  { name: 'Stream/Restarts', type: 'UInt64' },
  { name: 'Stream/Frames Dropped', type: 'UInt64' },
] as const satisfies readonly MetricDefinition[];

type CameraMetricName = (typeof CAMERA_METRICS)[number]['name'];

/**
 * Aliases are unique across the whole edge node: the node's own sit below
 * 100, camera i (in order of first appearance) uses 100 * (i + 1) + metric index.
 */
const DEVICE_ALIAS_STRIDE = 100;

export const SPARKPLUG_DEFAULTS = {
  scoreMinIntervalMs: 1000,
  statsIntervalMs: 5000,
} as const;

export interface SparkplugNodeOptions extends MqttConnectionOptions {
  /** Broker URL; a function when it is known only once the agent runs (the embedded broker). */
  url: string | (() => string);
  groupId: string;
  edgeNodeId: string;
  clientId: string;
  /** bdSeq survives restarts in `<dataDir>/sparkplug.json`. */
  dataDir: string;
  /** The configured cameras: their count goes in NBIRTH, their order fixes their aliases. */
  cameras?: () => readonly string[];
  /** Polled every statsIntervalMs for fps, restarts and dropped frames between status changes. */
  cameraStats?: () => Record<string, Pick<CameraStats, 'fps' | 'restarts' | 'framesDropped'>>;
  /** Least time between two score DDATA of one camera; anomaly state changes go out at once. */
  scoreMinIntervalMs?: number;
  statsIntervalMs?: number;
  /** How long stop() waits for the NDEATH's PUBACK and the disconnect. */
  closeTimeoutMs?: number;
  log: Logger;
  clock?: Clock;
}

interface Device {
  readonly name: string;
  readonly aliasBase: number;
  streaming: boolean;
  /** DBIRTH sent in the current birth (and no DDEATH since). */
  alive: boolean;
  readonly values: Map<CameraMetricName, MetricValue>;
  /** What the host last heard (BIRTH or DATA): DATA reports only what differs. */
  readonly reported: Map<CameraMetricName, MetricValue>;
  lastScoreSentAt: number | undefined;
}

/** The bdSeq of every CONNECT, kept in a file so that a restart does not reuse the one the host last saw. */
class BdSeqStore {
  private last: number | undefined;
  private failing = false;

  constructor(
    readonly file: string,
    private readonly log: Logger,
  ) {
    this.last = this.read();
  }

  /** The bdSeq for the CONNECT about to be sent, on disk before it goes out. */
  next(): number {
    const value = this.last === undefined ? 0 : (this.last + 1) % SEQ_MODULUS;
    this.last = value;
    try {
      mkdirSync(join(this.file, '..'), { recursive: true });
      writeFileAtomic(this.file, JSON.stringify({ bdSeq: value }) + '\n');
      if (this.failing) this.log.info(`Sparkplug: ${this.file} written again`);
      this.failing = false;
    } catch (error) {
      // Only a restart can reuse a bdSeq then; not worth refusing to publish over.
      if (!this.failing) this.log.warn(`Sparkplug: cannot write ${this.file} (${(error as Error).message}); bdSeq ${value} is kept in memory only`);
      this.failing = true;
    }
    return value;
  }

  private read(): number | undefined {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn(`Sparkplug: cannot read ${this.file} (${(error as Error).message}); bdSeq starts at 0`);
      return undefined;
    }
    try {
      const value = (JSON.parse(text) as { bdSeq?: unknown } | null)?.bdSeq;
      if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value < SEQ_MODULUS) return value;
    } catch {
      // Reported below, like any other unusable content.
    }
    this.log.warn(`Sparkplug: ignoring ${this.file} (no bdSeq between 0 and 255 in it); bdSeq starts at 0`);
    return undefined;
  }
}

/**
 * The agent as a Sparkplug B 3.0 edge node, each camera a device: NBIRTH and
 * the DBIRTHs on every connect and on a Rebirth command, DDATA for anomaly
 * state, score, fps and event counters, DDEATH while a camera is not
 * streaming, NDEATH as the will and before a clean disconnect.
 *
 * Its own MQTT connection: Sparkplug needs NDEATH as the will, the main
 * connection has the linewatch availability topic there. Nothing is queued
 * while disconnected: a host learns the state again from the births.
 */
export class SparkplugNode implements Component, Partial<EventSink> {
  readonly name = 'sparkplug';
  readonly optional = true;
  readonly topics: {
    readonly nbirth: string;
    readonly ndeath: string;
    readonly ncmd: string;
    dbirth(device: string): string;
    ddata(device: string): string;
    ddeath(device: string): string;
    readonly dcmd: string;
  };
  private readonly options: SparkplugNodeOptions;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly store: BdSeqStore;
  private readonly devices = new Map<string, Device>();
  private client: MqttClient | undefined;
  private displayUrl = '';
  private bdSeq = 0;
  private seq = 0;
  /** NBIRTH published on the current connection. */
  private born = false;
  /** Bumped on every connect and close, so a SUBACK from an older connection births nothing. */
  private session = 0;
  private outageLogged = false;
  private stopping = false;
  private statsTimer: Timer | undefined;

  constructor(options: SparkplugNodeOptions) {
    this.options = options;
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    for (const [what, id] of [['sparkplug.groupId', options.groupId], ['sparkplug.edgeNodeId', options.edgeNodeId]] as const) {
      if (!/^[^/+#\s]+$/.test(id)) throw new Error(`${what} "${id}" cannot be a Sparkplug topic level (no /, +, # or whitespace)`);
    }
    const node = (type: string) => `${SPARKPLUG_NAMESPACE}/${options.groupId}/${type}/${options.edgeNodeId}`;
    this.topics = {
      nbirth: node('NBIRTH'),
      ndeath: node('NDEATH'),
      ncmd: node('NCMD'),
      dcmd: `${node('DCMD')}/+`,
      dbirth: (device) => `${node('DBIRTH')}/${device}`,
      ddata: (device) => `${node('DDATA')}/${device}`,
      ddeath: (device) => `${node('DDEATH')}/${device}`,
    };
    this.store = new BdSeqStore(join(options.dataDir, SPARKPLUG_STATE_FILE), this.log);
  }

  /** Connects in the background (retrying like the main connection); never waits for the broker. */
  async start(): Promise<void> {
    await loadCodec();
    for (const camera of this.options.cameras?.() ?? []) this.device(camera);
    const url = typeof this.options.url === 'function' ? this.options.url() : this.options.url;
    this.displayUrl = redactUrl(url);
    const clientOptions = this.clientOptions();
    this.bdSeq = this.store.next();
    clientOptions.will!.payload = this.ndeathPayload();
    const client = connectClient(url, clientOptions);
    this.client = client;
    // Emitted just before mqtt.js builds the next CONNECT from client.options: each attempt gets its own bdSeq.
    client.on('reconnect', () => {
      if (this.stopping) return;
      this.bdSeq = this.store.next();
      client.options.will!.payload = this.ndeathPayload();
    });
    client.on('connect', () => this.onConnect(client));
    client.on('close', () => this.onClose());
    client.on('error', (error: Error & { code?: string | number }) => this.onError(error));
    client.on('message', (topic, payload) => this.onMessage(topic, payload));
    const statsIntervalMs = this.options.statsIntervalMs ?? SPARKPLUG_DEFAULTS.statsIntervalMs;
    if (statsIntervalMs > 0 && this.options.cameraStats) {
      this.statsTimer = this.clock.setInterval(() => this.pollStats(), statsIntervalMs);
      (this.statsTimer as { unref?: () => void }).unref?.();
    }
  }

  /** NDEATH first (the broker drops the will on a clean DISCONNECT), then disconnects. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.clock.clearInterval(this.statsTimer);
    const client = this.client;
    if (!client) return;
    const timeoutMs = this.options.closeTimeoutMs ?? MQTT_DEFAULTS.closeTimeoutMs;
    if (client.connected) {
      this.born = false;
      const sent = await withTimeout(
        client.publishAsync(this.topics.ndeath, this.ndeathPayload(), { qos: 1, retain: false }).then(() => true),
        timeoutMs,
        false,
      ).catch(() => false);
      if (!sent) this.log.warn('Sparkplug: NDEATH not acknowledged before disconnecting; hosts learn of it from the will only if the connection drops uncleanly');
      await withTimeout(client.endAsync(!sent), timeoutMs, undefined);
    }
    if (!client.disconnected) client.end(true);
  }

  /** The bdSeq of the last CONNECT (tests, status). */
  get currentBdSeq(): number {
    return this.bdSeq;
  }

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  event(payload: AnomalyEventPayload): void {
    if (payload.type === 'update') return;
    const device = this.device(payload.camera);
    const active = payload.type === 'start';
    const counter: CameraMetricName = active ? 'Events/Started' : 'Events/Ended';
    device.values.set(counter, (device.values.get(counter) as number) + 1);
    device.values.set('Anomaly/Active', active);
    device.values.set('Anomaly/Score', payload.score);
    device.values.set('Anomaly/Threshold', payload.threshold);
    if (this.publishChanges(device)) device.lastScoreSentAt = this.clock.monotonic();
  }

  score(camera: string, payload: ScorePayload): void {
    const device = this.device(camera);
    device.values.set('Anomaly/Score', payload.score);
    device.values.set('Anomaly/Threshold', payload.threshold);
    if (!this.born || !device.alive) return;
    const now = this.clock.monotonic();
    const minIntervalMs = this.options.scoreMinIntervalMs ?? SPARKPLUG_DEFAULTS.scoreMinIntervalMs;
    if (device.lastScoreSentAt !== undefined && now - device.lastScoreSentAt < minIntervalMs) return;
    if (this.publishChanges(device, ['Anomaly/Score', 'Anomaly/Threshold'])) device.lastScoreSentAt = now;
  }

  cameraStatus(camera: string, status: CameraStatusPayload): void {
    const device = this.device(camera);
    device.streaming = status.state === 'streaming';
    this.setStreamCounters(device, status);
    if (!this.born) return;
    if (device.streaming && !device.alive) this.publishDbirth(device);
    else if (!device.streaming && device.alive) this.publishDdeath(device);
    else if (device.alive) this.publishChanges(device);
  }

  private device(name: string): Device {
    let device = this.devices.get(name);
    if (!device) {
      if (!/^[^/+#\s]+$/.test(name)) throw new Error(`camera "${name}" cannot be a Sparkplug device id (no /, +, # or whitespace)`);
      device = {
        name,
        aliasBase: DEVICE_ALIAS_STRIDE * (this.devices.size + 1),
        streaming: false,
        alive: false,
        values: new Map<CameraMetricName, MetricValue>([
          ['Anomaly/Active', false],
          ['Anomaly/Score', null],
          ['Anomaly/Threshold', null],
          ['Events/Started', 0],
          ['Events/Ended', 0],
          ['Stream/FPS', 0],
          ['Stream/Restarts', 0],
          ['Stream/Frames Dropped', 0],
        ]),
        reported: new Map(),
        lastScoreSentAt: undefined,
      };
      this.devices.set(name, device);
    }
    return device;
  }

  private setStreamCounters(device: Device, counters: Pick<CameraStats, 'fps' | 'restarts' | 'framesDropped'>): void {
    device.values.set('Stream/FPS', counters.fps);
    device.values.set('Stream/Restarts', counters.restarts);
    device.values.set('Stream/Frames Dropped', counters.framesDropped);
  }

  private pollStats(): void {
    if (!this.born) return;
    let stats: ReturnType<NonNullable<SparkplugNodeOptions['cameraStats']>>;
    try {
      stats = this.options.cameraStats!();
    } catch (error) {
      // Runs on a timer: a failing provider costs one round, never the process.
      this.log.warn(`Sparkplug: camera stats not available (${(error as Error).message})`);
      return;
    }
    for (const [camera, counters] of Object.entries(stats)) {
      const device = this.devices.get(camera);
      if (!device?.alive) continue;
      this.setStreamCounters(device, counters);
      this.publishChanges(device, ['Stream/FPS', 'Stream/Restarts', 'Stream/Frames Dropped']);
    }
  }

  private clientOptions(): IClientOptions {
    const { options } = this;
    const protocolVersion = options.protocolVersion ?? 4;
    const tls = options.tls;
    return {
      clientId: options.clientId,
      username: options.username,
      password: options.password,
      protocolVersion,
      keepalive: options.keepaliveSec ?? MQTT_DEFAULTS.keepaliveSec,
      reconnectPeriod: options.reconnectPeriodMs ?? MQTT_DEFAULTS.reconnectPeriodMs,
      connectTimeout: options.connectTimeoutMs ?? MQTT_DEFAULTS.connectTimeoutMs,
      // Sparkplug sessions never outlive the connection: Clean Session (3.1.1), Clean Start with Session Expiry 0 (5).
      clean: true,
      properties: protocolVersion === 5 ? { sessionExpiryInterval: 0 } : undefined,
      // The births are the resubscription and the catch-up: nothing from an old connection is replayed.
      resubscribe: false,
      queueQoSZero: false,
      will: { topic: this.topics.ndeath, payload: Buffer.alloc(0), qos: 1, retain: false },
      ca: readTlsFile(tls?.ca, 'ca'),
      cert: readTlsFile(tls?.cert, 'cert'),
      key: readTlsFile(tls?.key, 'key'),
      rejectUnauthorized: tls?.rejectUnauthorized ?? true,
    };
  }

  private onConnect(client: MqttClient): void {
    if (this.stopping) return;
    const session = ++this.session;
    this.born = false;
    this.outageLogged = false;
    this.log.info(`Sparkplug: connected to ${this.displayUrl} as ${client.options.clientId}, edge node ${this.options.groupId}/${this.options.edgeNodeId}, bdSeq ${this.bdSeq}`);
    // Commands must be able to reach the node from its NBIRTH on.
    client.subscribe([this.topics.ncmd, this.topics.dcmd], { qos: 1 }, (error) => {
      if (session !== this.session || this.stopping || !client.connected) return;
      if (error) this.log.warn(`Sparkplug: subscribing to ${this.topics.ncmd} failed (${error.message}); rebirth commands will not arrive`);
      this.birth();
    });
  }

  private onClose(): void {
    this.session++;
    if (this.born && !this.stopping && !this.outageLogged) {
      this.log.warn(`Sparkplug: connection to ${this.displayUrl} lost; ${this.retryText()}`);
      this.outageLogged = true;
    }
    this.born = false;
    for (const device of this.devices.values()) device.alive = false;
  }

  private onError(error: Error & { code?: string | number }): void {
    if (this.outageLogged || this.stopping) return;
    const { text, hint } = describeConnectionError(error);
    this.log.warn(`Sparkplug: MQTT broker ${this.displayUrl} ${text}; ${this.retryText()}` + (hint ? ` (${hint})` : ''));
    this.outageLogged = true;
  }

  private retryText(): string {
    const periodMs = this.options.reconnectPeriodMs ?? MQTT_DEFAULTS.reconnectPeriodMs;
    return periodMs > 0 ? `retrying every ${periodMs / 1000} s` : 'not retrying (reconnectPeriodMs is 0)';
  }

  private onMessage(topic: string, payload: Buffer): void {
    if (topic !== this.topics.ncmd) {
      this.log.debug(`Sparkplug: ignoring ${topic}: cameras take no commands`);
      return;
    }
    let command: UPayload;
    try {
      command = loadedCodec().decodePayload(payload);
    } catch (error) {
      this.log.warn(`Sparkplug: ignoring an NCMD that is not a Sparkplug B payload (${(error as Error).message})`);
      return;
    }
    const rebirth = command.metrics?.some(
      (metric) => (metric.name === REBIRTH_METRIC || (metric.name == null && asNumber(metric.alias) === NODE_METRICS.rebirth.alias)) && metric.value === true,
    );
    if (!rebirth || !this.born) return;
    this.log.info('Sparkplug: rebirth requested');
    this.birth();
  }

  /** NBIRTH (seq 0, the bdSeq of this connection), then a DBIRTH per streaming camera. */
  private birth(): void {
    const now = this.clock.now();
    const metric = (definition: MetricDefinition & { alias?: number }, value: MetricValue): UMetric => ({ ...definition, value, timestamp: now });
    this.seq = 0;
    this.publish(this.topics.nbirth, {
      timestamp: now,
      seq: this.nextSeq(),
      metrics: [
        metric({ name: BDSEQ_METRIC, type: 'UInt64' }, this.bdSeq),
        metric(NODE_METRICS.rebirth, false),
        metric(NODE_METRICS.version, LINEWATCH_VERSION),
        metric(NODE_METRICS.cameras, this.options.cameras?.().length ?? this.devices.size),
      ],
    });
    this.born = true;
    for (const device of this.devices.values()) {
      device.alive = false;
      if (device.streaming) this.publishDbirth(device);
    }
  }

  private publishDbirth(device: Device): void {
    const now = this.clock.now();
    const metrics = CAMERA_METRICS.map((definition, index): UMetric => {
      const value = device.values.get(definition.name)!;
      device.reported.set(definition.name, value);
      return { name: definition.name, alias: device.aliasBase + index, type: definition.type, value, timestamp: now };
    });
    this.publish(this.topics.dbirth(device.name), { timestamp: now, seq: this.nextSeq(), metrics });
    device.alive = true;
    device.lastScoreSentAt = undefined;
  }

  private publishDdeath(device: Device): void {
    this.publish(this.topics.ddeath(device.name), { timestamp: this.clock.now(), seq: this.nextSeq() });
    device.alive = false;
  }

  /** DDATA with the metrics (of `names`) that differ from what the host last heard, by alias only; whether one went out. */
  private publishChanges(device: Device, names: readonly CameraMetricName[] = CAMERA_METRICS.map((m) => m.name)): boolean {
    if (!this.born || !device.alive) return false;
    const now = this.clock.now();
    const metrics: UMetric[] = [];
    CAMERA_METRICS.forEach((definition, index) => {
      if (!names.includes(definition.name)) return;
      const value = device.values.get(definition.name)!;
      if (Object.is(value, device.reported.get(definition.name))) return;
      device.reported.set(definition.name, value);
      metrics.push({ alias: device.aliasBase + index, type: definition.type, value, timestamp: now });
    });
    if (metrics.length === 0) return false;
    this.publish(this.topics.ddata(device.name), { timestamp: now, seq: this.nextSeq(), metrics });
    return true;
  }

  private ndeathPayload(): Buffer {
    return encode({ timestamp: this.clock.now(), metrics: [{ name: BDSEQ_METRIC, type: 'UInt64', value: this.bdSeq }] });
  }

  private nextSeq(): number {
    const seq = this.seq;
    this.seq = (this.seq + 1) % SEQ_MODULUS;
    return seq;
  }

  private publish(topic: string, payload: UPayload): void {
    this.client?.publish(topic, encode(payload), { qos: 0, retain: false });
  }
}

function encode(payload: UPayload): Buffer {
  const bytes = loadedCodec().encodePayload(payload);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** protobufjs hands 64-bit fields back as Long objects. */
function asNumber(value: unknown): number {
  if (typeof value === 'number') return value;
  const long = value as { toNumber?: () => number } | null | undefined;
  return typeof long?.toNumber === 'function' ? long.toNumber() : Number.NaN;
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, fallback: T): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((resolve) => (timer = setTimeout(() => resolve(fallback), timeoutMs))),
  ]);
}

export interface SparkplugWiring {
  /** The broker the main connection uses, known once it runs (it may be the embedded one). */
  brokerUrl: () => string;
  cameras: () => readonly string[];
  cameraStats: SparkplugNodeOptions['cameraStats'];
  log: Logger;
  clock?: Clock;
}

/** The edge node of `config.sparkplug`, on the broker and with the credentials and TLS of `config.mqtt`. */
export function sparkplugNodeFromConfig(config: Pick<Config, 'deviceId' | 'dataDir' | 'mqtt' | 'sparkplug'>, wiring: SparkplugWiring): SparkplugNode {
  const { mqtt, sparkplug } = config;
  return new SparkplugNode({
    url: wiring.brokerUrl,
    groupId: sparkplug.groupId,
    edgeNodeId: sparkplug.edgeNodeId ?? config.deviceId,
    clientId: `${mqtt.clientId}-spb`,
    username: mqtt.username,
    password: mqtt.password,
    protocolVersion: mqtt.protocolVersion,
    tls: mqtt.tls,
    keepaliveSec: mqtt.keepaliveS,
    dataDir: config.dataDir,
    cameras: wiring.cameras,
    cameraStats: wiring.cameraStats,
    log: wiring.log,
    clock: wiring.clock,
  });
}
