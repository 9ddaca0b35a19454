/**
 * The VAE's configuration and weight layout: plain data, no TensorFlow, so that
 * export and the CLI can use it without loading TF.js. See vae.ts for the network.
 */
import { UsageError } from '../../errors.js';

export interface VaeConfig {
  width: number;
  height: number;
  channels: 1 | 3;
  filters: number[];
  latentDim: number;
  beta: number;
  /**
   * The learned comparator (DRAEM's discriminative half): a small U-Net on the input and its
   * reconstruction whose output is the anomaly map, as logits. Channels per level; absent: none.
   */
  comparator?: { filters: number[] };
}

/** One weight, row-major in TensorFlow's layout. */
export interface WeightTensor {
  shape: number[];
  data: Float32Array;
}

export interface VaeWeights {
  config: VaeConfig;
  tensors: Record<string, WeightTensor>;
}

export const DEFAULT_VAE_CONFIG: Readonly<VaeConfig> = Object.freeze({
  width: 64,
  height: 64,
  channels: 1,
  filters: [16, 32, 64],
  latentDim: 64,
  beta: 0.1,
});

/** Comparator widths: ~30k parameters and ~30 MMAC at 64x64, small enough for an edge box next to the VAE. */
export const DEFAULT_COMPARATOR_FILTERS: readonly number[] = Object.freeze([8, 16, 32]);

/** Throws a UsageError naming the first thing wrong with `config`. */
export function validateVaeConfig(config: VaeConfig): void {
  const { width, height, channels, filters, latentDim, beta } = config;
  const levels = filters.length;
  if (levels < 1 || !filters.every((f) => Number.isInteger(f) && f >= 1)) {
    throw new UsageError(`VAE filters must be one or more positive integers, got [${filters.join(', ')}]`, {
      hint: 'e.g. filters [16, 32, 64]: one stride-2 convolution level per entry',
    });
  }
  const step = 2 ** levels;
  for (const [name, size] of [
    ['width', width],
    ['height', height],
  ] as const) {
    if (!Number.isInteger(size) || size < step || size % step !== 0) {
      throw new UsageError(`VAE input ${name} ${size} must be a positive multiple of ${step} (2^${levels} for ${levels} filter levels)`, {
        hint: `use a ${name} such as ${Math.max(step, Math.round(size / step) * step || step)}, or fewer filter levels`,
      });
    }
  }
  if (channels !== 1 && channels !== 3) {
    throw new UsageError(`VAE channels must be 1 (grey) or 3 (RGB), got ${String(channels)}`);
  }
  if (!Number.isInteger(latentDim) || latentDim < 1) {
    throw new UsageError(`VAE latentDim must be a positive integer, got ${latentDim}`, { hint: 'the default is 64' });
  }
  if (!(beta >= 0) || !Number.isFinite(beta)) {
    throw new UsageError(`VAE beta must be a finite number >= 0, got ${beta}`, { hint: 'the default is 0.1' });
  }
  if (config.comparator) {
    const levels = config.comparator.filters;
    if (levels.length < 1 || !levels.every((f) => Number.isInteger(f) && f >= 1)) {
      throw new UsageError(`comparator filters must be one or more positive integers, got [${levels.join(', ')}]`, { hint: 'e.g. [8, 16, 32]' });
    }
    const comparatorStep = 2 ** levels.length;
    if (width % comparatorStep !== 0 || height % comparatorStep !== 0) {
      throw new UsageError(`comparator with ${levels.length} levels needs an input size that is a multiple of ${comparatorStep}, got ${width}x${height}`);
    }
  }
}

/**
 * The comparator's weights, TensorFlow layouts, in creation order. Level 0 runs at half the
 * input resolution, each later level halves it again (stride-2 convs); the decoder upsamples,
 * convolves, concatenates the encoder's skip at that level and merges; the head's logits are
 * repeated 2x2 back to the input size:
 *   enc0: conv/2(3C -> f0), conv(f0 -> f0); encI: conv/2(fI-1 -> fI), conv(fI -> fI)
 *   decI (I = L-2 .. 0): up x2, conv(fI+1 -> fI), concat skip I, conv(2 fI -> fI); head: conv(f0 -> 1)
 * The 3C input channels are the frame, its reconstruction and their difference.
 */
export function comparatorWeightShapes(config: VaeConfig): Array<[name: string, shape: number[]]> {
  if (!config.comparator) return [];
  const filters = config.comparator.filters;
  const shapes: Array<[string, number[]]> = [];
  const conv = (name: string, input: number, out: number) => shapes.push([`${name}.kernel`, [3, 3, input, out]], [`${name}.bias`, [out]]);
  filters.forEach((out, i) => {
    conv(`comparator.enc${i}.a`, i === 0 ? 3 * config.channels : filters[i - 1]!, out);
    conv(`comparator.enc${i}.b`, out, out);
  });
  for (let i = filters.length - 2; i >= 0; i--) {
    conv(`comparator.dec${i}.up`, filters[i + 1]!, filters[i]!);
    conv(`comparator.dec${i}.merge`, 2 * filters[i]!, filters[i]!);
  }
  conv('comparator.head', filters[0]!, 1);
  return shapes;
}

/**
 * Every weight's name and TensorFlow-layout shape, in creation order:
 * conv kernels [kh, kw, in, out]; dense kernels [in, out] whose flattened side is
 * in NHWC order (h, w, c); biases [out].
 */
export function weightShapes(config: VaeConfig): Array<[name: string, shape: number[]]> {
  const { filters, channels, latentDim } = config;
  const levels = filters.length;
  const last = filters[levels - 1]!;
  const flat = (config.height / 2 ** levels) * (config.width / 2 ** levels) * last;
  const shapes: Array<[string, number[]]> = [];
  filters.forEach((out, i) => {
    const input = i === 0 ? channels : filters[i - 1]!;
    shapes.push([`encoder.conv${i}.kernel`, [3, 3, input, out]], [`encoder.conv${i}.bias`, [out]]);
  });
  shapes.push(['encoder.mu.kernel', [flat, latentDim]], ['encoder.mu.bias', [latentDim]]);
  shapes.push(['encoder.logVar.kernel', [flat, latentDim]], ['encoder.logVar.bias', [latentDim]]);
  shapes.push(['decoder.dense.kernel', [latentDim, flat]], ['decoder.dense.bias', [flat]]);
  for (let j = 0; j < levels; j++) {
    const input = filters[levels - 1 - j]!;
    const out = j === levels - 1 ? channels : filters[levels - 2 - j]!;
    shapes.push([`decoder.conv${j}.kernel`, [3, 3, input, out]], [`decoder.conv${j}.bias`, [out]]);
  }
  return [...shapes, ...comparatorWeightShapes(config)];
}
