import path from 'node:path';
import { UsageError } from '../../errors.js';
import { assertMostlyReadable, describeLoadFailure, loadImage, loadMask, LOAD_CONCURRENCY, mapWithConcurrency, type SkippedImage } from '../../image/load.js';
import { normaliseInput } from '../../image/normalise.js';
import type { ImageTensor } from '../../image/tensor.js';
import type { LoadedBundle } from '../../model/bundle.js';
import type { Variant } from '../../model/manifest.js';
import { combineComponents } from '../../scoring/frame.js';
import { aupro, AUPRO_MAX_FPR, auroc, confusionAt, pixelAuroc } from '../../scoring/metrics.js';
import { DEFAULT_EVAL_BATCH } from './defaults.js';

/** What `evaluate` needs of a loaded bundle (the benchmark may pass its own). */
export type EvaluableBundle = Pick<LoadedBundle, 'dir' | 'manifest' | 'variant' | 'model' | 'calibration' | 'scorer'>;

export type ImageLabel = 'normal' | 'anomalous';

export interface EvalOptions {
  /** Load the same-named .png ground-truth mask beside each image and compute pixel AUROC. */
  masks?: boolean;
  /** Images per model run (default 16). */
  batch?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface ImageResult {
  path: string;
  label: ImageLabel;
  score: number;
  recon: number;
  latent: number;
  /** Anomaly map at model resolution (border zeroed). */
  map: Float32Array;
  /** Ground truth at model resolution, 1 = defect; only with `masks`. */
  mask?: Uint8Array;
}

export interface ComponentResult {
  /** null where the component cannot be computed (no latent memory, no normalisation for hybrid). */
  imageAuroc: number | null;
}

export interface EvalSummary {
  model: string;
  variant: Variant;
  scorer: string;
  providers: readonly string[];
  input: { width: number; height: number; channels: 1 | 3 };
  counts: { normal: number; anomalous: number; skipped: number };
  imageAuroc: number;
  /** null without masks (or when no mask marks a defect pixel). */
  pixelAuroc: number | null;
  /** Per-region overlap up to 30% pixel FPR (MVTec AD's AUPRO) on the same maps and masks; null where pixel AUROC is. */
  pixelAupro: number | null;
  /** The bundle's calibrated threshold for this variant (anomalous = score > threshold); null if uncalibrated. */
  threshold: number | null;
  targetFpr: number | null;
  tpr: number | null;
  fpr: number | null;
  precision: number | null;
  f1: number | null;
  /** Model inference plus scoring per image, batched as configured; image decoding excluded. */
  msPerFrame: number;
  inferenceMsPerFrame: number;
  scoringMsPerFrame: number;
  batch: number;
  /** Each component alone on the same run, so users see what each adds. */
  components: { recon: ComponentResult; latent: ComponentResult; hybrid: ComponentResult };
  skipped: SkippedImage[];
  warnings: string[];
}

export interface EvalResult extends EvalSummary {
  images: ImageResult[];
}

interface Entry {
  path: string;
  label: ImageLabel;
}

interface Loaded {
  entry: Entry;
  image: ImageTensor;
  mask: Uint8Array | undefined;
}

/**
 * Score normal and anomalous images with a bundle exactly as the live pipeline would
 * and measure how well the scores separate them. Images are decoded a batch at a
 * time, so memory holds one batch of tensors (plus every image's small anomaly map).
 */
export async function evaluate(
  bundle: EvaluableBundle,
  normalPaths: readonly string[],
  anomalousPaths: readonly string[],
  options: EvalOptions = {},
): Promise<EvalResult> {
  if (normalPaths.length === 0 || anomalousPaths.length === 0) {
    throw new UsageError(`evaluation needs both normal and anomalous images (got ${normalPaths.length} normal, ${anomalousPaths.length} anomalous)`, {
      hint: 'pass --normal and --anomalous folders or list files that each name at least one image',
    });
  }
  const batch = options.batch ?? DEFAULT_EVAL_BATCH;
  if (!Number.isInteger(batch) || batch < 1) throw new UsageError(`--batch must be a whole number >= 1, got ${batch}`);
  const { input: size } = bundle.manifest;
  const entries: Entry[] = [
    ...normalPaths.map((p) => ({ path: p, label: 'normal' as const })),
    ...anomalousPaths.map((p) => ({ path: p, label: 'anomalous' as const })),
  ];
  const images: ImageResult[] = [];
  const skipped: SkippedImage[] = [];
  let inferenceMs = 0;
  let scoringMs = 0;

  for (let start = 0; start < entries.length; start += batch) {
    const chunk = entries.slice(start, start + batch);
    const loaded = await mapWithConcurrency(chunk, LOAD_CONCURRENCY, async (entry): Promise<Loaded | SkippedImage> => {
      let image: ImageTensor;
      try {
        image = normaliseInput(await loadImage(entry.path, size), size.normalisation);
      } catch (error) {
        return { path: entry.path, reason: describeLoadFailure(error) };
      }
      try {
        return { entry, image, mask: options.masks ? await loadMask(entry.path, size.width, size.height) : undefined };
      } catch (error) {
        return { path: entry.path, reason: `its mask cannot be read: ${describeLoadFailure(error)}` };
      }
    });
    const ready: Loaded[] = [];
    for (const item of loaded) {
      if ('reason' in item) skipped.push(item);
      else ready.push(item);
    }
    if (ready.length > 0) {
      const plane = ready[0]!.image.data.length;
      const packed = new Float32Array(plane * ready.length);
      ready.forEach((item, i) => packed.set(item.image.data, i * plane));
      const ranAt = performance.now();
      const outputs = await bundle.model.run(packed, ready.length);
      const scoredAt = performance.now();
      const latentDim = outputs.mu.length / ready.length;
      ready.forEach(({ entry, image, mask }, i) => {
        const recon = outputs.recon.subarray(i * plane, (i + 1) * plane);
        const mu = outputs.mu.subarray(i * latentDim, (i + 1) * latentDim);
        const mapOf = (values: Float32Array | undefined) => values?.subarray(i * image.width * image.height, (i + 1) * image.width * image.height);
        // The blurred map as the agent scores it (its scheduler takes the same output).
        const frame = bundle.scorer.score(image, recon, mu, undefined, mapOf(outputs.map), mapOf(outputs.blurredMap));
        images.push({ path: entry.path, label: entry.label, ...frame, mask });
      });
      inferenceMs += scoredAt - ranAt;
      scoringMs += performance.now() - scoredAt;
    }
    options.onProgress?.(Math.min(start + batch, entries.length), entries.length);
  }

  assertMostlyReadable(entries.length, skipped);
  const normal = images.filter((r) => r.label === 'normal');
  const anomalous = images.filter((r) => r.label === 'anomalous');
  for (const [label, group] of [['normal', normal], ['anomalous', anomalous]] as const) {
    if (group.length === 0) {
      throw new UsageError(`none of the ${label} images could be loaded`, { hint: `check the --${label} paths; e.g. ${skipped[0]?.path}: ${skipped[0]?.reason}` });
    }
  }

  const warnings: string[] = [];
  const settings = bundle.scorer.settings;
  const scoresOf = (group: ImageResult[], pick: (r: ImageResult) => number) => group.map(pick);
  const componentAuroc = (pick: (r: ImageResult) => number): number | null => {
    const n = scoresOf(normal, pick);
    const a = scoresOf(anomalous, pick);
    return [...n, ...a].some((v) => !Number.isFinite(v)) ? null : auroc(n, a);
  };
  const hasNormalisation = Boolean(settings.normalisation.recon && settings.normalisation.latent);
  const components = {
    recon: { imageAuroc: componentAuroc((r) => r.recon) },
    latent: { imageAuroc: bundle.scorer.hasLatentMemory ? componentAuroc((r) => r.latent) : null },
    hybrid: {
      imageAuroc:
        bundle.scorer.hasLatentMemory && hasNormalisation
          ? componentAuroc((r) => combineComponents({ scorer: 'hybrid', normalisation: settings.normalisation }, r.recon, r.latent))
          : null,
    },
  };
  if (!bundle.scorer.hasLatentMemory) warnings.push('the bundle has no latent memory: latent and hybrid scores are not available');

  const calibration = bundle.calibration;
  const confusion = calibration ? confusionAt(calibration.threshold, scoresOf(normal, (r) => r.score), scoresOf(anomalous, (r) => r.score)) : undefined;
  if (!calibration) warnings.push(`the bundle has no calibration for ${bundle.variant}: no threshold, so no TPR/FPR/F1`);

  let pixel: number | null = null;
  let pro: number | null = null;
  if (options.masks) {
    const withMasks = images.filter((r) => r.label === 'normal' || r.mask);
    const missing = anomalous.length - anomalous.filter((r) => r.mask).length;
    if (missing > 0) warnings.push(`${missing} anomalous images have no .png mask beside them and are left out of the pixel AUROC`);
    const blank = anomalous.filter((r) => r.mask && !r.mask.includes(1)).length;
    if (blank > 0) {
      warnings.push(`${blank} anomalous masks mark no defect pixel at ${size.width}x${size.height} (defects smaller than half a model pixel, or empty masks)`);
    }
    // A normal image without a mask file has no defect pixels by definition.
    const masks = withMasks.map((r) => r.mask ?? new Uint8Array(r.map.length));
    if (masks.some((m) => m.some((v) => v === 1))) {
      const maps = withMasks.map((r) => r.map);
      pixel = pixelAuroc(maps, masks);
      pro = aupro(maps, masks, size.width);
    } else {
      warnings.push('no mask marks a defect pixel: pixel AUROC is not available');
    }
  }

  const count = images.length;
  return {
    model: path.resolve(bundle.dir),
    variant: bundle.variant,
    scorer: settings.scorer,
    providers: bundle.model.providers,
    input: { width: size.width, height: size.height, channels: size.channels },
    counts: { normal: normal.length, anomalous: anomalous.length, skipped: skipped.length },
    imageAuroc: auroc(
      scoresOf(normal, (r) => r.score),
      scoresOf(anomalous, (r) => r.score),
    ),
    pixelAuroc: pixel,
    pixelAupro: pro,
    threshold: calibration?.threshold ?? null,
    targetFpr: calibration?.targetFpr ?? null,
    tpr: confusion?.tpr ?? null,
    fpr: confusion?.fpr ?? null,
    precision: confusion?.precision ?? null,
    f1: confusion?.f1 ?? null,
    msPerFrame: (inferenceMs + scoringMs) / count,
    inferenceMsPerFrame: inferenceMs / count,
    scoringMsPerFrame: scoringMs / count,
    batch,
    components,
    skipped,
    warnings,
    images,
  };
}

export interface PerImageSummary {
  path: string;
  label: ImageLabel;
  score: number;
  recon: number;
  /** null without a latent memory. */
  latent: number | null;
}

/** The JSON-friendly part of a result: everything but the per-image maps. */
export function summarise(result: EvalResult): EvalSummary & { perImage: PerImageSummary[] } {
  const { images, ...summary } = result;
  return {
    ...summary,
    perImage: images.map(({ path: file, label, score, recon, latent }) => ({ path: file, label, score, recon, latent: Number.isFinite(latent) ? latent : null })),
  };
}

/** A short human-readable table of the headline figures. */
export function formatSummary(summary: EvalSummary): string {
  const figure = (value: number | null, digits = 3) => (value === null ? '-' : value.toFixed(digits));
  const percent = (value: number | null) => (value === null ? '-' : `${(value * 100).toFixed(1)}%`);
  const { counts, components } = summary;
  const rows: Array<[string, string]> = [
    ['model', `${summary.model} (${summary.variant}, ${summary.providers.join('+') || 'cpu'})`],
    ['input', `${summary.input.width}x${summary.input.height}x${summary.input.channels}`],
    ['images', `${counts.normal} normal, ${counts.anomalous} anomalous, ${counts.skipped} skipped`],
    ['scorer', summary.scorer],
    ['image AUROC', figure(summary.imageAuroc)],
    [
      '  each alone',
      `recon ${figure(components.recon.imageAuroc)}, latent ${figure(components.latent.imageAuroc)}, hybrid ${figure(components.hybrid.imageAuroc)}`,
    ],
    ['pixel AUROC', figure(summary.pixelAuroc)],
    ['pixel AUPRO', summary.pixelAupro === null ? '-' : `${figure(summary.pixelAupro)} (per-region overlap up to ${percent(AUPRO_MAX_FPR)} FPR)`],
    [
      'threshold',
      summary.threshold === null ? '- (bundle not calibrated)' : `${summary.threshold.toFixed(4)} (calibrated for ${percent(summary.targetFpr)} FPR)`,
    ],
    ['  at threshold', `TPR ${percent(summary.tpr)}, FPR ${percent(summary.fpr)}, precision ${percent(summary.precision)}, F1 ${figure(summary.f1)}`],
    [
      'ms per frame',
      `${summary.msPerFrame.toFixed(2)} (inference ${summary.inferenceMsPerFrame.toFixed(2)} + scoring ${summary.scoringMsPerFrame.toFixed(2)}, batch ${summary.batch})`,
    ],
  ];
  const width = Math.max(...rows.map(([label]) => label.length));
  const lines = rows.map(([label, value]) => `${label.padEnd(width)}  ${value}`);
  for (const warning of summary.warnings) lines.push(`warning: ${warning}`);
  return lines.join('\n');
}

export { DEFAULT_EVAL_BATCH };
