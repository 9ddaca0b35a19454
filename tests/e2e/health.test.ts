import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { assessHealth, startHealthServer, type AgentSnapshot, type CameraSnapshot, type HealthServer, type RecentEvent } from '../../src/health/server.js';
import { PAGE_SCRIPT } from '../../src/health/page-script.js';
import { SnapshotStore } from '../../src/publish/snapshot.js';

const NOW = Date.parse('2025-06-01T12:00:00.000Z');
const iso = (msBeforeNow: number): string => new Date(NOW - msBeforeNow).toISOString();

function camera(name: string, overrides: Partial<CameraSnapshot> = {}): CameraSnapshot {
  return {
    name,
    state: 'streaming',
    reason: null,
    since: iso(600_000),
    fps: 10,
    restarts: 0,
    framesDropped: 0,
    lastFrameAt: iso(100),
    faults: [],
    framesIn: 6000,
    lastScore: 0.12,
    threshold: 0.2,
    ...overrides,
  };
}

function agent(cameras: CameraSnapshot[], recentEvents: RecentEvent[] = []): AgentSnapshot {
  return {
    version: '0.1.0',
    startedAt: iso(3_600_000),
    deviceId: 'press-4',
    cameras,
    mqtt: { connected: true, broker: 'mqtt://broker.local:1883', outboxSize: 0 },
    recentEvents,
  };
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** Raw node:http, not fetch: fetch would normalise '..' in paths before sending, hiding traversal bugs. */
function get(server: HealthServer, path: string, method = 'GET'): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request(`${server.url}`, { path, method }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('AgentMetrics', () => {
  it('counts frames, drops, restarts, events and MQTT state per camera', async () => {
    const metrics = new AgentMetrics();
    metrics.addCamera('cam1', 0.2);
    metrics.addCamera('idle');
    metrics.frameIn('cam1');
    metrics.frameIn('cam1');
    metrics.frameIn('cam1');
    metrics.frameDropped('cam1', 2);
    metrics.frameScored('cam1', 0.25, 0.0004);
    metrics.frameScored('cam1', 0.5, 0.003);
    metrics.ffmpegRestart('cam1');
    metrics.cameraState('cam1', 'streaming');
    metrics.cameraState('idle', 'reconnecting');
    metrics.eventMessage('cam1', 'start');
    metrics.eventMessage('cam1', 'update');
    metrics.eventMessage('cam1', 'update');
    metrics.mqtt({ connected: true, outboxSize: 4 });
    const text = await metrics.render();
    expect(text).toContain('linewatch_frames_in_total{camera="cam1"} 3');
    expect(text).toContain('linewatch_frames_in_total{camera="idle"} 0');
    expect(text).toContain('linewatch_frames_scored_total{camera="cam1"} 2');
    expect(text).toContain('linewatch_frames_dropped_total{camera="cam1"} 2');
    expect(text).toContain('linewatch_ffmpeg_restarts_total{camera="cam1"} 1');
    expect(text).toContain('linewatch_camera_up{camera="cam1"} 1');
    expect(text).toContain('linewatch_camera_up{camera="idle"} 0');
    expect(text).toContain('linewatch_frame_score{camera="cam1"} 0.5');
    expect(text).toContain('linewatch_score_threshold{camera="cam1"} 0.2');
    expect(text).toContain('linewatch_inference_seconds_bucket{le="0.0005",camera="cam1"} 1');
    expect(text).toContain('linewatch_inference_seconds_bucket{le="0.005",camera="cam1"} 2');
    expect(text).toContain('linewatch_inference_seconds_count{camera="cam1"} 2');
    expect(text).toContain('linewatch_event_messages_total{camera="cam1",type="update"} 2');
    expect(text).toContain('linewatch_event_messages_total{camera="cam1",type="start"} 1');
    expect(text).toContain('linewatch_mqtt_connected 1');
    expect(text).toContain('linewatch_mqtt_outbox_size 4');
    expect(text).toMatch(/^process_cpu_user_seconds_total \d/m);
    expect(text).toMatch(/^nodejs_eventloop_lag_seconds /m);
  });

  it('keeps each instance in its own registry and refuses shrinking counters', async () => {
    const a = new AgentMetrics({ processMetrics: false });
    const b = new AgentMetrics({ processMetrics: false });
    a.frameIn('cam1');
    expect(await a.render()).toContain('linewatch_frames_in_total{camera="cam1"} 1');
    expect(await b.render()).not.toContain('camera="cam1"');
    expect(await b.render()).not.toContain('process_cpu');
    expect(() => a.frameDropped('cam1', -1)).toThrow(/only grows/);
  });
});

describe('assessHealth', () => {
  it('is ok only when every camera streams and delivered a frame recently', () => {
    expect(assessHealth(agent([camera('a'), camera('b')]), NOW)).toEqual({ status: 'ok', cameras: { a: 'streaming', b: 'streaming' }, problems: [] });
    const down = assessHealth(agent([camera('a'), camera('b', { state: 'reconnecting', reason: 'ffmpeg exited with code 1: Connection refused' })]), NOW);
    expect(down).toEqual({
      status: 'unhealthy',
      cameras: { a: 'streaming', b: 'reconnecting' },
      problems: ['b: reconnecting (ffmpeg exited with code 1: Connection refused)'],
    });
    const stale = assessHealth(agent([camera('a', { lastFrameAt: iso(45_000) })]), NOW, 30_000);
    expect(stale.problems).toEqual(['a: no frame for 45 s']);
    const never = assessHealth(agent([camera('a', { lastFrameAt: null, since: iso(31_000) })]), NOW, 30_000);
    expect(never.problems).toEqual(['a: no frame yet for 31 s']);
    const starting = assessHealth(agent([camera('a', { lastFrameAt: null, since: iso(2_000) })]), NOW, 30_000);
    expect(starting.status).toBe('ok');
    expect(assessHealth(agent([]), NOW)).toMatchObject({ status: 'unhealthy', problems: ['no cameras configured'] });
  });
});

describe('health server', () => {
  let root: string;
  let snapshotDir: string;
  let server: HealthServer;
  let metrics: AgentMetrics;
  let current: AgentSnapshot;
  let snapshotPath: string;
  let failSnapshot = false;

  beforeAll(async () => {
    root = mkdtempSync(join(tmpdir(), 'linewatch-health-'));
    snapshotDir = join(root, 'snapshots');
    // Something worth stealing next to the snapshot directory, for the traversal checks.
    writeFileSync(join(root, 'secret.jpg'), 'secret');
    mkdirSync(join(root, 'outside'));
    writeFileSync(join(root, 'outside', 'x.jpg'), 'secret');
    const store = new SnapshotStore({ dir: snapshotDir, retain: 5 });
    const frame = await sharp({ create: { width: 320, height: 180, channels: 3, background: '#808080' } }).jpeg().toBuffer();
    snapshotPath = await store.save({ camera: 'cam1', eventId: 'evt-1', image: { jpeg: frame }, map: new Float32Array(16), mapWidth: 4, mapHeight: 4 });
    symlinkSync(join(root, 'outside'), join(snapshotDir, 'linked'));
    symlinkSync(join(root, 'secret.jpg'), join(snapshotDir, 'cam1', 'leak.jpg'));

    metrics = new AgentMetrics();
    server = await startHealthServer({
      host: '127.0.0.1',
      port: 0,
      metrics,
      snapshotDir,
      now: () => NOW,
      snapshot: () => {
        if (failSnapshot) throw new Error('wiring broke');
        return current;
      },
    });
  });

  afterAll(async () => {
    await server?.close();
    rmSync(root, { recursive: true, force: true });
  });

  beforeEach(() => {
    failSnapshot = false;
    current = agent([camera('cam1'), camera('cam2')]);
  });

  it('answers /healthz with 200 while all cameras stream, 503 with the reason otherwise', async () => {
    const ok = await get(server, '/healthz');
    expect(ok.status).toBe(200);
    expect(ok.headers['content-type']).toBe('application/json');
    expect(JSON.parse(ok.body.toString())).toEqual({ status: 'ok', cameras: { cam1: 'streaming', cam2: 'streaming' }, problems: [] });

    current = agent([camera('cam1'), camera('cam2', { state: 'offline', reason: 'gave up' })]);
    const bad = await get(server, '/healthz');
    expect(bad.status).toBe(503);
    expect(JSON.parse(bad.body.toString())).toEqual({ status: 'unhealthy', cameras: { cam1: 'streaming', cam2: 'offline' }, problems: ['cam2: offline (gave up)'] });

    current = agent([camera('cam1', { lastFrameAt: iso(120_000) })]);
    expect((await get(server, '/healthz')).status).toBe(503);

    const head = await get(server, '/healthz', 'HEAD');
    expect(head.status).toBe(503);
    expect(head.body.length).toBe(0);
  });

  it('serves Prometheus text on /metrics', async () => {
    metrics.frameIn('cam1');
    metrics.mqtt({ connected: false, outboxSize: 7 });
    const reply = await get(server, '/metrics');
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = reply.body.toString();
    expect(text).toContain('linewatch_frames_in_total{camera="cam1"} 1');
    expect(text).toContain('linewatch_mqtt_outbox_size 7');
    expect(text).toContain('# TYPE linewatch_inference_seconds histogram');
  });

  it('renders a self-contained operator page with escaped text and the last 20 events', async () => {
    const events: RecentEvent[] = Array.from({ length: 25 }, (_, i) => ({
      id: `evt-${i}`,
      camera: 'cam1',
      type: i % 3 === 0 ? 'start' : i % 3 === 1 ? 'update' : 'end',
      at: iso(i * 60_000),
      score: 0.31,
      peakScore: 0.42,
      threshold: 0.2,
      snapshot: i === 0 ? snapshotPath : null,
    }));
    current = agent(
      [camera('cam1', { lastScore: 0.31 }), camera('cam2', { state: 'reconnecting', reason: 'ffmpeg exited: <script>alert(1)</script>', lastScore: null })],
      events,
    );
    const reply = await get(server, '/');
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(reply.headers['content-security-policy']).toContain("default-src 'none'");
    const html = reply.body.toString();
    // Without scripts the page reloads itself; the script refreshes its parts instead.
    expect(html).toMatch(/<noscript><meta http-equiv="refresh" content="5">[^<]*(<style>[^<]*<\/style>)?<\/noscript>/);
    expect(html).toContain('<title>linewatch · press-4</title>');
    expect(html).toContain('1/2 cameras streaming');
    expect(html).toContain('ffmpeg exited: &lt;script&gt;alert(1)&lt;/script&gt;');
    // The one script is the page's own constant one, and the CSP runs nothing else: not by
    // 'unsafe-inline', only the script with its exact hash.
    expect(html.match(/<script/g)).toHaveLength(1);
    expect(html).toContain(`<script>${PAGE_SCRIPT}</script>`);
    const csp = String(reply.headers['content-security-policy']);
    const scriptSrc = /(?:^|;\s*)script-src ([^;]*)/.exec(csp)?.[1];
    expect(scriptSrc).toBe(`'sha256-${createHash('sha256').update(PAGE_SCRIPT).digest('base64')}'`);
    expect(csp).not.toMatch(/unsafe-eval|\*|https?:/);
    // No external assets: nothing loaded from anywhere, links only to our own paths.
    expect(html).not.toMatch(/\bsrc=|<link|https?:\/\/(?!broker\.local)/);
    // Score 0.31 against 0.2 on a 0.3 scale: a full, red bar with the mark at two thirds.
    expect(html).toContain('class="fill over" style="width:100.0%"');
    expect(html).toContain('class="mark" style="left:66.7%"');
    expect(html).toContain('0.3100 / 0.2000');
    expect(html.match(/<td>cam1<\/td>\n<td><span class="type-/g)).toHaveLength(20);
    expect(html).toContain('<a href="/snapshots/cam1/evt-1.jpg">snapshot</a>');
    expect(html).toContain('MQTT <span class="ok">connected</span> to mqtt://broker.local:1883');
  });

  it('serves event snapshots', async () => {
    const reply = await get(server, '/snapshots/cam1/evt-1.jpg');
    expect(reply.status).toBe(200);
    expect(reply.headers['content-type']).toBe('image/jpeg');
    expect(reply.body.equals(readFileSync(snapshotPath))).toBe(true);
    expect((await get(server, '/snapshots/cam1/missing.jpg')).status).toBe(404);
  });

  it('cannot be made to serve anything outside the snapshot directory', async () => {
    const attempts = [
      '/snapshots/../secret.jpg',
      '/snapshots/cam1/../../secret.jpg',
      '/snapshots/cam1/..%2F..%2Fsecret.jpg',
      '/snapshots/%2e%2e/secret.jpg',
      '/snapshots/cam1/%2e%2e%2f%2e%2e%2fsecret.jpg',
      '/snapshots/cam1/%E0%A4%A.jpg',
      '/snapshots/linked/x.jpg',
      '/snapshots/cam1/leak.jpg',
      '/snapshots/cam1/.hidden.jpg',
      '/snapshots/cam1/evt-1.jpg/..',
    ];
    for (const path of attempts) {
      const reply = await get(server, path);
      expect({ path, status: reply.status }).toEqual({ path, status: 404 });
      expect(reply.body.toString()).not.toContain('secret');
    }
  });

  it('answers 404, 405 and 500 without falling over', async () => {
    expect((await get(server, '/nope')).status).toBe(404);
    const post = await get(server, '/healthz', 'POST');
    expect(post.status).toBe(405);
    expect(post.headers.allow).toBe('GET, HEAD');
    failSnapshot = true;
    const broken = await get(server, '/healthz');
    expect(broken.status).toBe(500);
    expect(broken.body.toString()).toContain('wiring broke');
    failSnapshot = false;
    expect((await get(server, '/healthz')).status).toBe(200);
  });

  it('refuses a port that is already in use with a clear error', async () => {
    const attempt = startHealthServer({ host: '127.0.0.1', port: server.port, metrics, snapshot: () => current });
    await expect(attempt).rejects.toBeInstanceOf(UsageError);
    await expect(attempt).rejects.toThrow(`health server: 127.0.0.1:${server.port} is already in use`);
    await expect(attempt).rejects.toMatchObject({ hint: expect.stringContaining('health.port') });
  });
});
