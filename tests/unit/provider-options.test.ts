import path from 'node:path';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { choiceOf } from '../../src/agent/models.js';
import { parseConfig, resolveCameras } from '../../src/config/index.js';
import { OnnxModel } from '../../src/model/onnx.js';
import { buildExecutionProviders, tensorrtOptionsIgnoredNote } from '../../src/model/provider-options.js';
import { buildVaeGraph } from '../helpers/vae-graph.js';
import { configProblems } from '../helpers/config.js';

let scratch: string;

beforeAll(() => {
  scratch = mkdtempSync(path.join(tmpdir(), 'linewatch-provider-options-'));
  mkdirSync(path.join(scratch, 'models', 'line1'), { recursive: true });
  writeFileSync(path.join(scratch, 'models', 'line1', 'manifest.json'), '{}');
  writeFileSync(path.join(scratch, 'clip.mp4'), '');
});

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function cameras(text: string) {
  return resolveCameras(parseConfig(text, { baseDir: scratch, hostname: 'edge', env: {} }));
}

function problems(text: string): string[] {
  return configProblems(() => cameras(text));
}

describe('buildExecutionProviders', () => {
  it('leaves plain names alone without settings: the CPU path is unchanged', () => {
    expect(buildExecutionProviders(['cpu'])).toEqual(['cpu']);
    expect(buildExecutionProviders(['tensorrt', 'cuda', 'cpu'])).toEqual(['tensorrt', 'cuda', 'cpu']);
    expect(buildExecutionProviders(['cpu'], { cuda: { deviceId: 1 }, tensorrt: { fp16: true } })).toEqual(['cpu']);
    expect(buildExecutionProviders(['cuda', 'cpu'], { cuda: {}, tensorrt: {} })).toEqual(['cuda', 'cpu']);
  });

  it('gives CUDA its device id in the object form onnxruntime-node reads', () => {
    expect(buildExecutionProviders(['cuda', 'cpu'], { cuda: { deviceId: 1 } })).toEqual([{ name: 'cuda', deviceId: 1 }, 'cpu']);
  });

  it("puts the TensorRT switches under onnxruntime's TensorRT option keys", () => {
    const entries = buildExecutionProviders(['tensorrt', 'cuda', 'cpu'], {
      cuda: { deviceId: 0 },
      tensorrt: { deviceId: 0, fp16: true, int8: false, engineCacheDir: '/var/lib/linewatch/trt', workspaceMiB: 512 },
    });
    expect(entries).toEqual([
      {
        name: 'tensorrt',
        deviceId: 0,
        trt_fp16_enable: '1',
        trt_int8_enable: '0',
        trt_engine_cache_enable: '1',
        trt_engine_cache_path: '/var/lib/linewatch/trt',
        trt_max_workspace_size: String(512 * 1024 * 1024),
      },
      { name: 'cuda', deviceId: 0 },
      'cpu',
    ]);
    expect(tensorrtOptionsIgnoredNote(entries)).toMatch(/trt_fp16_enable, trt_int8_enable, trt_engine_cache_enable, trt_engine_cache_path, trt_max_workspace_size.*docs\/jetson\.md/);
  });

  it('says nothing about ignored options when only device ids are set', () => {
    expect(tensorrtOptionsIgnoredNote(buildExecutionProviders(['tensorrt', 'cpu'], { tensorrt: { deviceId: 1 } }))).toBeUndefined();
    expect(tensorrtOptionsIgnoredNote(buildExecutionProviders(['cpu']))).toBeUndefined();
  });
});

describe('providerOptions in the config', () => {
  it('is optional, and reaches the model choice of the camera', () => {
    const [plain, gpu] = cameras(`
defaults: { model: models/line1 }
cameras:
  - { name: a, url: clip.mp4 }
  - name: b
    url: clip.mp4
    providers: [tensorrt, cuda, cpu]
    providerOptions:
      cuda: { deviceId: 1 }
      tensorrt: { deviceId: 1, fp16: true, int8: true, engineCacheDir: /var/cache/trt, workspaceMiB: 1024 }
`);
    expect(plain!.providerOptions).toBeUndefined();
    expect(choiceOf(plain!)).not.toHaveProperty('providerOptions');
    const choice = choiceOf(gpu!);
    expect(choice.providerOptions).toEqual({
      cuda: { deviceId: 1 },
      tensorrt: { deviceId: 1, fp16: true, int8: true, engineCacheDir: '/var/cache/trt', workspaceMiB: 1024 },
    });
    expect(buildExecutionProviders(choice.providers, choice.providerOptions)[1]).toEqual({ name: 'cuda', deviceId: 1 });
  });

  it('a camera overrides part of the defaults (objects merge)', () => {
    const [camera] = cameras(`
defaults: { model: models/line1, providerOptions: { tensorrt: { fp16: true, engineCacheDir: /var/cache/trt } } }
cameras:
  - { name: a, url: clip.mp4, providerOptions: { tensorrt: { deviceId: 1 } } }
`);
    expect(camera!.providerOptions).toEqual({ tensorrt: { fp16: true, engineCacheDir: '/var/cache/trt', deviceId: 1 } });
  });

  it('is strict: unknown providers and keys, wrong types and ranges are listed', () => {
    const found = problems(`
defaults: { model: models/line1 }
cameras:
  - { name: a, url: clip.mp4, providerOptions: { openvino: { device: GPU } } }
  - { name: b, url: clip.mp4, providerOptions: { cuda: { deviceId: -1 } } }
  - { name: c, url: clip.mp4, providerOptions: { tensorrt: { fp16: 'yes', workspaceMB: 10 } } }
  - { name: d, url: clip.mp4, providerOptions: { tensorrt: { workspaceMiB: 0.5 } } }
`);
    const text = found.join('\n');
    expect(text).toMatch(/openvino/);
    expect(text).toMatch(/deviceId/);
    expect(text).toMatch(/fp16/);
    expect(text).toMatch(/workspaceMB/);
    expect(text).toMatch(/workspaceMiB/);
  });
});

describe('a session with provider options', () => {
  const SPEC = { channels: 1 as const, size: 64, filters: [16, 32, 64], latentDim: 64, seed: 3 };

  it('still opens and runs on the CPU when options for other providers are set', async () => {
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), {
      providers: ['cpu'],
      providerOptions: { cuda: { deviceId: 0 }, tensorrt: { fp16: true, engineCacheDir: '/nonexistent' } },
    });
    try {
      expect(model.providers).toEqual(['cpu']);
      const out = await model.run(new Float32Array(64 * 64), 1);
      expect(out.mu.length).toBe(64);
    } finally {
      await model.dispose();
    }
  });

  it('falls back to the CPU with CUDA options when CUDA cannot start here', async () => {
    const messages: string[] = [];
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), {
      providers: ['cuda', 'cpu'],
      providerOptions: { cuda: { deviceId: 0 } },
      log: (message) => messages.push(message),
    });
    try {
      expect(model.providers.at(-1)).toBe('cpu');
      if (!model.providers.includes('cuda')) expect(messages.join('\n')).toMatch(/cuda/);
    } finally {
      await model.dispose();
    }
  });
});
