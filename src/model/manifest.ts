import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import { ModelError } from '../errors.js';
import { INPUT_NORMALISATIONS } from '../image/normalise.js';

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
export const MANIFEST_FORMAT_VERSION = 2;
export const READABLE_FORMAT_VERSIONS: readonly number[] = [1, 2];
export const MANIFEST_FILE = 'manifest.json';

/** ONNX tensor names shared by export, inference and quantization. */
export const MODEL_IO = { input: 'image', recon: 'recon', mu: 'mu', map: 'anomaly_map' } as const;

export const VARIANTS = ['fp32', 'int8'] as const;
export type Variant = (typeof VARIANTS)[number];

const ZScore = z.object({ mean: z.number(), std: z.number().positive() });

export const ScoringSettingsSchema = z
  .object({
    /** recon: structural reconstruction error; latent: kNN distance of mu to the training mus; hybrid: sum of both z-scores. */
    scorer: z.enum(['recon', 'latent', 'hybrid']).default('recon'),
    /**
     * Per-pixel anomaly map: 1 - SSIM or squared error between input and reconstruction, or the
     * learned comparator's defect probability (bundles trained with one).
     */
    errorMap: z.enum(['ssim', 'sq', 'comparator']).default('ssim'),
    ssimWindow: z.number().int().min(3).max(31).default(11),
    /** Gaussian blur of the error map, sigma in model-input pixels (0 = none). */
    blurSigma: z.number().min(0).max(16).default(2),
    pooling: z.enum(['max', 'mean', 'topk']).default('max'),
    /** Fraction of the map averaged by `topk` pooling. */
    topkFraction: z.number().gt(0).max(1).default(0.01),
    /** Pixels ignored at each edge of the error map (reconstructions are worst at borders). */
    border: z.number().int().min(0).default(2),
    /** Neighbours averaged for latent novelty. */
    latentK: z.number().int().min(1).default(1),
    /**
     * Where latent distances are measured: `raw` (Euclidean on mu) or `whitened-cosine` (each
     * dimension scaled by 1 / its spread over the training codes, then the angle between codes:
     * no single dimension or overall code size dominates). Bundles written before the option: raw.
     */
    latentSpace: z.enum(['raw', 'whitened-cosine']).default('raw'),
    /** z-score normalisation of each component, measured on held-out normal images. */
    normalisation: z
      .object({ recon: ZScore, latent: ZScore })
      .partial()
      .default({}),
  })
  .strict();
export type ScoringSettings = z.infer<typeof ScoringSettingsSchema>;

export const CalibrationSchema = z
  .object({
    /** Held-out normal images the scores were measured on (never the training images). */
    heldOut: z.number().int().min(1),
    targetFpr: z.number().gt(0).lt(1),
    threshold: z.number(),
    quantiles: z.object({
      p50: z.number(),
      p90: z.number(),
      p95: z.number(),
      p99: z.number(),
      max: z.number(),
    }),
    mean: z.number(),
    std: z.number().min(0),
    /** Held-out images were also scored moved by this many pixels each way: such shifts stay below the threshold. */
    shiftTolerancePx: z.number().int().min(0).default(0),
    /**
     * Video bundles: the highest score of a training frame. The threshold is raised to it when it
     * lies above, since every frame of the training stretch was declared normal.
     */
    trainingMaxScore: z.number().optional(),
    /*
     * What the threshold can promise. N held-out scores show a false-positive rate directly only
     * down to about 1/N: below that, the empirical quantile is just the held-out maximum, whose
     * real rate averages 1/(N+1) whatever the target. So calibrate() says how it got the threshold
     * and what rate to expect there. Optional: bundles written before these fields still load
     * (their threshold is the empirical quantile, see thresholdForFpr).
     */
    /** `empirical`: an order statistic of the held-out scores; `tail-fit`: extrapolated from an exponential upper tail. */
    method: z.enum(['empirical', 'tail-fit']).optional(),
    /** 1 / (heldOut + 1): the smallest rate the held-out scores show without a model (that of their maximum). */
    minResolvableFpr: z.number().gt(0).lte(0.5).optional(),
    /**
     * The probability that a new normal frame scores above the threshold, as the calibration
     * estimates it (distribution-free for `empirical`, an upper bound when top scores tie; the
     * exponential tail's prediction for `tail-fit`). Above `targetFpr` when the held-out set was
     * too small to reach the target at all, below it when the threshold was raised to a held-out score.
     */
    expectedFprAtThreshold: z.number().min(0).lte(1).optional(),
  })
  .strict();
export type Calibration = z.infer<typeof CalibrationSchema>;

export const ManifestSchema = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    formatVersion: z.union([z.literal(1), z.literal(MANIFEST_FORMAT_VERSION)]),
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
      `${file} has format version ${JSON.stringify(head.formatVersion)}; this linewatch reads versions ${READABLE_FORMAT_VERSIONS.join(' and ')}`,
      { file, hint: 'retrain the model with this linewatch version (`linewatch train`), or use the linewatch release that wrote it' },
    );
  }
  const parsed = ManifestSchema.safeParse(raw);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n');
    throw new ModelError(`${file} is invalid:\n${problems}`, { file });
  }
  return parsed.data;
}
