import { createConnection, createServer, type Server, type Socket } from 'node:net';
import mqtt, { type MqttClient } from 'mqtt';
import mqttPacket, { type IConnectPacket } from 'mqtt-packet';
import sparkplugPayload from 'sparkplug-payload';
import { freePort } from './mosquitto.js';

const codec = sparkplugPayload.get('spBv1.0')!;

/** A metric as decoded by Eclipse Tahu's sparkplug-payload, with 64-bit values turned into numbers. */
export interface DecodedMetric {
  name?: string;
  alias?: number;
  type: string;
  value: unknown;
  timestamp?: number;
}

export interface DecodedPayload {
  timestamp?: number;
  seq?: number;
  metrics: DecodedMetric[];
}

export interface SparkplugMessage {
  topic: string;
  /** NBIRTH, DDATA, ... */
  type: string;
  /** The device id for D* messages. */
  device?: string;
  qos: number;
  retain: boolean;
  payload: DecodedPayload;
}

/** protobufjs gives uint64 fields as Long objects. */
function num(value: unknown): unknown {
  if (value !== null && typeof value === 'object' && typeof (value as { toNumber?: unknown }).toNumber === 'function') {
    return (value as { toNumber(): number }).toNumber();
  }
  return value;
}

/** Decodes with sparkplug-payload (the Eclipse Tahu codec), independent of the agent's encoder. */
export function decodeSparkplug(bytes: Uint8Array): DecodedPayload {
  const raw = codec.decodePayload(bytes);
  return {
    timestamp: raw.timestamp == null ? undefined : (num(raw.timestamp) as number),
    seq: raw.seq == null ? undefined : (num(raw.seq) as number),
    metrics: (raw.metrics ?? []).map((metric) => ({
      ...(metric.name == null ? {} : { name: metric.name }),
      ...(metric.alias == null ? {} : { alias: num(metric.alias) as number }),
      type: metric.type,
      value: num(metric.value),
      ...(metric.timestamp == null ? {} : { timestamp: num(metric.timestamp) as number }),
    })),
  };
}

export function encodeSparkplug(payload: Parameters<typeof codec.encodePayload>[0]): Buffer {
  return Buffer.from(codec.encodePayload(payload));
}

export function metric(payload: DecodedPayload, name: string): DecodedMetric | undefined {
  return payload.metrics.find((m) => m.name === name);
}

/** A real subscriber to `spBv1.0/#` that decodes every message. */
export interface SparkplugRecorder {
  readonly client: MqttClient;
  readonly messages: SparkplugMessage[];
  waitFor(match: (message: SparkplugMessage) => boolean, what: string, timeoutMs?: number, from?: number): Promise<SparkplugMessage>;
  waitForCount(match: (message: SparkplugMessage) => boolean, count: number, what: string, timeoutMs?: number): Promise<SparkplugMessage[]>;
  close(): Promise<void>;
}

export async function recordSparkplug(url: string, filter = 'spBv1.0/#'): Promise<SparkplugRecorder> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 100, connectTimeout: 5000 });
  const messages: SparkplugMessage[] = [];
  const waiters = new Set<() => void>();
  client.on('message', (topic, payload, packet) => {
    const [, , type, , device] = topic.split('/');
    let decoded: DecodedPayload;
    try {
      decoded = decodeSparkplug(payload);
    } catch (error) {
      decoded = { metrics: [{ name: '(undecodable)', type: 'String', value: (error as Error).message }] };
    }
    messages.push({ topic, type: type ?? '', device, qos: packet.qos, retain: packet.retain, payload: decoded });
    for (const wake of waiters) wake();
  });
  await client.subscribeAsync(filter, { qos: 1 });
  const waitForCount = (match: (message: SparkplugMessage) => boolean, count: number, what: string, timeoutMs = 10_000, from = 0) =>
    new Promise<SparkplugMessage[]>((resolve, reject) => {
      const check = (): boolean => {
        const found = messages.slice(from).filter(match);
        if (found.length < count) return false;
        waiters.delete(check);
        clearTimeout(timer);
        resolve(found);
        return true;
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        const seen = messages.map((m) => `${m.topic} seq=${m.payload.seq} ${JSON.stringify(m.payload.metrics).slice(0, 160)}`).join('\n  ');
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received:\n  ${seen}`));
      }, timeoutMs);
      if (!check()) waiters.add(check);
    });
  return {
    client,
    messages,
    waitForCount: (match, count, what, timeoutMs) => waitForCount(match, count, what, timeoutMs),
    waitFor: async (match, what, timeoutMs, from) => (await waitForCount(match, 1, what, timeoutMs, from))[0]!,
    close: async () => {
      await client.endAsync(true);
    },
  };
}

/**
 * A TCP proxy in front of a broker that keeps the CONNECT packet of every
 * connection, parsed by mqtt-packet: what the broker saw of clean session,
 * session expiry and the will, which a subscriber cannot observe.
 */
export interface ConnectSniffer {
  readonly url: string;
  readonly connects: IConnectPacket[];
  /** Cuts every proxied connection without a DISCONNECT (what the broker sees of a crash or a network loss). */
  cutAll(): void;
  close(): Promise<void>;
}

export async function startConnectSniffer(brokerPort: number): Promise<ConnectSniffer> {
  const port = await freePort();
  const connects: IConnectPacket[] = [];
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: '127.0.0.1', port: brokerPort });
    sockets.add(client).add(upstream);
    const parser = mqttPacket.parser();
    let sniffing = true;
    parser.on('packet', (packet) => {
      if (sniffing && packet.cmd === 'connect') connects.push(packet as IConnectPacket);
      // Later packets of an MQTT 5 session need the negotiated version; only the CONNECT matters here.
      sniffing = false;
    });
    parser.on('error', () => {
      sniffing = false;
    });
    client.on('data', (chunk: Buffer) => {
      if (sniffing) parser.parse(chunk);
    });
    client.pipe(upstream).pipe(client);
    const closeBoth = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', closeBoth).on('close', closeBoth);
    upstream.on('error', closeBoth).on('close', closeBoth);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `mqtt://127.0.0.1:${port}`,
    connects,
    cutAll: () => {
      for (const socket of sockets) socket.destroy();
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Sparkplug's seq rule over one edge node's messages in arrival order: 0 on
 * NBIRTH, +1 (mod 256) on every other message but NDEATH, which has none.
 * Returns the problems found ([] when it holds).
 */
export function seqProblems(messages: readonly SparkplugMessage[]): string[] {
  const problems: string[] = [];
  let expected: number | undefined;
  for (const message of messages) {
    // Commands come from hosts, not from the edge node: they have no place in its sequence.
    if (message.type === 'NCMD' || message.type === 'DCMD') continue;
    const { seq } = message.payload;
    if (message.type === 'NDEATH') {
      if (seq !== undefined) problems.push(`NDEATH carries seq ${seq}`);
      expected = undefined;
      continue;
    }
    if (message.type === 'NBIRTH') {
      if (seq !== 0) problems.push(`NBIRTH with seq ${seq}`);
      expected = 1;
      continue;
    }
    if (expected === undefined) {
      problems.push(`${message.topic} (seq ${seq}) before any NBIRTH`);
      continue;
    }
    if (seq !== expected) problems.push(`${message.topic}: seq ${seq}, expected ${expected}`);
    expected = ((seq ?? expected) + 1) % 256;
  }
  return problems;
}

/**
 * Aliases: unique across the node's NBIRTH and all DBIRTHs of one birth, every
 * BIRTH metric named, every DATA metric by alias only and known from its BIRTH.
 */
export function aliasProblems(messages: readonly SparkplugMessage[]): string[] {
  const problems: string[] = [];
  let births = new Map<number, string>();
  let deviceAliases = new Map<string, Set<number>>();
  for (const message of messages) {
    const key = message.device ?? '(node)';
    if (message.type === 'NBIRTH') {
      births = new Map();
      deviceAliases = new Map();
    }
    if (message.type === 'NBIRTH' || message.type === 'DBIRTH') {
      const mine = new Set<number>();
      for (const m of message.payload.metrics) {
        if (m.name === undefined) problems.push(`${message.topic}: a metric without a name`);
        if (m.alias === undefined) continue;
        const owner = births.get(m.alias);
        if (owner !== undefined && !(owner === `${key} ${m.name}` && message.type === 'DBIRTH')) {
          problems.push(`${message.topic}: alias ${m.alias} (${m.name}) already used by ${owner}`);
        }
        births.set(m.alias, `${key} ${m.name}`);
        mine.add(m.alias);
      }
      deviceAliases.set(key, mine);
    }
    if (message.type === 'NDATA' || message.type === 'DDATA') {
      for (const m of message.payload.metrics) {
        if (m.name !== undefined) problems.push(`${message.topic}: DATA metric with a name (${m.name})`);
        if (m.alias === undefined) problems.push(`${message.topic}: DATA metric without an alias`);
        else if (!deviceAliases.get(key)?.has(m.alias)) problems.push(`${message.topic}: alias ${m.alias} not in this device's BIRTH`);
      }
    }
  }
  return problems;
}
