import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ModelError } from '../errors.js';
import { INPUT_NORMALISATIONS } from '../image/normalise.js';
import { QualityProfileSchema } from '../scoring/faults.js';
import { CalibrationSchema, ScoringSettingsSchema } from '../scoring/settings.js';

/**
 * The model bundle: a folder with `manifest.json`, `model.onnx` (fp32),
 * `model.int8.onnx` (static int8, QDQ) and, per variant, the latent means of the
 * training images (`memory.<variant>.f32`, little-endian float32, count x latentDim)
 * used for latent-novelty scoring. Everything the runtime needs to score a frame
 * exactly as `linewatch eval` did is written here.
 */
export const MANIFEST_FORMAT = 'linewatch-model';
/**
 * 2: the learned comparator (`anomaly_map` output, `architecture.comparator`, error map
 * `comparator`), synthetic-defect training and the calibration's method. Version 1 bundles
 * still load: every field 2 added is optional and they score as before.
 */
export const MANIFEST_FORMAT_VERSION = 3;
export const READABLE_FORMAT_VERSIONS: readonly number[] = [1, 2, 3];
export const MANIFEST_FILE = 'manifest.json';

/** ONNX tensor names shared by export, inference and quantization. */
export const MODEL_IO = { input: 'image', recon: 'recon', mu: 'mu', map: 'anomaly_map' } as const;

export const VARIANTS = ['fp32', 'int8'] as const;
export type Variant = (typeof VARIANTS)[number];

// What the scores mean belongs to scoring/; the manifest stores it.
export { CalibrationSchema, ScoringSettingsSchema, type Calibration, type ScoringSettings } from '../scoring/settings.js';

export const ManifestSchema = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    formatVersion: z.union([z.literal(1), z.literal(2), z.literal(MANIFEST_FORMAT_VERSION)]),
    linewatchVersion: z.string(),
    createdAt: z.string(),
    input: z
      .object({
        width: z.number().int().min(8),
        height: z.number().int().min(8),
        channels: z.union([z.literal(1), z.literal(3)]),
        /** Pixels / 255 (`unit`) or per-image standardised into [0,1] (see src/image/normalise.ts); frames are stretched to width x height. */
        normalisation: z.enum(INPUT_NORMALISATIONS),
        resize: z.literal('stretch'),
      })
      .strict(),
    architecture: z
      .object({
        name: z.string(),
        latentDim: z.number().int().min(1),
        filters: z.array(z.number().int().min(1)),
        beta: z.number().min(0),
        /** The learned comparator's channels per level (its output is the model's `anomaly_map`). */
        comparator: z.object({ filters: z.array(z.number().int().min(1)).min(1) }).strict().optional(),
      })
      .strict(),
    files: z
      .object({
        fp32: z.string(),
        int8: z.string().optional(),
        memory: z.object({ fp32: z.string().optional(), int8: z.string().optional() }).strict().default({}),
        memoryCount: z.number().int().min(0).default(0),
      })
      .strict(),
    scoring: ScoringSettingsSchema,
    calibration: z.object({ fp32: CalibrationSchema.optional(), int8: CalibrationSchema.optional() }).strict(),
    /** What the training frames looked like, for the camera-fault checks (scoring/faults.ts). */
    quality: QualityProfileSchema.optional(),
    training: z
      .object({
        source: z.string(),
        images: z.number().int().min(0),
        heldOut: z.number().int().min(0),
        skipped: z.number().int().min(0).default(0),
        epochs: z.number().int().min(0),
        seed: z.number().int(),
        dataHash: z.string(),
        durationS: z.number().min(0),
        finalLoss: z.number().optional(),
        augmentShift: z.number().int().min(0).default(0),
        comparatorEpochs: z.number().int().min(0).optional(),
        ssimWeight: z.number().min(0).optional(),
        /** Synthetic defects the model was trained to repair and find. */
        anomalies: z
          .object({
            share: z.number().min(0).max(1),
            strength: z.tuple([z.number(), z.number()]),
            kinds: z.array(z.string()).optional(),
            textures: z.string().optional(),
          })
          .strict()
          .optional(),
      })
      .strict(),
  })
  .strict();
export type Manifest = z.infer<typeof ManifestSchema>;

/** Read and validate `<dir>/manifest.json`; every problem names the file and how to fix it. */
export async function readManifest(bundleDir: string): Promise<Manifest> {
  const file = path.join(bundleDir, MANIFEST_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw new ModelError(`model bundle ${bundleDir}: cannot read ${file} (${(cause as NodeJS.ErrnoException).code ?? cause})`, {
      file,
      hint: 'point --model at a folder written by `linewatch train` (it holds manifest.json and model.onnx)',
      cause,
    });
  }
  return parseManifest(text, file);
}

export function parseManifest(text: string, file = MANIFEST_FILE): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    throw new ModelError(`${file} is not valid JSON: ${(cause as Error).message}`, { file, cause });
  }
  const head = raw as { format?: unknown; formatVersion?: unknown } | null;
  if (!head || typeof head !== 'object' || head.format !== MANIFEST_FORMAT) {
    throw new ModelError(`${file} is not a linewatch model manifest (format is ${JSON.stringify(head?.format)}, expected "${MANIFEST_FORMAT}")`, {
      file,
    });
  }
  if (typeof head.formatVersion !== 'number' || !READABLE_FORMAT_VERSIONS.includes(head.formatVersion)) {
    throw new ModelError(
      `${file} has format version ${JSON.stringify(head.formatVersion)}; this linewatch reads versions ${READABLE_FORMAT_VERSIONS.slice(0, -1).join(', ')} and ${READABLE_FORMAT_VERSIONS.at(-1)}`,
      { file, hint: 'retrain the model with this linewatch version (`linewatch train`), or use the linewatch release that wrote it' },
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n');
    // JSON has no NaN: a broken export writes null, and numbers past 1.8e308 read as Infinity.
    const inScores = parsed.error.issues.some((i) => i.path[0] === 'scoring' || i.path[0] === 'calibration');
    const hint = inScores
      ? 'scoring and calibration values must be finite numbers: restore manifest.json from the original bundle, or retrain it (`linewatch train`) to measure them again'
      : 'the manifest was edited or written by another tool: restore it from the original bundle, or retrain it (`linewatch train`)';
    throw new ModelError(`${file} is invalid:\n${problems}`, { file, hint });
  }
  return parsed.data;
}
