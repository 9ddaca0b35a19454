import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { ModelError, UsageError } from '../errors.js';
import { normaliseInput } from '../image/normalise.js';
import type { ImageTensor } from '../image/tensor.js';
import { FrameScorer, MIN_COMPONENT_STD, type FrameScore } from '../scoring/frame.js';
import { gaussianKernel } from '../scoring/maps.js';
import { sceneReference, type SceneReference } from '../scoring/quality.js';
import { allFinite } from './infer.js';
import { MANIFEST_FILE, MODEL_IO, readManifest, VARIANTS, type Calibration, type Manifest, type Variant } from './manifest.js';
import { OnnxModel, type MapBlur } from './onnx.js';
import type { ProviderSettings } from './provider-options.js';
import type { InferenceModel } from './types.js';

export interface LoadedBundle {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly variant: Variant;
  readonly model: InferenceModel;
  /** Latent means of the training images for this variant (count x latentDim). */
  readonly memory: Float32Array;
  readonly calibration: Calibration | undefined;
  readonly scorer: FrameScorer;
  /** Milliseconds the warm-up run (a synthetic frame scored end to end) took. */
  readonly warmUpMs: number;
  /** The scene the training frames showed, for the camera-fault displacement check; undefined without a quality profile. */
  readonly sceneReference: SceneReference | undefined;
  dispose(): Promise<void>;
}

export interface LoadBundleOptions {
  variant?: Variant;
  providers?: string[];
  threads?: number;
  /** Per-provider settings (CUDA device, TensorRT switches). */
  providerOptions?: ProviderSettings;
  log?: (message: string) => void;
}

/** Load a bundle written by `linewatch train`: manifest, the chosen ONNX variant, its latent memory; warm it up. */
export async function loadBundle(dir: string, options: LoadBundleOptions = {}): Promise<LoadedBundle> {
  const variant = options.variant ?? 'int8';
  if (!VARIANTS.includes(variant)) {
    throw new UsageError(`unknown model variant "${variant}"`, { hint: `use one of: ${VARIANTS.join(', ')}` });
  }
  const manifest = await readManifest(dir);
  const modelName = manifest.files[variant];
  if (!modelName) {
    throw new ModelError(`model bundle ${dir} has no ${variant} model`, {
      file: path.join(dir, MANIFEST_FILE),
      hint: variant === 'int8' ? 'use --variant fp32, or retrain to get an int8 model' : 'the bundle is incomplete: retrain it',
    });
  }
  const memory = await readMemory(dir, manifest, variant);
  const sceneReference = await readSceneReference(dir, manifest);
  const model = await OnnxModel.load(path.join(dir, modelName), {
    providers: options.providers,
    threads: options.threads,
    ...(options.providerOptions !== undefined ? { providerOptions: options.providerOptions } : {}),
    ...mapBlurOf(manifest),
    log: options.log,
  });
  try {
    const { input, architecture } = manifest;
    const shape = model.inputShape;
    if (shape.channels !== input.channels || shape.height !== input.height || shape.width !== input.width) {
      throw new ModelError(
        `${path.join(dir, modelName)} takes ${shape.channels}x${shape.height}x${shape.width} images but the manifest says ${input.channels}x${input.height}x${input.width}`,
        { file: path.join(dir, modelName), hint: 'the bundle mixes files of different models: retrain it' },
      );
    }
    if (model.latentDim !== architecture.latentDim) {
      throw new ModelError(`${path.join(dir, modelName)} has latent size ${model.latentDim}, the manifest says ${architecture.latentDim}`, {
        file: path.join(dir, modelName),
        hint: 'the bundle mixes files of different models: retrain it',
      });
    }
    if (manifest.scoring.errorMap === 'comparator' && !model.hasMap) {
      throw new ModelError(`${path.join(dir, modelName)} has no anomaly_map output, but the manifest scores with the learned comparator`, {
        file: path.join(dir, modelName),
        hint: 'the bundle mixes files of different models: retrain it',
      });
    }
    const manifestFile = path.join(dir, MANIFEST_FILE);
    assertUsableNormalisation(manifest, manifestFile);
    const scorer = new FrameScorer(manifest.scoring, memory, architecture.latentDim);
    const warmUpMs = await warmUpAndCheckScores(model, manifest, scorer, path.join(dir, modelName), manifestFile);
    return {
      dir,
      manifest,
      variant,
      model,
      memory,
      calibration: manifest.calibration[variant],
      scorer,
      warmUpMs,
      sceneReference,
      dispose: () => model.dispose(),
    };
  } catch (error) {
    await model.dispose();
    throw error;
  }
}

/**
 * The blur the scorer would run on the comparator map, for onnxruntime to run inside the model's graph
 * (OnnxModelOptions.mapBlur); none where the scoring takes no blurred comparator map.
 */
function mapBlurOf(manifest: Manifest): { mapBlur?: MapBlur } {
  const { errorMap, blurSigma } = manifest.scoring;
  if (errorMap !== 'comparator' || !(blurSigma > 0)) return {};
  const { width, height } = manifest.input;
  return { mapBlur: { width, height, kernel: gaussianKernel(blurSigma, Math.ceil(3 * blurSigma)) } };
}

async function readSceneReference(dir: string, manifest: Manifest): Promise<SceneReference | undefined> {
  const name = manifest.quality?.reference;
  if (!name) return undefined;
  const file = path.join(dir, name);
  const { width, height } = manifest.input;
  try {
    const { data, info } = await sharp(await readFile(file)).greyscale().raw().toBuffer({ resolveWithObject: true });
    if (info.width !== width || info.height !== height) throw new Error(`it is ${info.width}x${info.height}, the model takes ${width}x${height}`);
    return sceneReference(new Uint8Array(data.buffer, data.byteOffset, width * height), width, height);
  } catch (cause) {
    throw new ModelError(`cannot use the scene reference ${file}: ${(cause as NodeJS.ErrnoException).code ?? (cause as Error).message}`, {
      file,
      hint: 'the bundle is incomplete or was edited: copy the whole folder, or write the profile again with `linewatch quality-profile`',
      cause,
    });
  }
}

async function readMemory(dir: string, manifest: Manifest, variant: Variant): Promise<Float32Array> {
  const name = manifest.files.memory[variant];
  if (!name) return new Float32Array(0);
  const file = path.join(dir, name);
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (cause) {
    throw new ModelError(`cannot read the latent memory ${file} (${(cause as NodeJS.ErrnoException).code ?? cause})`, {
      file,
      hint: 'the bundle is incomplete: copy the whole folder, or retrain it',
      cause,
    });
  }
  const expected = manifest.files.memoryCount * manifest.architecture.latentDim * 4;
  if (bytes.length !== expected) {
    throw new ModelError(`${file} has ${bytes.length} bytes, expected ${expected} (${manifest.files.memoryCount} x ${manifest.architecture.latentDim} float32)`, {
      file,
      hint: 'the file is truncated or belongs to another model: retrain the bundle',
    });
  }
  // Copy into a fresh, aligned buffer: Buffers from readFile may share a pool at an odd offset.
  const memory = new Float32Array(bytes.length / 4);
  new Uint8Array(memory.buffer).set(bytes);
  if (!allFinite(memory)) {
    // One NaN code poisons the whitening statistics, and with them every latent distance.
    const first = memory.findIndex((value) => !Number.isFinite(value));
    throw new ModelError(
      `${file} holds ${describeNonFinite(memory)} (first in training code ${Math.floor(first / manifest.architecture.latentDim)}): latent novelty would be NaN for every frame`,
      { file, hint: `${NON_FINITE_WEIGHTS}: retrain the bundle (\`linewatch train\`), or re-export it from a model that scores` },
    );
  }
  return memory;
}

/** Why a model or its codes hold NaN or Infinity; the hints finish it with what to do. */
const NON_FINITE_WEIGHTS = 'training diverged, or the file was damaged';

/**
 * Refuses normalisation constants that no training run writes (componentStats floors std at
 * MIN_COMPONENT_STD): a smaller std turns every z-score into ±Infinity, which the schema's "std > 0" lets through.
 */
function assertUsableNormalisation(manifest: Manifest, manifestFile: string): void {
  for (const [component, stats] of Object.entries(manifest.scoring.normalisation)) {
    if (stats === undefined || stats.std >= MIN_COMPONENT_STD) continue;
    throw new ModelError(
      `${manifestFile}: scoring.normalisation.${component}.std is ${stats.std}, below ${MIN_COMPONENT_STD}: every ${component} z-score, (value - mean) / std, would overflow to ±Infinity`,
      {
        file: manifestFile,
        hint: 'training never writes a std this small, so the manifest was edited or damaged: restore manifest.json from the original bundle, or retrain it (`linewatch train`)',
      },
    );
  }
}

/**
 * The warm-up: one synthetic frame run through the model and scored exactly as the agent scores frames.
 * A NaN weight or an out-of-range normalisation constant makes every frame's score non-finite; caught
 * here, that is one clear refusal at start instead of a failure per frame.
 */
async function warmUpAndCheckScores(model: OnnxModel, manifest: Manifest, scorer: FrameScorer, modelFile: string, manifestFile: string): Promise<number> {
  const image = normaliseInput(warmUpFrame(manifest.input.width, manifest.input.height, manifest.input.channels), manifest.input.normalisation);
  const started = performance.now();
  const outputs = await model.run(image.data, 1);
  const warmUpMs = performance.now() - started;
  const tensors: [string, Float32Array | undefined][] = [
    [MODEL_IO.recon, outputs.recon],
    [MODEL_IO.mu, outputs.mu],
    [MODEL_IO.map, outputs.map],
    ['the blurred map', outputs.blurredMap],
  ];
  for (const [name, values] of tensors) {
    if (values === undefined || allFinite(values)) continue;
    throw new ModelError(`${modelFile} outputs ${describeNonFinite(values)} in '${name}' for the warm-up frame, so frames cannot be scored`, {
      file: modelFile,
      hint: `its weights hold NaN or Infinity (${NON_FINITE_WEIGHTS}): retrain the bundle (\`linewatch train\`), or re-export it from a model that scores`,
    });
  }
  const result = scorer.score(image, outputs.recon, outputs.mu, undefined, outputs.map, outputs.blurredMap);
  if (!Number.isFinite(result.score)) throw nonFiniteScoreError(result, manifest, manifestFile);
  return warmUpMs;
}

/** Names the constant that turned finite model outputs into a non-finite score. */
function nonFiniteScoreError(result: FrameScore, manifest: Manifest, manifestFile: string): ModelError {
  const { scorer, normalisation } = manifest.scoring;
  const used = scorer === 'hybrid' ? (['recon', 'latent'] as const) : ([scorer] as const);
  const hint = 'the scoring constants are out of range: restore manifest.json from the original bundle, or retrain it (`linewatch train`), which measures them on held-out images';
  for (const component of used) {
    const raw = result[component];
    const stats = normalisation[component];
    if (!Number.isFinite(raw)) {
      return new ModelError(`${manifestFile}: the warm-up frame scores ${result.score}: its raw ${component} component is ${raw}`, { file: manifestFile, hint });
    }
    if (stats !== undefined && !Number.isFinite((raw - stats.mean) / stats.std)) {
      return new ModelError(
        `${manifestFile}: the warm-up frame scores ${result.score}: its ${component} component ${raw} normalised with scoring.normalisation.${component} (mean ${stats.mean}, std ${stats.std}) is not finite`,
        { file: manifestFile, hint },
      );
    }
  }
  return new ModelError(`${manifestFile}: the warm-up frame scores ${result.score} (recon ${result.recon}, latent ${result.latent}): the sum of the normalised components overflows`, {
    file: manifestFile,
    hint,
  });
}

/** Textured (gradient plus waves) rather than flat, so normalisation and the error map see camera-like input. */
function warmUpFrame(width: number, height: number, channels: 1 | 3): ImageTensor {
  const plane = width * height;
  const data = new Float32Array(plane * channels);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        data[c * plane + y * width + x] = 0.45 + 0.2 * (x / width) + 0.15 * Math.sin(0.7 * x + c) * Math.cos(0.5 * y);
      }
    }
  }
  return { width, height, channels, data };
}

function describeNonFinite(values: Float32Array): string {
  let nan = 0;
  let infinite = 0;
  for (const value of values) {
    if (Number.isNaN(value)) nan += 1;
    else if (!Number.isFinite(value)) infinite += 1;
  }
  const kinds = [nan > 0 ? `${nan} NaN` : '', infinite > 0 ? `${infinite} infinite` : ''].filter(Boolean).join(' and ');
  return `${kinds} of ${values.length} values`;
}

export interface BundleContents {
  manifest: Manifest;
  /** file name -> content, written beside manifest.json */
  files: Record<string, Uint8Array>;
}

/**
 * Write a bundle so that a reader never sees half of it: everything goes to a
 * temporary sibling folder which is renamed into place at the end.
 */
export async function writeBundle(dir: string, contents: BundleContents, options: { force?: boolean } = {}): Promise<void> {
  await assertBundleTarget(dir, options.force ?? false);
  const staging = stagingDir(dir);
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  try {
    for (const [name, content] of Object.entries(contents.files)) {
      await writeFile(path.join(staging, name), content);
    }
    await writeFile(path.join(staging, MANIFEST_FILE), `${JSON.stringify(contents.manifest, null, 2)}\n`);
    if (existsSync(dir)) {
      const old = `${staging}-old`;
      await rename(dir, old);
      await rename(staging, dir);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(staging, dir);
    }
  } catch (error) {
    await rm(staging, { recursive: true, force: true });
    throw error;
  }
}

export function stagingDir(dir: string): string {
  const resolved = path.resolve(dir);
  return path.join(path.dirname(resolved), `.${path.basename(resolved)}.partial-${process.pid}`);
}

/** Refuse to replace an existing bundle (or any non-empty folder) unless forced. */
export async function assertBundleTarget(dir: string, force: boolean): Promise<void> {
  if (!existsSync(dir)) return;
  const entries = await readdir(dir);
  if (entries.length === 0 || force) return;
  throw new UsageError(`output folder ${dir} already exists and is not empty`, {
    hint: 'choose another --out, or pass --force to replace it',
  });
}
