/**
 * The REST API end to end: `linewatch run` with the demo model and the demo video (a real
 * ffmpeg at native speed, looping), a real mosquitto, and HTTP requests as a client sends
 * them. The agent runs with health.token set, so every request but the OpenAPI
 * document carries it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import SwaggerParser from '@apidevtools/swagger-parser';
import { Ajv2020 } from 'ajv/dist/2020.js';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, writeConfig, type AgentProcess, DEMO_MODEL, DEMO_VIDEO, demoAgentMissing } from '../helpers/agent.js';
import { freePort, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder, type ReceivedMessage } from '../helpers/mosquitto.js';

const VIDEO = DEMO_VIDEO;
const MODEL = DEMO_MODEL;
const missing = demoAgentMissing('REST API tests');

const BASE = 'linewatch/testdev';
const TOKEN = 'api-test-token-0123456789abcdef';
const AUTH = { Authorization: `Bearer ${TOKEN}` };

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** Parsed when the reply is JSON. */
  json: any;
}

/**
 * One request, its whole reply; a multipart (endless) reply is cut after its headers.
 * node:http rather than fetch: an endless stream must be cut right after its headers, and
 * a HEAD reply must show that no body came.
 */
function call(url: string, options: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method: options.method ?? 'GET', headers: options.headers }, (res) => {
      if (String(res.headers['content-type']).startsWith('multipart/')) {
        resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.alloc(0), json: undefined });
        res.destroy();
        return;
      }
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const isJson = String(res.headers['content-type']).startsWith('application/json');
        resolve({ status: res.statusCode!, headers: res.headers, body, json: isJson && body.length > 0 ? JSON.parse(body.toString('utf8')) : undefined });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it holds (expect.poll works only inside a test, not in beforeAll). */
async function until(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(250);
  }
}
const json = (message: ReceivedMessage) => JSON.parse(message.payload) as Record<string, any>;

/** The JPEG parts of an MJPEG stream, until `count` arrived; the connection is closed after. */
function mjpegParts(url: string, count: number, timeoutMs = 15_000): Promise<{ contentType: string; parts: Buffer[] }> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let buffered = Buffer.alloc(0);
    let response: IncomingMessage | undefined;
    const timer = setTimeout(() => {
      response?.destroy();
      reject(new Error(`${parts.length} of ${count} MJPEG parts within ${timeoutMs} ms`));
    }, timeoutMs);
    const req = request(url, { headers: AUTH }, (res) => {
      response = res;
      const boundary = /boundary=([^;]+)/.exec(String(res.headers['content-type']))?.[1];
      if (res.statusCode !== 200 || !boundary) {
        clearTimeout(timer);
        res.destroy();
        reject(new Error(`stream answered ${res.statusCode} ${res.headers['content-type']}`));
        return;
      }
      res.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        for (;;) {
          const header = /^--([^\r\n]+)\r\nContent-Type: image\/jpeg\r\nContent-Length: (\d+)\r\n\r\n/.exec(buffered.toString('latin1', 0, Math.min(buffered.length, 200)));
          if (!header) return;
          expect(header[1]).toBe(boundary);
          const start = header[0].length;
          const length = Number(header[2]);
          if (buffered.length < start + length + 2) return;
          parts.push(buffered.subarray(start, start + length));
          expect(buffered.toString('latin1', start + length, start + length + 2)).toBe('\r\n');
          buffered = buffered.subarray(start + length + 2);
          if (parts.length >= count) {
            clearTimeout(timer);
            res.destroy();
            resolve({ contentType: String(res.headers['content-type']), parts });
            return;
          }
        }
      });
      res.on('error', () => {});
    });
    req.on('error', reject);
    req.end();
  });
}

describe.skipIf(missing.length > 0)('the REST API of a running agent', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let recorder: MqttRecorder;
  let agent: AgentProcess;
  let url: string;
  let openapi: Record<string, any>;
  const ajv = new Ajv2020({ allErrors: true, strict: false });
  // No ajv-formats here: the one format the API uses, checked as strictly as clients need it.
  ajv.addFormat('date-time', (text: string) => /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(text) && !Number.isNaN(Date.parse(text)));

  const get = (route: string, headers: Record<string, string> = AUTH) => call(`${url}${route}`, { headers });

  /** The body matches the schema the OpenAPI document gives for this route and status. */
  function expectDocumented(route: string, method: string, reply: Reply): void {
    const responses = openapi.paths[route]?.[method]?.responses;
    expect(responses, `${method.toUpperCase()} ${route} is documented`).toBeDefined();
    const documented = responses[String(reply.status)];
    expect(documented, `${method.toUpperCase()} ${route} documents status ${reply.status}`).toBeDefined();
    const contentType = String(reply.headers['content-type']).split(';')[0]!;
    const content = documented.content ?? {};
    const key = Object.keys(content).find((type) => type.split(';')[0] === contentType);
    expect(key, `${method.toUpperCase()} ${route} ${reply.status} documents ${contentType}`).toBeDefined();
    const schema = content[key!].schema;
    if (schema && reply.json !== undefined) {
      const validate = ajv.compile({ ...schema, components: openapi.components });
      expect(validate(reply.json), `${method.toUpperCase()} ${route} ${reply.status}: ${JSON.stringify(validate.errors)}`).toBe(true);
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-api-'));
    broker = await startMosquitto();
    const healthPort = await freePort();
    url = `http://127.0.0.1:${healthPort}`;
    recorder = await recordMqtt(broker.url, [`${BASE}/+/status`, `${BASE}/+/events`]);
    const file = { loop: true, realtime: true };
    const config = writeConfig(path.join(dir, 'linewatch.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port: healthPort, token: TOKEN },
      defaults: { model: MODEL, fps: 10 },
      cameras: [
        // Previews on: frame.jpg is the full source picture, stream.mjpg streams them.
        { name: 'line1', url: VIDEO, preview: { enabled: true, fps: 4 }, ...file },
        // No previews at all (no snapshots either): frame.jpg is the scored model-input frame.
        { name: 'line2', url: VIDEO, fps: 4, snapshots: { enabled: false }, ...file },
      ],
    });
    agent = startAgent(['run', '--config', config]);
    for (const camera of ['line1', 'line2']) {
      await recorder.waitFor((m) => m.topic === `${BASE}/${camera}/status` && json(m).state === 'streaming', 60_000);
    }
    // A frame of each camera scored, and a preview of line1 read, before the routes are asked for them.
    await until('every camera scored a frame', async () => (await get('/api/cameras')).json?.every((camera: { lastScore: number | null }) => camera.lastScore !== null), 20_000);
    await until('a preview of line1', async () => (await get('/api/cameras/line1/frame.jpg')).status === 200, 10_000);
    const document = await get('/api/openapi.json', {});
    expect(document.status).toBe(200);
    openapi = document.json;
  }, 120_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await recorder?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('serves a valid OpenAPI 3.1 document, without the token, that lists exactly the routes it answers', async () => {
    // validate() dereferences in place: a copy keeps the document as served.
    await expect(SwaggerParser.validate(structuredClone(openapi) as never)).resolves.toBeDefined();
    expect(openapi.openapi).toBe('3.1.0');
    const operations = Object.entries(openapi.paths as Record<string, Record<string, unknown>>).flatMap(([route, methods]) =>
      Object.keys(methods).map((method) => ({ route, method: method.toUpperCase() })),
    );
    // This issue's routes; other modules add theirs, which the loop below checks all the same.
    const listed = operations.map(({ route, method }) => `${method} ${route}`);
    expect(listed).toEqual(
      expect.arrayContaining([
        'GET /api/openapi.json',
        'GET /api/cameras',
        'GET /api/cameras/{camera}',
        'GET /api/cameras/{camera}/frame.jpg',
        'GET /api/cameras/{camera}/heatmap.jpg',
        'GET /api/cameras/{camera}/scores',
        'GET /api/cameras/{camera}/stream.mjpg',
        'GET /api/events',
        'GET /api/events/{id}',
        'POST /api/cameras/{camera}/inspect',
      ]),
    );
    for (const { route, method } of operations) {
      // GETs on a real camera; other methods on names that exist nowhere, so nothing is changed.
      const concrete = route.replace('{camera}', method === 'GET' ? 'line1' : 'no-such-camera').replace(/\{\w+\}/g, 'no-such-thing');
      const reply = await call(`${url}${concrete}`, { method, headers: { ...AUTH, 'Content-Type': 'application/json' }, body: method === 'GET' ? undefined : '{}' });
      const what = `${method} ${concrete} answered ${reply.status} ${reply.body.toString('utf8', 0, 200)}`;
      expect(reply.status, what).not.toBe(405);
      // The router's own 404 for a path no route matches; a route's 404 (no such camera) is an answer.
      expect(reply.status === 404 && /^no API route/.test(reply.json?.message), what).toBe(false);
    }
    // And nothing else under /api: undocumented paths are 404, undocumented methods 405.
    for (const undocumented of ['/api', '/api/', '/api/nothing', '/api/cameras/line1/nothing', '/api/cameras/line1/frame.png', '/api/events/x/y/z']) {
      const reply = await get(undocumented);
      expect(reply.status, undocumented).toBe(404);
      expect(reply.json).toMatchObject({ error: 'not-found', message: expect.stringMatching(/^no API route/) });
    }
    const wrongMethod = await call(`${url}/api/cameras`, { method: 'DELETE', headers: AUTH });
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.allow).toBe('GET');
  });

  it('answers every route but the OpenAPI document 401 without the token or with a wrong one, and 200 with it', async () => {
    const routes = ['/api/cameras', '/api/cameras/line1', '/api/cameras/line1/frame.jpg', '/api/cameras/line1/heatmap.jpg', '/api/cameras/line1/scores', '/api/cameras/line1/stream.mjpg', '/api/events', '/api/events/x'];
    for (const route of routes) {
      const attempts: Record<string, string>[] = [{}, { Authorization: 'Bearer wrong-token-wrong-token-wrong' }, { Authorization: TOKEN }, { Authorization: `Basic ${Buffer.from(`x:${TOKEN}`).toString('base64')}` }];
      for (const headers of attempts) {
        const reply = await get(route, headers);
        expect(reply.status, `${route} with ${JSON.stringify(headers)}`).toBe(401);
        expect(reply.headers['www-authenticate']).toMatch(/^Bearer/);
        expect(reply.json).toMatchObject({ error: 'unauthorized' });
      }
    }
    const inspect = await call(`${url}/api/cameras/line1/inspect`, { method: 'POST', body: '{"id":"no-token"}' });
    expect(inspect.status).toBe(401);
    expect((await get('/api/cameras')).status).toBe(200);
    expect((await get('/api/openapi.json', {})).status).toBe(200);
    // The document says so.
    expect(openapi.paths['/api/cameras'].get.security).toEqual([{ bearer: [] }]);
    expect(openapi.paths['/api/openapi.json'].get.security).toBeUndefined();
  });

  it('lists the cameras with state, scores, mode, model and counters, and answers one camera or 404', async () => {
    const list = await get('/api/cameras');
    expect(list.status).toBe(200);
    expect(list.headers['content-type']).toBe('application/json');
    expectDocumented('/api/cameras', 'get', list);
    expect(list.json.map((camera: { name: string }) => camera.name)).toEqual(['line1', 'line2']);
    const [line1, line2] = list.json;
    expect(line1).toMatchObject({
      name: 'line1',
      state: 'streaming',
      reason: null,
      mode: 'continuous',
      model: { dir: MODEL, variant: 'int8', input: { width: 112, height: 64, channels: 1 } },
      scoring: { failures: 0, failing: false, failingSince: null, lastError: null },
      preview: true,
      links: { frame: '/api/cameras/line1/frame.jpg', heatmap: '/api/cameras/line1/heatmap.jpg', scores: '/api/cameras/line1/scores', stream: '/api/cameras/line1/stream.mjpg' },
    });
    expect(line1.lastScore).toEqual(expect.any(Number));
    expect(line1.threshold).toEqual(expect.any(Number));
    expect(line1.framesIn).toBeGreaterThan(0);
    expect(line1.fps).toBeGreaterThan(0);
    expect(line2).toMatchObject({ name: 'line2', state: 'streaming', preview: false });

    const one = await get('/api/cameras/line2');
    expect(one.status).toBe(200);
    expectDocumented('/api/cameras/{camera}', 'get', one);
    expect(one.json).toMatchObject({ name: 'line2', model: line2.model, threshold: line2.threshold, mode: 'continuous' });
    expect(one.json.framesIn).toBeGreaterThanOrEqual(line2.framesIn);

    for (const route of ['/api/cameras/nocam', '/api/cameras/nocam/frame.jpg', '/api/cameras/nocam/heatmap.jpg', '/api/cameras/nocam/scores', '/api/cameras/nocam/stream.mjpg', '/api/events?camera=nocam']) {
      const unknown = await get(route);
      expect(unknown.status, route).toBe(404);
      expect(unknown.headers['content-type']).toBe('application/json');
      expect(unknown.json, route).toMatchObject({ error: 'unknown-camera', message: expect.stringContaining('line1, line2') });
    }
    expectDocumented('/api/cameras/{camera}', 'get', await get('/api/cameras/nocam'));
  });

  it('serves the latest frame and the latest heat map as two different real JPEGs', async () => {
    const metadata = async (jpeg: Buffer) => sharp(jpeg).metadata();
    // line1 has previews: its frame is the whole 640x360 source picture.
    const frame1 = await get('/api/cameras/line1/frame.jpg');
    expect(frame1.status).toBe(200);
    expect(frame1.headers['content-type']).toBe('image/jpeg');
    expect(Number(frame1.headers['content-length'])).toBe(frame1.body.length);
    expectDocumented('/api/cameras/{camera}/frame.jpg', 'get', frame1);
    expect(await metadata(frame1.body)).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    const heat1 = await get('/api/cameras/line1/heatmap.jpg');
    expect(heat1.status).toBe(200);
    expect(heat1.headers['content-type']).toBe('image/jpeg');
    expectDocumented('/api/cameras/{camera}/heatmap.jpg', 'get', heat1);
    expect(await metadata(heat1.body)).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    expect(heat1.body.equals(frame1.body)).toBe(false);

    // line2 has no previews: its frame is the scored 112x64 grey model input, shown at the source's aspect ratio.
    const frame2 = await get('/api/cameras/line2/frame.jpg');
    expect(frame2.status).toBe(200);
    expect(frame2.headers['content-type']).toBe('image/jpeg');
    expect(await metadata(frame2.body)).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    const heat2 = await get('/api/cameras/line2/heatmap.jpg');
    expect(heat2.status).toBe(200);
    const heatMeta2 = await metadata(heat2.body);
    expect(heatMeta2).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    expect(heat2.body.equals(frame2.body)).toBe(false);
    // The heat map is coloured, the grey model input is not.
    const colourOf = async (jpeg: Buffer) => {
      const { data } = await sharp(jpeg).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
      let spread = 0;
      for (let i = 0; i + 2 < data.length; i += 3) spread = Math.max(spread, Math.abs(data[i]! - data[i + 2]!));
      return spread;
    };
    expect(await colourOf(heat2.body)).toBeGreaterThan(60);

    // Frames move on: a later frame is another picture.
    await sleep(1500);
    expect((await get('/api/cameras/line2/frame.jpg')).body.equals(frame2.body)).toBe(false);
    const head = await call(`${url}/api/cameras/line1/frame.jpg`, { method: 'HEAD', headers: AUTH });
    expect(head.status).toBe(200);
    expect(head.headers['content-type']).toBe('image/jpeg');
    expect(head.body.length).toBe(0);
  });

  it('answers the recent scores with the threshold, growing as frames are scored, and 400 for bad seconds', async () => {
    const first = await get('/api/cameras/line1/scores');
    expect(first.status).toBe(200);
    expectDocumented('/api/cameras/{camera}/scores', 'get', first);
    expect(first.json).toMatchObject({ threshold: expect.any(Number), seconds: 60 });
    const cameras = (await get('/api/cameras')).json;
    expect(first.json.threshold).toBe(cameras[0].threshold);
    expect(first.json.points.length).toBeGreaterThan(10);
    const times = first.json.points.map((point: { at: string }) => Date.parse(point.at));
    expect(times.every((at: number, i: number) => Number.isFinite(at) && (i === 0 || at >= times[i - 1]))).toBe(true);
    expect(first.json.points.every((point: { score: unknown }) => typeof point.score === 'number')).toBe(true);
    expect(Date.now() - times.at(-1)).toBeLessThan(5000);

    await sleep(3000);
    const later = await get('/api/cameras/line1/scores?seconds=3600');
    expect(later.json.seconds).toBe(3600);
    // 10 fps for 3 s: about 30 more points (slack for a busy machine).
    expect(later.json.points.length).toBeGreaterThanOrEqual(first.json.points.length + 10);
    const recent = await get('/api/cameras/line1/scores?seconds=1');
    expect(recent.status).toBe(200);
    expect(recent.json.points.length).toBeGreaterThan(0);
    // About 10 at 10 fps: the window is a second, not the whole history.
    expect(recent.json.points.length).toBeLessThanOrEqual(20);
    expect(Date.parse(recent.json.points[0].at)).toBeGreaterThan(Date.now() - 3000);

    for (const bad of ['0', '3601', '-1', '1.5', 'abc', '', '60s', '1e3', '99999999999']) {
      const reply = await get(`/api/cameras/line1/scores?seconds=${encodeURIComponent(bad)}`);
      expect(reply.status, `seconds=${bad}`).toBe(400);
      expect(reply.headers['content-type']).toBe('application/json');
      expect(reply.json, `seconds=${bad}`).toMatchObject({ error: 'bad-request', message: expect.stringContaining('seconds') });
      expectDocumented('/api/cameras/{camera}/scores', 'get', reply);
    }
  });

  it('lists a real event newest first with its snapshot URL, box and scores, and serves its messages and score timeline', async () => {
    // The video's normal scene lasts ~5 s, then a hand takes a bottle away: an event starts and ends.
    const start = json(await recorder.waitFor((m) => m.topic === `${BASE}/line1/events` && json(m).type === 'start', 60_000));
    const list = await get('/api/events');
    expect(list.status).toBe(200);
    expectDocumented('/api/events', 'get', list);
    const listed = list.json.find((event: { id: string }) => event.id === start.id);
    expect(listed).toMatchObject({
      id: start.id,
      camera: 'line1',
      startedAt: start.startedAt,
      threshold: start.threshold,
      peakScore: expect.any(Number),
      box: { x: expect.any(Number), y: expect.any(Number), width: expect.any(Number), height: expect.any(Number) },
      snapshot: `/snapshots/line1/${start.id}.jpg`,
    });
    expect(listed.peakScore).toBeGreaterThanOrEqual(start.score);
    // Newest first.
    const starts = list.json.map((event: { startedAt: string }) => Date.parse(event.startedAt));
    expect(starts).toEqual([...starts].sort((a, b) => b - a));
    // The URL is one the health server serves.
    // Snapshots show the line: behind the token like the API.
    expect((await call(`${url}${listed.snapshot}`)).status).toBe(401);
    await expect.poll(async () => (await call(`${url}${listed.snapshot}`, { headers: AUTH })).status, { timeout: 10_000 }).toBe(200);
    const snapshot = await call(`${url}${listed.snapshot}`, { headers: AUTH });
    expect(snapshot.headers['content-type']).toBe('image/jpeg');
    expect((await sharp(snapshot.body).metadata()).format).toBe('jpeg');

    const end = json(await recorder.waitFor((m) => m.topic === `${BASE}/line1/events` && json(m).type === 'end' && json(m).id === start.id, 60_000));
    const detail = await get(`/api/events/${start.id}`);
    expect(detail.status).toBe(200);
    expectDocumented('/api/events/{id}', 'get', detail);
    const published = recorder.messages.filter((m) => m.topic === `${BASE}/line1/events` && json(m).id === start.id).map(json);
    expect(detail.json.messages).toEqual(published);
    expect(detail.json.messages[0].type).toBe('start');
    expect(detail.json.messages.at(-1).type).toBe('end');
    expect(detail.json.event).toMatchObject({ id: start.id, state: 'ended', endedAt: end.endedAt, reason: end.reason, peakScore: end.peakScore, messages: published.length });
    const timeline = detail.json.scores;
    expect(timeline).toMatchObject({ threshold: start.threshold, complete: true });
    const from = Date.parse(start.startedAt);
    const to = Date.parse(end.endedAt);
    expect(timeline.points.length).toBeGreaterThanOrEqual(end.frames - 1);
    for (const point of timeline.points) {
      expect(Date.parse(point.at)).toBeGreaterThanOrEqual(from);
      expect(Date.parse(point.at)).toBeLessThanOrEqual(to);
    }
    // The event's peak is among its scores.
    expect(Math.max(...timeline.points.map((point: { score: number }) => point.score))).toBeCloseTo(end.peakScore, 3);

    const line1Events = (await get('/api/events?camera=line1')).json;
    const one = await get('/api/events?camera=line1&limit=1');
    expect(one.status).toBe(200);
    expect(one.json).toHaveLength(1);
    expect(one.json[0].id).toBe(line1Events[0].id);
    expect((await get('/api/events?camera=line2')).json.every((event: { camera: string }) => event.camera === 'line2')).toBe(true);
    for (const bad of ['0', '101', 'x', '-3', '2.5', '']) {
      const reply = await get(`/api/events?limit=${bad}`);
      expect(reply.status, `limit=${bad}`).toBe(400);
      expect(reply.json).toMatchObject({ error: 'bad-request', message: expect.stringContaining('limit') });
    }
    const unknown = await get('/api/events/no-such-event');
    expect(unknown.status).toBe(404);
    expect(unknown.json).toMatchObject({ error: 'unknown-event' });
    expectDocumented('/api/events/{id}', 'get', unknown);
  }, 150_000);

  it('streams previews as MJPEG to a bounded number of clients, and refuses a camera without previews', async () => {
    const { contentType, parts } = await mjpegParts(`${url}/api/cameras/line1/stream.mjpg`, 3);
    expect(contentType).toMatch(/^multipart\/x-mixed-replace; boundary=/);
    for (const part of parts) expect(await sharp(part).metadata()).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    expect(parts[1]!.equals(parts[2]!)).toBe(false);

    const none = await get('/api/cameras/line2/stream.mjpg');
    expect(none.status).toBe(409);
    expect(none.json).toMatchObject({ error: 'no-previews' });

    // Four clients at once are served, a fifth is told to come back later; a freed place is taken again.
    const held: IncomingMessage[] = [];
    const open = () =>
      new Promise<IncomingMessage>((resolve, reject) => {
        const req = request(`${url}/api/cameras/line1/stream.mjpg`, { headers: AUTH }, resolve);
        req.on('error', reject);
        req.end();
      });
    // The streams above closed on the client's side; the server hears of it a moment later.
    await sleep(500);
    try {
      for (let i = 0; i < 4; i++) {
        const res = await open();
        res.on('error', () => {});
        held.push(res);
        expect(res.statusCode).toBe(200);
      }
      const fifth = await get('/api/cameras/line1/stream.mjpg');
      expect(fifth.status).toBe(503);
      expect(fifth.json).toMatchObject({ error: 'too-many-streams' });
      held.pop()!.destroy();
      await expect.poll(async () => (await get('/api/cameras/line1/stream.mjpg')).status, { timeout: 5000 }).toBe(200);
    } finally {
      for (const res of held) res.destroy();
    }
  });

  it('runs an inspection through the router, as before the router existed', async () => {
    const ok = await call(`${url}/api/cameras/line1/inspect`, { method: 'POST', headers: { ...AUTH, 'Content-Type': 'application/json' }, body: JSON.stringify({ id: 'API-1' }) });
    expect(ok.status).toBe(200);
    expect(ok.headers['content-type']).toBe('application/json');
    expect(ok.json).toMatchObject({ id: 'API-1', camera: 'line1', result: expect.stringMatching(/^(pass|fail)$/) });
    expectDocumented('/api/cameras/{camera}/inspect', 'post', ok);
    const tooLarge = await call(`${url}/api/cameras/line1/inspect`, { method: 'POST', headers: AUTH, body: JSON.stringify({ id: 'x', pad: 'x'.repeat(4000) }) });
    expect(tooLarge.status).toBe(413);
    expect(tooLarge.json).toMatchObject({ error: 'invalid-command' });
    expectDocumented('/api/cameras/{camera}/inspect', 'post', tooLarge);
    const get405 = await get('/api/cameras/line1/inspect');
    expect(get405.status).toBe(405);
    expect(get405.headers.allow).toBe('POST');
  });

  it('stops cleanly with API clients connected', async () => {
    const streaming = new Promise<IncomingMessage>((resolve, reject) => {
      const req = request(`${url}/api/cameras/line1/stream.mjpg`, { headers: AUTH }, resolve);
      req.on('error', reject);
      req.end();
    });
    const res = await streaming;
    res.on('error', () => {});
    res.resume();
    agent.child.kill('SIGTERM');
    expect(await agent.exited()).toBe(0);
  });
});
