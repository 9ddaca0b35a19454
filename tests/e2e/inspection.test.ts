/**
 * Triggered inspection end to end: `linewatch run` with the demo model and video, a real
 * mosquitto, commands over MQTT and HTTP, replies recorded by a real subscriber.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { addInspectRoute } from '../../src/agent/api-routes.js';
import { INSPECTION_LIMITS } from '../../src/agent/inspection.js';
import { ApiRouter } from '../../src/health/api.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { startHealthServer, type AgentSnapshot, type HealthServer } from '../../src/health/server.js';
import { startAgent, writeConfig, type AgentProcess, DEMO_MODEL, DEMO_VIDEO, demoAgentMissing } from '../helpers/agent.js';
import { freePort, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder, type ReceivedMessage } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';

const VIDEO = DEMO_VIDEO;
const MODEL = DEMO_MODEL;
const missing = demoAgentMissing('inspection tests');

const BASE = 'linewatch/testdev';

interface HttpReply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  json: Record<string, unknown>;
}

function http(url: string, method: string, body?: string | Buffer): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: body === undefined ? {} : { 'Content-Type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        const isJson = String(res.headers['content-type']).startsWith('application/json');
        resolve({ status: res.statusCode!, headers: res.headers, json: isJson ? (JSON.parse(text) as Record<string, unknown>) : { text } });
      });
    });
    // The server may close a connection whose body it refused before all of it was sent.
    req.on('error', reject);
    req.end(body);
  });
}

const json = (message: ReceivedMessage) => JSON.parse(message.payload) as Record<string, unknown>;
const replyTo = (camera: string, id: string | null) => (message: ReceivedMessage) => message.topic === `${BASE}/${camera}/inspections` && json(message).id === id;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function metric(healthUrl: string, name: string, camera: string): Promise<number> {
  const text = await (await fetch(`${healthUrl}/metrics`)).text();
  const match = new RegExp(`^${name}\\{camera="${camera}"\\} (\\S+)$`, 'm').exec(text);
  return Number(match?.[1] ?? NaN);
}

describe.skipIf(missing.length > 0)('triggered inspection against a running agent', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let recorder: MqttRecorder;
  let agent: AgentProcess;
  let healthUrl: string;

  const command = (camera: string, payload: string) => recorder.client.publishAsync(`${BASE}/${camera}/inspect`, payload, { qos: 1 });

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-inspection-'));
    broker = await startMosquitto();
    const healthPort = await freePort();
    // Nothing listens here: the camera stays down and its inspections must time out.
    const deadPort = await freePort();
    healthUrl = `http://127.0.0.1:${healthPort}`;
    // Not the commands topic: some commands here are malformed on purpose, and they are not the agent's to validate.
    recorder = await recordMqtt(broker.url, [`${BASE}/status`, `${BASE}/+/status`, `${BASE}/+/events`, `${BASE}/+/inspections`]);
    const file = { loop: true, realtime: true };
    const config = writeConfig(path.join(dir, 'linewatch.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port: healthPort },
      defaults: { model: MODEL, fps: 10 },
      cameras: [
        { name: 'line1', url: VIDEO, mode: 'triggered', ...file },
        { name: 'line2', url: VIDEO, ...file },
        { name: 'dead', url: `rtsp://127.0.0.1:${deadPort}/nothing`, mode: 'triggered', socketTimeoutS: 1, backoff: { initialS: 1, maxS: 2 } },
      ],
    });
    agent = startAgent(['run', '--config', config]);
    for (const camera of ['line1', 'line2']) {
      await recorder.waitFor((m) => m.topic === `${BASE}/${camera}/status` && json(m).state === 'streaming', 60_000);
    }
  }, 90_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await recorder?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('answers 100 triggers with distinct ids with 100 schema-valid results, one each, scoring only the frames asked for', async () => {
    // The camera streams but scores nothing while nobody asks.
    const scoredBefore = await metric(healthUrl, 'linewatch_frames_scored_total', 'line1');
    const framesBefore = await metric(healthUrl, 'linewatch_frames_in_total', 'line1');
    await sleep(1500);
    expect(await metric(healthUrl, 'linewatch_frames_in_total', 'line1')).toBeGreaterThanOrEqual(framesBefore + 10);
    expect(await metric(healthUrl, 'linewatch_frames_scored_total', 'line1')).toBe(scoredBefore);

    const ids = Array.from({ length: 100 }, (_, i) => `SN-${String(i).padStart(4, '0')}-${Math.random().toString(36).slice(2, 8)}`);
    for (const id of ids) {
      await command('line1', JSON.stringify({ id }));
      await recorder.waitFor(replyTo('line1', id), 5000);
      // Random gaps: commands land anywhere in the frame period, as parts arrive on a line.
      await sleep(Math.random() * 60);
    }
    await sleep(500);
    const replies = recorder.messages.filter((m) => m.topic === `${BASE}/line1/inspections`);
    const results = replies.map(json);
    expect(results.map((r) => r.id).sort()).toEqual([...ids].sort());
    for (const [index, result] of results.entries()) {
      expect(replies[index]!.qos).toBe(1);
      expect(result).toMatchObject({ camera: 'line1', result: expect.stringMatching(/^(pass|fail)$/), threshold: expect.any(Number), score: expect.any(Number) });
      expect(result.latencyMs as number).toBeGreaterThanOrEqual(0);
      expect(Date.parse(result.capturedAt as string)).toBeGreaterThanOrEqual(Date.parse(result.requestedAt as string));
    }
    payloadValidator(BASE).expectAllValid(replies);

    // Each scored frame answered a command: the only frames scored were the ones asked for.
    const capturedFrames = new Set(results.map((r) => r.capturedAt)).size;
    expect(await metric(healthUrl, 'linewatch_frames_scored_total', 'line1')).toBe(scoredBefore + capturedFrames);
    // The video's anomalies pass in front of line1 too, but a triggered camera raises no events.
    expect(recorder.messages.filter((m) => m.topic === `${BASE}/line1/events`)).toEqual([]);
  }, 120_000);

  it('answers a continuous camera with its next scored frame', async () => {
    for (const id of ['C-1', 'C-2', 'C-3']) {
      await command('line2', JSON.stringify({ id }));
      const reply = json(await recorder.waitFor(replyTo('line2', id), 5000));
      expect(reply).toMatchObject({ id, camera: 'line2', result: expect.stringMatching(/^(pass|fail)$/) });
    }
  });

  it('answers malformed commands, unknown cameras and a flood with errors, and keeps running', async () => {
    const errorsOf = (camera: string) => recorder.messages.filter((m) => m.topic === `${BASE}/${camera}/inspections` && 'error' in json(m));
    const before = errorsOf('line1').length;
    await command('line1', 'inspect now');
    await command('line1', JSON.stringify({ serial: 'X-1' }));
    await command('line1', JSON.stringify({ id: 'x'.repeat(INSPECTION_LIMITS.idMaxLength + 1) }));
    await recorder.waitUntil((all) => errorsOf('line1').length >= before + 3, 'three invalid-command replies');
    const invalid = errorsOf('line1').slice(before).map(json);
    expect(invalid.map((e) => [e.id, e.error])).toEqual([
      [null, 'invalid-command'],
      [null, 'invalid-command'],
      [null, 'invalid-command'],
    ]);
    expect(invalid.map((e) => e.message)).toEqual([expect.stringMatching(/not JSON/), expect.stringMatching(/no id/), expect.stringMatching(/1 to 128 characters/)]);
    expect(errorsOf('line1').slice(before).every((m) => m.qos === 0)).toBe(true);

    await command('nocam', JSON.stringify({ id: 'N-1' }));
    expect(json(await recorder.waitFor(replyTo('nocam', 'N-1'), 5000))).toMatchObject({ error: 'unknown-camera', message: expect.stringContaining('line1, line2, dead') });

    // A flood: 40 commands at once. At most maxPending are accepted (and answered by one frame), the rest are busy.
    await sleep(2000); // the error-reply allowance refills
    const flood = Array.from({ length: 40 }, (_, i) => `F-${i}`);
    await Promise.all(flood.map((id) => command('line1', JSON.stringify({ id }))));
    await sleep(1500);
    const floodReplies = recorder.messages.filter((m) => m.topic === `${BASE}/line1/inspections` && flood.includes(json(m).id as string)).map(json);
    const perId = new Map<string, number>();
    for (const reply of floodReplies) perId.set(reply.id as string, (perId.get(reply.id as string) ?? 0) + 1);
    expect([...perId.values()].every((count) => count === 1)).toBe(true);
    const answered = floodReplies.filter((r) => 'result' in r);
    const busy = floodReplies.filter((r) => r.error === 'busy');
    expect(answered.length).toBeGreaterThanOrEqual(1);
    expect(answered.length + busy.length).toBe(floodReplies.length);
    // Never more than maxPending waited at once: no frame answered more than that many.
    const perFrame = new Map<unknown, number>();
    for (const result of answered) perFrame.set(result.capturedAt, (perFrame.get(result.capturedAt) ?? 0) + 1);
    expect(Math.max(...perFrame.values())).toBeLessThanOrEqual(INSPECTION_LIMITS.maxPending);
    // Of the refused ones, as many are told as the error-reply allowance holds (it refilled during the pause above).
    expect(busy.length).toBeGreaterThanOrEqual(Math.min(40 - answered.length, INSPECTION_LIMITS.errorReplyBurst));

    // Still alive and still answering.
    expect(agent.child.exitCode).toBeNull();
    await command('line1', JSON.stringify({ id: 'after-flood' }));
    expect(json(await recorder.waitFor(replyTo('line1', 'after-flood'), 5000))).toMatchObject({ result: expect.stringMatching(/^(pass|fail)$/) });
  }, 30_000);

  it('serves POST /api/cameras/<camera>/inspect with the result, published on MQTT too, and refuses bad requests with 4xx', async () => {
    const ok = await http(`${healthUrl}/api/cameras/line1/inspect`, 'POST', JSON.stringify({ id: 'H-1' }));
    expect(ok.status).toBe(200);
    expect(ok.headers['content-type']).toBe('application/json');
    expect(ok.json).toMatchObject({ id: 'H-1', camera: 'line1', result: expect.stringMatching(/^(pass|fail)$/) });
    expect(json(await recorder.waitFor(replyTo('line1', 'H-1'), 5000))).toEqual(ok.json);

    expect(await http(`${healthUrl}/api/cameras/nocam/inspect`, 'POST', JSON.stringify({ id: 'H-2' }))).toMatchObject({ status: 404, json: { id: 'H-2', error: 'unknown-camera' } });
    expect(await http(`${healthUrl}/api/cameras/line1/inspect`, 'POST', '{"id":')).toMatchObject({ status: 400, json: { id: null, error: 'invalid-command' } });
    expect(await http(`${healthUrl}/api/cameras/line1/inspect`, 'POST', JSON.stringify({ id: 'H-3', pad: 'x'.repeat(4000) }))).toMatchObject({ status: 413, json: { error: 'invalid-command' } });
    const get = await http(`${healthUrl}/api/cameras/line1/inspect`, 'GET');
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    // The refusals over HTTP went to the caller only.
    expect(recorder.messages.some((m) => m.topic.endsWith('/inspections') && ['H-2', 'H-3'].includes(json(m).id as string))).toBe(false);
  });

  it('answers a camera that is down with a timeout error, over MQTT (QoS 1) and HTTP (504)', async () => {
    await command('dead', JSON.stringify({ id: 'D-1' }));
    const reply = await recorder.waitFor(replyTo('dead', 'D-1'), 5000);
    expect(reply.qos).toBe(1);
    expect(json(reply)).toMatchObject({ error: 'timeout', message: expect.stringMatching(/no frame of camera dead within 1200 ms .*camera (reconnecting|offline)/) });
    const started = performance.now();
    const http504 = await http(`${healthUrl}/api/cameras/dead/inspect`, 'POST', JSON.stringify({ id: 'D-2' }));
    expect(http504).toMatchObject({ status: 504, json: { id: 'D-2', error: 'timeout' } });
    expect(performance.now() - started).toBeGreaterThanOrEqual(1100);
  });

  it('stops cleanly; every payload it published matches its schema', async () => {
    agent.child.kill('SIGTERM');
    expect(await agent.exited()).toBe(0);
    await recorder.waitFor((m) => m.topic === `${BASE}/status` && m.payload === 'offline', 5000);
    payloadValidator(BASE).expectAllValid(recorder.messages);
  });
});

describe('the inspect route of the REST API on the health server', () => {
  let server: HealthServer;
  const calls: { camera: string; body: string }[] = [];
  beforeAll(async () => {
    const snapshot = (): AgentSnapshot => ({ version: '0', startedAt: new Date().toISOString(), deviceId: 'd', cameras: [], mqtt: { connected: true, broker: 'x', outboxSize: 0 }, recentEvents: [] });
    const api = new ApiRouter({ version: '0' });
    addInspectRoute(api, {
      maxBodyBytes: 64,
      handle: async (camera, body) => {
        calls.push({ camera, body: Buffer.from(body).toString('utf8') });
        return { status: camera === 'busy' ? 429 : 200, reply: { camera } };
      },
    });
    server = await startHealthServer({ host: '127.0.0.1', port: 0, metrics: new AgentMetrics({ processMetrics: false }), snapshot, api });
  });
  afterAll(async () => server?.close());

  it('hands the decoded camera name and the body to the handler, and its status and JSON back', async () => {
    expect(await http(`${server.url}/api/cameras/line%2D1/inspect`, 'POST', '{"id":"a"}')).toMatchObject({ status: 200, json: { camera: 'line-1' } });
    expect(calls.at(-1)).toEqual({ camera: 'line-1', body: '{"id":"a"}' });
    const busy = await http(`${server.url}/api/cameras/busy/inspect`, 'POST', '{"id":"a"}');
    expect(busy.status).toBe(429);
    expect(busy.headers['retry-after']).toBe('1');
  });

  it('refuses a body over the limit (declared or streamed) with 413 without calling the handler, and other methods with 405', async () => {
    const before = calls.length;
    expect((await http(`${server.url}/api/cameras/a/inspect`, 'POST', 'x'.repeat(65))).status).toBe(413);
    // Chunked, no Content-Length: the limit holds while reading.
    const chunked = await new Promise<number>((resolve, reject) => {
      const req = request(`${server.url}/api/cameras/a/inspect`, { method: 'POST', headers: { 'Transfer-Encoding': 'chunked' } }, (res) => {
        res.resume();
        resolve(res.statusCode!);
      });
      req.on('error', reject);
      req.write('x'.repeat(40));
      req.end('y'.repeat(40));
    });
    expect(chunked).toBe(413);
    expect(calls.length).toBe(before);
    expect((await http(`${server.url}/api/cameras/a/inspect`, 'PUT', '{}')).status).toBe(405);
    expect((await http(`${server.url}/api/cameras/%E0%A4%A/inspect`, 'POST', '{}')).status).toBe(400);
    // The other routes still answer only GET and HEAD.
    expect((await http(`${server.url}/healthz`, 'POST', '{}')).status).toBe(405);
  });
});
