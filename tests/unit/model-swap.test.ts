/**
 * Swapping a camera's model while it runs: the scheduler's between-rounds hook, the
 * camera's switch (threshold, tracker, open event), and the model manager (load beside,
 * refuse a broken or mis-sized bundle, dispose a bundle once no camera runs it, config
 * reload). Real onnxruntime with the shipped demo bundle; frames come from a fake source.
 */
import { EventEmitter } from 'node:events';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CameraPipeline, ModelSizeError, type FrameSource } from '../../src/agent/camera.js';
import { ModelManager } from '../../src/agent/models.js';
import { InferenceScheduler, type ScoringCamera } from '../../src/agent/scheduler.js';
import { configFromObject, resolveCameras, type CameraConfig, type Config } from '../../src/config/index.js';
import { ModelError } from '../../src/errors.js';
import { ApiRouter } from '../../src/health/api.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { createLogger } from '../../src/log.js';
import { loadBundle, type LoadBundleOptions, type LoadedBundle } from '../../src/model/bundle.js';
import type { AnomalyEventPayload } from '../../src/publish/payloads.js';
import type { FrameScore } from '../../src/scoring/frame.js';
import type { CameraCounters, CameraSourceEvents, Frame, PreviewImage } from '../../src/source/index.js';

const DEMO = path.resolve('models/demo');
const haveDemo = existsSync(path.join(DEMO, 'manifest.json'));
if (!haveDemo) console.warn('model swap tests skipped: models/demo is missing');

interface ApiErrorBody {
  error: string;
  message: string;
}

const root = mkdtempSync(path.join(tmpdir(), 'linewatch-swap-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** A copy of the demo bundle whose int8 calibration threshold is `threshold`. */
function retuned(name: string, threshold: number): string {
  const dir = path.join(root, name);
  cpSync(DEMO, dir, { recursive: true });
  const file = path.join(dir, 'manifest.json');
  const manifest = JSON.parse(readFileSync(file, 'utf8'));
  manifest.calibration.int8.threshold = threshold;
  writeFileSync(file, JSON.stringify(manifest, null, 2));
  return dir;
}

/** A copy of the demo bundle whose int8 model is garbage. */
function corrupt(name: string): string {
  const dir = path.join(root, name);
  cpSync(DEMO, dir, { recursive: true });
  writeFileSync(path.join(dir, 'model.int8.onnx'), Buffer.from('this is not an ONNX model'));
  return dir;
}

const quiet = createLogger({ level: 'error', write: () => {} });

class FakeSource extends EventEmitter<CameraSourceEvents> implements FrameSource {
  readonly queue: Frame[] = [];
  get sourceSize() {
    return undefined;
  }
  async start(): Promise<void> {}
  async stop(): Promise<void> {}
  take(): Frame | undefined {
    return this.queue.shift();
  }
  stats(): CameraCounters {
    return { framesIn: 0, framesDropped: 0, restarts: 0, lastFrameAt: undefined, lastFrameMonotonicAt: undefined, previewsIn: 0 };
  }
  previewNear(): PreviewImage | undefined {
    return undefined;
  }
}

function config(cameras: Record<string, unknown>[], extra: Record<string, unknown> = {}): Config {
  return configFromObject(
    {
      deviceId: 'dev',
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      health: { enabled: false },
      // One frame above the threshold starts an event: the tests drive the tracker frame by frame.
      // Synthetic frames: flat and unchanging, which the camera-fault guard rightly calls a covered lens.
      defaults: { model: DEMO, debounce: { k: 1, n: 1, endFrames: 1, minDurationMs: 0, cooldownMs: 0 }, faults: { enabled: false } },
      cameras,
      ...extra,
    },
    { env: {}, fileExists: () => true, hostname: 'h' },
  );
}

function frameFor(bundle: LoadedBundle, seq: number): Frame {
  const { width, height, channels } = bundle.manifest.input;
  return { cameraId: 'x', seq, capturedAt: Date.now(), monotonicAt: performance.now(), width, height, channels, data: new Uint8Array(width * height * channels).fill(100) };
}

function score(bundle: LoadedBundle, value: number): FrameScore {
  const { width, height } = bundle.manifest.input;
  return { score: value, recon: value, latent: Number.NaN, map: new Float32Array(width * height) };
}

interface Rig {
  manager: ModelManager;
  pipelines: CameraPipeline[];
  cameras: CameraConfig[];
  events: AnomalyEventPayload[];
  loads: string[];
  disposed: string[];
}

/** Cameras built the way the agent builds them, on a manager whose loads and disposals are recorded. */
async function rig(cfg: Config, load?: (dir: string, options: LoadBundleOptions) => Promise<LoadedBundle>): Promise<Rig> {
  const loads: string[] = [];
  const disposed: string[] = [];
  const scheduler = new InferenceScheduler();
  const manager = new ModelManager({
    log: quiet,
    between: (change) => scheduler.between(change),
    load: async (dir, options) => {
      const bundle = await (load ?? loadBundle)(dir, options);
      loads.push(dir);
      const dispose = bundle.dispose;
      return { ...bundle, dispose: async () => (disposed.push(dir), dispose()) };
    },
  });
  const cameras = resolveCameras(cfg);
  await manager.loadFor(cameras);
  const events: AnomalyEventPayload[] = [];
  const pipelines = cameras.map(
    (camera) =>
      new CameraPipeline({
        camera,
        bundle: manager.bundleFor(camera),
        ffmpegPath: 'ffmpeg',
        sink: { event: (payload) => events.push(payload), cameraStatus: () => {}, score: () => {} },
        metrics: new AgentMetrics({ processMetrics: false }),
        snapshots: undefined,
        log: quiet,
        source: new FakeSource(),
      }),
  );
  for (const pipeline of pipelines) scheduler.add(pipeline);
  manager.attach(pipelines.map((pipeline, i) => ({ camera: pipeline, config: cameras[i]! })));
  return { manager, pipelines, cameras, events, loads, disposed };
}

describe('InferenceScheduler.between', () => {
  it('runs a change at once when idle, else after the round in progress and before the next one takes a frame', async () => {
    const scheduler = new InferenceScheduler();
    let idleRan = false;
    await scheduler.between(() => (idleRan = true));
    expect(idleRan).toBe(true);

    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    let started!: () => void;
    const roundStarted = new Promise<void>((resolve) => (started = resolve));
    const bundle = { dir: 'gated', manifest: { input: { width: 2, height: 1, channels: 1, normalisation: 'none' } } } as unknown as LoadedBundle;
    const frames = [1, 2].map((seq) => ({ seq, data: new Uint8Array(2) }) as unknown as Frame);
    const camera: ScoringCamera = {
      name: 'cam',
      bundle: {
        ...bundle,
        model: {
          run: async () => {
            started();
            await gate;
            throw new Error('inference is not what this test is about');
          },
        },
      } as unknown as LoadedBundle,
      ignoreMask: undefined,
      take: () => {
        const frame = frames.shift();
        if (frame) log.push(`take ${frame.seq}`);
        return frame;
      },
      scored: () => {},
      failed: (frame) => log.push(`done ${frame.seq}`),
    };
    scheduler.add(camera);
    scheduler.wake();
    await roundStarted;
    const change = scheduler.between(() => log.push('change'));
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(log).toEqual(['take 1']);
    release();
    await change;
    await scheduler.stop();
    expect(log.slice(0, 3)).toEqual(['take 1', 'done 1', 'change']);
    expect(log.indexOf('take 2')).toBeGreaterThan(log.indexOf('change'));
  });
});

describe.skipIf(!haveDemo)('swapping a camera model', () => {
  let demoThreshold: number;
  beforeAll(() => {
    demoThreshold = JSON.parse(readFileSync(path.join(DEMO, 'manifest.json'), 'utf8')).calibration.int8.threshold;
  });

  it('switches threshold and tracker, ends an open event with model-changed, and disposes the old bundle once no camera runs it', async () => {
    const next = retuned('retuned-a', 42.5);
    const { manager, pipelines, events, loads, disposed } = await rig(config([{ name: 'a', url: '/v/a.mp4' }, { name: 'b', url: '/v/b.mp4' }]));
    const [a, b] = pipelines as [CameraPipeline, CameraPipeline];
    // The two cameras share one loaded session.
    expect(loads).toEqual([DEMO]);
    expect(a.bundle).toBe(b.bundle);
    const old = a.bundle;

    a.scored(frameFor(old, 1), score(old, demoThreshold + 10), 0.001);
    expect(events.map((e) => e.type)).toEqual(['start']);

    const [outcome] = await manager.swap([{ camera: 'a', choice: { ...manager.choice('a')!, model: next } }], 'api');
    expect(outcome).toMatchObject({ camera: 'a', ok: true, previous: { model: DEMO, variant: 'int8' }, endedEvent: events[0]!.id });
    expect(a.threshold).toBe(42.5);
    expect(a.bundle.dir).toBe(next);
    expect(b.bundle).toBe(old);
    expect(manager.info('a')).toMatchObject({ model: next, threshold: 42.5, origin: 'api', input: { width: 112, height: 64, channels: 1 } });
    expect(manager.info('b')).toMatchObject({ model: DEMO, threshold: demoThreshold, origin: 'config' });

    // The open event ended with the old model's threshold, marked as ended by the swap.
    expect(events[1]).toMatchObject({ type: 'end', id: events[0]!.id, reason: 'model-changed', threshold: demoThreshold });
    // The new tracker judges against the new threshold: a score between the two starts nothing now.
    a.scored(frameFor(old, 2), score(old, 30), 0.001);
    expect(events).toHaveLength(2);
    a.scored(frameFor(old, 3), score(old, 50), 0.001);
    expect(events[2]).toMatchObject({ type: 'start', threshold: 42.5 });

    // Camera b still runs the demo bundle: it stays loaded.
    expect(disposed).toEqual([]);
    await manager.swap([{ camera: 'b', choice: { ...manager.choice('b')!, model: next } }], 'reload');
    expect(disposed).toEqual([DEMO]);
    await manager.dispose();
    expect(disposed.sort()).toEqual([DEMO, next, next].sort());
  });

  it('leaves the old model running when the new bundle cannot be loaded, and says why', async () => {
    const broken = corrupt('corrupt-a');
    const missing = path.join(root, 'no-such-bundle');
    const { manager, pipelines, loads, disposed } = await rig(config([{ name: 'a', url: '/v/a.mp4' }]));
    const [a] = pipelines as [CameraPipeline];
    const before = a.bundle;
    for (const dir of [broken, missing]) {
      const [outcome] = await manager.swap([{ camera: 'a', choice: { ...manager.choice('a')!, model: dir } }], 'api');
      expect(outcome!.ok).toBe(false);
      const { error } = outcome as { error: unknown };
      expect(error).toBeInstanceOf(ModelError);
      expect((error as Error).message).toContain(dir);
    }
    expect(a.bundle).toBe(before);
    expect(manager.info('a')).toMatchObject({ model: DEMO, origin: 'config' });
    expect(loads).toEqual([DEMO]);
    expect(disposed).toEqual([]);
    await manager.dispose();
  });

  it('refuses a model of another input size (ffmpeg delivers the running size) and disposes it', async () => {
    const other = path.join(root, 'other-size');
    const { manager, pipelines, disposed } = await rig(config([{ name: 'a', url: '/v/a.mp4' }]), async (dir, options) => {
      const bundle = await loadBundle(DEMO, options);
      if (dir !== other) return bundle;
      return { ...bundle, dir, manifest: { ...bundle.manifest, input: { ...bundle.manifest.input, width: 64 } } };
    });
    const [outcome] = await manager.swap([{ camera: 'a', choice: { ...manager.choice('a')!, model: other } }], 'api');
    expect(outcome!.ok).toBe(false);
    const { error } = outcome as { error: Error };
    expect(error).toBeInstanceOf(ModelSizeError);
    expect(error.message).toMatch(/takes 64x64x1 frames, but the camera's ffmpeg delivers 112x64x1/);
    expect(pipelines[0]!.bundle.dir).toBe(DEMO);
    expect(disposed).toEqual([other]);
    await manager.dispose();
  });

  it('on a config reload swaps the cameras whose model changed and lists every other change as needing a restart', async () => {
    const next = retuned('retuned-reload', 33);
    const running = config([{ name: 'a', url: '/v/a.mp4' }, { name: 'b', url: '/v/b.mp4' }, { name: 'c', url: '/v/c.mp4' }]);
    const { manager, pipelines, cameras, loads } = await rig(running);
    const changed = config(
      [
        { name: 'a', url: '/v/a.mp4', model: next },
        { name: 'b', url: '/v/b.mp4', fps: 5 },
        { name: 'd', url: '/v/d.mp4' },
      ],
      { mqtt: { url: 'mqtt://127.0.0.1:2' } },
    );
    const report = await manager.reload(running, changed, resolveCameras(changed), cameras);
    expect(report.swapped.map((s) => [s.camera, s.model.model, s.model.origin])).toEqual([['a', next, 'reload']]);
    expect(report.failed).toEqual([]);
    expect(report.needsRestart.sort()).toEqual(['cameras.b.fps', 'cameras.c (removed)', 'cameras.d (added)', 'mqtt.url'].sort());
    expect(pipelines[0]!.threshold).toBe(33);
    expect(pipelines[1]!.bundle.dir).toBe(DEMO);
    expect(loads).toEqual([DEMO, next]);

    // The same file again: nothing to swap, the same changes still wait for a restart.
    const again = await manager.reload(running, changed, resolveCameras(changed), cameras);
    expect(again.swapped).toEqual([]);
    expect(loads).toEqual([DEMO, next]);
    await manager.dispose();
  });
});

describe.skipIf(!haveDemo)('POST /api/cameras/{camera}/model', () => {
  let server: Server;
  let base: string;
  let rigged: Rig;
  beforeAll(async () => {
    rigged = await rig(config([{ name: 'a', url: '/v/a.mp4' }]));
    const api = new ApiRouter({ version: 'test' });
    rigged.manager.addRoutes(api);
    server = createServer((request, response) => void api.handle(request, response));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/cameras`;
  });
  afterAll(async () => {
    await new Promise((resolve) => server?.close(resolve));
    await rigged?.manager.dispose();
  });

  const post = (camera: string, body: string) => fetch(`${base}/${camera}/model`, { method: 'POST', body, headers: { 'Content-Type': 'application/json' } });

  it('answers 400 for a body it cannot use, 404 for an unknown camera, 422 with the reason for a broken bundle', async () => {
    for (const body of ['not json', '[]', '{}', '{"model": ""}', '{"model": "x", "variant": "fp16"}', '{"model": "x", "threshold": 3}']) {
      const response = await post('a', body);
      expect(response.status, body).toBe(400);
      expect(((await response.json()) as ApiErrorBody).error).toBe('bad-request');
    }
    expect((await post('nope', JSON.stringify({ model: DEMO }))).status).toBe(404);
    const broken = corrupt('corrupt-api');
    const response = await post('a', JSON.stringify({ model: broken }));
    expect(response.status).toBe(422);
    const body = (await response.json()) as ApiErrorBody;
    expect(body.error).toBe('invalid-model');
    expect(body.message).toContain(path.join(broken, 'model.int8.onnx'));
    expect(rigged.pipelines[0]!.bundle.dir).toBe(DEMO);
  });

  it('switches and reports the new model, keeping the variant unless asked; GET reports it too', async () => {
    const next = retuned('retuned-api', 21);
    const response = await post('a', JSON.stringify({ model: next }));
    expect(response.status).toBe(200);
    const body = await response.json();
    expect(body).toMatchObject({ camera: 'a', model: { model: next, variant: 'int8', threshold: 21, origin: 'api' }, previous: { model: DEMO, variant: 'int8' }, endedEvent: null });
    const got = await fetch(`${base}/a/model`);
    expect(await got.json()).toMatchObject({ model: next, threshold: 21 });

    const fp32 = await post('a', JSON.stringify({ model: next, variant: 'fp32' }));
    expect(fp32.status).toBe(200);
    const demoFp32 = JSON.parse(readFileSync(path.join(DEMO, 'manifest.json'), 'utf8')).calibration.fp32.threshold;
    expect(((await fp32.json()) as { model: unknown }).model).toMatchObject({ variant: 'fp32', threshold: demoFp32 });
  });
});
