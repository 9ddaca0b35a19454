import type { Command } from 'commander';
import { ConfigError } from '../config/errors.js';
import { DEFAULT_CONFIG_FILE, loadConfig, type ConfigOptions } from '../config/load.js';
import { resolveCameras, type CameraConfig, type Config } from '../config/resolve.js';
import type { Environment } from '../config/substitute.js';
import { formatError } from '../errors.js';
import { scrubSecrets } from '../redact.js';

export interface ValidateConfigOutput {
  out: (line: string) => void;
  err: (line: string) => void;
}

export function registerValidateConfig(program: Command): void {
  program
    .command('validate-config')
    .description('check a config file (every problem at once) and summarise what it would run; exits 1 when invalid')
    .argument('[file]', 'YAML config file', DEFAULT_CONFIG_FILE)
    .option('--json', 'print the resolved config as JSON (secrets masked) instead of a summary', false)
    .action(async (file: string, flags: { json: boolean }) => {
      process.exitCode = await validateConfigFile(file, {
        json: flags.json,
        output: { out: (line) => console.log(line), err: (line) => console.error(line) },
      });
    });
}

/**
 * Exit status 0 when the file is valid, 1 when it is not (a finding, not a
 * misuse: `linewatch run` exits 2 on the same file because it cannot start).
 */
export async function validateConfigFile(
  file: string,
  options: { output: ValidateConfigOutput; env?: Environment; json?: boolean; load?: Omit<ConfigOptions, 'env'> },
): Promise<number> {
  let config: Config;
  let cameras: CameraConfig[];
  try {
    config = await loadConfig(file, options.env ?? process.env, options.load);
    cameras = resolveCameras(config);
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    options.output.err(formatError(error));
    return 1;
  }
  if (options.json) {
    options.output.out(JSON.stringify(maskSecrets({ ...config, cameras }), null, 2));
  } else {
    for (const line of describeConfig(file, config, cameras)) options.output.out(line);
  }
  return 0;
}

/** A few lines saying what the agent would do with this config; credentials masked. */
export function describeConfig(file: string, config: Config, cameras: readonly CameraConfig[]): string[] {
  const { mqtt } = config;
  const protocol = mqtt.protocolVersion === 5 ? 'MQTT 5' : 'MQTT 3.1.1';
  const broker =
    mqtt.url === undefined
      ? `embedded, listening on ${mqtt.embeddedBroker.host}:${mqtt.embeddedBroker.port}`
      : [
          `${scrubSecrets(mqtt.url)} (${protocol}`,
          mqtt.tls ? ', TLS' : '',
          mqtt.username ? `, user ${mqtt.username}` : '',
          mqtt.password ? (mqtt.passwordFile ? `, password from ${mqtt.passwordFile}` : ', password set') : '',
          ')',
        ].join('');
  const lines = [
    `ok: ${file}`,
    `device: ${config.deviceId}, topics under ${mqtt.baseTopic}/`,
    `broker: ${broker}`,
    `health: ${config.health.enabled ? `http://${config.health.host}:${config.health.port}/healthz` : 'off'}`,
    `data: ${config.dataDir}`,
    `cameras (${cameras.length}):`,
  ];
  for (const camera of cameras) lines.push(`  ${camera.name}: ${describeCamera(camera)}`);
  return lines;
}

function describeCamera(camera: CameraConfig): string {
  const options = [
    camera.kind === 'file' && camera.loop ? 'loop' : '',
    camera.kind === 'file' && camera.realtime ? 'native speed' : '',
    camera.hwaccel === 'none' ? '' : `hwaccel ${camera.hwaccel}`,
    camera.crop ? 'cropped' : '',
    camera.ignore.length > 0 ? `${camera.ignore.length} ignore polygon${camera.ignore.length === 1 ? '' : 's'}` : '',
  ].filter(Boolean);
  const threshold =
    camera.threshold.mode === 'manifest'
      ? 'threshold from the model'
      : camera.threshold.mode === 'fpr'
        ? `threshold at ${camera.threshold.value} false-positive rate`
        : `threshold ${camera.threshold.value}`;
  const { k, n } = camera.debounce;
  return [
    `${camera.kind} ${scrubSecrets(camera.url)}${options.length > 0 ? ` (${options.join(', ')})` : ''}`,
    `model ${camera.model} ${camera.variant} on ${camera.providers.join(' > ')}`,
    `${camera.fps} fps`,
    threshold,
    `events after ${k} of ${n} frames`,
  ].join('; ');
}

/** Keys whose whole value is a secret (the schema is strict: no other key holds one directly). */
const SECRET_KEYS = new Set(['password']);

/** Every string goes through the scrubber, not just URLs: a credential can hide in inputArgs or a query string too. */
function maskSecrets(value: unknown, key = ''): unknown {
  if (typeof value === 'string') return SECRET_KEYS.has(key) ? '***' : scrubSecrets(value);
  if (Array.isArray(value)) return value.map((item) => maskSecrets(item));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([name, child]) => [name, maskSecrets(child, name)]));
  }
  return value;
}
