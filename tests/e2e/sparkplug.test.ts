/**
 * The Sparkplug B 3.0 edge node against a real mosquitto, every payload decoded
 * by Eclipse Tahu's sparkplug-payload: first the node on its own (CONNECT
 * flags seen through a sniffing proxy, births, data, deaths, seq, aliases,
 * rebirth, bdSeq across reconnects), then `linewatch run` on the demo video
 * (real scores and anomaly events, the will after kill -9, bdSeq across restarts).
 */
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { memoryLogger } from '../../src/log.js';
import type { AnomalyEventPayload, CameraStatusPayload } from '../../src/publish/payloads.js';
import { SparkplugNode, type SparkplugNodeOptions } from '../../src/publish/sparkplug.js';
import { REPO, startAgent, writeConfig, type AgentProcess } from '../helpers/agent.js';
import { freePort, isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import {
  aliasProblems,
  decodeSparkplug,
  encodeSparkplug,
  metric,
  recordSparkplug,
  seqProblems,
  startConnectSniffer,
  type ConnectSniffer,
  type SparkplugMessage,
  type SparkplugRecorder,
} from '../helpers/sparkplug.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const noBroker = isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)';
const missing = [noBroker, existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing'].filter(Boolean);
if (missing.length) console.warn(`sparkplug tests skipped: ${missing.join('; ')}`);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function status(state: CameraStatusPayload['state'], extra: Partial<CameraStatusPayload> = {}): CameraStatusPayload {
  return { state, reason: state === 'streaming' ? null : 'test', since: new Date().toISOString(), fps: 0, restarts: 0, framesDropped: 0, lastFrameAt: null, faults: [], ...extra };
}

function event(camera: string, type: 'start' | 'end', score: number): AnomalyEventPayload {
  const at = new Date().toISOString();
  const common = { id: 'e1', camera, at, startedAt: at, score, peakScore: score, peakAt: at, threshold: 0.5, box: null, snapshot: null, frames: 3 };
  return (type === 'start' ? { ...common, type } : { ...common, type, endedAt: at, durationMs: 1000, reason: 'recovered' }) as unknown as AnomalyEventPayload;
}

const bdSeqOf = (bytes: Buffer | string | undefined) => metric(decodeSparkplug(Buffer.from(bytes ?? '')), 'bdSeq')?.value;

describe.skipIf(noBroker !== undefined)('SparkplugNode against mosquitto', () => {
  let broker: MosquittoBroker;
  let sniffer: ConnectSniffer;
  let dir: string;
  let recorder: SparkplugRecorder;
  const nodes: SparkplugNode[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    sniffer = await startConnectSniffer(broker.port);
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-sparkplug-'));
  });
  afterEach(async () => {
    for (const node of nodes.splice(0)) await node.stop();
    await recorder?.close();
    sniffer.connects.length = 0;
  });
  afterAll(async () => {
    await sniffer?.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  function node(options: Partial<SparkplugNodeOptions> & { dataDir: string }): SparkplugNode {
    const created = new SparkplugNode({
      url: sniffer.url,
      groupId: 'plant',
      edgeNodeId: 'edge1',
      clientId: `linewatch-test-${nodes.length}-spb`,
      cameras: () => ['line1', 'line2'],
      reconnectPeriodMs: 200,
      statsIntervalMs: 0,
      log: memoryLogger(),
      ...options,
    });
    nodes.push(created);
    return created;
  }
  const mine = (m: SparkplugMessage) => m.topic.startsWith('spBv1.0/plant/');

  it('connects clean with NDEATH as the will, births, sends data by alias, dies and is reborn on command', async () => {
    recorder = await recordSparkplug(broker.url);
    const dataDir = path.join(dir, 'session');
    const edge = node({ dataDir });
    await edge.start();

    const nbirth = await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/NBIRTH/edge1', 'NBIRTH');
    // What the broker was told at CONNECT: Clean Session, and NDEATH (QoS 1, not retained, bdSeq) as the will.
    const [connect] = sniffer.connects;
    expect(connect).toMatchObject({ protocolVersion: 4, clean: true, clientId: 'linewatch-test-0-spb' });
    expect(connect!.will).toMatchObject({ topic: 'spBv1.0/plant/NDEATH/edge1', qos: 1, retain: false });
    expect(bdSeqOf(connect!.will!.payload)).toBe(0);
    expect(decodeSparkplug(Buffer.from(connect!.will!.payload)).seq).toBeUndefined();

    expect(nbirth.qos).toBe(0);
    expect(nbirth.retain).toBe(false);
    expect(nbirth.payload.seq).toBe(0);
    expect(Math.abs(nbirth.payload.timestamp! - Date.now())).toBeLessThan(5000);
    expect(metric(nbirth.payload, 'bdSeq')).toMatchObject({ type: 'UInt64', value: 0 });
    expect(metric(nbirth.payload, 'Node Control/Rebirth')).toMatchObject({ type: 'Boolean', value: false });
    expect(metric(nbirth.payload, 'Properties/Cameras')).toMatchObject({ value: 2 });
    expect(metric(nbirth.payload, 'Properties/Version')?.type).toBe('String');
    expect(JSON.parse(readFileSync(path.join(dataDir, 'sparkplug.json'), 'utf8'))).toEqual({ bdSeq: 0 });

    // A camera streams: its DBIRTH names every metric with alias, datatype and value.
    edge.cameraStatus('line1', status('streaming', { fps: 9.5, restarts: 1 }));
    edge.cameraStatus('line2', status('streaming'));
    const dbirth = await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DBIRTH/edge1/line1', 'DBIRTH line1');
    await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DBIRTH/edge1/line2', 'DBIRTH line2');
    expect(dbirth.qos).toBe(0);
    expect(dbirth.payload.metrics.map((m) => [m.name, m.type])).toEqual([
      ['Anomaly/Active', 'Boolean'],
      ['Anomaly/Score', 'Double'],
      ['Anomaly/Threshold', 'Double'],
      ['Events/Started', 'UInt64'],
      ['Events/Ended', 'UInt64'],
      ['Stream/FPS', 'Double'],
      ['Stream/Restarts', 'UInt64'],
      ['Stream/Frames Dropped', 'UInt64'],
    ]);
    for (const m of dbirth.payload.metrics) expect(m.alias, m.name).toBeTypeOf('number');
    expect(metric(dbirth.payload, 'Anomaly/Active')?.value).toBe(false);
    expect(metric(dbirth.payload, 'Anomaly/Score')?.value).toBeNull();
    expect(metric(dbirth.payload, 'Stream/FPS')?.value).toBe(9.5);
    expect(metric(dbirth.payload, 'Stream/Restarts')?.value).toBe(1);
    const alias = (name: string) => metric(dbirth.payload, name)!.alias!;

    // Scores: at most one DDATA a second per camera, by alias only.
    const beforeScores = recorder.messages.length;
    edge.score('line1', { at: new Date().toISOString(), score: 0.25, threshold: 0.5 });
    edge.score('line1', { at: new Date().toISOString(), score: 0.3, threshold: 0.5 });
    const scoreData = await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DDATA/edge1/line1', 'score DDATA', 5000, beforeScores);
    expect(scoreData.payload.metrics).toEqual([
      { alias: alias('Anomaly/Score'), type: 'Double', value: 0.25, timestamp: expect.any(Number) },
      { alias: alias('Anomaly/Threshold'), type: 'Double', value: 0.5, timestamp: expect.any(Number) },
    ]);
    await sleep(300);
    expect(recorder.messages.slice(beforeScores).filter((m) => m.type === 'DDATA')).toHaveLength(1);

    // An anomaly state change goes out at once, rate limit or not.
    edge.event(event('line1', 'start', 0.9));
    const started = await recorder.waitFor(
      (m) => m.type === 'DDATA' && m.payload.metrics.some((x) => x.alias === alias('Anomaly/Active') && x.value === true),
      'DDATA anomaly active',
    );
    expect(started.payload.metrics).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ alias: alias('Events/Started'), type: 'UInt64', value: 1 }),
        expect.objectContaining({ alias: alias('Anomaly/Score'), value: 0.9 }),
      ]),
    );
    edge.event(event('line1', 'end', 0.1));
    const ended = await recorder.waitFor(
      (m) => m.type === 'DDATA' && m.payload.metrics.some((x) => x.alias === alias('Anomaly/Active') && x.value === false),
      'DDATA anomaly over',
    );
    expect(ended.payload.metrics).toEqual(expect.arrayContaining([expect.objectContaining({ alias: alias('Events/Ended'), value: 1 })]));

    // A camera that stops streaming dies, and is born again when it streams.
    edge.cameraStatus('line2', status('reconnecting'));
    const ddeath = await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DDEATH/edge1/line2', 'DDEATH line2');
    expect(ddeath.qos).toBe(0);
    expect(ddeath.payload.seq).toBeTypeOf('number');
    expect(ddeath.payload.timestamp).toBeTypeOf('number');
    const afterDeath = recorder.messages.length;
    edge.cameraStatus('line2', status('streaming'));
    await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DBIRTH/edge1/line2', 'DBIRTH line2 again', 5000, afterDeath);

    // Rebirth: false does nothing; true brings a fresh NBIRTH (same bdSeq) and every DBIRTH.
    const ncmd = (value: boolean) =>
      recorder.client.publishAsync(
        'spBv1.0/plant/NCMD/edge1',
        encodeSparkplug({ timestamp: Date.now(), metrics: [{ name: 'Node Control/Rebirth', type: 'Boolean', value }] }),
        { qos: 0 },
      );
    const beforeRebirth = recorder.messages.length;
    await ncmd(false);
    await sleep(300);
    expect(recorder.messages.slice(beforeRebirth).filter((m) => m.type === 'NBIRTH')).toHaveLength(0);
    await ncmd(true);
    const reborn = await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH after rebirth', 5000, beforeRebirth);
    expect(reborn.payload.seq).toBe(0);
    expect(metric(reborn.payload, 'bdSeq')?.value).toBe(0);
    await recorder.waitForCount((m) => m.type === 'DBIRTH' && recorder.messages.indexOf(m) > recorder.messages.indexOf(reborn), 2, 'both DBIRTHs after rebirth');
    expect(sniffer.connects).toHaveLength(1);

    // A clean stop publishes NDEATH itself (the broker drops the will on DISCONNECT).
    await edge.stop();
    const ndeath = await recorder.waitFor((m) => m.type === 'NDEATH', 'NDEATH');
    expect(ndeath.qos).toBe(1);
    expect(ndeath.retain).toBe(false);
    expect(metric(ndeath.payload, 'bdSeq')).toMatchObject({ type: 'UInt64', value: 0 });
    await sleep(300);
    expect(recorder.messages.filter((m) => m.type === 'NDEATH')).toHaveLength(1);

    const session = recorder.messages.filter(mine);
    expect(seqProblems(session)).toEqual([]);
    expect(aliasProblems(session)).toEqual([]);
  });

  it('takes a new bdSeq on every CONNECT, after restarts and reconnects alike, persisted atomically', async () => {
    recorder = await recordSparkplug(broker.url);
    const dataDir = path.join(dir, 'bdseq');
    const first = node({ dataDir });
    await first.start();
    await recorder.waitFor((m) => m.type === 'NBIRTH', 'first NBIRTH');
    await first.stop();

    const second = node({ dataDir });
    await second.start();
    const nbirth = await recorder.waitFor((m) => m.type === 'NBIRTH' && metric(m.payload, 'bdSeq')?.value === 1, 'NBIRTH with bdSeq 1');
    expect(nbirth.payload.seq).toBe(0);
    expect(JSON.parse(readFileSync(path.join(dataDir, 'sparkplug.json'), 'utf8'))).toEqual({ bdSeq: 1 });

    // The connection drops without a DISCONNECT: the broker sends the will, and the reconnect brings a new bdSeq.
    const beforeCut = recorder.messages.length;
    sniffer.cutAll();
    const will = await recorder.waitFor((m) => m.type === 'NDEATH', 'the will', 5000, beforeCut);
    expect(metric(will.payload, 'bdSeq')?.value).toBe(1);
    expect(will.qos).toBe(1);
    expect(will.retain).toBe(false);
    const reborn = await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH after the reconnect', 10_000, beforeCut);
    const wills = sniffer.connects.map((connect) => bdSeqOf(connect.will?.payload));
    expect(wills).toEqual(wills.map((_, index) => index)); // 0, 1, 2, ... one per CONNECT, in order
    expect(metric(reborn.payload, 'bdSeq')?.value).toBe(wills.at(-1));
    expect(JSON.parse(readFileSync(path.join(dataDir, 'sparkplug.json'), 'utf8'))).toEqual({ bdSeq: wills.at(-1) });
    expect(existsSync(path.join(dataDir, 'sparkplug.json.tmp'))).toBe(false);
    await second.stop();

    // bdSeq is 0..255: after 255 comes 0.
    writeFileSync(path.join(dataDir, 'sparkplug.json'), JSON.stringify({ bdSeq: 255 }));
    const before = recorder.messages.length;
    const third = node({ dataDir });
    await third.start();
    const wrapped = await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH after 255', 5000, before);
    expect(metric(wrapped.payload, 'bdSeq')?.value).toBe(0);
  });

  it('MQTT 5: Clean Start with Session Expiry 0', async () => {
    recorder = await recordSparkplug(broker.url);
    const edge = node({ dataDir: path.join(dir, 'v5'), protocolVersion: 5 });
    await edge.start();
    await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH over MQTT 5');
    const [connect] = sniffer.connects;
    expect(connect).toMatchObject({ protocolVersion: 5, clean: true });
    expect(connect!.properties?.sessionExpiryInterval ?? 0).toBe(0);
    expect(connect!.will).toMatchObject({ topic: 'spBv1.0/plant/NDEATH/edge1', qos: 1, retain: false });
    expect(bdSeqOf(connect!.will!.payload)).toBe(0);
  });

  it('counts seq 0..255 over every message of the node and wraps to 0', async () => {
    recorder = await recordSparkplug(broker.url);
    const edge = node({ dataDir: path.join(dir, 'seq'), scoreMinIntervalMs: 0 });
    await edge.start();
    await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH');
    edge.cameraStatus('line1', status('streaming'));
    for (let i = 0; i < 300; i++) edge.score('line1', { at: new Date().toISOString(), score: i / 1000, threshold: 0.5 });
    const data = await recorder.waitForCount((m) => m.type === 'DDATA', 300, '300 DDATA');
    // NBIRTH 0, DBIRTH 1, then 2..255, 0, 1, ...
    expect(data.map((m) => m.payload.seq)).toEqual(Array.from({ length: 300 }, (_, i) => (i + 2) % 256));
    expect(seqProblems(recorder.messages.filter(mine))).toEqual([]);
    expect(aliasProblems(recorder.messages.filter(mine))).toEqual([]);
  });

  it('starts without waiting for an unreachable broker and births once it is up', async () => {
    const port = await freePort();
    const edge = node({ dataDir: path.join(dir, 'late'), url: `mqtt://127.0.0.1:${port}` });
    const startedAt = Date.now();
    await edge.start();
    expect(Date.now() - startedAt).toBeLessThan(1000);
    edge.cameraStatus('line1', status('streaming'));
    await sleep(500);
    const late = await startMosquitto({ port });
    try {
      recorder = await recordSparkplug(late.url);
      // Whichever comes first, subscription or birth: a rebirth request brings the births to this subscriber.
      await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH', 3000).catch(async () => {
        await recorder.client.publishAsync(
          'spBv1.0/plant/NCMD/edge1',
          encodeSparkplug({ timestamp: Date.now(), metrics: [{ name: 'Node Control/Rebirth', type: 'Boolean', value: true }] }),
        );
        return recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH after rebirth');
      });
      await recorder.waitFor((m) => m.topic === 'spBv1.0/plant/DBIRTH/edge1/line1', 'DBIRTH line1');
      await edge.stop();
    } finally {
      await late.stop();
    }
  });
});

describe.skipIf(missing.length > 0)('linewatch run as a Sparkplug edge node', () => {
  let dir: string;
  let broker: MosquittoBroker;
  const agents: AgentProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-sparkplug-agent-'));
    broker = await startMosquitto();
  });
  afterAll(async () => {
    for (const agent of agents) agent.child.kill('SIGKILL');
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('births the node and the camera, sends scores and anomaly state, dies by will on kill -9, keeps bdSeq across restarts', async () => {
    const config = writeConfig(path.join(dir, 'agent.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: false },
      sparkplug: { enabled: true, groupId: 'factory' },
      defaults: { model: MODEL, fps: 10 },
      cameras: [{ name: 'line1', url: VIDEO, loop: true, realtime: true, stallTimeoutS: 3 }],
    });
    const recorder = await recordSparkplug(broker.url);
    const linewatch = await recordMqtt(broker.url, 'linewatch/testdev/#');
    try {
      const first = startAgent(['run', '--config', config]);
      agents.push(first);
      const nbirth = await recorder.waitFor((m) => m.topic === 'spBv1.0/factory/NBIRTH/testdev', 'NBIRTH', 30_000);
      expect(metric(nbirth.payload, 'bdSeq')?.value).toBe(0);
      expect(metric(nbirth.payload, 'Properties/Cameras')?.value).toBe(1);
      const dbirth = await recorder.waitFor((m) => m.topic === 'spBv1.0/factory/DBIRTH/testdev/line1', 'DBIRTH line1', 30_000);
      const alias = (name: string) => metric(dbirth.payload, name)!.alias!;

      // Scores reach Sparkplug although this camera does not publish them on <base>/line1/score.
      await recorder.waitFor((m) => m.type === 'DDATA' && m.payload.metrics.some((x) => x.alias === alias('Anomaly/Score')), 'score DDATA', 20_000);
      // The demo video's anomaly (a hand takes a bottle) opens an event: anomaly state true at once.
      const active = await recorder.waitFor(
        (m) => m.type === 'DDATA' && m.payload.metrics.some((x) => x.alias === alias('Anomaly/Active') && x.value === true),
        'anomaly active',
        60_000,
      );
      expect(active.payload.metrics.find((x) => x.alias === alias('Events/Started'))?.value).toBeGreaterThanOrEqual(1);
      expect(active.payload.metrics.find((x) => x.alias === alias('Anomaly/Threshold'))?.value ?? 0).toBeTypeOf('number');
      await linewatch.waitFor((m) => m.topic === 'linewatch/testdev/line1/events' && JSON.parse(m.payload).type === 'start', 5000);
      await sleep(3000);

      // Score-only DDATA of the camera at most once a second (payload timestamps are wall-clock ms).
      const scoreOnly = recorder.messages.filter(
        (m) => m.topic === 'spBv1.0/factory/DDATA/testdev/line1' && m.payload.metrics.some((x) => x.alias === alias('Anomaly/Score')) && !m.payload.metrics.some((x) => x.alias === alias('Anomaly/Active')),
      );
      expect(scoreOnly.length).toBeGreaterThan(2);
      for (let i = 1; i < scoreOnly.length; i++) {
        expect(scoreOnly[i]!.payload.timestamp! - scoreOnly[i - 1]!.payload.timestamp!).toBeGreaterThanOrEqual(950);
      }
      expect(linewatch.messages.filter((m) => m.topic.endsWith('/score'))).toEqual([]);

      // kill -9: the broker delivers the will, NDEATH with this connection's bdSeq, QoS 1, not retained.
      const beforeKill = recorder.messages.length;
      first.child.kill('SIGKILL');
      await first.exited();
      const will = await recorder.waitFor((m) => m.topic === 'spBv1.0/factory/NDEATH/testdev', 'NDEATH will', 10_000, beforeKill);
      expect(will.qos).toBe(1);
      expect(will.retain).toBe(false);
      expect(will.payload.seq).toBeUndefined();
      expect(metric(will.payload, 'bdSeq')).toMatchObject({ type: 'UInt64', value: 0 });
      // Nothing Sparkplug is retained: a new subscriber gets nothing.
      const late = await recordSparkplug(broker.url);
      await sleep(500);
      expect(late.messages).toEqual([]);
      await late.close();

      // The next run connects with the next bdSeq, read back from <dataDir>/sparkplug.json.
      const beforeSecond = recorder.messages.length;
      const second = startAgent(['run', '--config', config]);
      agents.push(second);
      const reborn = await recorder.waitFor((m) => m.type === 'NBIRTH', 'NBIRTH of the second run', 30_000, beforeSecond);
      expect(metric(reborn.payload, 'bdSeq')?.value).toBe(1);
      expect(JSON.parse(readFileSync(path.join(dir, 'data', 'sparkplug.json'), 'utf8'))).toEqual({ bdSeq: 1 });
      await recorder.waitFor((m) => m.type === 'DBIRTH', 'DBIRTH of the second run', 30_000, beforeSecond);

      // SIGTERM: a clean stop, with NDEATH published by the agent itself.
      second.child.kill('SIGTERM');
      expect(await second.exited()).toBe(0);
      const ndeath = await recorder.waitFor((m) => m.type === 'NDEATH', 'NDEATH of the second run', 10_000, beforeSecond);
      expect(metric(ndeath.payload, 'bdSeq')?.value).toBe(1);

      const ours = recorder.messages.filter((m) => m.topic.startsWith('spBv1.0/factory/'));
      expect(seqProblems(ours)).toEqual([]);
      expect(aliasProblems(ours)).toEqual([]);
      payloadValidator('linewatch/testdev').expectAllValid(linewatch.messages);
    } finally {
      await recorder.close();
      await linewatch.close();
    }
  }, 180_000);
});
