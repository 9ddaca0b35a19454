import type { z } from 'zod';
import { ConfigError } from './errors.js';
import { MergedCameraSchema, type ConfigFile } from './schema.js';
import { classifySource, type CameraSourceKind } from './sources.js';
import { formatPath, isPlainObject } from './substitute.js';

export interface TlsConfig {
  /** Absolute paths of PEM files. */
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
}

export interface MqttConfig extends Omit<ConfigFile['mqtt'], 'tls' | 'usernameFile' | 'passwordFile' | 'clientId' | 'baseTopic'> {
  clientId: string;
  /** Prefix of every topic, without a trailing slash. */
  baseTopic: string;
  /** Absolute paths the username / password were read from, when they came from files. */
  usernameFile?: string;
  passwordFile?: string;
  tls?: TlsConfig;
}

/** The configuration the agent runs with: validated, secrets read, derived values filled, paths absolute. */
export interface Config extends Omit<ConfigFile, 'deviceId' | 'mqtt'> {
  deviceId: string;
  mqtt: MqttConfig;
}

/** One camera, with `defaults` and its own overrides merged: every field the pipeline needs, populated. */
export type CameraConfig = Omit<z.output<typeof MergedCameraSchema>, 'scorePublish'> & {
  name: string;
  url: string;
  kind: CameraSourceKind;
  scorePublish: boolean;
};

/**
 * Objects merge key by key; anything else in `override` (arrays included)
 * replaces the base value; `undefined` keeps it.
 */
export function deepMerge(base: unknown, override: unknown): unknown {
  if (override === undefined) return base;
  if (!isPlainObject(base) || !isPlainObject(override)) return override;
  const merged: Record<string, unknown> = { ...base };
  for (const [key, value] of Object.entries(override)) merged[key] = deepMerge(base[key], value);
  return merged;
}

/** The per-camera configs the app uses: `config.defaults` deep-merged with each camera's overrides. */
export function resolveCameras(config: Pick<Config, 'defaults' | 'cameras' | 'mqtt'>): CameraConfig[] {
  const issues: { path: string; message: string }[] = [];
  const cameras: CameraConfig[] = [];
  config.cameras.forEach((entry, index) => {
    const { name, url, ...overrides } = entry;
    const merged = MergedCameraSchema.safeParse(deepMerge(config.defaults, overrides));
    const source = classifySource(url);
    if ('error' in source) issues.push({ path: `cameras.${index}.url`, message: source.error });
    if (!merged.success) {
      for (const issue of merged.error.issues) {
        issues.push({ path: formatPath(['cameras', index, ...(issue.path as (string | number)[])]), message: issue.message });
      }
      return;
    }
    if ('error' in source) return;
    cameras.push({
      ...merged.data,
      name,
      url,
      kind: source.kind,
      scorePublish: merged.data.scorePublish ?? config.mqtt.scoreTopic.enabled,
    });
  });
  if (issues.length > 0) throw new ConfigError('(in memory)', issues);
  return cameras;
}
