import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decodeOptionsOf } from '../../src/agent/camera.js';
import { loadConfig, parseConfig, resolveCameras } from '../../src/config/index.js';
import { UsageError } from '../../src/errors.js';
import { buildFfmpegArgs, jetsonDecoder } from '../../src/source/ffmpeg-args.js';
import { configProblems } from '../helpers/config.js';

const ROOT = path.resolve(import.meta.dirname, '../..');
let scratch: string;
let credentials: string;

beforeAll(() => {
  scratch = mkdtempSync(path.join(tmpdir(), 'linewatch-hwdecode-'));
  mkdirSync(path.join(scratch, 'models', 'line1'), { recursive: true });
  writeFileSync(path.join(scratch, 'models', 'line1', 'manifest.json'), '{}');
  credentials = path.join(scratch, 'credentials');
  mkdirSync(credentials);
  writeFileSync(path.join(credentials, 'health-token'), '0123456789abcdef0123456789abcdef\n');
});

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function cameras(text: string) {
  return resolveCameras(parseConfig(text, { baseDir: scratch, hostname: 'edge', env: {} }));
}

function problems(text: string): string[] {
  return configProblems(() => cameras(text));
}

/** The ffmpeg arguments a configured camera gets (the model size does not matter here). */
function argsOf(camera: ReturnType<typeof cameras>[number]): string[] {
  return buildFfmpegArgs({ url: camera.url, width: 64, height: 64, ...decodeOptionsOf(camera) });
}

function inputSide(args: string[]): string[] {
  return args.slice(0, args.indexOf('-i'));
}

function valueOf(args: string[], flag: string): string | undefined {
  const index = args.indexOf(flag);
  return index < 0 ? undefined : args[index + 1];
}

describe('decoding keys of a camera reach the ffmpeg arguments', () => {
  it('jetson picks the decoder by codec: h264_nvv4l2dec by default, hevc_nvv4l2dec for codec hevc', () => {
    const [h264, hevc] = cameras(`
defaults: { model: models/line1, hwaccel: jetson }
cameras:
  - { name: a, url: 'rtsp://cam/1' }
  - { name: b, url: 'rtsp://cam/2', codec: hevc }
`);
    expect(valueOf(inputSide(argsOf(h264!)), '-c:v')).toBe('h264_nvv4l2dec');
    expect(valueOf(inputSide(argsOf(hevc!)), '-c:v')).toBe('hevc_nvv4l2dec');
    expect(jetsonDecoder()).toBe('h264_nvv4l2dec');
    expect(jetsonDecoder('hevc')).toBe('hevc_nvv4l2dec');
  });

  it('an explicit decoder replaces the jetson one (a jetson-ffmpeg nvmpi build), once', () => {
    const [camera] = cameras(`
cameras:
  - { name: a, url: 'rtsp://cam/1', model: models/line1, hwaccel: jetson, codec: hevc, decoder: hevc_nvmpi }
`);
    const input = inputSide(argsOf(camera!));
    expect(input.filter((arg) => arg === '-c:v')).toHaveLength(1);
    expect(valueOf(input, '-c:v')).toBe('hevc_nvmpi');
  });

  it('a decoder with nvidia or without a preset is added before -i', () => {
    const [cuvid, software] = cameras(`
defaults: { model: models/line1 }
cameras:
  - { name: a, url: 'rtsp://cam/1', hwaccel: nvidia, decoder: h264_cuvid }
  - { name: b, url: 'rtsp://cam/2', decoder: libdav1d }
`);
    const nvidia = inputSide(argsOf(cuvid!));
    expect(nvidia).toEqual(expect.arrayContaining(['-hwaccel', 'cuda']));
    expect(valueOf(nvidia, '-c:v')).toBe('h264_cuvid');
    expect(valueOf(inputSide(argsOf(software!)), '-c:v')).toBe('libdav1d');
  });

  it('vaapiDevice, decodeThreads and keyframesOnly land on the input side', () => {
    const [camera] = cameras(`
cameras:
  - { name: a, url: 'rtsp://cam/1', model: models/line1, hwaccel: vaapi, vaapiDevice: /dev/dri/renderD129, decodeThreads: 2, keyframesOnly: true }
`);
    const input = inputSide(argsOf(camera!));
    expect(valueOf(input, '-hwaccel_device')).toBe('/dev/dri/renderD129');
    expect(valueOf(input, '-threads')).toBe('2');
    expect(input).not.toContain('-thread_type');
    expect(valueOf(input, '-skip_frame')).toBe('nokey');
  });

  it('without the new keys the arguments are what they were', () => {
    const [camera] = cameras(`
cameras:
  - { name: a, url: 'rtsp://cam/1', model: models/line1 }
`);
    expect(camera!.codec).toBeUndefined();
    expect(camera!.decoder).toBeUndefined();
    const input = inputSide(argsOf(camera!));
    for (const flag of ['-c:v', '-hwaccel', '-threads', '-skip_frame']) expect(input).not.toContain(flag);
    // Slice threads only by default: frame threads would hold decoded frames back.
    expect(valueOf(input, '-thread_type')).toBe('slice');
    expect(inputSide(buildFfmpegArgs({ url: 'rtsp://cam/1', width: 64, height: 64, hwaccel: 'vaapi' }))).toContain('/dev/dri/renderD128');
  });

  it('defaults apply to every camera and a camera overrides them', () => {
    const [a, b] = cameras(`
defaults: { model: models/line1, hwaccel: jetson, codec: hevc, decodeThreads: 1 }
cameras:
  - { name: a, url: 'rtsp://cam/1' }
  - { name: b, url: 'rtsp://cam/2', codec: h264, decodeThreads: 2 }
`);
    expect([a!.codec, a!.decodeThreads, b!.codec, b!.decodeThreads]).toEqual(['hevc', 1, 'h264', 2]);
  });
});

describe('decoding keys are validated', () => {
  it('rejects an unknown codec, a decoder that is not a name, bad thread counts and a wrong type', () => {
    const found = problems(`
defaults: { model: models/line1 }
cameras:
  - { name: a, url: 'rtsp://cam/1', codec: av1 }
  - { name: b, url: 'rtsp://cam/2', decoder: 'h264_cuvid -y' }
  - { name: c, url: 'rtsp://cam/3', decodeThreads: 0 }
  - { name: d, url: 'rtsp://cam/4', keyframesOnly: 'yes' }
  - { name: e, url: 'rtsp://cam/5', vaapiDevice: '' }
`);
    expect(found).toHaveLength(5);
    expect(found.join('\n')).toMatch(/codec/);
    expect(found.join('\n')).toMatch(/an ffmpeg decoder name/);
    expect(found.join('\n')).toMatch(/decodeThreads/);
    expect(found.join('\n')).toMatch(/keyframesOnly/);
    expect(found.join('\n')).toMatch(/vaapiDevice/);
  });

  it('buildFfmpegArgs refuses a decoder that could smuggle in arguments, and an unknown codec', () => {
    expect(() => buildFfmpegArgs({ url: 'rtsp://cam/1', width: 64, height: 64, decoder: 'h264 -y' })).toThrow(UsageError);
    expect(() => buildFfmpegArgs({ url: 'rtsp://cam/1', width: 64, height: 64, hwaccel: 'jetson', inputCodec: 'vp9' as 'h264' })).toThrow(/inputCodec/);
  });
});

describe('config/jetson.yaml', () => {
  it('decodes H.264 and HEVC cameras on the Jetson decoder and sets the provider options', async () => {
    const config = await loadConfig(path.join(ROOT, 'config/jetson.yaml'), { CREDENTIALS_DIRECTORY: credentials }, { baseDir: ROOT, fileExists: () => true });
    const [a, b] = resolveCameras(config);
    expect(valueOf(inputSide(argsOf(a!)), '-c:v')).toBe('h264_nvv4l2dec');
    expect(valueOf(inputSide(argsOf(b!)), '-c:v')).toBe('hevc_nvv4l2dec');
    for (const camera of [a!, b!]) {
      expect(camera.providers).toEqual(['tensorrt', 'cuda', 'cpu']);
      expect(camera.providerOptions).toEqual({
        cuda: { deviceId: 0 },
        tensorrt: { deviceId: 0, fp16: true, engineCacheDir: '/var/lib/linewatch/trt-engines' },
      });
    }
  });
});
