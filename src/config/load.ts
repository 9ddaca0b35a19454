import { existsSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import YAML from 'yaml';
import { z } from 'zod';
import { MANIFEST_FILE } from '../model/manifest.js';
import { ConfigError } from './errors.js';
import { deepMerge, type Config, type MqttConfig, type TlsConfig } from './resolve.js';
import { ConfigFileSchema, MergedCameraSchema, type FileRef } from './schema.js';
import { classifySource } from './sources.js';
import {
  credentialsDirectoryMissing,
  formatPath,
  isPlainObject,
  substituteEnvironment,
  type ConfigIssue,
  type ConfigPath,
  type Environment,
} from './substitute.js';

export const DEFAULT_CONFIG_FILE = 'config/linewatch.yaml';

export interface ConfigOptions {
  /** Source of `${VAR}` values and $CREDENTIALS_DIRECTORY. Default: process.env. */
  env?: Environment;
  /** Relative paths (model, dataDir, file URLs, secrets) resolve against this. Default: the working directory. */
  baseDir?: string;
  /** Default deviceId comes from it. Default: os.hostname(). */
  hostname?: string;
  /** Existence check for models, video files and TLS files (tests inject one for assets that arrive later). */
  fileExists?: (absolutePath: string) => boolean;
  /** Reads secret files (`xxxFile` keys). */
  readTextFile?: (absolutePath: string) => string;
}

/**
 * Bounds on what a config file may cost to read. Real configs are a few KiB; these
 * only stop a wrong file (a video passed to --config) or a hostile one (a YAML
 * "billion laughs", where a few lines of nested aliases expand to gigabytes) from
 * taking the agent down with an out-of-memory crash that systemd restarts forever.
 */
export const CONFIG_LIMITS = Object.freeze({
  /** Largest config file read, in bytes. */
  maxBytes: 1024 * 1024,
  /**
   * Alias expansions allowed (`*name`), weighted by the aliases inside what they
   * point at, as the yaml package counts them: a shared block reused by every
   * camera of a large site stays far below it, a billion-laughs file far above.
   */
  maxAliasCount: 100,
});

/** Reads, substitutes, validates and resolves a config file; throws a ConfigError listing every problem. */
export async function loadConfig(
  file: string = DEFAULT_CONFIG_FILE,
  env: Environment = process.env,
  options: Omit<ConfigOptions, 'env'> = {},
): Promise<Config> {
  let text: string;
  try {
    text = await readBounded(file, CONFIG_LIMITS.maxBytes);
  } catch (cause) {
    if (cause instanceof ConfigError) throw cause;
    const code = (cause as NodeJS.ErrnoException).code ?? String(cause);
    throw new ConfigError(file, [{ path: '(file)', message: `cannot read ${path.resolve(file)} (${code})` }], {
      hint: `pass an existing file with --config, or copy one of the examples in config/ to ${DEFAULT_CONFIG_FILE}`,
      cause,
    });
  }
  return parseConfig(text, { ...options, env, file });
}

/** The file's text, reading at most one byte past `maxBytes` (whatever the file claims its size is: it may be a pipe). */
async function readBounded(file: string, maxBytes: number): Promise<string> {
  const handle = await open(file, 'r');
  try {
    const buffer = Buffer.alloc(maxBytes + 1);
    let length = 0;
    while (length < buffer.length) {
      const { bytesRead } = await handle.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > maxBytes) throw tooLarge(file, `more than ${formatBytes(maxBytes)}`);
    return buffer.toString('utf8', 0, length);
  } finally {
    await handle.close();
  }
}

function tooLarge(file: string, size: string): ConfigError {
  return new ConfigError(file, [{ path: '(file)', message: `the file is ${size}; a config file may be at most ${formatBytes(CONFIG_LIMITS.maxBytes)}` }], {
    hint: 'check that --config names the YAML config (not a video, a model or a log); a real config is a few KiB',
  });
}

function formatBytes(bytes: number): string {
  return bytes >= 1024 * 1024 ? `${(bytes / (1024 * 1024)).toFixed(bytes % (1024 * 1024) === 0 ? 0 : 1)} MiB` : `${bytes} bytes`;
}

const MAX_YAML_ERRORS = 3;

/** Same as loadConfig, from YAML text. */
export function parseConfig(text: string, options: ConfigOptions & { file?: string } = {}): Config {
  const file = options.file ?? '(text)';
  const bytes = Buffer.byteLength(text, 'utf8');
  if (bytes > CONFIG_LIMITS.maxBytes) throw tooLarge(file, formatBytes(bytes));
  const document = YAML.parseDocument(text, { prettyErrors: true, uniqueKeys: true });
  if (document.errors.length > 0) {
    // One syntax error tends to cascade into dozens; the first few locate it.
    const shown = document.errors.slice(0, MAX_YAML_ERRORS).map((error) => ({
      path: error.linePos ? `line ${error.linePos[0].line}, column ${error.linePos[0].col}` : '(yaml)',
      message: error.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, ''),
    }));
    const more = document.errors.length - shown.length;
    if (more > 0) shown.push({ path: '(yaml)', message: `${more} more syntax errors, probably caused by the ones above` });
    throw new ConfigError(file, shown, { hint: 'the file is not valid YAML; check indentation and quoting around the lines named' });
  }
  let raw: unknown;
  try {
    raw = document.toJS({ maxAliasCount: CONFIG_LIMITS.maxAliasCount });
  } catch (cause) {
    // The yaml package signals an alias bomb with a ReferenceError and nothing more specific to test for.
    if (cause instanceof ReferenceError && /alias/i.test(cause.message)) {
      throw new ConfigError(
        file,
        [
          {
            path: '(yaml)',
            message: `aliases (*name) expand past the limit of ${CONFIG_LIMITS.maxAliasCount}: refused, since nested aliases are how a "billion laughs" file exhausts memory`,
          },
        ],
        { hint: 'write repeated settings out, or put them once under `defaults:` (every camera inherits them) instead of nesting aliases', cause },
      );
    }
    throw new ConfigError(file, [{ path: '(yaml)', message: `cannot be read as data: ${(cause as Error).message ?? String(cause)}` }], {
      hint: 'the file is YAML but not a config; compare it with the examples in config/',
      cause,
    });
  }
  return configFromObject(raw ?? {}, { ...options, file });
}

/** Same as loadConfig, from an already parsed object (what YAML would give). */
export function configFromObject(raw: unknown, options: ConfigOptions & { file?: string } = {}): Config {
  const file = options.file ?? '(object)';
  const context: Context = {
    env: options.env ?? process.env,
    baseDir: options.baseDir ?? process.cwd(),
    fileExists: options.fileExists ?? existsSync,
    readTextFile: options.readTextFile ?? ((absolutePath) => readFileSync(absolutePath, 'utf8')),
    issues: [],
    unresolved: [],
  };

  const substitution = substituteEnvironment(raw, context.env);
  context.issues.push(...substitution.issues);
  let value = resolveFileReferences(substitution.value, context);
  value = retypeWholeReferences(value, substitution.wholeReferences);

  // Values whose variable or credential could not be resolved are left as written; further complaints about them would be noise.
  context.unresolved = context.issues.map((issue) => issue.path);

  const parsed = ConfigFileSchema.safeParse(value);
  if (!parsed.success) report(context, zodIssues(parsed.error, [], ConfigFileSchema));
  checkCameras(value, context);
  checkMergedCameras(value, context);
  const secrets = readSecrets(value, context);

  if (context.issues.length > 0 || !parsed.success) throw new ConfigError(file, dedupe(context.issues));
  return finish(parsed.data, secrets, context, options.hostname ?? os.hostname());
}

interface Context {
  env: Environment;
  baseDir: string;
  fileExists: (absolutePath: string) => boolean;
  readTextFile: (absolutePath: string) => string;
  issues: ConfigIssue[];
  /** Paths whose `${VAR}` or credential could not be resolved. */
  unresolved: string[];
}

// ------------------------------------------------------------------ file references and secrets

const TLS_FILES = new Set(['ca', 'cert', 'key']);

/** Keys whose value is a file path (or `{ credential }`): every `xxxFile` key and the TLS files. */
function isFileReference(at: ConfigPath): boolean {
  const key = at[at.length - 1];
  if (typeof key !== 'string') return false;
  if (key.endsWith('File') && key.length > 4) return true;
  return at.length === 3 && at[0] === 'mqtt' && at[1] === 'tls' && TLS_FILES.has(key);
}

/** Turns `{ credential: name }` and relative paths at file-reference keys into absolute paths. */
function resolveFileReferences(node: unknown, context: Context, at: ConfigPath = []): unknown {
  if (Array.isArray(node)) return node.map((item, index) => resolveFileReferences(item, context, [...at, index]));
  if (!isPlainObject(node)) return node;
  const resolved: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(node)) {
    const child = [...at, key];
    resolved[key] = isFileReference(child) ? resolveFileReference(value, child, context) : resolveFileReferences(value, context, child);
  }
  return resolved;
}

function resolveFileReference(value: unknown, at: ConfigPath, context: Context): unknown {
  if (typeof value === 'string' && value !== '') return path.resolve(context.baseDir, value);
  const credential = isPlainObject(value) && Object.keys(value).length === 1 ? value.credential : undefined;
  if (typeof credential !== 'string' || !/^[A-Za-z0-9_.@-]+$/.test(credential)) return value; // the schema reports the shape
  const directory = context.env.CREDENTIALS_DIRECTORY;
  if (directory === undefined || directory === '') {
    context.issues.push({ path: formatPath(at), message: credentialsDirectoryMissing() });
    return value;
  }
  return path.join(directory, credential);
}

/** Reads every `xxxFile` secret (trimmed). Keys are dotted paths of the value they provide, e.g. `mqtt.password`. */
function readSecrets(value: unknown, context: Context): Map<string, string> {
  const secrets = new Map<string, string>();
  const visit = (node: unknown, at: ConfigPath): void => {
    if (Array.isArray(node)) return node.forEach((item, index) => visit(item, [...at, index]));
    if (!isPlainObject(node)) return;
    for (const [key, child] of Object.entries(node)) {
      const childPath = [...at, key];
      if (key.endsWith('File') && isFileReference(childPath) && typeof child === 'string') {
        try {
          secrets.set(formatPath([...at, key.slice(0, -4)]), context.readTextFile(child).trim());
        } catch (cause) {
          const code = (cause as NodeJS.ErrnoException).code;
          const reason = code === 'ENOENT' ? 'file not found' : `cannot read (${code ?? String(cause)})`;
          report(context, [{ path: formatPath(childPath), message: `${reason}: ${child}` }]);
        }
      } else {
        visit(child, childPath);
      }
    }
  };
  visit(value, []);
  return secrets;
}

// ------------------------------------------------------------------ `${VAR}` values the schema wants typed

/**
 * `port: ${PORT}` substitutes a string; where the schema wants a number or a
 * boolean there, the string is read as one. Only whole references are retyped,
 * so a password of digits stays a string.
 */
function retypeWholeReferences(value: unknown, wholeReferences: readonly ConfigPath[]): unknown {
  if (wholeReferences.length === 0) return value;
  const result = ConfigFileSchema.safeParse(value);
  if (result.success) return value;
  const complained = new Set(result.error.issues.map((issue) => formatPath(issue.path as ConfigPath)));
  let retyped = value;
  for (const at of wholeReferences) {
    if (!complained.has(formatPath(at))) continue;
    const text = getAt(retyped, at);
    if (typeof text !== 'string') continue;
    const typed = /^-?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(text.trim()) ? Number(text) : text === 'true' ? true : text === 'false' ? false : text;
    if (typed !== text) retyped = setAt(retyped, at, typed);
  }
  return retyped;
}

function getAt(node: unknown, at: ConfigPath): unknown {
  let current = node;
  for (const key of at) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string | number, unknown>)[key];
  }
  return current;
}

function setAt(node: unknown, at: ConfigPath, value: unknown): unknown {
  if (at.length === 0) return value;
  const [key, ...rest] = at;
  if (Array.isArray(node)) return node.map((item, index) => (index === key ? setAt(item, rest, value) : item));
  if (isPlainObject(node)) return { ...node, [key!]: setAt(node[key!], rest, value) };
  return node;
}

// ------------------------------------------------------------------ checks beyond the schema

/** Camera names unique, URLs of a supported form (files existing), model bundles present. Runs on whatever shape the file has. */
function checkCameras(value: unknown, context: Context): void {
  if (!isPlainObject(value)) return;
  if (isPlainObject(value.defaults)) checkModel(value.defaults.model, ['defaults', 'model'], context);
  if (!Array.isArray(value.cameras)) return;
  const firstIndexByName = new Map<string, number>();
  value.cameras.forEach((camera: unknown, index) => {
    if (!isPlainObject(camera)) return;
    if (typeof camera.name === 'string') {
      const first = firstIndexByName.get(camera.name);
      if (first === undefined) firstIndexByName.set(camera.name, index);
      else report(context, [{ path: `cameras.${index}.name`, message: `duplicate camera name "${camera.name}" (also cameras.${first})` }]);
    }
    if (typeof camera.url === 'string' && camera.url !== '') {
      const source = classifySource(camera.url);
      if ('error' in source) {
        report(context, [{ path: `cameras.${index}.url`, message: source.error }]);
      } else if (source.kind === 'file') {
        const absolute = path.resolve(context.baseDir, camera.url);
        if (!context.fileExists(absolute)) report(context, [{ path: `cameras.${index}.url`, message: `file not found: ${absolute}` }]);
      }
    }
    checkModel(camera.model, ['cameras', index, 'model'], context);
  });
  const tls = isPlainObject(value.mqtt) && isPlainObject(value.mqtt.tls) ? value.mqtt.tls : undefined;
  for (const key of TLS_FILES) {
    const file = tls?.[key];
    if (typeof file === 'string' && path.isAbsolute(file) && !context.fileExists(file)) {
      report(context, [{ path: `mqtt.tls.${key}`, message: `file not found: ${file}` }]);
    }
  }
}

function checkModel(model: unknown, at: ConfigPath, context: Context): void {
  if (typeof model !== 'string' || model === '') return;
  const manifest = path.resolve(context.baseDir, model, MANIFEST_FILE);
  if (!context.fileExists(manifest)) {
    report(context, [
      {
        path: formatPath(at),
        message: `model bundle not found: ${manifest} does not exist (train one with \`linewatch train\`, or point at a bundle folder)`,
      },
    ]);
  }
}

/**
 * Checks each camera as it will run (defaults merged with its overrides), for
 * what only the combination shows: k above n when they come from different
 * places, a threshold value without its mode, a missing model. Problems at
 * fields already reported (in the camera or in defaults) are not repeated.
 */
function checkMergedCameras(value: unknown, context: Context): void {
  if (!isPlainObject(value) || !Array.isArray(value.cameras)) return;
  const defaults = value.defaults === undefined ? {} : value.defaults;
  if (!isPlainObject(defaults)) return;
  value.cameras.forEach((camera: unknown, index) => {
    if (!isPlainObject(camera)) return;
    const { name: _name, url: _url, ...overrides } = camera;
    const merged = MergedCameraSchema.safeParse(deepMerge(defaults, overrides));
    if (merged.success) return;
    const issues = zodIssues(merged.error, [], MergedCameraSchema).filter(
      (issue) =>
        !context.issues.some((known) => isWithin(`defaults.${issue.path}`, known.path) || isWithin(`cameras.${index}.${issue.path}`, known.path)),
    );
    report(context, issues.map((issue) => ({ ...issue, path: `cameras.${index}.${issue.path}` })));
  });
}

/** Adds issues, except at or inside paths whose value could not be resolved. */
function report(context: Context, issues: readonly ConfigIssue[]): void {
  context.issues.push(...issues.filter((issue) => !context.unresolved.some((unresolved) => isWithin(issue.path, unresolved))));
}

/** Whether dotted path `inner` is `outer` or lies inside it. */
function isWithin(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(`${outer}.`);
}

// ------------------------------------------------------------------ issue formatting

function zodIssues(error: z.ZodError, prefix: ConfigPath, schema: z.ZodType): ConfigIssue[] {
  return error.issues.flatMap((issue) => {
    const at = [...prefix, ...(issue.path as ConfigPath)];
    if (issue.code !== 'unrecognized_keys') return [{ path: formatPath(at), message: issue.message }];
    const allowed = allowedKeysAt(schema, issue.path as ConfigPath);
    return issue.keys.map((key) => ({ path: formatPath([...at, key]), message: unknownKeyMessage(key, allowed) }));
  });
}

function unknownKeyMessage(key: string, allowed: readonly string[]): string {
  const close = allowed.find((candidate) => candidate.toLowerCase() === key.toLowerCase() || editDistance(candidate, key) <= 2);
  if (close !== undefined) return `unknown key (did you mean ${close}?)`;
  return allowed.length > 0 ? `unknown key (allowed here: ${allowed.join(', ')})` : 'unknown key';
}

function allowedKeysAt(schema: z.ZodType, at: ConfigPath): string[] {
  let current: z.ZodType | undefined = unwrap(schema);
  for (const key of at) {
    if (current instanceof z.ZodObject) current = (current.shape as Record<string, z.ZodType>)[String(key)];
    else if (current instanceof z.ZodArray) current = current.element as z.ZodType;
    else return [];
    current = current === undefined ? undefined : unwrap(current);
  }
  if (current instanceof z.ZodUnion) current = (current.options as z.ZodType[]).map(unwrap).find((option) => option instanceof z.ZodObject);
  return current instanceof z.ZodObject ? Object.keys(current.shape) : [];
}

function unwrap(schema: z.ZodType): z.ZodType {
  let current = schema;
  while (current instanceof z.ZodDefault || current instanceof z.ZodPrefault || current instanceof z.ZodOptional) {
    current = current.unwrap() as z.ZodType;
  }
  return current;
}

function editDistance(a: string, b: string): number {
  const previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i += 1) {
    let diagonal = previous[0]!;
    previous[0] = i;
    for (let j = 1; j <= b.length; j += 1) {
      const above = previous[j]!;
      previous[j] = Math.min(above + 1, previous[j - 1]! + 1, diagonal + (a[i - 1] === b[j - 1] ? 0 : 1));
      diagonal = above;
    }
  }
  return previous[b.length]!;
}

function dedupe(issues: readonly ConfigIssue[]): ConfigIssue[] {
  const seen = new Set<string>();
  return issues.filter((issue) => {
    const key = `${issue.path}\u0000${issue.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

// ------------------------------------------------------------------ derived values

/** Hostname as an MQTT topic level: the short name, lowercase, other characters replaced by `-`. */
export function deviceIdFromHostname(hostname: string): string {
  const short = hostname.split('.')[0] ?? '';
  const sanitised = short
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '-')
    .replace(/^-+|-+$/g, '');
  return sanitised === '' ? 'linewatch' : sanitised;
}

function finish(file: z.output<typeof ConfigFileSchema>, secrets: Map<string, string>, context: Context, hostname: string): Config {
  const absolute = (target: string) => path.resolve(context.baseDir, target);
  const deviceId = file.deviceId ?? deviceIdFromHostname(hostname);
  const { tls, usernameFile, passwordFile, clientId, baseTopic, ...mqtt } = file.mqtt;
  const resolvedMqtt: MqttConfig = {
    ...mqtt,
    clientId: clientId ?? `linewatch-${deviceId}`,
    baseTopic: baseTopic ?? `linewatch/${deviceId}`,
    username: secrets.get('mqtt.username') ?? mqtt.username,
    password: secrets.get('mqtt.password') ?? mqtt.password,
    ...(usernameFile === undefined ? {} : { usernameFile: filePath(usernameFile) }),
    ...(passwordFile === undefined ? {} : { passwordFile: filePath(passwordFile) }),
    ...(tls === undefined ? {} : { tls: resolveTls(tls) }),
  };
  return {
    ...file,
    deviceId,
    dataDir: absolute(file.dataDir),
    mqtt: resolvedMqtt,
    health: { ...file.health, token: secrets.get('health.token') ?? file.health.token },
    defaults: { ...file.defaults, ...(file.defaults.model === undefined ? {} : { model: absolute(file.defaults.model) }) },
    cameras: file.cameras.map((camera) => ({
      ...camera,
      url: isFileSource(camera.url) ? absolute(camera.url) : camera.url,
      ...(camera.model === undefined ? {} : { model: absolute(camera.model) }),
    })),
  };
}

function isFileSource(url: string): boolean {
  const source = classifySource(url);
  return 'kind' in source && source.kind === 'file';
}

function resolveTls(tls: { ca?: FileRef; cert?: FileRef; key?: FileRef; rejectUnauthorized: boolean }): TlsConfig {
  const resolved: TlsConfig = { rejectUnauthorized: tls.rejectUnauthorized };
  for (const key of ['ca', 'cert', 'key'] as const) {
    if (tls[key] !== undefined) resolved[key] = filePath(tls[key]);
  }
  return resolved;
}

/** File references are absolute paths by now (resolveFileReferences); anything else is a bug here, not in the file. */
function filePath(reference: FileRef): string {
  if (typeof reference !== 'string') throw new Error(`unresolved file reference ${JSON.stringify(reference)}`);
  return reference;
}
