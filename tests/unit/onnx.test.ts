import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelError, UsageError } from '../../src/errors.js';
import { exportOnnx } from '../../src/toolkit/export.js';
import { OnnxModel, PROVIDERS, exposeTensors, resolveProviders, runWithExtraOutputs } from '../../src/model/onnx.js';
import { DEFAULT_VAE_CONFIG } from '../../src/toolkit/train/vae-config.js';
import { buildVaeGraph, randomVaeWeights } from '../helpers/vae-graph.js';

const { onnx } = onnxProto;
const SPEC = { channels: 1 as const, size: 64, filters: [16, 32, 64], latentDim: 64, seed: 3 };
const PIXELS = 64 * 64;

function noiseImages(count: number, seed: number): Float32Array {
  let state = seed;
  return Float32Array.from({ length: count * PIXELS }, () => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state / 2 ** 31;
  });
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'linewatch-onnx-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe.each([
  ['test graph', () => buildVaeGraph(SPEC)],
  ['export.ts graph', () => exportOnnx(randomVaeWeights(DEFAULT_VAE_CONFIG, 5))],
])('OnnxModel on the %s', (_, build) => {
  it('reads shape and latent size from the model and runs batches', async () => {
    const model = await OnnxModel.fromBytes(build(), { threads: 1 });
    try {
      expect(model.inputShape).toEqual({ channels: 1, height: 64, width: 64 });
      expect(model.latentDim).toBe(64);
      expect(model.providers).toEqual(['cpu']);
      expect(await model.warmUp()).toBeGreaterThan(0);

      const input = noiseImages(3, 11);
      const batch = await model.run(input, 3);
      expect(batch.recon).toHaveLength(3 * PIXELS);
      expect(batch.mu).toHaveLength(3 * 64);
      expect(Math.min(...batch.recon)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...batch.recon)).toBeLessThanOrEqual(1);
      // Each image in a batch is scored as if alone.
      const second = await model.run(input.subarray(PIXELS, 2 * PIXELS), 1);
      const batchRecon = batch.recon.subarray(PIXELS, 2 * PIXELS);
      const batchMu = batch.mu.subarray(64, 128);
      second.recon.forEach((v, i) => expect(v).toBeCloseTo(batchRecon[i]!, 5));
      second.mu.forEach((v, i) => expect(v).toBeCloseTo(batchMu[i]!, 4));
      // Different images give different latents.
      expect(batch.mu.subarray(0, 64)).not.toEqual(batchMu);
    } finally {
      await model.dispose();
    }
  });
});

describe('OnnxModel input checks and lifecycle', () => {
  it('rejects a batch whose size does not match the count', async () => {
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), { threads: 1 });
    await expect(model.run(new Float32Array(PIXELS + 1), 1)).rejects.toThrow(/4097 values; 1 image\(s\) of 1x64x64 need 4096/);
    await expect(model.run(new Float32Array(PIXELS), 0)).rejects.toThrow(/positive integer/);
    await model.dispose();
    await expect(model.run(new Float32Array(PIXELS), 1)).rejects.toThrow(/disposed/);
    await model.dispose(); // a second dispose is harmless
  });

  it('asked for the map blur, leaves a model without a comparator as it is', async () => {
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), { threads: 1, mapBlur: { width: 64, height: 64, kernel: Float64Array.of(0.25, 0.5, 0.25) } });
    try {
      expect(model.hasMap).toBe(false);
      expect(model.hasBlurredMap).toBe(false);
      const outputs = await model.run(noiseImages(1, 3), 1);
      expect(Object.keys(outputs).sort()).toEqual(['mu', 'recon']);
    } finally {
      await model.dispose();
    }
  });

  it('loads from a file with a thread count', async () => {
    const file = path.join(dir, 'model.onnx');
    await writeFile(file, buildVaeGraph(SPEC));
    const model = await OnnxModel.load(file, { threads: 1, interOpThreads: 1 });
    expect((await model.run(noiseImages(1, 5), 1)).mu).toHaveLength(64);
    await model.dispose();
  });
});

describe('execution providers', () => {
  it('maps linewatch names to onnxruntime providers, CPU last', () => {
    expect(Object.isFrozen(PROVIDERS)).toBe(true);
    expect(resolveProviders(['CUDA', 'directml', 'cuda'])).toEqual(['cuda', 'dml', 'cpu']);
    expect(resolveProviders()).toEqual(['cpu']);
  });

  it('rejects an unknown provider with the list of valid ones', async () => {
    const attempt = OnnxModel.fromBytes(buildVaeGraph(SPEC), { providers: ['gpu'] });
    await expect(attempt).rejects.toBeInstanceOf(UsageError);
    await expect(attempt).rejects.toMatchObject({ message: expect.stringContaining('"gpu"'), hint: expect.stringContaining('cpu, cuda, tensorrt') });
  });

  it('falls back to the CPU, and says so, when a provider is not in this build', async () => {
    const messages: string[] = [];
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), { providers: ['openvino'], log: (m) => messages.push(m) });
    expect(model.providers).toEqual(['cpu']);
    expect(messages.join('\n')).toMatch(/"openvino" is not available/);
    await model.dispose();
  });

  it('uses CUDA when it starts, and otherwise logs the fallback to the CPU', async () => {
    const messages: string[] = [];
    const model = await OnnxModel.fromBytes(buildVaeGraph(SPEC), { providers: ['cuda'], log: (m) => messages.push(m) });
    if (model.providers.includes('cuda')) {
      expect(messages).toEqual([]);
    } else {
      expect(model.providers).toEqual(['cpu']);
      expect(messages.join('\n')).toMatch(/"cuda" (failed to start|is not available)/);
    }
    expect((await model.run(noiseImages(1, 2), 1)).recon).toHaveLength(PIXELS);
    await model.dispose();
  });
});

describe('unusable model files', () => {
  async function loadError(file: string): Promise<ModelError> {
    const error = await OnnxModel.load(file).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(ModelError);
    expect((error as ModelError).file).toBe(file);
    expect((error as ModelError).message).toContain(file);
    return error as ModelError;
  }

  it('names a missing file', async () => {
    const error = await loadError(path.join(dir, 'nope.onnx'));
    expect(error.message).toMatch(/does not exist/);
    expect(error.hint).toMatch(/linewatch train/);
  });

  it('says a cut-short file is truncated', async () => {
    const file = path.join(dir, 'truncated.onnx');
    const bytes = buildVaeGraph(SPEC);
    await writeFile(file, bytes.subarray(0, Math.floor(bytes.length / 2)));
    expect((await loadError(file)).message).toMatch(/truncated/);
  });

  it('says a renamed JPEG is a JPEG', async () => {
    const file = path.join(dir, 'photo.onnx');
    await writeFile(file, await sharp({ create: { width: 8, height: 8, channels: 3, background: '#808080' } }).jpeg().toBuffer());
    expect((await loadError(file)).message).toMatch(/JPEG image, not an ONNX model/);
  });

  it('says an empty file is empty', async () => {
    const file = path.join(dir, 'empty.onnx');
    await writeFile(file, new Uint8Array());
    expect((await loadError(file)).message).toMatch(/empty/);
  });

  it('lists the inputs and outputs of an ONNX model that is not a linewatch VAE', async () => {
    const file = path.join(dir, 'relu.onnx');
    const info = (name: string) => ({ name, type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 4 }] } } } });
    const model = onnx.ModelProto.create({
      irVersion: 7,
      opsetImport: [{ domain: '', version: 13 }],
      graph: { name: 'g', node: [{ opType: 'Relu', input: ['x'], output: ['y'] }], input: [info('x')], output: [info('y')] },
    });
    await writeFile(file, onnx.ModelProto.encode(model).finish());
    const error = await loadError(file);
    expect(error.message).toMatch(/inputs \[x\] and outputs \[y\]; expected input \[image\] and outputs \[recon, mu\]/);
    expect(error.hint).toMatch(/linewatch VAE/);
  });
});

describe('runWithExtraOutputs', () => {
  it('exposes intermediate activations next to the model outputs', async () => {
    const bytes = buildVaeGraph(SPEC);
    const input = noiseImages(2, 9);
    const seen: Array<Map<string, { data: Float32Array; dims: readonly number[] }>> = [];
    await runWithExtraOutputs(bytes, [{ input, count: 2 }, { input: input.subarray(0, PIXELS), count: 1 }], ['enc0.relu', 'recon'], (outputs) => {
      seen.push(new Map(outputs));
    });
    expect(seen).toHaveLength(2);
    const conv = seen[0]!.get('enc0.relu')!;
    expect(conv.dims).toEqual([2, 16, 32, 32]);
    expect(Math.min(...conv.data)).toBe(0); // a ReLU output, and some units are off
    expect(Math.max(...conv.data)).toBeGreaterThan(0);
    const model = await OnnxModel.fromBytes(bytes, { threads: 1 });
    const plain = await model.run(input, 2);
    await model.dispose();
    expect(Array.from(seen[0]!.get('recon')!.data)).toEqual(Array.from(plain.recon));
    expect(seen[1]!.get('enc0.relu')!.dims).toEqual([1, 16, 32, 32]);
  });

  it('leaves the original model untouched', () => {
    const bytes = buildVaeGraph(SPEC);
    const exposed = onnx.ModelProto.decode(exposeTensors(bytes, ['enc1.relu', 'mu']));
    expect(exposed.graph!.output!.map((o) => o.name)).toEqual(['recon', 'mu', 'enc1.relu']);
    expect(onnx.ModelProto.decode(bytes).graph!.output!.map((o) => o.name)).toEqual(['recon', 'mu']);
  });
});
