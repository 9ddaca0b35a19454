import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ModelError, UsageError } from '../errors.js';
import { FrameScorer } from '../scoring/frame.js';
import { MANIFEST_FILE, readManifest, VARIANTS, type Calibration, type Manifest, type Variant } from './manifest.js';
import { OnnxModel } from './onnx.js';
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
  /** Milliseconds the warm-up run took. */
  readonly warmUpMs: number;
  dispose(): Promise<void>;
}

export interface LoadBundleOptions {
  variant?: Variant;
  providers?: string[];
  threads?: number;
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
  const model = await OnnxModel.load(path.join(dir, modelName), {
    providers: options.providers,
    threads: options.threads,
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
    const warmUpMs = await model.warmUp();
    const scorer = new FrameScorer(manifest.scoring, memory, architecture.latentDim);
    return {
      dir,
      manifest,
      variant,
      model,
      memory,
      calibration: manifest.calibration[variant],
      scorer,
      warmUpMs,
      dispose: () => model.dispose(),
    };
  } catch (error) {
    await model.dispose();
    throw error;
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
  return memory;
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
