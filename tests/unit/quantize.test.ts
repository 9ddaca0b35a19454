import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelError, UsageError } from '../../src/errors.js';
import { imageTensor } from '../../src/image/tensor.js';
import { exportOnnx } from '../../src/toolkit/export.js';
import { OnnxModel } from '../../src/model/onnx.js';
import { activationParams, foldNearestUpsampleIntoConv, quantizeInt8, quantizeWeight } from '../../src/toolkit/quantize.js';
import { evaluate } from '../../src/toolkit/eval/eval.js';
import { resolveImageList } from '../../src/image/load.js';
import { loadBundle } from '../../src/model/bundle.js';
import { readManifest } from '../../src/model/manifest.js';
import { DEFAULT_VAE_CONFIG, trainVae } from '../../src/toolkit/train/vae.js';
import { buildVaeGraph, randomVaeWeights } from '../helpers/vae-graph.js';
import { uniformNoise } from '../helpers/images.js';

const { onnx } = onnxProto;
const TILES = '../shared/data/magnetic-tile/MT_Free/Imgs';
const haveTiles = existsSync(TILES);
if (!haveTiles) console.warn(`skipping the real-image int8 tests: ${TILES} not found (see /work/shared/data/README.md)`);
const SPEC = { channels: 1 as const, size: 64, filters: [16, 32, 64], latentDim: 64, seed: 3 };
const PIXELS = 64 * 64;

function pearson(a: readonly number[], b: readonly number[]): number {
  const mean = (v: readonly number[]) => v.reduce((x, y) => x + y, 0) / v.length;
  const ma = mean(a);
  const mb = mean(b);
  let ab = 0;
  let aa = 0;
  let bb = 0;
  a.forEach((x, i) => {
    ab += (x - ma) * (b[i]! - mb);
    aa += (x - ma) ** 2;
    bb += (b[i]! - mb) ** 2;
  });
  return ab / Math.sqrt(aa * bb);
}

/** Per-image mean squared reconstruction error: the score used to compare fp32 and int8. */
async function scores(model: OnnxModel, images: readonly Float32Array[]): Promise<{ mse: number[]; recon: Float32Array[]; mu: Float32Array[] }> {
  const mse: number[] = [];
  const recon: Float32Array[] = [];
  const mu: Float32Array[] = [];
  for (const image of images) {
    const out = await model.run(image, 1);
    mse.push(out.recon.reduce((sum, v, i) => sum + (v - image[i]!) ** 2, 0) / image.length);
    recon.push(out.recon);
    mu.push(out.mu);
  }
  return { mse, recon, mu };
}

function relativeError(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let diff = 0;
  let norm = 0;
  a.forEach((row, r) => row.forEach((v, i) => ((diff += (v - b[r]![i]!) ** 2), (norm += v ** 2))));
  return Math.sqrt(diff / norm);
}

function meanAbsDiff(a: readonly Float32Array[], b: readonly Float32Array[]): number {
  let sum = 0;
  let count = 0;
  a.forEach((row, r) => row.forEach((v, i) => ((sum += Math.abs(v - b[r]![i]!)), count++)));
  return sum / count;
}

function noiseImages(count: number, seed: number): Float32Array[] {
  return uniformNoise(count, PIXELS, seed);
}

function opTypes(bytes: Uint8Array): string[] {
  return onnx.ModelProto.decode(bytes).graph!.node!.map((n) => n.opType ?? '');
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'linewatch-quantize-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('quantization arithmetic', () => {
  it('represents zero exactly and covers the calibrated range', () => {
    expect(activationParams(0, 1)).toEqual({ scale: 1 / 255, zeroPoint: 0 });
    const signed = activationParams(-1, 3);
    expect(signed.scale).toBeCloseTo(4 / 255, 9);
    expect(signed.zeroPoint).toBe(64);
    expect(activationParams(0.2, 0.6)).toEqual({ scale: 0.6 / 255, zeroPoint: 0 }); // widened to include 0
    expect(activationParams(0, 0)).toEqual({ scale: 1, zeroPoint: 0 });
  });

  it('keeps per-tensor weights to 8 bits and per-channel weights to 7 bits', () => {
    const values = Float32Array.from([0.5, -1, 0.25, 0.01, 4, -2, 0.1, 0.3]); // two channels of four
    const perTensor = quantizeWeight(values, [2, 4], undefined);
    expect(perTensor.scales).toEqual([4 / 127]);
    expect(Math.max(...Array.from(perTensor.values, Math.abs))).toBe(127);
    const perChannel = quantizeWeight(values, [2, 4], 0);
    expect(perChannel.scales).toEqual([1 / 63, 4 / 63]);
    expect(Math.max(...Array.from(perChannel.values, Math.abs))).toBe(63);
    values.forEach((v, i) => expect(Math.abs(perChannel.values[i]! * perChannel.scales[i < 4 ? 0 : 1]! - v)).toBeLessThanOrEqual(perChannel.scales[i < 4 ? 0 : 1]! / 2 + 1e-7));
    const columns = quantizeWeight(Float32Array.from([1, 8, -2, 4]), [2, 2], 1); // Gemm B [K, N]: channels are columns
    expect(columns.scales).toEqual([2 / 63, 8 / 63]);
  });
});

describe('folding nearest upsampling into the following conv', () => {
  it('computes the same function with DepthToSpace instead of Resize', async () => {
    const bytes = buildVaeGraph(SPEC);
    const model = onnx.ModelProto.decode(bytes);
    expect(foldNearestUpsampleIntoConv(model.graph!)).toBe(3);
    const folded = onnx.ModelProto.encode(model).finish();
    expect(opTypes(folded)).not.toContain('Resize');
    expect(opTypes(folded).filter((op) => op === 'DepthToSpace')).toHaveLength(3);
    const a = await OnnxModel.fromBytes(bytes, { threads: 1 });
    const b = await OnnxModel.fromBytes(folded, { threads: 1 });
    const input = noiseImages(2, 4);
    const batch = new Float32Array(2 * PIXELS);
    batch.set(input[0]!);
    batch.set(input[1]!, PIXELS);
    const [ra, rb] = [await a.run(batch, 2), await b.run(batch, 2)];
    await a.dispose();
    await b.dispose();
    let maxDiff = 0;
    ra.recon.forEach((v, i) => (maxDiff = Math.max(maxDiff, Math.abs(v - rb.recon[i]!))));
    expect(maxDiff).toBeLessThan(1e-5);
    expect(Array.from(rb.mu)).toEqual(Array.from(ra.mu)); // the encoder is untouched
  });
});

describe('quantizeInt8 on a random-weight VAE', () => {
  it('keeps the interface, shrinks the model and lets onnxruntime run every conv and gemm in int8', async () => {
    const fp32 = buildVaeGraph(SPEC);
    const calibration = noiseImages(24, 1);
    const messages: string[] = [];
    const int8 = await quantizeInt8(fp32, calibration, { log: (m) => messages.push(m) });
    expect(messages.join('\n')).toMatch(/quantized 8 weight tensors/);
    expect(int8.length).toBeLessThan(fp32.length * 0.35);
    const decoded = onnx.ModelProto.decode(int8);
    const initializerTypes = new Set(decoded.graph!.initializer!.map((t) => t.dataType));
    expect(initializerTypes).toContain(onnx.TensorProto.DataType.INT8);
    expect(initializerTypes).toContain(onnx.TensorProto.DataType.INT32);
    expect(decoded.metadataProps!.find((p) => p.key === 'linewatch.quantization')?.value).toMatch(/per-tensor/);

    const optimized = path.join(dir, 'int8.optimized.onnx');
    const model = await OnnxModel.fromBytes(int8, { threads: 1, optimizedModelPath: optimized });
    expect(model.inputShape).toEqual({ channels: 1, height: 64, width: 64 });
    expect(model.latentDim).toBe(64);
    const ops = opTypes(new Uint8Array(await readFile(optimized)));
    expect(ops.filter((op) => op === 'QLinearConv')).toHaveLength(6);
    expect(ops.filter((op) => op === 'QGemm')).toHaveLength(2);
    for (const floatOp of ['Conv', 'Gemm', 'Resize', 'Sigmoid', 'Relu']) expect(ops).not.toContain(floatOp);

    const reference = await OnnxModel.fromBytes(fp32, { threads: 1 });
    const images = noiseImages(8, 2);
    const [a, b] = [await scores(reference, images), await scores(model, images)];
    await reference.dispose();
    await model.dispose();
    expect(meanAbsDiff(a.recon, b.recon)).toBeLessThan(0.01);
    expect(relativeError(a.mu, b.mu)).toBeLessThan(0.05);
  });

  it('also quantizes with per-channel weights, percentile ranges and without the upsample rewrite', async () => {
    const fp32 = buildVaeGraph(SPEC);
    const reference = await OnnxModel.fromBytes(fp32, { threads: 1 });
    const images = noiseImages(8, 3);
    const expected = await scores(reference, images);
    await reference.dispose();
    for (const options of [{ perChannel: true }, { range: { percentile: 99.99 } }, { foldUpsample: false }]) {
      const int8 = await quantizeInt8(fp32, noiseImages(16, 5), options);
      const model = await OnnxModel.fromBytes(int8, { threads: 1 });
      const got = await scores(model, images);
      await model.dispose();
      expect(meanAbsDiff(expected.recon, got.recon), JSON.stringify(options)).toBeLessThan(0.01);
      expect(relativeError(expected.mu, got.mu), JSON.stringify(options)).toBeLessThan(0.05);
    }
    expect(opTypes(await quantizeInt8(fp32, noiseImages(4, 5), { foldUpsample: false }))).toContain('Resize');
  });

  it('rewrites DepthToSpace channels-last: bit-identical outputs, and onnxruntime keeps the int8 convolutions in NHWC', async () => {
    const fp32 = buildVaeGraph(SPEC);
    const calibration = noiseImages(16, 8);
    const messages: string[] = [];
    const rewritten = await quantizeInt8(fp32, calibration, { log: (m) => messages.push(m) });
    const asIs = await quantizeInt8(fp32, calibration, { channelsLastDepthToSpace: false });
    expect(messages.join('\n')).toMatch(/rewrote 3 DepthToSpace node\(s\)/);
    expect(opTypes(rewritten)).not.toContain('DepthToSpace');
    expect(opTypes(asIs).filter((op) => op === 'DepthToSpace')).toHaveLength(3);
    expect(opTypes(await quantizeInt8(fp32, calibration, { scheme: 'int8-symmetric' }))).toContain('DepthToSpace');

    const optimizedOps = async (bytes: Uint8Array, name: string) => {
      const file = path.join(dir, name);
      const model = await OnnxModel.fromBytes(bytes, { threads: 1, optimizedModelPath: file });
      return { model, ops: opTypes(new Uint8Array(await readFile(file))) };
    };
    const a = await optimizedOps(asIs, 'as-is.onnx');
    const b = await optimizedOps(rewritten, 'channels-last.onnx');
    // Each DepthToSpace as-is runs channels-first between a transpose out of NHWC and one back in.
    const transposes = (ops: string[]) => ops.filter((op) => op === 'Transpose').length;
    expect(a.ops).toContain('DepthToSpace');
    expect(b.ops).not.toContain('DepthToSpace');
    expect(transposes(b.ops)).toBeLessThan(transposes(a.ops));
    for (const ops of [a.ops, b.ops]) expect(ops.filter((op) => op === 'QLinearConv')).toHaveLength(6);

    const images = noiseImages(3, 9);
    const batch = new Float32Array(3 * PIXELS);
    images.forEach((image, i) => batch.set(image, i * PIXELS));
    const [ra, rb] = [await a.model.run(batch, 3), await b.model.run(batch, 3)];
    await a.model.dispose();
    await b.model.dispose();
    expect(Array.from(rb.recon)).toEqual(Array.from(ra.recon));
    expect(Array.from(rb.mu)).toEqual(Array.from(ra.mu));
  });

  it('quantizes the graph written by export.ts', async () => {
    const fp32 = exportOnnx(randomVaeWeights(DEFAULT_VAE_CONFIG, 9));
    const int8 = await quantizeInt8(fp32, noiseImages(16, 6));
    const [a, b] = [await OnnxModel.fromBytes(fp32, { threads: 1 }), await OnnxModel.fromBytes(int8, { threads: 1 })];
    const images = noiseImages(4, 7);
    const [sa, sb] = [await scores(a, images), await scores(b, images)];
    await a.dispose();
    await b.dispose();
    expect(meanAbsDiff(sa.recon, sb.recon)).toBeLessThan(0.01);
    expect(relativeError(sa.mu, sb.mu)).toBeLessThan(0.05);
  });

  it('explains bad inputs', async () => {
    const fp32 = buildVaeGraph(SPEC);
    await expect(quantizeInt8(fp32, [])).rejects.toBeInstanceOf(UsageError);
    await expect(quantizeInt8(fp32, [new Float32Array(100)])).rejects.toThrow(/calibration image 0 has 100 values; the model takes 4096/);
    await expect(quantizeInt8(fp32, noiseImages(1, 1), { range: { percentile: 20 } })).rejects.toThrow(/percentile/);
    await expect(quantizeInt8(new TextEncoder().encode('not a model at all'), noiseImages(1, 1))).rejects.toBeInstanceOf(ModelError);
  });
});

describe.skipIf(!haveTiles)('quantizeInt8 on a VAE trained on Magnetic Tile images', () => {
  let fp32: Uint8Array;
  let calibration: Float32Array[];
  let evaluation: Float32Array[];

  beforeAll(async () => {
    const files = (await readdir(TILES)).filter((f) => f.endsWith('.jpg')).sort();
    const load = (file: string) =>
      sharp(path.join(TILES, file))
        .greyscale()
        .resize(64, 64, { fit: 'fill' })
        .raw()
        .toBuffer()
        .then((bytes) => Float32Array.from(bytes, (v) => v / 255));
    // Every 10th file: tiles from several acquisition runs. Train and calibrate on 40, score 40 others.
    const picked = files.filter((_, i) => i % 10 === 0).slice(0, 80);
    const images = await Promise.all(picked.map(load));
    calibration = images.slice(0, 40);
    evaluation = images.slice(40);
    const { weights } = await trainVae(
      calibration.map((data) => imageTensor(64, 64, 1, data)),
      { ...DEFAULT_VAE_CONFIG },
      { epochs: 4, seed: 1, batchSize: 8, learningRate: 2e-3 },
    );
    fp32 = exportOnnx(weights);
  }, 120_000);

  it.each([
    ['per-tensor', { perChannel: false }],
    ['per-channel 7-bit', { perChannel: true }],
  ])('int8 (%s) per-image scores track fp32 (Pearson >= 0.999)', async (_, options) => {
    const int8 = await quantizeInt8(fp32, calibration, options);
    const [a, b] = [await OnnxModel.fromBytes(fp32, { threads: 1 }), await OnnxModel.fromBytes(int8, { threads: 1 })];
    const [sa, sb] = [await scores(a, evaluation), await scores(b, evaluation)];
    await a.dispose();
    await b.dispose();
    const correlation = pearson(sa.mse, sb.mse);
    const reconDiff = meanAbsDiff(sa.recon, sb.recon);
    const muError = relativeError(sa.mu, sb.mu);
    console.log(`int8 ${JSON.stringify(options)}: Pearson ${correlation.toFixed(6)}, mean |recon diff| ${reconDiff.toFixed(5)}, mu relative error ${muError.toFixed(4)}, ${fp32.length} -> ${int8.length} bytes`);
    expect(correlation).toBeGreaterThanOrEqual(0.999);
    expect(reconDiff).toBeLessThan(0.01);
    expect(muError).toBeLessThan(0.05);
    // Scores must differ between images, or agreeing on them would mean nothing.
    expect(Math.max(...sa.mse) / Math.min(...sa.mse)).toBeGreaterThan(1.5);
  });
});

const SHIPPED_TILE_BUNDLE = path.resolve('models/magnetic-tile');
const TILE_TEST_LIST = path.resolve('../shared/data/magnetic-tile/splits/differnet_test_defect.txt');

describe.skipIf(!haveTiles || !existsSync(TILE_TEST_LIST))('the shipped Magnetic Tile bundle, int8 against fp32', () => {
  it('scores held-out normal and defective tiles alike (Pearson >= 0.999) with its own scorer, comparator included', async () => {
    const root = path.dirname(path.dirname(TILE_TEST_LIST));
    const normal = (await resolveImageList(path.join(root, 'splits/differnet_test_good.txt'), root)).slice(0, 60);
    const defective = (await resolveImageList(TILE_TEST_LIST, root)).slice(0, 60);
    const scoresOf = async (variant: 'fp32' | 'int8') => {
      const bundle = await loadBundle(SHIPPED_TILE_BUNDLE, { variant, threads: 1 });
      try {
        const result = await evaluate(bundle, normal, defective, { batch: 16 });
        return result.images.map((image) => image.score);
      } finally {
        await bundle.dispose();
      }
    };
    const manifest = await readManifest(SHIPPED_TILE_BUNDLE);
    expect(manifest.scoring.errorMap).toBe('comparator');
    const [a, b] = [await scoresOf('fp32'), await scoresOf('int8')];
    const correlation = pearson(a, b);
    console.log(`shipped bundle, scorer ${manifest.scoring.scorer}: int8 vs fp32 Pearson ${correlation.toFixed(6)} over ${a.length} tiles`);
    expect(correlation).toBeGreaterThanOrEqual(0.999);
    // Scores must differ between images, or agreeing on them would mean nothing.
    expect(Math.max(...a) - Math.min(...a)).toBeGreaterThan(1);
  }, 120_000);
});
