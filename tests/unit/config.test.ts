import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv } from 'ajv';
import { Command } from 'commander';
import YAML from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerValidateConfig, validateConfigFile } from '../../src/cli/validate-config.js';
import {
  classifySource,
  CONFIG_JSON_SCHEMA_FILE,
  ConfigError,
  configJsonSchemaText,
  deviceIdFromHostname,
  loadConfig,
  parseConfig,
  resolveCameras,
  type ConfigOptions,
} from '../../src/config/index.js';
import { UsageError } from '../../src/errors.js';
import { scrubSecrets } from '../../src/redact.js';
import { EventTracker } from '../../src/scoring/events.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
const EXAMPLES = ['demo.yaml', 'linewatch.yaml', 'rtsp-camera.yaml', 'multi-camera.yaml', 'jetson.yaml'];

// The demo model and video are added to the repository separately; until they are,
// the example test treats exactly these two paths as present and checks everything else.
const DEMO_ASSETS = [path.join(ROOT, 'models/demo/manifest.json'), path.join(ROOT, 'assets/demo/bottle-detection.mp4')];
const missingDemoAssets = DEMO_ASSETS.filter((file) => !existsSync(file));
const examplePaths = (file: string) => existsSync(file) || missingDemoAssets.includes(file);

let scratch: string;
let credentials: string;
let model: string;
let video: string;

beforeAll(() => {
  if (missingDemoAssets.length > 0) console.warn(`config.test: not yet in the repository, assumed present: ${missingDemoAssets.join(', ')}`);
  scratch = mkdtempSync(path.join(tmpdir(), 'linewatch-config-'));
  credentials = path.join(scratch, 'credentials');
  mkdirSync(credentials);
  writeFileSync(path.join(credentials, 'mqtt-password'), 's3cret pass\n');
  writeFileSync(path.join(credentials, 'health-token'), '0123456789abcdef0123456789abcdef\n');
  writeFileSync(path.join(credentials, 'broker-ca.pem'), '-----BEGIN CERTIFICATE-----\n');
  model = path.join(scratch, 'models', 'line1');
  mkdirSync(model, { recursive: true });
  writeFileSync(path.join(model, 'manifest.json'), '{}');
  video = path.join(scratch, 'clip.mp4');
  writeFileSync(video, '');
});

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

/** Config text for a scratch folder holding a model bundle (models/line1) and a video (clip.mp4). */
function parse(text: string, options: ConfigOptions = {}) {
  return parseConfig(text, { baseDir: scratch, hostname: 'edge-box.factory.lan', env: {}, ...options });
}

function problems(text: string, options: ConfigOptions = {}): string[] {
  try {
    parse(text, options);
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    const configError = error as ConfigError;
    const lines = configError.issues.map((issue) => `${issue.path}: ${issue.message}`);
    // The message lists every problem, one per line.
    for (const line of lines) expect(configError.message).toContain(`\n  ${line}`);
    return lines;
  }
  throw new Error('expected the config to be rejected');
}

const MINIMAL = `
cameras:
  - name: line1
    url: clip.mp4
    model: models/line1
`;

describe('example configs', () => {
  const env = { CAMERA_PASSWORD: 'pa:ss@word', CREDENTIALS_DIRECTORY: '' };

  it.each(EXAMPLES)('%s validates', async (name) => {
    const config = await loadConfig(path.join(ROOT, 'config', name), { ...env, CREDENTIALS_DIRECTORY: credentials }, {
      baseDir: ROOT,
      fileExists: examplePaths,
    });
    const cameras = resolveCameras(config);
    expect(cameras.length).toBeGreaterThan(0);
    for (const camera of cameras) expect(camera.model).toBe(path.join(ROOT, 'models/demo'));
  });

  it('the default config is the demo: a looping video at native speed, the demo model, an embedded broker', async () => {
    const load = (name: string) => loadConfig(path.join(ROOT, 'config', name), {}, { baseDir: ROOT, fileExists: examplePaths, hostname: 'h' });
    const [demo, fallback] = await Promise.all([load('demo.yaml'), load('linewatch.yaml')]);
    expect(fallback).toEqual(demo);
    expect(demo.mqtt.url).toBeUndefined();
    expect(demo.mqtt.embeddedBroker).toEqual({ host: '127.0.0.1', port: 1883 });
    const [camera] = resolveCameras(demo);
    expect(camera).toMatchObject({
      name: 'demo',
      kind: 'file',
      url: path.join(ROOT, 'assets/demo/bottle-detection.mp4'),
      loop: true,
      realtime: true,
      variant: 'int8',
      providers: ['cpu'],
    });
  });

  it('rtsp-camera reads its secrets from the environment and systemd credentials', async () => {
    const config = await loadConfig(path.join(ROOT, 'config/rtsp-camera.yaml'), { ...env, CREDENTIALS_DIRECTORY: credentials }, {
      baseDir: ROOT,
      fileExists: examplePaths,
    });
    expect(config.mqtt).toMatchObject({
      url: 'mqtts://broker.example.net:8883',
      username: 'linewatch-line-3',
      password: 's3cret pass',
      passwordFile: path.join(credentials, 'mqtt-password'),
      protocolVersion: 5,
      tls: { ca: path.join(credentials, 'broker-ca.pem'), rejectUnauthorized: true },
      baseTopic: 'linewatch/line-3',
      clientId: 'linewatch-line-3',
    });
    const [camera] = resolveCameras(config);
    expect(camera!.url).toBe('rtsp://viewer:pa:ss@word@192.168.1.64:554/Streaming/Channels/102');
    expect(camera!.kind).toBe('rtsp');
    expect(camera!.threshold).toEqual({ mode: 'fpr', value: 0.01 });
    expect(scrubSecrets(camera!.url)).toBe('rtsp://***@192.168.1.64:554/Streaming/Channels/102');
  });

  it('rtsp-camera without its credentials folder or camera password says which are missing', async () => {
    const error = await loadConfig(path.join(ROOT, 'config/rtsp-camera.yaml'), {}, { baseDir: ROOT, fileExists: examplePaths }).catch((e) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).issues.map((issue) => issue.path)).toEqual(['cameras.0.url', 'mqtt.passwordFile', 'mqtt.tls.ca']);
    expect((error as ConfigError).message).toMatch(/cameras\.0\.url: environment variable CAMERA_PASSWORD is not set/);
    expect((error as ConfigError).message).toMatch(/mqtt\.passwordFile: \$CREDENTIALS_DIRECTORY is not set/);
  });

  it('multi-camera merges defaults into each camera: objects key by key, lists replaced', async () => {
    const config = await loadConfig(path.join(ROOT, 'config/multi-camera.yaml'), {}, { baseDir: ROOT, fileExists: examplePaths });
    const cameras = resolveCameras(config);
    expect(cameras.map((camera) => [camera.name, camera.kind, camera.scorePublish])).toEqual([
      ['packing', 'rtsp', true],
      ['labeller', 'http', false],
      ['bench-usb', 'v4l2', false],
    ]);
    const [packing, labeller, usb] = cameras;
    expect(labeller!.debounce).toEqual({
      k: 4,
      n: 5,
      endFrames: 10,
      hysteresis: 0.9,
      minDurationMs: 1000,
      cooldownMs: 5000,
      updateIntervalMs: 1000,
    });
    expect(labeller!.threshold).toEqual({ mode: 'absolute', value: 0.42 });
    expect(packing!.threshold).toEqual({ mode: 'manifest' });
    expect(packing!.snapshots).toEqual({ enabled: true, retain: 200, maxMegabytes: 100 });
    expect(packing!.ignore).toEqual([
      [
        [0.7, 0.4],
        [0.75, 0.4],
        [0.75, 0.48],
        [0.7, 0.48],
      ],
    ]);
    expect(usb!.fps).toBe(2);
    expect(usb!.inputArgs).toEqual(['-f', 'v4l2', '-video_size', '640x480']);
    expect(packing!.fps).toBe(5);
  });

  it('jetson asks for TensorRT, then CUDA, then the CPU, with hardware decoding', async () => {
    const config = await loadConfig(path.join(ROOT, 'config/jetson.yaml'), { CREDENTIALS_DIRECTORY: credentials }, { baseDir: ROOT, fileExists: examplePaths });
    for (const camera of resolveCameras(config)) {
      expect(camera.providers).toEqual(['tensorrt', 'cuda', 'cpu']);
      expect(camera.hwaccel).toBe('jetson');
    }
    expect(resolveCameras(config).map((camera) => camera.stallTimeoutS)).toEqual([10, 20]);
    expect(config.health.token).toBe('0123456789abcdef0123456789abcdef');
  });
});

describe('defaults', () => {
  it('fills every field of a minimal config, deviceId from the hostname', () => {
    const config = parse(MINIMAL);
    expect(config).toMatchObject({
      deviceId: 'edge-box',
      dataDir: path.join(scratch, 'data'),
      log: { level: 'info' },
      ffmpeg: { path: 'ffmpeg' },
      health: { enabled: true, host: '127.0.0.1', port: 9464 },
      homeassistant: { enabled: false, prefix: 'homeassistant' },
      mqtt: {
        embeddedBroker: { host: '127.0.0.1', port: 1883 },
        clientId: 'linewatch-edge-box',
        baseTopic: 'linewatch/edge-box',
        protocolVersion: 4,
        scoreTopic: { enabled: false, maxRateHz: 2 },
        statsIntervalS: 60,
        keepaliveS: 30,
      },
    });
    expect(config.mqtt.url).toBeUndefined();
    expect(resolveCameras(config)).toEqual([
      {
        name: 'line1',
        url: video,
        kind: 'file',
        model,
        variant: 'int8',
        providers: ['cpu'],
        threads: 1,
        fps: 10,
        mode: 'continuous',
        transport: 'tcp',
        socketTimeoutS: 5,
        stallTimeoutS: 10,
        backoff: { initialS: 1, maxS: 30 },
        hwaccel: 'none',
        inputArgs: [],
        outputArgs: [],
        loop: false,
        realtime: false,
        queueSize: 2,
        preview: { enabled: false, fps: 1, width: 640 },
        threshold: { mode: 'manifest' },
        ignore: [],
        debounce: { k: 3, n: 5, endFrames: 5, hysteresis: 0.9, minDurationMs: 1000, cooldownMs: 0, updateIntervalMs: 1000 },
        snapshots: { enabled: true, retain: 100, maxMegabytes: 100 },
        faults: {
          enabled: true,
          suppressEvents: true,
          startS: 1.5,
          share: 0.8,
          endS: 1.5,
          checks: {
            bright: { enabled: true },
            covered: { enabled: true },
            dark: { enabled: true },
            frozen: { enabled: true },
            blur: { enabled: true },
            moved: { enabled: true },
          },
        },
        scorePublish: false,
      },
    ]);
  });

  it('sanitises hostnames into MQTT topic levels', () => {
    expect(deviceIdFromHostname('Edge_Box-01.factory.lan')).toBe('edge_box-01');
    expect(deviceIdFromHostname('my box+#/x')).toBe('my-box-x');
    expect(deviceIdFromHostname('---')).toBe('linewatch');
  });

  it('gives a camera the score topic setting unless it sets its own', () => {
    const config = parse(`
mqtt: { scoreTopic: { enabled: true } }
defaults: { model: models/line1 }
cameras:
  - { name: a, url: clip.mp4 }
  - { name: b, url: clip.mp4, scorePublish: false }
`);
    expect(resolveCameras(config).map((camera) => camera.scorePublish)).toEqual([true, false]);
  });

  it('configures an event tracker directly from a resolved camera', () => {
    const [camera] = resolveCameras(parse(MINIMAL));
    const events = new EventTracker({ camera: camera!.name, threshold: 0.5, ...camera!.debounce });
    const messages = [0.9, 0.9, 0.9].flatMap((score, i) => events.push(score, 1_000 + i * 100));
    expect(messages.map((message) => [message.type, message.camera])).toEqual([['start', 'line1']]);
  });
});

describe('validation', () => {
  it('reports every problem at once as path: message', () => {
    const lines = problems(
      `
deviceId: line/3
dataDir: 7
mqtt:
  url: ftp://broker
  passwrod: x
  protocolVersion: 3
inference: { batchWindowMs: -5 }
health: { port: 70000 }
defaults:
  fsp: 12
  debounce: { k: 9 }
cameras:
  - name: Line1
    url: udp://239.0.0.1:1234
  - name: dup
    url: rtsp://cam.local/stream
    model: models/line1
    transport: quic
  - name: dup
    url: missing.mp4
    model: models/none
    fps: 0
    crop: { x: 0.5, y: 0, width: 0.6, height: 1 }
    threshold: { mode: fpr, value: 5 }
  - name: usb
    url: /dev/sda
    model: models/line1
    ignore: [[[0, 0], [1, 1]]]
`,
      { fileExists: existsSync },
    );
    expect(lines).toEqual([
      'deviceId: use letters, digits, _ and - (it becomes an MQTT topic level)',
      'dataDir: Invalid input: expected string, received number',
      'mqtt.url: not a broker URL: use mqtt://host[:port], mqtts://, ws:// or wss://',
      'mqtt.protocolVersion: Invalid input',
      'mqtt.passwrod: unknown key (did you mean password?)',
      'inference.batchWindowMs: Too small: expected number to be >=0',
      'health.port: Too big: expected number to be <=65535',
      'defaults.debounce.k: must not exceed n (5)',
      'defaults.fsp: unknown key (did you mean fps?)',
      'cameras.0.name: use lowercase letters, digits, _ and - (it becomes an MQTT topic level)',
      'cameras.1.transport: Invalid option: expected one of "tcp"|"udp"',
      'cameras.2.fps: Too small: expected number to be >0',
      'cameras.3.ignore.0: a polygon needs at least 3 points',
      'cameras.0.url: unsupported URL scheme "udp:": use rtsp://, rtsps://, http://, https://, a video file path or /dev/videoN',
      'cameras.2.name: duplicate camera name "dup" (also cameras.1)',
      `cameras.2.url: file not found: ${path.join(scratch, 'missing.mp4')}`,
      `cameras.2.model: model bundle not found: ${path.join(scratch, 'models/none/manifest.json')} does not exist (train one with \`linewatch train\`, or point at a bundle folder)`,
      'cameras.3.url: unsupported device /dev/sda: only V4L2 devices /dev/videoN are supported',
      'cameras.0.model: no model: set it on the camera or in defaults.model',
      'cameras.2.crop.width: x + width must not exceed 1',
      'cameras.2.threshold.value: a false-positive rate must be between 0 and 1 (exclusive), e.g. 0.01',
    ]);
  });

  it('checks what only the merged camera shows, at the camera', () => {
    expect(
      problems(`
defaults:
  model: models/line1
  debounce: { n: 4 }
  threshold: { mode: absolute, value: 0.3 }
cameras:
  - { name: a, url: clip.mp4, debounce: { k: 6 } }
  - { name: b, url: clip.mp4, threshold: { mode: manifest } }
  - { name: c, url: clip.mp4, backoff: { initialS: 90 } }
`),
    ).toEqual([
      'cameras.0.debounce.k: must not exceed n (4)',
      'cameras.1.threshold.value: mode manifest takes no value (use mode absolute or fpr)',
      'cameras.2.backoff.initialS: must not exceed maxS (30)',
    ]);
  });

  it('requires cameras, and rejects an empty file with a clear message', () => {
    expect(problems('')).toEqual(['cameras: Invalid input: expected array, received undefined']);
    expect(problems('cameras: []')).toEqual(['cameras: configure at least one camera']);
    expect(problems('- 1')).toEqual(['(root): Invalid input: expected object, received array']);
  });

  it('lists allowed keys when an unknown one is not a near miss', () => {
    expect(problems(`${MINIMAL}    colour: red\n`)).toEqual([
      expect.stringMatching(/^cameras\.0\.colour: unknown key \(allowed here: name, url, model, variant, .*scorePublish\)$/),
    ]);
  });

  it('reports YAML syntax errors with their line', () => {
    expect(problems('cameras:\n  - name: a\n    name: b\n')).toEqual(['line 3, column 5: Map keys must be unique']);
  });

  it('accepts the source forms it documents and nothing else', () => {
    expect(classifySource('rtsp://user:pw@10.0.0.2:554/s1')).toEqual({ kind: 'rtsp' });
    expect(classifySource('rtsps://cam/s')).toEqual({ kind: 'rtsp' });
    expect(classifySource('https://cam/mjpg')).toEqual({ kind: 'http' });
    expect(classifySource('/dev/video12')).toEqual({ kind: 'v4l2' });
    expect(classifySource('videos/a.mp4')).toEqual({ kind: 'file' });
    expect(classifySource('C:\\videos\\a.mp4')).toEqual({ kind: 'file' });
    expect(classifySource('rtsp://')).toEqual({ error: 'rtsp URL without a host: rtsp://' });
    expect(classifySource('http://[bad')).toEqual({ error: 'not a valid URL: http://[bad' });
    expect(classifySource('rtmp://x/y')).toEqual({ error: expect.stringContaining('unsupported URL scheme "rtmp:"') });
    expect(classifySource('file:///videos/a.mp4')).toEqual({ error: expect.stringContaining('unsupported URL scheme "file:"') });
    expect(classifySource('/dev/sda')).toEqual({ error: expect.stringContaining('only V4L2 devices') });
    expect(classifySource('rtsp:/admin:pw@cam/s')).toEqual({ error: 'rtsp URL without a host: rtsp:/***@cam/s' });
  });

  it('a missing config file is a usage error (exit code 2) with a hint', async () => {
    const error = await loadConfig(path.join(scratch, 'nope.yaml')).catch((e) => e);
    expect(error).toBeInstanceOf(ConfigError);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as ConfigError).exitCode).toBe(2);
    expect((error as ConfigError).message).toContain('ENOENT');
    expect((error as ConfigError).hint).toMatch(/--config/);
  });
});

describe('environment substitution', () => {
  const text = `
deviceId: \${DEVICE}
mqtt:
  url: mqtt://\${BROKER_HOST:-localhost}:\${BROKER_PORT:-1883}
  username: \${MQTT_USER:-agent}
  password: \${MQTT_PASSWORD}
  protocolVersion: \${MQTT_VERSION:-5}
  clientId: cost-$\${NOT_A_VARIABLE}
health:
  port: \${HEALTH_PORT}
  enabled: \${HEALTH:-false}
${MINIMAL}`;

  it('substitutes ${VAR} and ${VAR:-default}, typing whole references where the schema wants numbers or booleans', () => {
    const config = parse(text, { env: { DEVICE: 'press-7', BROKER_HOST: 'mq', BROKER_PORT: '', MQTT_PASSWORD: '000123', HEALTH_PORT: '9000' } });
    expect(config.deviceId).toBe('press-7');
    expect(config.mqtt.url).toBe('mqtt://mq:1883'); // an empty variable takes the :- default
    expect(config.mqtt.username).toBe('agent');
    expect(config.mqtt.password).toBe('000123'); // a string field stays a string
    expect(config.mqtt.protocolVersion).toBe(5);
    expect(config.mqtt.clientId).toBe('cost-${NOT_A_VARIABLE}');
    expect(config.health).toEqual({ enabled: false, host: '127.0.0.1', port: 9000 });
  });

  it('names each unset variable and where it is used', () => {
    expect(problems(text, { env: { HEALTH_PORT: 'lots' } })).toEqual([
      'deviceId: environment variable DEVICE is not set (set it, or give a default: ${DEVICE:-value})',
      'mqtt.password: environment variable MQTT_PASSWORD is not set (set it, or give a default: ${MQTT_PASSWORD:-value})',
      'health.port: Invalid input: expected number, received string',
    ]);
  });

  it('rejects malformed references', () => {
    expect(problems(`deviceId: "\${bad name}"\ndataDir: "a\${"\n${MINIMAL}`)).toEqual([
      'deviceId: ${bad name} is not a variable reference: use ${NAME} or ${NAME:-default}',
      'dataDir: unterminated ${ (write $${ for a literal ${)',
    ]);
  });
});

describe('secrets from files', () => {
  it('reads xxxFile keys (trimmed), relative to the base folder', () => {
    writeFileSync(path.join(scratch, 'password.txt'), '  hunter2\n\n');
    writeFileSync(path.join(scratch, 'user.txt'), 'robot\n');
    const config = parse(`mqtt: { url: 'mqtt://b', passwordFile: password.txt, usernameFile: user.txt }\n${MINIMAL}`);
    expect(config.mqtt).toMatchObject({
      password: 'hunter2',
      passwordFile: path.join(scratch, 'password.txt'),
      username: 'robot',
    });
  });

  it('resolves { credential: name } and $CREDENTIALS_DIRECTORY/ under systemd credentials', () => {
    const text = `
mqtt:
  url: mqtts://b
  passwordFile: { credential: mqtt-password }
  tls: { ca: $CREDENTIALS_DIRECTORY/broker-ca.pem }
${MINIMAL}`;
    const config = parse(text, { env: { CREDENTIALS_DIRECTORY: credentials } });
    expect(config.mqtt.password).toBe('s3cret pass');
    expect(config.mqtt.tls).toEqual({ ca: path.join(credentials, 'broker-ca.pem'), rejectUnauthorized: true });
    expect(problems(text)).toEqual([
      'mqtt.tls.ca: $CREDENTIALS_DIRECTORY is not set: systemd sets it for services with LoadCredential= or SetCredential=; outside systemd, use a plain file path',
      'mqtt.passwordFile: $CREDENTIALS_DIRECTORY is not set: systemd sets it for services with LoadCredential= or SetCredential=; outside systemd, use a plain file path',
    ]);
  });

  it('reports missing secret files, a secret given twice, and TLS files that do not exist', () => {
    expect(
      problems(`
mqtt:
  url: mqtt://b
  password: inline
  passwordFile: nowhere.txt
  tls: { cert: cert.pem, key: { credential: '../escape' } }
${MINIMAL}`),
    ).toEqual([
      'mqtt.tls.key.credential: a credential name is one path segment: letters, digits, . _ @ -',
      'mqtt.passwordFile: set password or passwordFile, not both',
      'mqtt.tls: TLS settings need a TLS broker URL: set mqtt.url to mqtts://... or wss://...',
      `mqtt.tls.cert: file not found: ${path.join(scratch, 'cert.pem')}`,
      `mqtt.passwordFile: file not found: ${path.join(scratch, 'nowhere.txt')}`,
    ]);
  });
});

describe('JSON Schema', () => {
  const schemaFile = path.join(ROOT, CONFIG_JSON_SCHEMA_FILE);

  it(`${CONFIG_JSON_SCHEMA_FILE} is generated from the zod schema and up to date`, () => {
    const generated = configJsonSchemaText();
    // Regenerate with LINEWATCH_WRITE_SCHEMAS=1 npx vitest run tests/config.test.ts
    if (process.env.LINEWATCH_WRITE_SCHEMAS === '1' || !existsSync(schemaFile)) {
      mkdirSync(path.dirname(schemaFile), { recursive: true });
      writeFileSync(schemaFile, generated);
    }
    expect(readFileSync(schemaFile, 'utf8'), 'schema out of date: rerun this test with LINEWATCH_WRITE_SCHEMAS=1').toBe(generated);
  });

  it('accepts every example and rejects what the loader rejects structurally', () => {
    const validate = new Ajv({ allErrors: true, strict: false }).compile(JSON.parse(configJsonSchemaText()));
    for (const name of EXAMPLES) {
      const document = YAML.parse(readFileSync(path.join(ROOT, 'config', name), 'utf8'));
      expect(validate(document), `${name}: ${JSON.stringify(validate.errors)}`).toBe(true);
    }
    expect(validate({ cameras: [{ name: 'a', url: 'x', fsp: 3 }] })).toBe(false);
    expect(validate({ cameras: [{ name: 'A', url: 'x' }] })).toBe(false);
    expect(validate({ cameras: [{ name: 'a', url: 'x', debounce: { k: 'three' } }] })).toBe(false);
    expect(validate({ mqtt: { passwordFile: { credential: 'pw' } }, cameras: [{ name: 'a', url: 'x', debounce: { k: 2 } }] })).toBe(true);
  });
});

describe('linewatch validate-config', () => {
  async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
    const out: string[] = [];
    const err: string[] = [];
    const program = new Command('linewatch').exitOverride();
    registerValidateConfig(program);
    const log = console.log;
    const error = console.error;
    console.log = (line: string) => out.push(line);
    console.error = (line: string) => err.push(line);
    process.exitCode = undefined;
    try {
      await program.parseAsync(['node', 'linewatch', 'validate-config', ...args]);
    } finally {
      console.log = log;
      console.error = error;
    }
    const code = Number(process.exitCode ?? 0);
    process.exitCode = undefined;
    return { code, out: out.join('\n'), err: err.join('\n') };
  }

  it('prints ok and a summary, exit 0', async () => {
    const file = path.join(scratch, 'good.yaml');
    writeFileSync(
      file,
      `mqtt: { url: 'mqtt://user:pw@broker:1883', username: u, password: p }\ndefaults: { model: ${model} }\ncameras:\n  - { name: gate, url: 'rtsp://admin:secret@10.0.0.9/s', hwaccel: vaapi }\n  - { name: clip, url: ${video}, loop: true }\n`,
    );
    const { code, out, err } = await run([file]);
    expect(err).toBe('');
    expect(code).toBe(0);
    const lines = out.split('\n');
    expect(lines[0]).toBe(`ok: ${file}`);
    expect(out).toContain('broker: mqtt://***@broker:1883 (MQTT 3.1.1, user u, password set)');
    expect(out).toContain('cameras (2):');
    expect(out).toContain(`  gate: rtsp rtsp://***@10.0.0.9/s (hwaccel vaapi); model ${model} int8 on cpu; 10 fps; threshold from the model; events after 3 of 5 frames`);
    expect(out).toContain(`  clip: file ${video} (loop)`);
    expect(out).not.toContain('secret');
  });

  it('prints the resolved config as JSON with secrets masked', async () => {
    const file = path.join(scratch, 'json.yaml');
    writeFileSync(file, `mqtt: { url: 'mqtt://broker', password: hunter2 }\ncameras:\n  - { name: a, url: ${video}, model: ${model} }\n`);
    const { code, out } = await run([file, '--json']);
    expect(code).toBe(0);
    const printed = JSON.parse(out);
    expect(printed.mqtt.password).toBe('***');
    expect(printed.cameras[0]).toMatchObject({ name: 'a', kind: 'file', debounce: { k: 3 } });
  });

  it('prints every problem and exits 1 for an invalid file', async () => {
    const file = path.join(scratch, 'bad.yaml');
    writeFileSync(file, 'cameras:\n  - { name: a, url: nowhere.mp4, fps: -1 }\n');
    const { code, out, err } = await run([file]);
    expect(out).toBe('');
    expect(code).toBe(1);
    expect(err).toContain(`config ${file} is invalid (3 problems):`);
    expect(err).toContain('  cameras.0.fps: Too small: expected number to be >0');
    expect(err).toContain('  cameras.0.url: file not found:');
    expect(err).toContain('  cameras.0.model: no model: set it on the camera or in defaults.model');
  });

  it('reports an unreadable file the same way', async () => {
    const result = await validateConfigFile(path.join(scratch, 'absent.yaml'), {
      output: { out: () => {}, err: (line) => expect(line).toContain('ENOENT') },
    });
    expect(result).toBe(1);
  });
});
