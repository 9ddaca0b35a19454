import type { ImageTensor } from '../image/tensor.js';
import type { InferenceModel } from './types.js';

export interface ImageOutputs {
  recon: Float32Array[];
  mu: Float32Array[];
  /** The comparator's anomaly-map logits per image (height x width), when the model has one. */
  map?: Float32Array[];
  /** Wall-clock milliseconds spent in the model, all batches together. */
  inferenceMs: number;
}

/** Pack images into NCHW batches, run them, and split the outputs back per image. */
export async function inferImages(model: InferenceModel, images: readonly ImageTensor[], batchSize = 16): Promise<ImageOutputs> {
  const recon: Float32Array[] = [];
  const mu: Float32Array[] = [];
  const map: Float32Array[] = [];
  let inferenceMs = 0;
  for (let start = 0; start < images.length; start += batchSize) {
    const batch = images.slice(start, start + batchSize);
    const size = batch[0]!.data.length;
    // One image (the agent's usual round): its tensor is the input as it is, no packed copy.
    const single = batch.length === 1 && batch[0]!.data.length === size;
    const input = single ? batch[0]!.data : new Float32Array(size * batch.length);
    if (!single) batch.forEach((image, i) => input.set(image.data, i * size));
    const began = performance.now();
    const out = await model.run(input, batch.length);
    inferenceMs += performance.now() - began;
    const latentDim = out.mu.length / batch.length;
    // The runtime hands out fresh output arrays on every run: one image takes them as they are, a batch is split
    // into copies (a view would keep the whole batch's output alive for as long as any one image's is kept).
    if (batch.length === 1) {
      recon.push(out.recon);
      mu.push(out.mu);
      if (out.map) map.push(out.map);
      continue;
    }
    for (let i = 0; i < batch.length; i++) {
      recon.push(out.recon.slice(i * size, (i + 1) * size));
      mu.push(out.mu.slice(i * latentDim, (i + 1) * latentDim));
      if (out.map) {
        const plane = out.map.length / batch.length;
        map.push(out.map.slice(i * plane, (i + 1) * plane));
      }
    }
  }
  return map.length > 0 ? { recon, mu, map, inferenceMs } : { recon, mu, inferenceMs };
}

/** Rows of a count x dim matrix, packed. */
export function packRows(rows: readonly Float32Array[]): Float32Array {
  const dim = rows[0]?.length ?? 0;
  const packed = new Float32Array(rows.length * dim);
  rows.forEach((row, i) => packed.set(row, i * dim));
  return packed;
}

/**
 * False if any value is NaN or ±Infinity. One pass, no allocation: cheap enough to run on every
 * model output, where a single NaN weight turns whole tensors into NaN.
 */
export function allFinite(values: ArrayLike<number>): boolean {
  for (let i = 0; i < values.length; i++) {
    if (!Number.isFinite(values[i]!)) return false;
  }
  return true;
}
