import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ApiError, ApiRouter, isLoopbackHost, OPENAPI_PATH } from '../../src/health/api.js';
import { configFromObject } from '../../src/config/index.js';
import { REPO, runCli, writeConfig } from '../helpers/agent.js';

const TOKEN = 'a-token-of-24-characters';

function router(token?: string): ApiRouter {
  const api = new ApiRouter({ token, version: '0.0.0' });
  api.add({ method: 'GET', path: OPENAPI_PATH, summary: 'doc', responses: { '200': { description: 'doc' } }, handle: () => ({ status: 200, json: api.openApiDocument() }) });
  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}/scores',
    summary: 'scores',
    query: [{ name: 'seconds', in: 'query', schema: { type: 'integer' } }],
    responses: { '200': { description: 'ok' }, '404': { description: 'unknown camera' } },
    handle: ({ params, query }) => {
      if (params.camera !== 'line 1') throw new ApiError(404, 'unknown-camera', `no camera ${params.camera}`);
      return { status: 200, json: { camera: params.camera, seconds: Number(query.get('seconds')) } };
    },
  });
  api.add({
    method: 'POST',
    path: '/api/echo',
    summary: 'echo',
    requestBody: { contentType: 'application/json', schema: { type: 'object' }, maxBytes: 64 },
    responses: { '200': { description: 'the body' } },
    handle: ({ body }) => ({ status: 200, contentType: 'application/json', body: Buffer.from(body) }),
  });
  return api;
}

async function serve(api: ApiRouter): Promise<{ server: Server; url: string }> {
  const server = createServer((request, response) => {
    void api.handle(request, response).then((handled) => {
      if (!handled) response.writeHead(404).end('not api');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

describe('ApiRouter on a real HTTP server', () => {
  let open: { server: Server; url: string };
  let locked: { server: Server; url: string };
  beforeAll(async () => {
    open = await serve(router());
    locked = await serve(router(TOKEN));
  });
  afterAll(() => {
    open.server.close();
    locked.server.close();
  });

  it('routes with decoded path parameters and query, and answers JSON errors with status codes', async () => {
    const ok = await fetch(`${open.url}/api/cameras/line%201/scores?seconds=60`);
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ camera: 'line 1', seconds: 60 });
    const unknown = await fetch(`${open.url}/api/cameras/nope/scores`);
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toEqual({ error: 'unknown-camera', message: 'no camera nope' });
    const noRoute = await fetch(`${open.url}/api/nothing`);
    expect(noRoute.status).toBe(404);
    expect(((await noRoute.json()) as { error: string }).error).toBe('not-found');
    const wrongMethod = await fetch(`${open.url}/api/echo`);
    expect(wrongMethod.status).toBe(405);
    expect(wrongMethod.headers.get('allow')).toBe('POST');
    const badEncoding = await fetch(`${open.url}/api/cameras/%E0%A4%A/scores`);
    expect(badEncoding.status).toBe(400);
    const tooLarge = await fetch(`${open.url}/api/echo`, { method: 'POST', body: 'x'.repeat(100) });
    expect(tooLarge.status).toBe(413);
    const echoed = await fetch(`${open.url}/api/echo`, { method: 'POST', body: '{"a":1}' });
    expect(await echoed.json()).toEqual({ a: 1 });
    expect((await fetch(`${open.url}/elsewhere`)).status).toBe(404);
  });

  it('with a token: 401 without it or with a wrong one, 200 with it; the OpenAPI document stays readable', async () => {
    const missing = await fetch(`${locked.url}/api/cameras/line%201/scores`);
    expect(missing.status).toBe(401);
    expect(missing.headers.get('www-authenticate')).toMatch(/^Bearer/);
    const wrong = await fetch(`${locked.url}/api/cameras/line%201/scores`, { headers: { Authorization: 'Bearer not-the-token-at-all' } });
    expect(wrong.status).toBe(401);
    expect(((await wrong.json()) as { message: string }).message).toBe('wrong bearer token');
    const right = await fetch(`${locked.url}/api/cameras/line%201/scores`, { headers: { Authorization: `Bearer ${TOKEN}` } });
    expect(right.status).toBe(200);
    const doc = (await (await fetch(`${locked.url}${OPENAPI_PATH}`)).json()) as { openapi: string; paths: Record<string, Record<string, { parameters: { name: string; in: string }[]; security: unknown; responses: Record<string, unknown> }>> };
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.paths).sort()).toEqual(['/api/cameras/{camera}/scores', '/api/echo', OPENAPI_PATH].sort());
    const scores = doc.paths["/api/cameras/{camera}/scores"]!.get!;
    expect(scores.parameters.map((p) => `${p.in}:${p.name}`)).toEqual(['path:camera', 'query:seconds']);
    expect(scores.security).toEqual([{ bearer: [] }]);
    expect(scores.responses['401']).toBeDefined();
  });
});

describe('health.token in the config', () => {
  const base = { mqtt: { url: 'mqtt://127.0.0.1:1' }, defaults: { model: 'models/demo' }, cameras: [{ name: 'a', url: 'assets/demo/bottle-detection.mp4' }] };

  it('is required when the health server binds beyond loopback, with a clear message', () => {
    expect(() => configFromObject({ ...base, health: { host: '0.0.0.0' } })).toThrow(/health\.token.*health\.host 0\.0\.0\.0 exposes the API beyond this box/s);
    expect(configFromObject({ ...base, health: { host: '0.0.0.0', token: TOKEN } }).health.token).toBe(TOKEN);
    expect(configFromObject({ ...base, health: { host: '127.0.0.1' } }).health.token).toBeUndefined();
    expect(() => configFromObject({ ...base, health: { token: 'short' } })).toThrow(/at least 16 characters/);
  });

  it('stops `linewatch run` at start-up, exit 2, when the health server would be reachable without a token', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-token-'));
    try {
      const config = writeConfig(path.join(dir, 'open.yaml'), { ...base, defaults: { model: path.join(REPO, 'models/demo') }, health: { host: '0.0.0.0' } });
      const result = runCli(['run', '--config', config]);
      expect(result.code, result.output).toBe(2);
      expect(result.stderr).toMatch(/health\.token: health\.host 0\.0\.0\.0 exposes the API beyond this box: set health\.token \(or health\.tokenFile\) or bind 127\.0\.0\.1/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('knows loopback addresses', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) expect(isLoopbackHost(host), host).toBe(true);
    for (const host of ['0.0.0.0', '::', '192.168.1.5', 'box.local']) expect(isLoopbackHost(host), host).toBe(false);
  });
});
