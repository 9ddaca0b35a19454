import { randomUUID } from 'node:crypto';
import { appendFileSync, copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import type { MqttClient } from 'mqtt';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { MqttPublisher, type MqttPublisherOptions, type PublisherLogger } from '../../src/publish/mqtt.js';
import { OpenEventJournal } from '../../src/publish/open-events.js';
import type { AnomalyEventPayload, AnomalyEventType, CameraStatusPayload } from '../../src/publish/payloads.js';
import {
  createTestCertificates,
  freePort,
  isMosquittoInstalled,
  recordMqtt,
  startMosquitto,
  type MosquittoBroker,
  type MqttRecorder,
  type ReceivedMessage,
} from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import { countCalls, hasStrace, syscallsDuring } from '../helpers/strace.js';

// Strict, except that `required` in the event's if/then names properties declared one level up.
const ajv = new Ajv2020({ strict: true, strictRequired: false, allErrors: true });
const loadSchema = (name: string) =>
  ajv.compile(JSON.parse(readFileSync(new URL(`../../schemas/${name}.schema.json`, import.meta.url), 'utf8')));
const validateEvent = loadSchema('event');
const validateCameraStatus = loadSchema('camera-status');
const validateScore = loadSchema('score');
const validateStats = loadSchema('stats');

function expectValid(validate: ReturnType<typeof loadSchema>, payload: unknown): void {
  const valid = validate(payload);
  expect(validate.errors ?? [], JSON.stringify(payload)).toEqual([]);
  expect(valid).toBe(true);
}

function makeEvent(type: AnomalyEventType, overrides: Partial<AnomalyEventPayload> = {}): AnomalyEventPayload {
  const now = new Date().toISOString();
  return {
    type,
    id: randomUUID(),
    camera: 'line1',
    at: now,
    startedAt: now,
    score: 0.31,
    peakScore: 0.42,
    meanScore: 0.3,
    threshold: 0.2,
    frames: 4,
    durationMs: 400,
    peakAt: now,
    box: { x: 10, y: 20, width: 64, height: 48 },
    snapshot: null,
    ...(type === 'end' ? { endedAt: now, reason: 'recovered' as const } : {}),
    ...overrides,
  };
}

function makeStatus(state: CameraStatusPayload['state'] = 'streaming'): CameraStatusPayload {
  const now = new Date().toISOString();
  return { state, reason: null, since: now, fps: 10, restarts: 0, framesDropped: 2, lastFrameAt: now, faults: [] };
}

const logs: string[] = [];
const logger: PublisherLogger = { info: (line) => logs.push(line), warn: (line) => logs.push(line) };

const openPublishers = new Set<MqttPublisher>();
const tempDirs: string[] = [];
function newDataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-publish-'));
  tempDirs.push(dir);
  return dir;
}
function newPublisher(options: Partial<MqttPublisherOptions> & { url: string }): MqttPublisher {
  const publisher = new MqttPublisher({
    deviceId: 'dev1',
    dataDir: newDataDir(),
    reconnectPeriodMs: 200,
    closeTimeoutMs: 1000,
    logger,
    ...options,
  });
  openPublishers.add(publisher);
  return publisher;
}
async function closePublisher(publisher: MqttPublisher): Promise<void> {
  openPublishers.delete(publisher);
  await publisher.close();
}

/** For state that has no event to wait on (a counter); polls briefly. */
async function until(condition: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The fdatasync and rename calls this process makes while `work` runs (strace). */
async function syncCalls(work: () => void): Promise<{ fdatasync: number; rename: number }> {
  const lines = await syscallsDuring(['fdatasync', 'rename'], work);
  return { fdatasync: countCalls(lines, 'fdatasync'), rename: countCalls(lines, 'rename') };
}

const onTopic = (topic: string) => (message: ReceivedMessage) => message.topic === topic;
const eventIds = (messages: ReceivedMessage[]) => messages.map((m) => (JSON.parse(m.payload) as AnomalyEventPayload).id);

const recorders = new Set<MqttRecorder>();
async function record(url: string, topics: string | string[], options = {}): Promise<MqttRecorder> {
  const recorder = await recordMqtt(url, topics, options);
  recorders.add(recorder);
  return recorder;
}

const payloads = payloadValidator();

afterEach(async () => {
  for (const publisher of openPublishers) await publisher.close();
  openPublishers.clear();
  // Whatever a test received, and whatever it checked, every payload must match its schema.
  const received = [...recorders].flatMap((recorder) => recorder.messages);
  for (const recorder of recorders) await recorder.close();
  recorders.clear();
  logs.length = 0;
  payloads.expectAllValid(received);
});
afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

describe.skipIf(!isMosquittoInstalled())('MqttPublisher against mosquitto', () => {
  let broker: MosquittoBroker;
  beforeAll(async () => {
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.stop();
  });

  it('publishes retained availability and camera status, QoS 1 events, scores and stats that match the schemas', async () => {
    const publisher = newPublisher({
      url: broker.url,
      scoreMaxRateHz: 2,
      statsIntervalMs: 100,
      statsProvider: () => ({
        cameras: { line1: { state: 'streaming', fps: 10, frames: 120, framesDropped: 2, restarts: 0, events: 1 } },
      }),
    });
    await publisher.connect();
    expect(publisher.connected).toBe(true);
    expect(logs.join('\n')).toContain(`MQTT connected to ${broker.url} as linewatch-dev1`);
    publisher.publishCameraStatus('line1', makeStatus());
    await until(() => publisher.metrics().published >= 2, 'online and camera status to be acknowledged');

    const recorder = await record(broker.url, 'linewatch/dev1/#');
    const online = await recorder.waitFor(onTopic('linewatch/dev1/status'));
    expect(online).toMatchObject({ payload: 'online', retain: true });
    const status = await recorder.waitFor(onTopic('linewatch/dev1/line1/status'));
    expect(status.retain).toBe(true);
    expectValid(validateCameraStatus, JSON.parse(status.payload));

    const start = makeEvent('start');
    const lifecycle = [start, makeEvent('update', { id: start.id }), makeEvent('end', { id: start.id })];
    for (const event of lifecycle) publisher.publishEvent(event);
    expect(publisher.publishScore('line1', { at: new Date().toISOString(), score: 0.12, threshold: 0.2 })).toBe(true);
    // Rate-limited to 2 Hz: the next score right away is not sent.
    expect(publisher.publishScore('line1', { at: new Date().toISOString(), score: 0.13, threshold: 0.2 })).toBe(false);

    const events = await recorder.waitForCount(onTopic('linewatch/dev1/line1/events'), 3);
    expect(events.map((m) => JSON.parse(m.payload))).toEqual(lifecycle);
    for (const message of events) {
      expect(message.qos).toBe(1);
      expect(message.retain).toBe(false);
      expectValid(validateEvent, JSON.parse(message.payload));
    }
    const score = await recorder.waitFor(onTopic('linewatch/dev1/line1/score'));
    expect(score.qos).toBe(0);
    expectValid(validateScore, JSON.parse(score.payload));
    const stats = await recorder.waitFor(onTopic('linewatch/dev1/stats'));
    const statsPayload = JSON.parse(stats.payload);
    expectValid(validateStats, statsPayload);
    expect(statsPayload.cameras.line1.frames).toBe(120);
    expect(statsPayload.rssBytes).toBeGreaterThan(0);

    await until(() => publisher.metrics().outboxSize === 0, 'the outbox to drain');
    expect(statSync(publisher.outboxFile).size).toBe(0);
    expect(recorder.messages.filter(onTopic('linewatch/dev1/line1/score'))).toHaveLength(1);

    // A clean close marks the agent and its cameras offline, retained.
    await closePublisher(publisher);
    const after = await record(broker.url, 'linewatch/dev1/+/status');
    const cameraOffline = await after.waitFor(onTopic('linewatch/dev1/line1/status'));
    expect(JSON.parse(cameraOffline.payload)).toMatchObject({ state: 'offline', reason: 'agent stopped' });
    expectValid(validateCameraStatus, JSON.parse(cameraOffline.payload));
    const availability = await record(broker.url, 'linewatch/dev1/status');
    expect(await availability.waitFor(onTopic('linewatch/dev1/status'))).toMatchObject({ payload: 'offline', retain: true });
  });

  it('the schemas reject payloads that break the contract', () => {
    const start = makeEvent('start');
    expect(validateEvent(start)).toBe(true);
    expect(validateEvent({ ...start, extra: 1 })).toBe(false);
    expect(validateEvent({ ...start, reason: 'recovered' })).toBe(false);
    const { reason: _reason, ...endWithoutReason } = makeEvent('end');
    expect(validateEvent(endWithoutReason)).toBe(false);
    expect(validateEvent({ ...start, id: 'not-a-uuid' })).toBe(false);
    expect(validateEvent({ ...start, box: { x: 1, y: 2, width: 3 } })).toBe(false);
    expect(validateCameraStatus({ ...makeStatus(), state: 'asleep' })).toBe(false);
    expect(validateScore({ at: new Date().toISOString(), score: 1 })).toBe(false);
  });

  it('the broker publishes the retained offline last will when the connection dies', async () => {
    // No reconnect, so the will stays the last word.
    const publisher = newPublisher({ url: broker.url, deviceId: 'lwt', reconnectPeriodMs: 0 });
    const recorder = await record(broker.url, 'linewatch/lwt/status');
    await publisher.connect();
    await recorder.waitFor((m) => m.payload === 'online');
    // The process dying is simulated at the very edge: its socket is destroyed without DISCONNECT.
    (publisher as unknown as { client: MqttClient }).client.stream.destroy();
    await recorder.waitFor((m) => m.payload === 'offline');
    const later = await record(broker.url, 'linewatch/lwt/status');
    expect(await later.waitFor(onTopic('linewatch/lwt/status'))).toMatchObject({ payload: 'offline', retain: true });
    expect(publisher.connected).toBe(false);
  });

  it('re-publishes online and the latest camera status after a broker restart', async () => {
    const publisher = newPublisher({ url: broker.url, deviceId: 'restart' });
    await publisher.connect();
    publisher.publishCameraStatus('cam', makeStatus('streaming'));
    publisher.publishCameraStatus('cam', { ...makeStatus('reconnecting'), reason: 'ffmpeg exited (code 1)' });
    await until(() => publisher.metrics().published >= 3, 'statuses to be acknowledged');

    const reconnected = new Promise<void>((resolve) =>
      publisher.onConnectionChange((connected) => connected && resolve()),
    );
    await broker.restart(); // persistence off: every retained message is gone
    await reconnected;
    expect(publisher.metrics().reconnects).toBe(1);

    const recorder = await record(broker.url, 'linewatch/restart/#');
    expect(await recorder.waitFor(onTopic('linewatch/restart/status'))).toMatchObject({ payload: 'online', retain: true });
    const status = await recorder.waitFor(onTopic('linewatch/restart/cam/status'));
    expect(status.retain).toBe(true);
    expect(JSON.parse(status.payload)).toMatchObject({ state: 'reconnecting', reason: 'ffmpeg exited (code 1)' });
    expect(logs.join('\n')).toContain(`MQTT connection to ${broker.url} lost; retrying every 0.2 s`);
  });

  it('replays the outbox a previous run left, in order', async () => {
    const dataDir = newDataDir();
    const deadUrl = `mqtt://127.0.0.1:${await freePort()}`;
    const first = newPublisher({ url: deadUrl, deviceId: 'replay', dataDir });
    await first.connect();
    // One whole event, so that the next run has no open event to end.
    const start = makeEvent('start');
    const events = [start, makeEvent('update', { id: start.id }), makeEvent('end', { id: start.id })];
    for (const event of events) first.publishEvent(event);
    const closeStarted = Date.now();
    await closePublisher(first);
    expect(Date.now() - closeStarted).toBeLessThan(1500);
    // A crash in the middle of a write leaves a torn line behind.
    appendFileSync(join(dataDir, 'mqtt-outbox.jsonl'), '{"seq":4,"topic":"linewatch/replay/line1/ev');

    const recorder = await record(broker.url, 'linewatch/replay/+/events');
    const second = newPublisher({ url: broker.url, deviceId: 'replay', dataDir });
    expect(second.metrics().outboxSize).toBe(3);
    expect(logs.join('\n')).toContain('3 event(s) from a previous run will be delivered on connect');
    expect(logs.join('\n')).toContain('skipped 1 unreadable line(s)');
    await second.connect();
    const received = await recorder.waitForCount(() => true, 3);
    expect(eventIds(received)).toEqual(events.map((event) => event.id));
    await until(() => second.metrics().outboxSize === 0, 'the outbox to drain');
  });

  it('bounds the outbox: the oldest events are dropped and counted', async () => {
    const dataDir = newDataDir();
    const deadUrl = `mqtt://127.0.0.1:${await freePort()}`;
    const first = newPublisher({ url: deadUrl, deviceId: 'bounded', dataDir, outbox: { maxEvents: 3 } });
    await first.connect();
    // Ends: events the next run does not have to end for the first one.
    const events = Array.from({ length: 5 }, () => makeEvent('end'));
    for (const event of events) first.publishEvent(event);
    expect(first.metrics()).toMatchObject({ connected: false, outboxSize: 3, dropped: 2 });
    expect(logs.filter((line) => line.includes('MQTT outbox full'))).toHaveLength(1);
    await closePublisher(first);

    const recorder = await record(broker.url, 'linewatch/bounded/+/events');
    const second = newPublisher({ url: broker.url, deviceId: 'bounded', dataDir });
    await second.connect();
    await until(() => second.metrics().outboxSize === 0, 'the outbox to drain');
    const received = await recorder.waitForCount(() => true, 3);
    expect(eventIds(received)).toEqual(events.slice(2).map((event) => event.id));
  });

  it('counts dropped events on /metrics as linewatch_mqtt_events_dropped_total', async () => {
    const deadUrl = `mqtt://127.0.0.1:${await freePort()}`;
    const publisher = newPublisher({ url: deadUrl, deviceId: 'drops', outbox: { maxEvents: 2 } });
    await publisher.connect();
    const metrics = new AgentMetrics({ processMetrics: false });
    const sync = () => {
      const counters = publisher.metrics();
      metrics.mqtt(counters);
    };
    sync();
    expect(await metrics.render()).toMatch(/^linewatch_mqtt_events_dropped_total 0$/m);
    for (let index = 0; index < 5; index++) publisher.publishEvent(makeEvent('start'));
    sync();
    expect(publisher.metrics().dropped).toBe(3);
    expect(await metrics.render()).toMatch(/^linewatch_mqtt_events_dropped_total 3$/m);
    // The publisher reports a running total; the counter must not add it up twice.
    sync();
    publisher.publishEvent(makeEvent('start'));
    sync();
    expect(await metrics.render()).toMatch(/^linewatch_mqtt_events_dropped_total 4$/m);
    expect(await metrics.render()).toMatch(/^linewatch_mqtt_outbox_durable 1$/m);
  });

  it('ends, with reason interrupted, the events a crashed run left open, before any new event', async () => {
    const dataDir = newDataDir();
    const recorder = await record(broker.url, 'linewatch/crash/+/events', { clientId: 'crash-subscriber', clean: false });
    const first = newPublisher({ url: broker.url, deviceId: 'crash', dataDir });
    await first.connect();
    const open = makeEvent('start', { camera: 'line1', score: -0.2, meanScore: -0.1 });
    const openUpdate = makeEvent('update', {
      id: open.id,
      startedAt: open.startedAt,
      at: new Date(Date.parse(open.startedAt) + 1500).toISOString(),
      durationMs: 1500,
      frames: 16,
      peakScore: 3.3,
    });
    const closed = makeEvent('start', { camera: 'line2' });
    const otherCamera = makeEvent('start', { camera: 'line3' });
    for (const event of [open, closed, openUpdate, makeEvent('end', { id: closed.id, camera: 'line2' }), otherCamera]) {
      first.publishEvent(event);
    }
    await recorder.waitForCount(() => true, 5);
    await until(() => first.metrics().outboxSize === 0, 'the outbox to drain');
    // A crash: no close(), no end for the open events; the process is simply gone.
    (first as unknown as { client: MqttClient }).client.end(true);
    openPublishers.delete(first);

    const second = newPublisher({ url: broker.url, deviceId: 'crash', dataDir });
    expect(second.metrics().outboxSize).toBe(2);
    expect(logs.join('\n')).toContain('2 event(s) were still open when the previous run stopped');
    await second.connect();
    const next = makeEvent('start', { camera: 'line1' });
    second.publishEvent(next);
    await recorder.waitForCount(() => true, 8);
    const received = recorder.messages.slice(5).map((m) => JSON.parse(m.payload) as AnomalyEventPayload);
    expect(received.map((event) => [event.type, event.id, event.reason])).toEqual([
      ['end', open.id, 'interrupted'],
      ['end', otherCamera.id, 'interrupted'],
      ['start', next.id, undefined],
    ]);
    // Figures as last known (the update); the event is taken to end at its last message.
    expect(received[0]).toEqual({ ...openUpdate, type: 'end', endedAt: openUpdate.at, reason: 'interrupted' });
    expect(received[1]).toEqual({ ...otherCamera, type: 'end', endedAt: otherCamera.at, reason: 'interrupted' });
    await until(() => second.metrics().outboxSize === 0, 'the outbox to drain');

    // Ended once is enough: a third run has nothing left to end.
    (second as unknown as { client: MqttClient }).client.end(true);
    openPublishers.delete(second);
    const third = newPublisher({ url: broker.url, deviceId: 'crash', dataDir });
    expect(third.metrics().outboxSize).toBe(1); // only `next`, still open
    await third.connect();
    await recorder.waitForCount(() => true, 9);
    expect(JSON.parse(recorder.messages[8]!.payload)).toMatchObject({ type: 'end', id: next.id, reason: 'interrupted' });
  });

  it('ends the events an earlier version left open in its whole-array file, and removes that file', async () => {
    const dataDir = newDataDir();
    const open = makeEvent('update', { camera: 'line1', frames: 9 });
    const legacy = join(dataDir, 'mqtt-open-events.json');
    writeFileSync(legacy, JSON.stringify([open]) + '\n');
    const recorder = await record(broker.url, 'linewatch/upgrade/+/events');
    const publisher = newPublisher({ url: broker.url, deviceId: 'upgrade', dataDir });
    expect(existsSync(legacy)).toBe(false);
    await publisher.connect();
    await recorder.waitForCount(() => true, 1);
    expect(JSON.parse(recorder.messages[0]!.payload)).toEqual({ ...open, type: 'end', endedAt: open.at, reason: 'interrupted' });
    // Its end is in the journal now, so a crash from here on does not end it a second time.
    expect(new OpenEventJournal(join(dataDir, 'mqtt-open-events.jsonl')).leftovers).toEqual([]);
  });

  it('does not end an event twice when the crash came between queueing its end and updating the journal', async () => {
    const dataDir = newDataDir();
    const deadUrl = `mqtt://127.0.0.1:${await freePort()}`;
    const first = newPublisher({ url: deadUrl, deviceId: 'crash2', dataDir });
    await first.connect();
    const start = makeEvent('start');
    first.publishEvent(start);
    const journal = join(dataDir, 'mqtt-open-events.jsonl');
    expect(existsSync(journal)).toBe(true);
    copyFileSync(journal, `${journal}.saved`);
    const end = makeEvent('end', { id: start.id });
    first.publishEvent(end);
    (first as unknown as { client: MqttClient }).client.end(true);
    openPublishers.delete(first);
    // The journal as it was just before the end was queued.
    copyFileSync(`${journal}.saved`, journal);

    const recorder = await record(broker.url, 'linewatch/crash2/+/events');
    const second = newPublisher({ url: broker.url, deviceId: 'crash2', dataDir });
    expect(second.metrics().outboxSize).toBe(2);
    await second.connect();
    await recorder.waitForCount(() => true, 2);
    await until(() => second.metrics().outboxSize === 0, 'the outbox to drain');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(recorder.messages.map((m) => JSON.parse(m.payload))).toEqual([start, end]);
  });

  it('reports the time each batch of events took to reach the disk, on /metrics as linewatch_event_write_seconds', async () => {
    const metrics = new AgentMetrics({ processMetrics: false });
    const writes: number[] = [];
    const publisher = newPublisher({
      url: broker.url,
      onEventWrite: (seconds) => {
        writes.push(seconds);
        metrics.eventWrite(seconds);
      },
    });
    await publisher.connect();
    const began = performance.now();
    publisher.batchWrites(() => {
      for (const camera of ['cam1', 'cam2', 'cam3']) publisher.publishEvent(makeEvent('start', { camera }));
    });
    publisher.publishEvent(makeEvent('start', { camera: 'cam4' }));
    const elapsedS = (performance.now() - began) / 1000;
    // One write for the burst, one for the single event; each took part of the time measured around both.
    expect(writes).toHaveLength(2);
    for (const seconds of writes) expect(seconds).toBeGreaterThan(0);
    expect(writes[0]! + writes[1]!).toBeLessThanOrEqual(elapsedS);
    const text = await metrics.render();
    expect(text).toMatch(/^linewatch_event_write_seconds_count 2$/m);
    expect(text).toMatch(/^linewatch_event_write_seconds_bucket\{le="\+Inf"\} 2$/m);
  });

  it.skipIf(!hasStrace)('writes the events of a batchWrites burst with one journal append and one outbox fdatasync, durable and in order', async () => {
    const dataDir = newDataDir();
    const publisher = newPublisher({ url: broker.url, dataDir });
    await publisher.connect();
    const recorder = await record(broker.url, 'linewatch/dev1/+/events');
    const earlier = ['cam1', 'cam2'].map((camera) => makeEvent('start', { camera }));
    for (const event of earlier) publisher.publishEvent(event);
    const burst = [
      ...['cam3', 'cam4', 'cam5', 'cam6', 'cam7', 'cam8'].map((camera) => makeEvent('start', { camera })),
      ...earlier.map((start) => makeEvent('end', { id: start.id, camera: start.camera })),
    ];
    const journal = join(dataDir, 'mqtt-open-events.jsonl');

    const batched = await syncCalls(() =>
      publisher.batchWrites(() => {
        for (const event of burst) publisher.publishEvent(event);
        // A camera name that cannot be a topic fails its own call, not the burst.
        expect(() => publisher.publishEvent(makeEvent('start', { camera: 'bad/name' }))).toThrow(UsageError);
      }),
    );
    // Durable when batchWrites returns: the starts in the journal, the ended events out of it.
    const open = new OpenEventJournal(journal).leftovers.map((event) => event.camera).sort();
    expect(open).toEqual(['cam3', 'cam4', 'cam5', 'cam6', 'cam7', 'cam8']);
    // Journal with the starts, the outbox, journal without the ended events: appended to, no new file, no rename.
    expect(batched).toEqual({ fdatasync: 3, rename: 0 });

    const oneByOne = burst.slice(0, 6).map((start) => makeEvent('end', { id: start.id, camera: start.camera }));
    const unbatched = await syncCalls(() => {
      for (const event of oneByOne) publisher.publishEvent(event);
    });
    expect(unbatched).toEqual({ fdatasync: 12, rename: 0 });

    const all = [...earlier, ...burst, ...oneByOne];
    await recorder.waitForCount(() => true, all.length);
    expect(recorder.messages.map((m) => (JSON.parse(m.payload) as AnomalyEventPayload).id + (JSON.parse(m.payload) as AnomalyEventPayload).type)).toEqual(
      all.map((event) => event.id + event.type),
    );
  });

  it('contains a failing stats provider: one warning, no crash, the rest keeps publishing', async () => {
    const publisher = newPublisher({
      url: broker.url,
      deviceId: 'stats-fail',
      statsProvider: () => {
        throw new Error('camera table not ready');
      },
    });
    await publisher.connect();
    expect(() => publisher.publishStats()).not.toThrow();
    expect(logs.join('\n')).toContain('the stats provider failed (camera table not ready)');
    const recorder = await record(broker.url, 'linewatch/stats-fail/+/events');
    publisher.publishEvent(makeEvent('start'));
    await recorder.waitFor(() => true);
  });

  it('refuses unusable settings with a hint', () => {
    const expectUsageError = (create: () => unknown, message: string, hint: string): void => {
      try {
        create();
        expect.unreachable(`expected a UsageError about ${message}`);
      } catch (error) {
        expect(error).toBeInstanceOf(UsageError);
        expect((error as UsageError).message).toContain(message);
        expect((error as UsageError).hint).toContain(hint);
      }
    };
    expectUsageError(() => newPublisher({ url: broker.url, deviceId: 'a/b' }), 'deviceId "a/b"', 'no /');
    expectUsageError(() => newPublisher({ url: broker.url, baseTopic: 'plant/+/line' }), 'plant/+/line', 'without + or #');
    expectUsageError(() => newPublisher({ url: 'http://127.0.0.1:1883' }), 'http:// is not an MQTT protocol', 'mqtt://');
    const missing = join(tmpdir(), 'linewatch-no-such-ca.pem');
    expectUsageError(
      () => newPublisher({ url: 'mqtts://127.0.0.1:8883', tls: { ca: missing } }),
      missing,
      'mqtt.tls.ca',
    );
    const publisher = newPublisher({ url: broker.url, deviceId: 'names' });
    expectUsageError(() => publisher.publishEvent(makeEvent('start', { camera: 'line/1' })), 'camera name "line/1"', 'no /');
  });
});

describe.skipIf(!isMosquittoInstalled())('MqttPublisher with the broker down', () => {
  it('keeps running while the broker is down at start and delivers every event once it is up, in order', async () => {
    // Persistence lets the subscriber's session (and what is queued for it) outlive broker restarts,
    // so no event can slip past it while it reconnects.
    const broker = await startMosquitto({ persistence: true });
    try {
      const recorder = await record(broker.url, 'linewatch/down/+/events', {
        clientId: 'durable-subscriber',
        clean: false,
      });
      await broker.stop();

      const publisher = newPublisher({ url: broker.url, deviceId: 'down' });
      await publisher.connect(); // resolves after the first failed attempt
      expect(publisher.connected).toBe(false);
      expect(logs.join('\n')).toContain(`MQTT broker ${broker.url} unreachable (ECONNREFUSED); retrying every 0.2 s`);
      const whileDown = Array.from({ length: 5 }, (_, index) => makeEvent(index === 0 ? 'start' : 'update'));
      for (const event of whileDown) publisher.publishEvent(event);
      expect(publisher.metrics().outboxSize).toBe(5);

      await broker.start();
      const firstBatch = await recorder.waitForCount(() => true, 5, 10_000);
      expect(eventIds(firstBatch)).toEqual(whileDown.map((event) => event.id));
      await until(() => publisher.metrics().outboxSize === 0, 'the outbox to drain');

      // The broker goes away under a connected publisher (some events possibly in flight), and comes back.
      const lost = new Promise<void>((resolve) => publisher.onConnectionChange((up) => !up && resolve()));
      const beforeOutage = [makeEvent('update'), makeEvent('update')];
      for (const event of beforeOutage) publisher.publishEvent(event);
      await broker.stop();
      await lost;
      const duringOutage = [makeEvent('update'), makeEvent('update'), makeEvent('end')];
      for (const event of duringOutage) publisher.publishEvent(event);
      await broker.start();
      const expected = [...whileDown, ...beforeOutage, ...duringOutage].map((event) => event.id);
      await recorder.waitUntil(
        (all) => new Set(eventIds([...all])).size >= expected.length,
        `${expected.length} distinct events`,
        10_000,
      );
      // At least once: a duplicate is tolerated, a loss or reordering not.
      expect([...new Set(eventIds(recorder.messages))]).toEqual(expected);
      await until(() => publisher.metrics().outboxSize === 0, 'the outbox to drain');
      expect(publisher.metrics().dropped).toBe(0);
    } finally {
      for (const recorder of recorders) await recorder.close();
      recorders.clear();
      await broker.stop();
    }
  });
});

describe.skipIf(!isMosquittoInstalled())('MqttPublisher with username and password', () => {
  let broker: MosquittoBroker;
  beforeAll(async () => {
    broker = await startMosquitto({ users: { agent: 's3cret', viewer: 'v1ew' } });
  });
  afterAll(async () => {
    await broker?.stop();
  });

  it('connects with the right credentials (MQTT 5)', async () => {
    const recorder = await record(broker.url, 'linewatch/auth/#', { username: 'viewer', password: 'v1ew' });
    const publisher = newPublisher({
      url: broker.url,
      deviceId: 'auth',
      username: 'agent',
      password: 's3cret',
      protocolVersion: 5,
    });
    await publisher.connect();
    expect(publisher.connected).toBe(true);
    await recorder.waitFor((m) => m.topic === 'linewatch/auth/status' && m.payload === 'online');
    const event = makeEvent('start', { camera: 'gate' });
    publisher.publishEvent(event);
    const received = await recorder.waitFor(onTopic('linewatch/auth/gate/events'));
    expectValid(validateEvent, JSON.parse(received.payload));
  });

  it('keeps running and says why when the credentials are wrong', async () => {
    const publisher = newPublisher({
      url: `mqtt://agent:wrong@127.0.0.1:${broker.port}`,
      deviceId: 'auth-bad',
    });
    await publisher.connect();
    expect(publisher.connected).toBe(false);
    const log = logs.join('\n');
    // The whole userinfo is masked: a user name can be half a credential.
    expect(log).toContain(`MQTT broker mqtt://***@127.0.0.1:${broker.port} refused the connection`);
    expect(log).toContain('check mqtt.username and mqtt.password');
    expect(log).not.toContain('wrong'); // the password never reaches the log
    publisher.publishEvent(makeEvent('start'));
    expect(publisher.metrics()).toMatchObject({ connected: false, outboxSize: 1 });
  });
});

describe.skipIf(!isMosquittoInstalled())('MqttPublisher over TLS with a client certificate', () => {
  it('verifies the broker with the CA file and authenticates with its certificate and key', async () => {
    const certificates = createTestCertificates(newDataDir());
    const broker = await startMosquitto({
      tls: { caFile: certificates.caFile, certFile: certificates.serverCertFile, keyFile: certificates.serverKeyFile },
    });
    try {
      const recorder = await record(broker.url, 'linewatch/tls/#', {
        ca: readFileSync(certificates.caFile),
        cert: readFileSync(certificates.clientCertFile),
        key: readFileSync(certificates.clientKeyFile),
      });
      const publisher = newPublisher({
        url: broker.url,
        deviceId: 'tls',
        tls: { ca: certificates.caFile, cert: certificates.clientCertFile, key: certificates.clientKeyFile },
      });
      await publisher.connect();
      expect(publisher.connected).toBe(true);
      await recorder.waitFor((m) => m.topic === 'linewatch/tls/status' && m.payload === 'online');

      // Without the client certificate the broker refuses the handshake; the agent keeps running.
      const anonymous = newPublisher({ url: broker.url, deviceId: 'tls-anon', tls: { ca: certificates.caFile } });
      await anonymous.connect();
      expect(anonymous.connected).toBe(false);
      expect(logs.join('\n')).toContain(
        `MQTT broker ${broker.url} TLS handshake failed (ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED`,
      );
      expect(logs.join('\n')).toContain('check mqtt.tls.ca, mqtt.tls.cert and mqtt.tls.key');
    } finally {
      for (const recorder of recorders) await recorder.close();
      recorders.clear();
      await broker.stop();
    }
  });
});
