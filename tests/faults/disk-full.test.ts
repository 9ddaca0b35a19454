/**
 * Fault: the data folder fills up (or turns read-only) under the MQTT outbox.
 * Real mosquitto, a real small tmpfs as dataDir, a filler file to fill it; and
 * the real agent started on a full data folder.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MqttPublisher, type MqttPublisherOptions } from '../../src/publish/mqtt.js';
import type { AnomalyEventPayload, AnomalyEventType } from '../../src/publish/payloads.js';
import { REPO, startAgent, writeConfig, type AgentProcess } from '../helpers/agent.js';
import { checkEventLog } from '../helpers/event-log.js';
import { isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import { mountTmpfs, tmpfsUnavailable, type Tmpfs } from '../helpers/tmpfs.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const cannotMount = tmpfsUnavailable();
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  cannotMount,
].filter(Boolean);
if (missing.length) console.warn(`disk-full fault tests skipped: ${missing.join('; ')}`);

const payloads = payloadValidator();
const logs: { level: 'info' | 'warn'; line: string }[] = [];
const logger = { info: (line: string) => logs.push({ level: 'info', line }), warn: (line: string) => logs.push({ level: 'warn', line }) };
const warnings = () => logs.filter((entry) => entry.level === 'warn').map((entry) => entry.line);

function makeEvent(type: AnomalyEventType, id: string, index: number): AnomalyEventPayload {
  const startedAt = new Date(Date.now() - 1000).toISOString();
  const at = new Date(Date.now() + index).toISOString();
  return {
    type,
    id,
    camera: 'line1',
    at,
    startedAt,
    score: -0.5 + index / 10,
    peakScore: 2.5,
    meanScore: 0.4,
    threshold: 1.2,
    frames: 5 + index,
    durationMs: Date.parse(at) - Date.parse(startedAt),
    peakAt: startedAt,
    box: null,
    snapshot: null,
    ...(type === 'end' ? { endedAt: at, reason: 'recovered' as const } : {}),
  };
}

async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; log:\n${logs.map((l) => l.line).join('\n')}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `promise`, or a failure naming the exit code and output if the agent exits first. */
function whileRunning<T>(agent: AgentProcess, promise: Promise<T>): Promise<T> {
  const exited = agent.exited().then((code) => {
    throw new Error(`the agent exited (code ${code}) while the test waited; output:\n${agent.output().slice(-3000)}`);
  });
  // Once the wait is over, the agent's own (expected) exit must not surface as an unhandled rejection.
  exited.catch(() => undefined);
  return Promise.race([promise, exited]);
}

describe.skipIf(missing.length > 0)('MQTT outbox on a data folder that fills up (real tmpfs, real mosquitto)', () => {
  let broker: MosquittoBroker;
  let disk: Tmpfs;
  let recorder: MqttRecorder | undefined;
  const publishers = new Set<MqttPublisher>();
  // Uncaught exceptions (the old failure: ENOSPC thrown inside the PUBACK callback) fail the test through this.
  const uncaught: Error[] = [];
  const onUncaught = (error: Error) => uncaught.push(error);

  beforeAll(async () => {
    broker = await startMosquitto({ persistence: true });
    process.on('uncaughtException', onUncaught);
  });
  afterEach(async () => {
    for (const publisher of publishers) await publisher.close();
    publishers.clear();
    await recorder?.close();
    recorder = undefined;
    disk?.unmount();
    logs.length = 0;
  });
  afterAll(async () => {
    process.off('uncaughtException', onUncaught);
    await broker?.stop();
  });

  function newPublisher(dataDir: string, options: Partial<MqttPublisherOptions> = {}): MqttPublisher {
    const publisher = new MqttPublisher({
      url: broker.url,
      deviceId: 'full',
      dataDir,
      reconnectPeriodMs: 200,
      closeTimeoutMs: 1000,
      diskRetryMs: 200,
      logger,
      ...options,
    });
    publishers.add(publisher);
    return publisher;
  }

  it('keeps delivering with a full disk, warns once, and is durable again once space is back', async () => {
    disk = mountTmpfs('512k');
    const dataDir = path.join(disk.dir, 'data');
    recorder = await recordMqtt(broker.url, 'linewatch/full/#', { clientId: 'disk-full-subscriber', clean: false });
    const publisher = newPublisher(dataDir);
    await publisher.connect();
    const outbox = path.join(dataDir, 'mqtt-outbox.jsonl');
    const id = randomUUID();
    let index = 0;
    const sent: AnomalyEventPayload[] = [];
    const send = (type: AnomalyEventType) => {
      const event = makeEvent(type, id, index++);
      sent.push(event);
      publisher.publishEvent(event);
    };

    send('start');
    await until(() => publisher.metrics().outboxSize === 0, 'the start to be acknowledged');

    disk.fill();
    // Broker up: a burst is acknowledged while it is being queued, so the outbox's
    // truncations and compactions run inside PUBACK callbacks, on a full disk.
    for (let i = 0; i < 1500; i++) send('update');
    await until(() => publisher.metrics().outboxSize === 0, 'the burst to be acknowledged on a full disk', 20_000);
    expect(uncaught).toEqual([]);
    expect(warnings().filter((line) => line.includes('ENOSPC'))).toHaveLength(1);
    expect(publisher.metrics().durable).toBe(false);
    expect(publisher.metrics().notDurableReason).toMatch(/ENOSPC/);

    // Broker down: the events wait in memory.
    await broker.stop();
    await until(() => !publisher.connected, 'the connection loss');
    for (let i = 0; i < 30; i++) send('update');
    expect(publisher.metrics().outboxSize).toBe(30);
    await sleep(1000); // five retries at 200 ms on a disk that is still full
    await broker.start();
    await until(() => publisher.metrics().outboxSize === 0, 'the events queued in memory to be delivered', 15_000);
    expect(uncaught).toEqual([]);
    expect(warnings().filter((line) => line.includes('not durable'))).toHaveLength(1);
    expect(warnings().filter((line) => line.includes('ENOSPC'))).toHaveLength(1);

    // Space comes back while events are pending: they are written to the file again.
    await broker.stop();
    await until(() => !publisher.connected, 'the connection loss');
    for (let i = 0; i < 3; i++) send('update');
    expect(publisher.metrics().durable).toBe(false);
    disk.free();
    await until(() => publisher.metrics().durable, 'the outbox to be durable again');
    expect(logs.filter((entry) => entry.level === 'info' && entry.line.includes('durable again'))).toHaveLength(1);
    const onDisk = readFileSync(outbox, 'utf8').trim().split('\n').map((line) => JSON.parse(JSON.parse(line).payload).at);
    expect(onDisk).toEqual(sent.slice(-3).map((event) => event.at));
    // And new events go to disk before they are published, as before the episode.
    send('end');
    expect(readFileSync(outbox, 'utf8')).toContain(sent.at(-1)!.at);

    await broker.start();
    await until(() => publisher.metrics().outboxSize === 0, 'the rest to be delivered', 15_000);
    expect(statSync(outbox).size).toBe(0);
    await recorder.waitUntil(
      (all) => checkEventLog(all).byId.get(id)?.length === sent.length,
      `all ${sent.length} event messages`,
      10_000,
    );
    const log = checkEventLog(recorder.messages, { requireEnds: true });
    expect(log.problems).toEqual([]);
    expect(log.byId.get(id)!.map((event) => event.at)).toEqual(sent.map((event) => event.at));
    payloads.expectAllValid(recorder.messages);
    expect(uncaught).toEqual([]);
  }, 60_000);

  it('opens on a full disk and on a read-only one without throwing, delivering what the last run left', async () => {
    disk = mountTmpfs('256k');
    const dataDir = path.join(disk.dir, 'data');
    // A previous run left three undelivered events behind (the broker was down).
    const first = newPublisher(dataDir, { url: 'mqtt://127.0.0.1:1', reconnectPeriodMs: 0 });
    await first.connect();
    const id = randomUUID();
    const left = [makeEvent('start', id, 0), makeEvent('update', id, 1), makeEvent('end', id, 2)];
    for (const event of left) first.publishEvent(event);
    await first.close();
    publishers.delete(first);
    disk.fill();

    recorder = await recordMqtt(broker.url, 'linewatch/full/#');
    const second = newPublisher(dataDir);
    expect(second.metrics()).toMatchObject({ outboxSize: 3, durable: false });
    expect(second.metrics().notDurableReason).toMatch(/ENOSPC/);
    await second.connect();
    await until(() => second.metrics().outboxSize === 0, 'the replay');
    await second.close();
    publishers.delete(second);
    disk.free();
    expect(existsSync(path.join(dataDir, 'mqtt-outbox.jsonl'))).toBe(true);

    // Read-only: the same, with EROFS; a new event still goes out.
    disk.readOnly(true);
    const third = newPublisher(dataDir);
    expect(third.metrics().durable).toBe(false);
    expect(third.metrics().notDurableReason).toMatch(/EROFS/);
    await third.connect();
    const later = makeEvent('start', randomUUID(), 3);
    third.publishEvent(later);
    await recorder.waitFor((m) => m.payload.includes(later.id), 5000);
    disk.readOnly(false);
    await until(() => third.metrics().durable, 'durable once the disk is writable again');
    payloads.expectAllValid(recorder.messages);
    expect(checkEventLog(recorder.messages).problems).toEqual([]);
    expect(uncaught).toEqual([]);
  }, 60_000);
});

const agentMissing = [...missing, existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing'].filter(Boolean);

describe.skipIf(agentMissing.length > 0)('linewatch run on a full data folder (real tmpfs)', () => {
  let broker: MosquittoBroker;
  let disk: Tmpfs | undefined;
  let agent: AgentProcess | undefined;
  let configDir: string;
  beforeAll(async () => {
    configDir = mkdtempSync(path.join(tmpdir(), 'linewatch-fulldisk-'));
    broker = await startMosquitto();
  });
  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await agent?.exited();
    disk?.unmount();
    await broker?.stop();
    rmSync(configDir, { recursive: true, force: true });
  });

  it('starts, publishes and recovers durability once space is freed, instead of exiting 2', async () => {
    disk = mountTmpfs('256k');
    const dataDir = path.join(disk.dir, 'data');
    mkdirSync(dataDir);
    // The run before died with two events undelivered (the broker was down), then the disk filled up.
    const previous = new MqttPublisher({ url: 'mqtt://127.0.0.1:1', deviceId: 'fulldisk', dataDir, reconnectPeriodMs: 0, logger });
    await previous.connect();
    const id = randomUUID();
    const left = [makeEvent('start', id, 0), makeEvent('end', id, 1)];
    for (const event of left) previous.publishEvent(event);
    await previous.close();
    disk.fill();
    const recorder = await recordMqtt(broker.url, 'linewatch/fulldisk/#');
    const config = writeConfig(path.join(configDir, 'agent.yaml'), {
      deviceId: 'fulldisk',
      dataDir,
      mqtt: { url: broker.url },
      health: { enabled: false },
      defaults: { model: MODEL, fps: 10 },
      cameras: [{ name: 'line1', url: VIDEO, loop: true, realtime: true }],
    });
    agent = startAgent(['run', '--config', config]);
    try {
      await whileRunning(agent, recorder.waitFor((m) => m.topic === 'linewatch/fulldisk/status' && m.payload === 'online', 30_000));
      await recorder.waitFor((m) => m.topic === 'linewatch/fulldisk/line1/status' && JSON.parse(m.payload).state === 'streaming', 30_000);
      await recorder.waitForCount((m) => m.topic === 'linewatch/fulldisk/line1/events' && m.payload.includes(id), 2, 10_000);
      await agent.waitForOutput(/not durable/, 10_000);
      // The video's anomaly: a new event goes out while the outbox is memory-only.
      await recorder.waitFor(
        (m) => m.topic === 'linewatch/fulldisk/line1/events' && JSON.parse(m.payload).type === 'start' && JSON.parse(m.payload).id !== id,
        30_000,
      );
      expect(agent.child.exitCode, agent.output()).toBeNull();
      expect(agent.output().match(/not durable/g)).toHaveLength(1);

      disk.free();
      await agent.waitForOutput(/durable again/, 15_000);
      agent.child.kill('SIGTERM');
      expect(await agent.exited(), agent.output()).toBe(0);
      await recorder.waitFor((m) => m.topic === 'linewatch/fulldisk/status' && m.payload === 'offline', 5000);
      payloads.expectAllValid(recorder.messages);
      expect(checkEventLog(recorder.messages, { requireEnds: true }).problems).toEqual([]);
    } finally {
      await recorder.close();
    }
  }, 120_000);
});
