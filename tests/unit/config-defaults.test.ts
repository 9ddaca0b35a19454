/**
 * Fault 12 (config part): one source of truth for execution providers, for every
 * default, and for telling camera URL kinds apart.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { validateConfigFile } from '../../src/cli/validate-config.js';
import { ConfigFileSchema, CONFIG_JSON_SCHEMA_FILE, configFromObject, resolveCameras, sourceKind } from '../../src/config/index.js';
import { PROVIDERS, resolveProviders } from '../../src/model/onnx.js';
import { EMBEDDED_BROKER_DEFAULTS } from '../../src/publish/broker.js';
import { MQTT_DEFAULTS } from '../../src/publish/mqtt.js';
import { DEFAULT_BACKOFF } from '../../src/source/backoff.js';
import { DEFAULT_QUEUE_CAPACITY } from '../../src/source/camera.js';
import { classifyInput, DEFAULT_IO_TIMEOUT_MS, DEFAULT_PREVIEW_FPS } from '../../src/source/ffmpeg-args.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const jsonSchema = JSON.parse(readFileSync(path.join(ROOT, CONFIG_JSON_SCHEMA_FILE), 'utf8')) as JsonSchema;

interface JsonSchema {
  default?: unknown;
  properties?: Record<string, JsonSchema>;
  items?: JsonSchema;
  anyOf?: JsonSchema[];
}

/** Every `default` in the JSON Schema, by config path (`defaults.backoff.maxS`); array items are walked under `[]`. */
function schemaDefaults(node: JsonSchema, at: string[] = []): { at: string[]; value: unknown }[] {
  const found: { at: string[]; value: unknown }[] = node.default === undefined ? [] : [{ at, value: node.default }];
  for (const [key, child] of Object.entries(node.properties ?? {})) found.push(...schemaDefaults(child, [...at, key]));
  if (node.items) found.push(...schemaDefaults(node.items, [...at, '[]']));
  for (const option of node.anyOf ?? []) found.push(...schemaDefaults(option, at));
  return found;
}

function valueAt(value: unknown, at: readonly string[]): unknown {
  return at.reduce<unknown>((node, key) => (node as Record<string, unknown> | undefined)?.[key], value);
}

// The least a file needs, plus the optional objects whose fields have defaults (mqtt.tls).
const MINIMAL = { mqtt: { url: 'mqtts://broker:8883', tls: {} }, cameras: [{ name: 'a', url: 'clip.mp4', model: 'm' }] };

describe('defaults have one source of truth', () => {
  const defaults = schemaDefaults(jsonSchema);
  const parsed = ConfigFileSchema.parse(MINIMAL);

  it('the JSON Schema declares the defaults (it is generated from the zod schema)', () => {
    expect(defaults.map((d) => d.at.join('.'))).toEqual(
      expect.arrayContaining(['defaults.backoff.maxS', 'mqtt.scoreTopic.maxRateHz', 'defaults.queueSize', 'mqtt.tls.rejectUnauthorized']),
    );
  });

  it('every default in schemas/config.schema.json is what zod fills into a minimal config', () => {
    for (const { at, value } of defaults.filter((d) => !d.at.includes('[]'))) {
      const actual = valueAt(parsed, at);
      if (value !== null && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length === 0) {
        // `{}` marks an object whose own fields carry the defaults; those are checked one by one.
        expect(actual, at.join('.')).toBeTypeOf('object');
      } else {
        expect(actual, at.join('.')).toEqual(value);
      }
    }
  });

  it('a camera entry declares no defaults of its own, so what it leaves out comes from defaults:', () => {
    expect(defaults.filter((d) => d.at[0] === 'cameras')).toEqual([]);
  });

  it('a camera that sets nothing runs with exactly the documented defaults', () => {
    const config = configFromObject(MINIMAL, { env: {}, baseDir: ROOT, fileExists: () => true, hostname: 'h' });
    const [camera] = resolveCameras(config);
    for (const { at, value } of defaults.filter((d) => d.at[0] === 'defaults' && d.at.length >= 2)) {
      const actual = valueAt(camera, at.slice(1));
      if (value !== null && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length === 0) continue;
      expect(actual, at.join('.')).toEqual(value);
    }
  });

  // What the agent runs with comes from the config; the libraries' own defaults are for direct use. They must agree anyway.
  it("the libraries' own defaults agree with the config's", () => {
    const camera = parsed.defaults;
    expect(camera.backoff).toEqual({ initialS: DEFAULT_BACKOFF.initialMs / 1000, maxS: DEFAULT_BACKOFF.maxMs / 1000 });
    expect(camera.socketTimeoutS * 1000).toBe(DEFAULT_IO_TIMEOUT_MS);
    expect(camera.providers).toEqual(resolveProviders());
    expect(parsed.mqtt.embeddedBroker).toEqual(EMBEDDED_BROKER_DEFAULTS);
    expect(parsed.mqtt.protocolVersion).toBe(MQTT_DEFAULTS.protocolVersion);
    expect(parsed.mqtt.keepaliveS).toBe(MQTT_DEFAULTS.keepaliveSec);
    expect(parsed.mqtt.statsIntervalS * 1000).toBe(MQTT_DEFAULTS.statsIntervalMs);
    expect(camera.queueSize).toBe(DEFAULT_QUEUE_CAPACITY);
    expect(parsed.mqtt.scoreTopic.maxRateHz).toBe(MQTT_DEFAULTS.scoreMaxRateHz);
    expect(camera.preview.fps).toBe(DEFAULT_PREVIEW_FPS);
  });

  it('the camera backoff waits at most 30 s by default (the camera source, the README example and the config agree)', () => {
    expect(parsed.defaults.backoff.maxS).toBe(30);
    expect(DEFAULT_BACKOFF.maxMs).toBe(30_000);
  });
});

describe('execution providers come from the model loader\'s table', () => {
  const config = (providers: unknown) => ({ cameras: [{ name: 'a', url: 'clip.mp4', model: 'm', providers }] });
  const problems = (raw: unknown): string[] => {
    const result = ConfigFileSchema.safeParse(raw);
    return result.success ? [] : result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`);
  };

  it('a provider the loader would refuse at start-up is a config error that lists the valid ones', () => {
    const names = Object.keys(PROVIDERS).join(', ');
    expect(problems(config(['rocm', 'cpu']))).toEqual([`cameras.0.providers.0: unknown execution provider "rocm": use one of ${names}`]);
    expect(problems(config(['migraphx']))).toEqual([`cameras.0.providers.0: unknown execution provider "migraphx": use one of ${names}`]);
    expect(problems({ defaults: { providers: ['rocm'] }, cameras: [{ name: 'a', url: 'x.mp4' }] })).toEqual([
      `defaults.providers.0: unknown execution provider "rocm": use one of ${names}`,
    ]);
  });

  it('validate-config refuses such a file instead of calling it ok', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-providers-'));
    try {
      const file = path.join(dir, 'rocm.yaml');
      writeFileSync(file, 'defaults: { model: m, providers: [rocm, cpu] }\ncameras: [{ name: a, url: clip.mp4 }]\n');
      const out: string[] = [];
      const err: string[] = [];
      const code = await validateConfigFile(file, {
        env: {},
        output: { out: (line) => out.push(line), err: (line) => err.push(line) },
        load: { baseDir: dir, fileExists: () => true },
      });
      expect(code).toBe(1);
      expect(out).toEqual([]);
      expect(err.join('\n')).toContain('defaults.providers.0: unknown execution provider "rocm": use one of cpu, cuda,');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('every name the config accepts, the loader resolves (aliases included)', () => {
    for (const name of Object.keys(PROVIDERS)) {
      expect(problems(config([name])), name).toEqual([]);
      expect(() => resolveProviders([name]), name).not.toThrow();
    }
    expect(problems(config(['directml', 'cpu']))).toEqual([]);
  });

  it('the JSON Schema offers editors the same names', () => {
    const providers = jsonSchema.properties!.defaults!.properties!.providers as { items: { enum: string[] } };
    expect(providers.items.enum).toEqual(Object.keys(PROVIDERS));
  });
});

describe('camera URL kinds are told apart in one place', () => {
  it.each([
    ['rtsp://u:p@cam/1', 'rtsp'],
    ['RTSPS://cam/1', 'rtsp'],
    ['https://cam/mjpeg', 'http'],
    ['/dev/video2', 'v4l2'],
    ['/data/clip.mp4', 'file'],
    ['C:\\clips\\a.mp4', 'file'],
    ['file:///data/clip.mp4', 'file'],
    ['srt://host:9000', 'stream'],
  ] as const)('%s is %s for the config and for ffmpeg alike', (url, kind) => {
    expect(sourceKind(url)).toBe(kind);
    expect(classifyInput(url)).toBe(kind);
  });
});
