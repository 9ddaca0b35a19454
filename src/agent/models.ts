import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { systemClock, type Clock } from '../clock.js';
import type { CameraConfig, Config } from '../config/index.js';
import { LinewatchError, ModelError, UsageError } from '../errors.js';
import { ApiError, type ApiRouter } from '../health/api.js';
import type { Logger } from '../log.js';
import { loadBundle, type LoadBundleOptions, type LoadedBundle } from '../model/bundle.js';
import { VARIANTS, type Variant } from '../model/manifest.js';
import type { ProviderSettings } from '../model/provider-options.js';
import { ModelSizeError, type PreparedModel } from './camera.js';

/**
 * The agent's loaded models and how a camera's model is changed while it runs (REST API,
 * config reload on SIGHUP). A new bundle is loaded and warmed up beside the running one;
 * if anything is wrong with it the old one keeps running and the caller is told why. The
 * switch itself happens between two inference rounds (InferenceScheduler.between), so a
 * frame is always scored and judged by one model and its threshold; a bundle is disposed
 * once no camera runs it.
 */

/** What decides which loaded model a camera runs; cameras with equal choices share one session at start. */
export interface ModelChoice {
  /** Absolute path of the bundle folder. */
  model: string;
  variant: Variant;
  providers: string[];
  threads: number;
  /** Per-provider settings (CUDA device, TensorRT switches); part of the choice, so a change reloads the model. */
  providerOptions?: ProviderSettings;
}

/** What the manager needs of a camera (CameraPipeline is one). */
export interface SwappableCamera {
  readonly name: string;
  readonly bundle: LoadedBundle;
  readonly threshold: number;
  readonly thresholdNote: string;
  prepareModel(bundle: LoadedBundle): PreparedModel;
  /** Only while no round holds the camera; returns the id of an event it ended. */
  useModel(next: PreparedModel): string | null;
}

export interface ModelInfo {
  camera: string;
  model: string;
  variant: Variant;
  /** The providers asked for; `activeProviders` are those onnxruntime uses. */
  providers: string[];
  activeProviders: string[];
  threads: number;
  input: { width: number; height: number; channels: number };
  scorer: string;
  threshold: number;
  thresholdNote: string;
  warmUpMs: number;
  /** When the bundle now running was loaded. */
  loadedAt: string;
  /** How it got there: the config at start, the REST API, or a config reload. */
  origin: SwapOrigin;
}

export type SwapOrigin = 'config' | 'api' | 'reload';

export interface SwapRequest {
  camera: string;
  choice: ModelChoice;
}

export type SwapOutcome =
  | { camera: string; ok: true; model: ModelInfo; previous: { model: string; variant: Variant }; endedEvent: string | null }
  | { camera: string; ok: false; error: unknown };

export interface ReloadReport {
  swapped: Extract<SwapOutcome, { ok: true }>[];
  failed: Extract<SwapOutcome, { ok: false }>[];
  /** Config paths whose change only a restart applies (no values: they may be secrets). */
  needsRestart: string[];
}

export interface ModelManagerOptions {
  log: Logger;
  /** Runs a synchronous change while no inference round is in progress. */
  between: (change: () => void) => Promise<void>;
  clock?: Clock;
  /** Tests inject a loader; default loadBundle. */
  load?: (dir: string, options: LoadBundleOptions) => Promise<LoadedBundle>;
}

interface Running {
  camera: SwappableCamera;
  choice: ModelChoice;
  loadedAt: number;
  origin: SwapOrigin;
}

export class ModelManager {
  private readonly log: Logger;
  private readonly between: (change: () => void) => Promise<void>;
  private readonly clock: Clock;
  private readonly load: (dir: string, options: LoadBundleOptions) => Promise<LoadedBundle>;
  /** Every bundle loaded and not yet disposed. */
  private readonly loaded = new Set<LoadedBundle>();
  /** The bundles loaded at start, by choice, for bundleFor(). */
  private readonly initial = new Map<string, { bundle: LoadedBundle; loadedAt: number }>();
  private readonly cameras = new Map<string, Running>();
  /** One change at a time: a second request waits for the first to finish. */
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(options: ModelManagerOptions) {
    this.log = options.log;
    this.between = options.between;
    this.clock = options.clock ?? systemClock;
    this.load = options.load ?? loadBundle;
  }

  /** At start: one bundle per distinct choice, shared by the cameras that make it. */
  async loadFor(cameras: CameraConfig[]): Promise<void> {
    for (const camera of cameras) {
      const choice = choiceOf(camera);
      if (this.initial.has(choiceKey(choice))) continue;
      const bundle = await this.loadChoice(choice);
      this.initial.set(choiceKey(choice), { bundle, loadedAt: this.clock.now() });
    }
  }

  /** The bundle loadFor() loaded for this camera's config. */
  bundleFor(camera: CameraConfig): LoadedBundle {
    const entry = this.initial.get(choiceKey(choiceOf(camera)));
    if (!entry) throw new Error(`no model loaded for camera ${camera.name}: loadFor() first`);
    return entry.bundle;
  }

  /** The running cameras, with the config each was built from. */
  attach(cameras: { camera: SwappableCamera; config: CameraConfig }[]): void {
    for (const { camera, config } of cameras) {
      const choice = choiceOf(config);
      this.cameras.set(camera.name, { camera, choice, loadedAt: this.initial.get(choiceKey(choice))?.loadedAt ?? this.clock.now(), origin: 'config' });
    }
  }

  has(camera: string): boolean {
    return this.cameras.has(camera);
  }

  /** What a camera runs now. */
  info(camera: string): ModelInfo {
    const running = this.cameras.get(camera);
    if (!running) throw new RangeError(`no camera ${camera}`);
    return describe(running);
  }

  /** The model choice a camera runs now (its config's, or what an API call or reload put there). */
  choice(camera: string): ModelChoice | undefined {
    return this.cameras.get(camera)?.choice;
  }

  /**
   * Loads (always from disk, so a bundle retrained in place is picked up) and switches. Cameras
   * asking for the same choice in one call share one new bundle. Each camera succeeds or fails on
   * its own; a failed one keeps its model.
   */
  swap(requests: SwapRequest[], origin: SwapOrigin): Promise<SwapOutcome[]> {
    const run = this.queue.then(() => this.swapNow(requests, origin));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * A config reload: swaps the model of every camera whose model, variant, providers or threads
   * differ from what it runs, and lists every other change, which needs a restart.
   */
  async reload(running: Config, next: Config, nextCameras: CameraConfig[], runningCameras: CameraConfig[]): Promise<ReloadReport> {
    const needsRestart: string[] = [];
    for (const key of new Set([...Object.keys(running), ...Object.keys(next)])) {
      if (key === 'cameras' || key === 'defaults') continue;
      changedPaths((running as unknown as Record<string, unknown>)[key], (next as unknown as Record<string, unknown>)[key], key, needsRestart);
    }
    const before = new Map(runningCameras.map((camera) => [camera.name, camera]));
    const requests: SwapRequest[] = [];
    for (const camera of nextCameras) {
      const old = before.get(camera.name);
      if (!old) {
        needsRestart.push(`cameras.${camera.name} (added)`);
        continue;
      }
      before.delete(camera.name);
      for (const key of new Set([...Object.keys(old), ...Object.keys(camera)])) {
        if (MODEL_KEYS.has(key)) continue;
        changedPaths((old as Record<string, unknown>)[key], (camera as Record<string, unknown>)[key], `cameras.${camera.name}.${key}`, needsRestart);
      }
      const choice = choiceOf(camera);
      const current = this.choice(camera.name);
      if (current && !isDeepStrictEqual(current, choice)) requests.push({ camera: camera.name, choice });
    }
    for (const name of before.keys()) needsRestart.push(`cameras.${name} (removed)`);
    const outcomes = requests.length === 0 ? [] : await this.swap(requests, 'reload');
    return {
      swapped: outcomes.filter((outcome): outcome is Extract<SwapOutcome, { ok: true }> => outcome.ok),
      failed: outcomes.filter((outcome): outcome is Extract<SwapOutcome, { ok: false }> => !outcome.ok),
      needsRestart,
    };
  }

  /** No more changes (the agent stops); resolves once a change in progress is done. */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
  }

  async dispose(): Promise<void> {
    await this.close();
    for (const bundle of this.loaded) await bundle.dispose();
    this.loaded.clear();
    this.initial.clear();
  }

  /** GET and POST /api/cameras/{camera}/model. */
  addRoutes(api: ApiRouter): void {
    const cameraOf = (name: string | undefined) => {
      if (name === undefined || !this.cameras.has(name)) throw new ApiError(404, 'unknown-camera', `no camera ${JSON.stringify(name)}`);
      return name;
    };
    api.add({
      method: 'GET',
      path: '/api/cameras/{camera}/model',
      summary: 'The model a camera runs now, with its threshold',
      tags: ['models'],
      responses: { '200': { description: 'the running model', schema: MODEL_INFO_SCHEMA }, '404': { description: 'no such camera' } },
      handle: ({ params }) => ({ status: 200, json: this.info(cameraOf(params.camera)) }),
    });
    api.add({
      method: 'POST',
      path: '/api/cameras/{camera}/model',
      summary: "Switch a camera's model without a restart",
      tags: ['models'],
      requestBody: {
        contentType: 'application/json',
        maxBytes: 4096,
        schema: {
          type: 'object',
          required: ['model'],
          additionalProperties: false,
          properties: {
            model: { type: 'string', description: 'bundle folder (holds manifest.json); a relative path resolves against the agent\'s working directory, as in the config' },
            variant: { enum: [...VARIANTS], description: "which ONNX model of the bundle; default the camera's current variant" },
          },
        },
      },
      responses: {
        '200': {
          description: 'switched: the new model runs from the next frame on; an event open at the switch ended with reason model-changed (endedEvent)',
          schema: {
            type: 'object',
            required: ['camera', 'model', 'previous', 'endedEvent'],
            properties: {
              camera: { type: 'string' },
              model: MODEL_INFO_SCHEMA,
              previous: { type: 'object', properties: { model: { type: 'string' }, variant: { type: 'string' } } },
              endedEvent: { type: ['string', 'null'] },
            },
          },
        },
        '400': { description: 'the body is not a JSON object with a model (and optionally a variant)' },
        '404': { description: 'no such camera' },
        '409': { description: "the model takes frames of another size than the camera's ffmpeg delivers: that needs a restart" },
        '422': { description: 'the bundle cannot be used (missing, corrupt, non-finite scores, no calibration for the threshold mode): the old model keeps running' },
        '503': { description: 'the agent is stopping' },
      },
      handle: async ({ params, body }) => {
        const camera = cameraOf(params.camera);
        const request = parseSwapBody(body);
        const current = this.choice(camera)!;
        const [outcome] = await this.swap(
          [{ camera, choice: { ...current, model: path.resolve(request.model), variant: request.variant ?? current.variant } }],
          'api',
        );
        if (!outcome!.ok) throw apiErrorOf(outcome!.error);
        const { ok: _ok, ...result } = outcome!;
        return { status: 200, json: result };
      },
    });
  }

  private async swapNow(requests: SwapRequest[], origin: SwapOrigin): Promise<SwapOutcome[]> {
    const outcomes = new Map<string, SwapOutcome>();
    const fail = (camera: string, error: unknown) => outcomes.set(camera, { camera, ok: false, error });
    if (this.closed) {
      for (const { camera } of requests) fail(camera, new AgentStopping());
      return requests.map(({ camera }) => outcomes.get(camera)!);
    }
    // Beside the running ones: one load per distinct choice.
    const fresh = new Map<string, LoadedBundle | { error: unknown }>();
    for (const { choice } of requests) {
      const key = choiceKey(choice);
      if (fresh.has(key)) continue;
      fresh.set(key, await this.loadChoice(choice).catch((error: unknown) => ({ error })));
    }
    const prepared: { running: Running; choice: ModelChoice; next: PreparedModel }[] = [];
    for (const { camera, choice } of requests) {
      const running = this.cameras.get(camera);
      const bundle = fresh.get(choiceKey(choice))!;
      if (!running) fail(camera, new RangeError(`no camera ${camera}`));
      else if ('error' in bundle) fail(camera, bundle.error);
      else {
        try {
          prepared.push({ running, choice, next: running.camera.prepareModel(bundle) });
        } catch (error) {
          fail(camera, error);
        }
      }
    }
    if (this.closed) {
      for (const { running } of prepared) fail(running.camera.name, new AgentStopping());
      prepared.length = 0;
    }
    const previous = new Map(prepared.map(({ running }) => [running.camera.name, running.camera.bundle]));
    const ended = new Map<string, string | null>();
    if (prepared.length > 0) {
      await this.between(() => {
        for (const { running, next } of prepared) ended.set(running.camera.name, running.camera.useModel(next));
      });
    }
    const now = this.clock.now();
    for (const { running, choice } of prepared) {
      const old = previous.get(running.camera.name)!;
      running.choice = choice;
      running.loadedAt = now;
      running.origin = origin;
      const model = describe(running);
      outcomes.set(running.camera.name, { camera: running.camera.name, ok: true, model, previous: { model: old.dir, variant: old.variant }, endedEvent: ended.get(running.camera.name) ?? null });
      const endedNote = ended.get(running.camera.name) ? `; the open event ${ended.get(running.camera.name)} ended (model-changed)` : '';
      this.log.info(
        `camera ${running.camera.name}: now runs model ${model.model} (${model.variant}) instead of ${old.dir} (${old.variant}), threshold ${model.threshold.toFixed(4)} (${model.thresholdNote})${endedNote}`,
      );
    }
    await this.disposeUnused();
    return requests.map(({ camera }) => outcomes.get(camera)!);
  }

  private async loadChoice(choice: ModelChoice): Promise<LoadedBundle> {
    const bundle = await this.load(choice.model, {
      variant: choice.variant,
      providers: choice.providers,
      threads: choice.threads,
      ...(choice.providerOptions !== undefined ? { providerOptions: choice.providerOptions } : {}),
      log: (message) => this.log.info(message),
    });
    this.loaded.add(bundle);
    const { input, scoring } = bundle.manifest;
    this.log.info(
      `model ${choice.model} (${choice.variant}, ${input.width}x${input.height}x${input.channels}, scorer ${scoring.scorer}) on ${bundle.model.providers.join(', ')}, warm-up ${bundle.warmUpMs.toFixed(1)} ms`,
    );
    return bundle;
  }

  /** Disposes bundles no camera runs: after a switch no round can still hold them (it happened between rounds). */
  private async disposeUnused(): Promise<void> {
    const inUse = new Set([...this.cameras.values()].map(({ camera }) => camera.bundle));
    for (const bundle of this.loaded) {
      if (inUse.has(bundle)) continue;
      this.loaded.delete(bundle);
      for (const [key, entry] of this.initial) if (entry.bundle === bundle) this.initial.delete(key);
      await bundle.dispose().catch((error: unknown) => this.log.warn(`disposing model ${bundle.dir} failed: ${(error as Error).message}`));
    }
  }
}

/** The agent stops: no model is changed any more. */
export class AgentStopping extends LinewatchError {
  constructor() {
    super('the agent is stopping: the model was not changed');
  }
}

const MODEL_KEYS = new Set(['model', 'variant', 'providers', 'threads', 'providerOptions']);

export function choiceOf(camera: CameraConfig): ModelChoice {
  const choice: ModelChoice = { model: camera.model, variant: camera.variant, providers: [...camera.providers], threads: camera.threads };
  if (camera.providerOptions !== undefined) choice.providerOptions = camera.providerOptions;
  return choice;
}

function choiceKey(choice: ModelChoice): string {
  return JSON.stringify([choice.model, choice.variant, choice.providers, choice.threads, choice.providerOptions ?? null]);
}

function describe(running: Running): ModelInfo {
  const { camera, choice } = running;
  const { bundle } = camera;
  const { input } = bundle.manifest;
  return {
    camera: camera.name,
    model: bundle.dir,
    variant: bundle.variant,
    providers: choice.providers,
    activeProviders: [...bundle.model.providers],
    threads: choice.threads,
    input: { width: input.width, height: input.height, channels: input.channels },
    scorer: bundle.manifest.scoring.scorer,
    threshold: camera.threshold,
    thresholdNote: camera.thresholdNote,
    warmUpMs: Math.round(bundle.warmUpMs * 10) / 10,
    loadedAt: new Date(running.loadedAt).toISOString(),
    origin: running.origin,
  };
}

/** Paths (up to three levels deep) where two config values differ. */
function changedPaths(before: unknown, after: unknown, at: string, out: string[], depth = 0): void {
  if (isDeepStrictEqual(before, after)) return;
  if (depth < 2 && isObject(before) && isObject(after)) {
    for (const key of new Set([...Object.keys(before), ...Object.keys(after)])) changedPaths(before[key], after[key], `${at}.${key}`, out, depth + 1);
    return;
  }
  out.push(at);
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parseSwapBody(body: Uint8Array): { model: string; variant?: Variant } {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw new ApiError(400, 'bad-request', 'the body must be JSON: {"model": "<bundle folder>", "variant": "int8" | "fp32"}');
  }
  if (!isObject(value)) throw new ApiError(400, 'bad-request', 'the body must be a JSON object: {"model": "<bundle folder>"}');
  const unknown = Object.keys(value).filter((key) => key !== 'model' && key !== 'variant');
  if (unknown.length > 0) throw new ApiError(400, 'bad-request', `unknown field(s) ${unknown.join(', ')}: only model and variant can be changed here`);
  if (typeof value.model !== 'string' || value.model.trim() === '') throw new ApiError(400, 'bad-request', 'model must be the path of a bundle folder');
  if (value.variant !== undefined && !VARIANTS.includes(value.variant as Variant)) {
    throw new ApiError(400, 'bad-request', `variant must be one of ${VARIANTS.join(', ')}, got ${JSON.stringify(value.variant)}`);
  }
  return { model: value.model, variant: value.variant as Variant | undefined };
}

function apiErrorOf(error: unknown): ApiError {
  if (error instanceof ApiError) return error;
  const text = describeError(error);
  if (error instanceof AgentStopping) return new ApiError(503, 'shutting-down', text);
  if (error instanceof ModelSizeError) return new ApiError(409, 'input-size-mismatch', text);
  if (error instanceof ModelError || error instanceof UsageError) return new ApiError(422, 'invalid-model', text);
  return new ApiError(500, 'load-failed', text);
}

/** The message and what to do, on one string: an API caller and a log line both need the hint. */
export function describeError(error: unknown): string {
  if (error instanceof LinewatchError) return error.hint ? `${error.message} (${error.hint})` : error.message;
  return error instanceof Error ? error.message : String(error);
}

const MODEL_INFO_SCHEMA = {
  type: 'object',
  required: ['camera', 'model', 'variant', 'threshold', 'input', 'loadedAt', 'origin'],
  properties: {
    camera: { type: 'string' },
    model: { type: 'string', description: 'bundle folder' },
    variant: { enum: [...VARIANTS] },
    providers: { type: 'array', items: { type: 'string' } },
    activeProviders: { type: 'array', items: { type: 'string' } },
    threads: { type: 'integer' },
    input: { type: 'object', properties: { width: { type: 'integer' }, height: { type: 'integer' }, channels: { type: 'integer' } } },
    scorer: { type: 'string' },
    threshold: { type: 'number' },
    thresholdNote: { type: 'string' },
    warmUpMs: { type: 'number' },
    loadedAt: { type: 'string', format: 'date-time' },
    origin: { enum: ['config', 'api', 'reload'] },
  },
};
