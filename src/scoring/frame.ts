import { ModelError } from '../errors.js';
import type { ImageTensor } from '../image/tensor.js';
import type { ScoringSettings } from './settings.js';
import { latentNovelty } from './latent.js';
import { gaussianBlur, ignoredPixels, pool, poolPixels, squaredErrorMap, ssimErrorMap, zeroIgnored, type BlurWork, type PoolPixels } from './maps.js';

export interface FrameScore {
  /** What thresholds and events use: the z-score(s) selected by `settings.scorer`. */
  score: number;
  /** Pooled reconstruction-error map, before normalisation. */
  recon: number;
  /** Latent novelty (mean distance to the k nearest training latents), before normalisation; NaN without a latent memory. */
  latent: number;
  /** The blurred anomaly map at model resolution with border and ignored pixels zeroed, for heatmaps. */
  map: Float32Array;
}

export interface ComponentStats {
  mean: number;
  std: number;
}

/**
 * Smallest std a normalisation may hold: a component that never varied on the
 * held-out images would otherwise divide by zero.
 */
export const MIN_COMPONENT_STD = 1e-9;

/** Mean and sample std of one score component on held-out normal images, for `settings.normalisation`. */
export function componentStats(values: ArrayLike<number>): ComponentStats {
  const n = values.length;
  if (n === 0) throw new RangeError('cannot normalise a score component from zero values');
  let mean = 0;
  for (let i = 0; i < n; i++) mean += values[i]!;
  mean /= n;
  let squares = 0;
  for (let i = 0; i < n; i++) squares += (values[i]! - mean) ** 2;
  const std = n > 1 ? Math.sqrt(squares / (n - 1)) : 0;
  return { mean, std: Math.max(std, MIN_COMPONENT_STD) };
}

const zScore = (value: number, stats: ComponentStats | undefined) => (stats ? (value - stats.mean) / stats.std : value);

/**
 * A frame score from its raw components: the z-score of recon, of latent, or their
 * sum (hybrid); a component without normalisation stats counts as is.
 */
export function combineComponents(settings: Pick<ScoringSettings, 'scorer' | 'normalisation'>, recon: number, latent: number): number {
  const reconZ = zScore(recon, settings.normalisation.recon);
  const latentZ = zScore(latent, settings.normalisation.latent);
  switch (settings.scorer) {
    case 'recon':
      return reconZ;
    case 'latent':
      return latentZ;
    case 'hybrid':
      return reconZ + latentZ;
  }
}

/**
 * Scores frames exactly as the bundle's manifest says, so `eval`, calibration and
 * the live pipeline agree: error map -> blur -> border/ignore -> pooling, latent
 * novelty, then the z-score combination chosen by `settings.scorer`.
 */
export class FrameScorer {
  readonly settings: ScoringSettings;
  readonly latentDim: number;
  /** The training codes in the space distances are measured in (see toLatentSpace). */
  private readonly memory: Float32Array;
  private readonly latentWhitening: { mean: Float64Array; scale: Float32Array } | undefined;
  /** Keyed by mask identity: callers pass the same, unchanged mask array for every frame of a camera. */
  private borderCache?: { width: number; height: number; mask?: Uint8Array; pixels: PoolPixels };
  /** Per-frame intermediate planes, reused: score() is synchronous and hands out only fresh arrays. */
  private readonly blurWork: BlurWork = {};
  private probabilityBuffer: Float32Array | undefined;
  private poolBuffer: Float32Array | undefined;

  constructor(settings: ScoringSettings, memory: Float32Array, latentDim: number) {
    if (memory.length % latentDim !== 0) {
      throw new ModelError(`latent memory has ${memory.length} values, not a multiple of the latent dimension ${latentDim}`, {
        hint: 'the bundle\'s memory file does not belong to this model; retrain or re-export the bundle',
      });
    }
    if (settings.scorer !== 'recon' && memory.length === 0) {
      throw new ModelError(`scorer "${settings.scorer}" needs the training images' latent memory, but the bundle has none`, {
        hint: 'use scorer "recon", or retrain so the bundle includes memory.<variant>.f32',
      });
    }
    this.settings = settings;
    this.latentDim = latentDim;
    if (settings.latentSpace === 'whitened-cosine' && memory.length > 0) {
      this.latentWhitening = whitening(memory, latentDim);
      this.memory = new Float32Array(memory.length);
      for (let offset = 0; offset < memory.length; offset += latentDim) {
        this.memory.set(this.toLatentSpace(memory.subarray(offset, offset + latentDim)), offset);
      }
    } else {
      this.memory = memory;
    }
  }

  /**
   * A code in the space distances are measured in. For whitened-cosine: centred on the training
   * codes' mean and scaled per dimension, then to unit length, where Euclidean distance is a
   * monotonic function of the angle.
   */
  private toLatentSpace(mu: Float32Array): Float32Array {
    if (!this.latentWhitening) return mu;
    const { mean, scale } = this.latentWhitening;
    const out = new Float32Array(this.latentDim);
    let norm = 0;
    for (let i = 0; i < this.latentDim; i++) {
      out[i] = (mu[i]! - mean[i]!) * scale[i]!;
      norm += out[i]! * out[i]!;
    }
    const inverse = norm > 0 ? 1 / Math.sqrt(norm) : 0;
    for (let i = 0; i < this.latentDim; i++) out[i]! *= inverse;
    return out;
  }

  get hasLatentMemory(): boolean {
    return this.memory.length > 0;
  }

  /**
   * `recon` is this image's reconstruction (CHW, same size as `input`), `mu` its latent
   * mean (first `latentDim` values are used). `ignoreMask` (1 = ignore) is at model resolution.
   * `blurredMap`: the comparator map already turned into probabilities and blurred (the model graph's, withMapBlur), used
   * instead of computing both here when takesBlurredMap() says it may be.
   */
  score(input: ImageTensor, recon: Float32Array, mu: Float32Array, ignoreMask?: Uint8Array, learnedMap?: Float32Array, blurredMap?: Float32Array): FrameScore {
    const s = this.settings;
    const { width, height } = input;
    const blurred = blurredMap !== undefined && this.takesBlurredMap(width, height, blurredMap)
      ? blurredMap
      : gaussianBlur(this.errorMap(input, recon, learnedMap), width, height, s.blurSigma, this.blurWork);
    const pixels = this.poolPixels(width, height, ignoreMask);
    if (this.poolBuffer?.length !== blurred.length) this.poolBuffer = new Float32Array(blurred.length);
    const reconScore = pool(blurred, s.pooling, s.topkFraction, pixels, this.poolBuffer);
    const latent = this.hasLatentMemory ? latentNovelty(this.toLatentSpace(mu), this.memory, this.latentDim, s.latentK) : Number.NaN;
    return { score: this.combine(reconScore, latent), recon: reconScore, latent, map: zeroIgnored(blurred, pixels.ignored) };
  }

  /**
   * Whether a map blurred elsewhere may stand in for errorMap + gaussianBlur: only for the comparator map (whose
   * post-processing, sigmoid then blur, withMapBlur adds to the graph with the same kernel), and only at the image's size.
   */
  takesBlurredMap(width: number, height: number, blurredMap: Float32Array): boolean {
    return this.settings.errorMap === 'comparator' && this.settings.blurSigma > 0 && blurredMap.length === width * height;
  }

  private errorMap(input: ImageTensor, recon: Float32Array, learnedMap: Float32Array | undefined): Float32Array {
    const s = this.settings;
    if (s.errorMap === 'ssim') return ssimErrorMap(input, recon, s.ssimWindow);
    if (s.errorMap === 'sq') return squaredErrorMap(input, recon);
    if (!learnedMap || learnedMap.length !== input.width * input.height) {
      throw new ModelError(`error map "comparator" needs the model's anomaly map (${input.width}x${input.height}), got ${learnedMap ? learnedMap.length : 'none'}`, {
        hint: 'the bundle\'s scoring says "comparator" but its model has no anomaly_map output: retrain it with this linewatch',
      });
    }
    if (this.probabilityBuffer?.length !== learnedMap.length) this.probabilityBuffer = new Float32Array(learnedMap.length);
    return probabilities(learnedMap, input.width, this.probabilityBuffer);
  }

  /** The frame score from its two raw components, per `settings.scorer` and `settings.normalisation`. */
  combine(recon: number, latent: number): number {
    return combineComponents(this.settings, recon, latent);
  }

  private poolPixels(width: number, height: number, mask: Uint8Array | undefined): PoolPixels {
    const cached = this.borderCache;
    if (cached && cached.width === width && cached.height === height && cached.mask === mask) return cached.pixels;
    const pixels = poolPixels(ignoredPixels(width, height, this.settings.border, mask));
    this.borderCache = { width, height, mask, pixels };
    return pixels;
  }
}

/**
 * The comparator's logits as defect probabilities: averaged (blurred) in this space, a small
 * confident spot is not cancelled by very negative logits around it (DRAEM pools softmax outputs too).
 */
export function probabilities(logits: Float32Array, width: number, out: Float32Array = new Float32Array(logits.length)): Float32Array {
  // The comparator's map is upsampled from half resolution: values come in 2x2 blocks, so a value equal to the
  // previous one and a row equal to the one above are copied rather than recomputed (the same values exactly).
  let last = Number.NaN;
  let lastProbability = Number.NaN;
  for (let row = 0; row < logits.length; row += width) {
    if (row > 0 && sameValues(logits, row - width, row, width)) {
      out.copyWithin(row, row - width, row);
      continue;
    }
    const end = Math.min(row + width, logits.length);
    for (let i = row; i < end; i++) {
      const logit = logits[i]!;
      if (logit !== last) {
        last = logit;
        lastProbability = 1 / (1 + Math.exp(-logit));
      }
      out[i] = lastProbability;
    }
  }
  return out;
}

function sameValues(values: Float32Array, a: number, b: number, count: number): boolean {
  if (b + count > values.length) return false;
  for (let i = 0; i < count; i++) if (values[a + i] !== values[b + i]) return false;
  return true;
}

/**
 * Mean and 1 / standard deviation of each dimension over the rows. The spread is floored at a
 * tenth of the median spread: dimensions the VAE left unused (posterior collapse) barely vary,
 * and scaling them up would turn their noise into distance.
 */
function whitening(rows: Float32Array, dim: number): { mean: Float64Array; scale: Float32Array } {
  const count = rows.length / dim;
  const mean = new Float64Array(dim);
  const squares = new Float64Array(dim);
  for (let offset = 0; offset < rows.length; offset += dim) for (let i = 0; i < dim; i++) mean[i]! += rows[offset + i]! / count;
  for (let offset = 0; offset < rows.length; offset += dim) for (let i = 0; i < dim; i++) squares[i]! += (rows[offset + i]! - mean[i]!) ** 2;
  const spread = Array.from(squares, (sum) => Math.sqrt(sum / count));
  const floor = Math.max(0.1 * [...spread].sort((a, b) => a - b)[Math.floor(dim / 2)]!, 1e-12);
  return { mean, scale: Float32Array.from(spread, (std) => 1 / Math.max(std, floor)) };
}
