/**
 * fp32 vs static-int8 inference speed of the VAE on the CPU provider: one
 * thread, one frame per run, both sessions in the same process, runs
 * interleaved so that load from other processes hits both alike, warm-up
 * excluded. Prints a table and writes JSON.
 *
 *   node dist-bench/bench/int8-speed.js [out.json] [--bundle models/magnetic-tile | --model fp32.onnx] [--runs 500] [--per-channel]
 *
 * With --bundle it times the bundle's own model.onnx and model.int8.onnx (what
 * `linewatch run` loads). The fp32 graph linewatch ships has each nearest-upsample +
 * conv folded into conv + DepthToSpace (same outputs, faster); the graph as first
 * exported (Resize + Conv) is timed too, as a reference, and so is the int8 graph with its
 * DepthToSpace nodes as they were before the channels-last rewrite (depth-to-space.ts).
 *
 * Without --model it benchmarks the shipped architecture (64x64 grey, filters
 * [16, 32, 64], latent 64, comparator [8, 16, 32]) with seeded random weights: speed does not depend on
 * what the weights learned. Calibration uses 40 Magnetic Tile images when
 * ../shared/data is there, else seeded noise images (noted in the JSON).
 */
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import onnxProto from 'onnx-proto';
import sharp from 'sharp';
import { exportOnnx } from '../src/toolkit/export.js';
import { OnnxModel } from '../src/model/onnx.js';
import { foldUpsampleModel, quantizeInt8 } from '../src/toolkit/quantize.js';
import { DEFAULT_COMPARATOR_FILTERS, DEFAULT_VAE_CONFIG, weightShapes, type VaeConfig, type VaeWeights } from '../src/toolkit/train/vae-config.js';
import { normalSampler, seededRandom } from '../src/toolkit/train/random.js';

const CALIBRATION_DIR = '../shared/data/magnetic-tile/MT_Free/Imgs';
const CALIBRATION_IMAGES = 40;
const WARM_UP_RUNS = 50;
/** What `linewatch train` builds by default: the VAE and its comparator, timed as one graph. */
const SHIPPED_CONFIG: VaeConfig = { ...DEFAULT_VAE_CONFIG, comparator: { filters: [...DEFAULT_COMPARATOR_FILTERS] } };

function randomWeights(config: VaeConfig, seed: number): VaeWeights {
  const normal = normalSampler(seededRandom(seed));
  const tensors: VaeWeights['tensors'] = {};
  for (const [name, shape] of weightShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape.length === 1 ? 1 : shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const std = name.endsWith('.bias') ? 0.01 : Math.sqrt(2 / fanIn);
    tensors[name] = { shape, data: Float32Array.from({ length: size }, () => normal() * std) };
  }
  return { config: { ...config }, tensors };
}

async function calibrationImages(size: { width: number; height: number; channels: number }): Promise<{ images: Float32Array[]; source: string }> {
  try {
    const files = (await readdir(CALIBRATION_DIR)).filter((f) => f.endsWith('.jpg')).sort().slice(0, CALIBRATION_IMAGES);
    if (files.length === CALIBRATION_IMAGES) {
      const images = await Promise.all(
        files.map(async (file) => {
          let pipeline = sharp(path.join(CALIBRATION_DIR, file)).resize(size.width, size.height, { fit: 'fill' });
          pipeline = size.channels === 1 ? pipeline.greyscale() : pipeline.removeAlpha().toColourspace('srgb');
          const { data } = await pipeline.raw().toBuffer({ resolveWithObject: true });
          const plane = size.width * size.height;
          const image = new Float32Array(plane * size.channels);
          for (let i = 0; i < plane; i++) for (let c = 0; c < size.channels; c++) image[c * plane + i] = data[i * size.channels + c]! / 255;
          return image;
        }),
      );
      return { images, source: `${CALIBRATION_DIR} (${CALIBRATION_IMAGES} images)` };
    }
  } catch {
    // fall through to noise images
  }
  const random = seededRandom(7);
  const count = size.width * size.height * size.channels;
  const images = Array.from({ length: CALIBRATION_IMAGES }, () => Float32Array.from({ length: count }, () => random()));
  return { images, source: `seeded uniform noise (${CALIBRATION_DIR} not found)` };
}

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function summary(times: number[]): { medianMs: number; p90Ms: number; meanMs: number } {
  const sorted = [...times].sort((a, b) => a - b);
  return { medianMs: quantile(sorted, 0.5), p90Ms: quantile(sorted, 0.9), meanMs: times.reduce((a, b) => a + b, 0) / times.length };
}

async function optimizedOpCounts(file: string): Promise<Record<string, number>> {
  const model = onnxProto.onnx.ModelProto.decode(await readFile(file));
  const counts: Record<string, number> = {};
  for (const node of model.graph?.node ?? []) counts[node.opType ?? '?'] = (counts[node.opType ?? '?'] ?? 0) + 1;
  return counts;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      model: { type: 'string' },
      bundle: { type: 'string' },
      runs: { type: 'string', default: '500' },
      'per-channel': { type: 'boolean', default: false },
    },
  });
  const outFile = positionals[0] ?? 'out/bench-int8.json';
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 10) throw new Error(`--runs must be an integer >= 10, got ${values.runs}`);

  const exported = values.bundle
    ? undefined
    : values.model
      ? new Uint8Array(await readFile(values.model))
      : exportOnnx(randomWeights(SHIPPED_CONFIG, 1));
  const fp32Bytes = values.bundle ? new Uint8Array(await readFile(path.join(values.bundle, 'model.onnx'))) : foldUpsampleModel(exported!);
  const probe = await OnnxModel.fromBytes(fp32Bytes, { threads: 1, name: values.bundle ?? values.model ?? 'random-weight VAE' });
  const shape = probe.inputShape;
  await probe.dispose();
  const calibration = await calibrationImages(shape);
  const int8Bytes = values.bundle
    ? new Uint8Array(await readFile(path.join(values.bundle, 'model.int8.onnx')))
    : await quantizeInt8(fp32Bytes, calibration.images, { perChannel: values['per-channel'] });

  const scratch = path.join(os.tmpdir(), `linewatch-bench-int8-${process.pid}`);
  await mkdir(scratch, { recursive: true });
  const fp32 = await OnnxModel.fromBytes(fp32Bytes, { threads: 1, providers: ['cpu'], optimizedModelPath: path.join(scratch, 'fp32.onnx') });
  const int8 = await OnnxModel.fromBytes(int8Bytes, { threads: 1, providers: ['cpu'], optimizedModelPath: path.join(scratch, 'int8.onnx') });
  // A --model that is already folded has no unfolded form to time.
  const unfolded = exported && exported !== fp32Bytes && (await OnnxModel.fromBytes(exported, { threads: 1, providers: ['cpu'] }));
  const channelsFirstBytes = exported && (await quantizeInt8(fp32Bytes, calibration.images, { perChannel: values['per-channel'], channelsLastDepthToSpace: false }));
  const channelsFirst = channelsFirstBytes && (await OnnxModel.fromBytes(channelsFirstBytes, { threads: 1, providers: ['cpu'] }));
  const models = { fp32, int8, ...(unfolded ? { fp32Unfolded: unfolded } : {}), ...(channelsFirst ? { int8DepthToSpace: channelsFirst } : {}) };
  const frame = calibration.images[0]!;
  for (let i = 0; i < WARM_UP_RUNS; i++) for (const model of Object.values(models)) await model.run(frame, 1);
  const times: Record<string, number[]> = Object.fromEntries(Object.keys(models).map((name) => [name, []]));
  for (let i = 0; i < runs; i++) {
    // Rotate which model goes first, so none always runs on a cache another just warmed.
    const names = Object.keys(models) as (keyof typeof models)[];
    for (let j = 0; j < names.length; j++) {
      const name = names[(i + j) % names.length]!;
      const started = performance.now();
      await models[name]!.run(frame, 1);
      times[name]!.push(performance.now() - started);
    }
  }
  const result = {
    benchmark: 'int8-speed',
    date: new Date().toISOString(),
    model:
      values.bundle ??
      values.model ??
      `random-weight VAE ${shape.width}x${shape.height}x${shape.channels}, filters [${SHIPPED_CONFIG.filters.join(', ')}], latent ${SHIPPED_CONFIG.latentDim}, comparator [${SHIPPED_CONFIG.comparator!.filters.join(', ')}]`,
    weights: values['per-channel'] ? 'int8 per-channel (7-bit)' : 'int8 per-tensor',
    calibration: calibration.source,
    provider: 'cpu',
    threads: 1,
    batch: 1,
    runs,
    warmUpRuns: WARM_UP_RUNS,
    cpu: `${os.cpus()[0]?.model ?? 'unknown'} x${os.cpus().length}`,
    loadAverage1m: os.loadavg()[0],
    sizeBytes: { fp32: fp32Bytes.length, int8: int8Bytes.length },
    fp32: summary(times.fp32!),
    int8: summary(times.int8!),
    /** The graph before the upsample folding, as TF.js -> ONNX export writes it (not shipped). */
    fp32Unfolded: times.fp32Unfolded ? summary(times.fp32Unfolded) : null,
    /** The same int8 graph with DepthToSpace left channels-first (quantize's channelsLastDepthToSpace: false; not shipped). */
    int8DepthToSpace: times.int8DepthToSpace ? summary(times.int8DepthToSpace) : null,
    speedup: 0,
    optimizedOps: { fp32: await optimizedOpCounts(path.join(scratch, 'fp32.onnx')), int8: await optimizedOpCounts(path.join(scratch, 'int8.onnx')) },
  };
  result.speedup = result.fp32.medianMs / result.int8.medianMs;
  for (const model of Object.values(models)) await model.dispose();
  await rm(scratch, { recursive: true, force: true });

  const row = (name: string, s: { medianMs: number; p90Ms: number }, bytes: number) =>
    `${name.padEnd(8)}${s.medianMs.toFixed(3).padStart(12)}${s.p90Ms.toFixed(3).padStart(12)}${(bytes / 1024).toFixed(0).padStart(12)}`;
  console.log(`${result.model}; ${result.weights}; ${runs} runs each, 1 thread, batch 1, CPU (${result.cpu})`);
  console.log(`${'variant'.padEnd(8)}${'median ms'.padStart(12)}${'p90 ms'.padStart(12)}${'size KiB'.padStart(12)}`);
  console.log(row('fp32', result.fp32, fp32Bytes.length));
  console.log(row('int8', result.int8, int8Bytes.length));
  if (result.fp32Unfolded) console.log(row('fp32-raw', result.fp32Unfolded, exported!.length) + '   (fp32 before folding the upsamples; not shipped)');
  if (result.int8DepthToSpace) {
    console.log(row('int8-d2s', result.int8DepthToSpace, channelsFirstBytes!.length) + '   (int8 with DepthToSpace channels-first; not shipped)');
    console.log(`channels-last DepthToSpace: int8 median ${(result.int8DepthToSpace.medianMs / result.int8.medianMs).toFixed(2)}x as fast`);
  }
  console.log(`int8 speed-up over the shipped fp32 (median): ${result.speedup.toFixed(2)}x; size ratio ${(fp32Bytes.length / int8Bytes.length).toFixed(2)}x`);
  console.log(`optimised int8 graph: ${Object.entries(result.optimizedOps.int8).map(([op, n]) => `${op} x${n}`).join(', ')}`);
  await mkdir(path.dirname(path.resolve(outFile)), { recursive: true });
  await writeFile(outFile, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${outFile}`);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  process.exitCode = 1;
});
