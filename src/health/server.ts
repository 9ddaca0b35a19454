import { createReadStream } from 'node:fs';
import { realpath, stat } from 'node:fs/promises';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, sep } from 'node:path';
import { LinewatchError, UsageError } from '../errors.js';
import type { AgentSnapshot } from './agent-snapshot.js';
import type { ApiRouter } from './api.js';
import type { AgentMetrics } from './metrics.js';
import { PAGE_CONTENT_SECURITY_POLICY, renderOperatorPage } from './page.js';

export type { AgentSnapshot, CameraSnapshot, MqttSnapshot, RecentEvent } from './agent-snapshot.js';

/**
 * The agent's HTTP face, on node:http (four routes do not need a framework):
 *   GET /healthz    200 when every camera streams and delivered a frame recently, else 503
 *   GET /metrics    Prometheus text
 *   GET /           the operator page
 *   GET /snapshots/<camera>/<file>.jpg   event snapshots from the snapshot directory
 *   /api/...       the REST API (src/health/api.ts), inspect commands included
 * It binds 127.0.0.1 by default (config). /api and /snapshots take a bearer token
 * (health.token, required beyond loopback); the page's markup, /healthz and /metrics
 * show no pictures and no secrets and stay open for monitoring.
 */

export interface HealthServerOptions {
  host: string;
  /** 0 picks a free port (tests). */
  port: number;
  metrics: AgentMetrics;
  snapshot: () => AgentSnapshot;
  /** SnapshotStore's directory; without it /snapshots answers 404. */
  snapshotDir?: string;
  /** A streaming camera whose last frame is older than this is unhealthy. Default 30 s. */
  staleAfterMs?: number;
  /** Operator page reload interval. Default 5 s. */
  refreshSeconds?: number;
  now?: () => number;
  /** Every other /api route (src/health/api.ts); without it /api answers 404. */
  api?: ApiRouter;
}

export interface HealthServer {
  /** e.g. http://127.0.0.1:9464 */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

export interface HealthReport {
  status: 'ok' | 'unhealthy';
  cameras: Record<string, string>;
  /** Why the agent is unhealthy, one line per problem; empty when ok. */
  problems: string[];
}

const DEFAULT_STALE_AFTER_MS = 30_000;

/**
 * Healthy means every camera is streaming and delivered a frame within `staleAfterMs`
 * (a source stuck in "streaming" without frames must not look healthy), and at
 * least one camera exists: an agent watching nothing is not doing its job.
 */
export function assessHealth(snapshot: AgentSnapshot, now: number, staleAfterMs = DEFAULT_STALE_AFTER_MS): HealthReport {
  const cameras: Record<string, string> = {};
  const problems: string[] = [];
  if (snapshot.cameras.length === 0) problems.push('no cameras configured');
  for (const camera of snapshot.cameras) {
    cameras[camera.name] = camera.state;
    if (camera.state !== 'streaming') {
      problems.push(`${camera.name}: ${camera.state}${camera.reason ? ` (${camera.reason})` : ''}`);
      continue;
    }
    if (camera.scoring?.failing) {
      problems.push(`${camera.name}: frames fail scoring since ${camera.scoring.failingSince} (${camera.scoring.lastError})`);
      continue;
    }
    const lastSign = Date.parse(camera.lastFrameAt ?? camera.since);
    const silentMs = now - lastSign;
    if (!(silentMs <= staleAfterMs)) {
      const what = camera.lastFrameAt ? 'no frame' : 'no frame yet';
      problems.push(`${camera.name}: ${what} for ${Math.round(silentMs / 1000)} s`);
    }
  }
  // The agent works on, but a crash now loses the events waiting for the broker: the operator must free space.
  if (snapshot.mqtt.durable === false) {
    problems.push(`MQTT outbox not durable (${snapshot.mqtt.notDurableReason ?? 'data folder not writable'}): events wait in memory only; free space in dataDir`);
  }
  for (const component of snapshot.components ?? []) {
    if (component.state === 'failed') problems.push(`${component.name} failed: ${component.error ?? 'unknown error'}`);
  }
  return { status: problems.length === 0 ? 'ok' : 'unhealthy', cameras, problems };
}

export async function startHealthServer(options: HealthServerOptions): Promise<HealthServer> {
  const now = options.now ?? Date.now;
  const staleAfterMs = options.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
  const refreshSeconds = options.refreshSeconds ?? 5;
  const snapshotRoot = options.snapshotDir;

  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) send(response, 500, 'text/plain; charset=utf-8', `internal error: ${describe(error)}\n`);
      else response.destroy();
    });
  });

  async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    if (options.api && (await options.api.handle(request, response))) return;
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.setHeader('Allow', 'GET, HEAD');
      return send(response, 405, 'text/plain; charset=utf-8', 'only GET and HEAD\n');
    }
    const path = new URL(request.url ?? '/', 'http://localhost').pathname;
    if (path === '/healthz') {
      const report = assessHealth(options.snapshot(), now(), staleAfterMs);
      return send(response, report.status === 'ok' ? 200 : 503, 'application/json', `${JSON.stringify(report)}\n`);
    }
    if (path === '/metrics') {
      return send(response, 200, options.metrics.contentType, await options.metrics.render());
    }
    if (path === '/' || path === '/index.html') {
      const api = options.api ? (options.api.requiresToken ? 'token' : 'open') : 'none';
      const page = renderOperatorPage(options.snapshot(), { now: now(), refreshSeconds, api });
      // The page's own policy: its inline script (by hash) may call this origin's API and show blob: images.
      return send(response, 200, 'text/html; charset=utf-8', page, { 'Content-Security-Policy': PAGE_CONTENT_SECURITY_POLICY });
    }
    // Event pictures show the line: behind the same token as the API when one is set.
    if (path.startsWith('/snapshots/')) return options.api && !options.api.guard(request, response) ? undefined : serveSnapshot(path, request, response);
    return send(response, 404, 'text/plain; charset=utf-8', 'not found: try /, /healthz or /metrics\n');
  }

  async function serveSnapshot(path: string, request: IncomingMessage, response: ServerResponse): Promise<void> {
    const file = snapshotRoot === undefined ? null : await resolveSnapshot(snapshotRoot, path);
    if (file === null) return send(response, 404, 'text/plain; charset=utf-8', 'no such snapshot\n');
    response.writeHead(200, { 'Content-Type': 'image/jpeg', 'Content-Length': file.size, 'Cache-Control': 'no-cache', ...SECURITY_HEADERS });
    if (request.method === 'HEAD') return void response.end();
    const stream = createReadStream(file.path);
    stream.on('error', () => response.destroy());
    stream.pipe(response);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(listenError(error, options.host, options.port)));
    server.listen(options.port, options.host, () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const hostInUrl = options.host.includes(':') ? `[${options.host}]` : options.host;
  return {
    url: `http://${hostInUrl}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        // Browsers keep the page's connection open; without this close() waits for them.
        server.closeAllConnections();
      }),
  };
}

const SAFE_CAMERA = /^[A-Za-z0-9_-]+$/;
const SAFE_SNAPSHOT_FILE = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.jpg$/;

/**
 * The file for /snapshots/<camera>/<file>.jpg, or null. Names are checked against a
 * strict pattern after percent-decoding (so %2e%2e%2f cannot climb out), and the
 * real path must still lie inside the snapshot directory (so a symlink cannot either).
 */
export async function resolveSnapshot(root: string, urlPath: string): Promise<{ path: string; size: number } | null> {
  const parts = urlPath.split('/');
  if (parts.length !== 4) return null;
  let camera: string;
  let file: string;
  try {
    camera = decodeURIComponent(parts[2]!);
    file = decodeURIComponent(parts[3]!);
  } catch {
    return null;
  }
  if (!SAFE_CAMERA.test(camera) || !SAFE_SNAPSHOT_FILE.test(file) || file.includes('..')) return null;
  try {
    const realRoot = await realpath(root);
    const real = await realpath(join(realRoot, camera, file));
    if (!real.startsWith(realRoot + sep)) return null;
    const info = await stat(real);
    return info.isFile() ? { path: real, size: info.size } : null;
  } catch {
    return null;
  }
}

const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Content-Security-Policy': "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'",
  'Referrer-Policy': 'no-referrer',
};

function send(response: ServerResponse, status: number, contentType: string, body: string, headers: Record<string, string> = {}): void {
  response.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...SECURITY_HEADERS,
    ...headers,
  });
  response.end(response.req.method === 'HEAD' ? undefined : body);
}

function listenError(error: NodeJS.ErrnoException, host: string, port: number): LinewatchError {
  const where = `${host}:${port}`;
  if (error.code === 'EADDRINUSE') {
    return new UsageError(`health server: ${where} is already in use`, {
      hint: `another linewatch or another program listens there (see: ss -ltnp 'sport = :${port}'); set health.port to a free port or disable the health server`,
      cause: error,
    });
  }
  if (error.code === 'EACCES') {
    return new UsageError(`health server: not allowed to listen on ${where}`, {
      hint: 'ports below 1024 need privileges; use a port above 1024 (default 9464)',
      cause: error,
    });
  }
  if (error.code === 'EADDRNOTAVAIL' || error.code === 'ENOTFOUND') {
    return new UsageError(`health server: ${host} is not an address of this machine`, {
      hint: 'set health.host to 127.0.0.1 (local only), 0.0.0.0 (all interfaces) or one of this machine\'s addresses',
      cause: error,
    });
  }
  return new LinewatchError(`health server: cannot listen on ${where}: ${error.message}`, { cause: error });
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
