import type { ImageTensor } from '../image/tensor.js';

/**
 * Per-pixel anomaly maps between an input image and its reconstruction.
 * Maps are width x height Float32Arrays (row-major), averaged over channels.
 * Pure functions: no I/O, inputs are never modified.
 */

export type PoolingMode = 'max' | 'mean' | 'topk';

/** SSIM stabilisers for data in [0, 1] (Wang et al. 2004: (0.01 L)^2, (0.03 L)^2 with L = 1). */
const SSIM_C1 = 0.01 ** 2;
const SSIM_C2 = 0.03 ** 2;

function checkReconstruction(input: ImageTensor, recon: Float32Array): void {
  if (recon.length !== input.data.length) {
    throw new RangeError(`reconstruction has ${recon.length} values, input ${input.width}x${input.height}x${input.channels} has ${input.data.length}`);
  }
}

/** Squared difference per pixel, mean over channels. */
export function squaredErrorMap(input: ImageTensor, recon: Float32Array): Float32Array {
  checkReconstruction(input, recon);
  const plane = input.width * input.height;
  const map = new Float32Array(plane);
  const x = input.data;
  for (let c = 0; c < input.channels; c++) {
    const offset = c * plane;
    for (let i = 0; i < plane; i++) {
      const d = x[offset + i]! - recon[offset + i]!;
      map[i]! += d * d;
    }
  }
  if (input.channels > 1) for (let i = 0; i < plane; i++) map[i]! /= input.channels;
  return map;
}

/**
 * 1 - SSIM per pixel, mean over channels. Local statistics use a Gaussian window of
 * `window` taps (sigma 1.5 for the classic 11, scaled with the window), with edge
 * pixels replicated so the map keeps the image size.
 */
export function ssimErrorMap(input: ImageTensor, recon: Float32Array, window = 11): Float32Array {
  checkReconstruction(input, recon);
  const { width: w, height: h, channels } = input;
  const plane = w * h;
  const kernel = gaussianKernel((1.5 * window) / 11, Math.floor(window / 2));
  const radius = (kernel.length - 1) >> 1;
  // Float64 statistics: variance as E[x^2] - E[x]^2 cancels badly in float32 next to C2.
  const [sx, sy, sxx, syy, sxy] = [0, 1, 2, 3, 4].map(() => new Float64Array(plane)) as [Float64Array, Float64Array, Float64Array, Float64Array, Float64Array];
  const rowOffsets = new Int32Array(kernel.length);
  const map = new Float32Array(plane);
  for (let c = 0; c < channels; c++) {
    const x = input.data.subarray(c * plane, (c + 1) * plane);
    const y = recon.subarray(c * plane, (c + 1) * plane);
    // Horizontal pass: all five local sums at once, so each pixel pair is read once per tap.
    for (let row = 0; row < h; row++) {
      const base = row * w;
      for (let col = 0; col < w; col++) {
        let ax = 0, ay = 0, axx = 0, ayy = 0, axy = 0;
        for (let k = 0; k < kernel.length; k++) {
          const at = col + k - radius;
          const j = base + (at < 0 ? 0 : at >= w ? w - 1 : at);
          const weight = kernel[k]!;
          const xv = x[j]!;
          const yv = y[j]!;
          ax += weight * xv;
          ay += weight * yv;
          axx += weight * xv * xv;
          ayy += weight * yv * yv;
          axy += weight * xv * yv;
        }
        const i = base + col;
        sx[i] = ax;
        sy[i] = ay;
        sxx[i] = axx;
        syy[i] = ayy;
        sxy[i] = axy;
      }
    }
    // Vertical pass, finishing each pixel's SSIM straight from the accumulated moments.
    for (let row = 0; row < h; row++) {
      for (let k = 0; k < kernel.length; k++) {
        const at = row + k - radius;
        rowOffsets[k] = (at < 0 ? 0 : at >= h ? h - 1 : at) * w;
      }
      for (let col = 0; col < w; col++) {
        let mx = 0, my = 0, exx = 0, eyy = 0, exy = 0;
        for (let k = 0; k < kernel.length; k++) {
          const j = rowOffsets[k]! + col;
          const weight = kernel[k]!;
          mx += weight * sx[j]!;
          my += weight * sy[j]!;
          exx += weight * sxx[j]!;
          eyy += weight * syy[j]!;
          exy += weight * sxy[j]!;
        }
        const varX = exx - mx * mx;
        const varY = eyy - my * my;
        const cov = exy - mx * my;
        const ssim = ((2 * mx * my + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mx * mx + my * my + SSIM_C1) * (varX + varY + SSIM_C2));
        map[row * w + col]! += 1 - ssim;
      }
    }
  }
  if (channels > 1) for (let i = 0; i < plane; i++) map[i]! /= channels;
  return map;
}

/** Reusable buffers for gaussianBlur, so that a caller blurring every frame allocates nothing per frame. */
export interface BlurWork {
  scratch?: Float32Array;
  out?: Float32Array;
  row?: Float64Array;
}

/**
 * Separable Gaussian blur with replicated edges; sigma 0 returns a copy. With `work`, the result and the
 * intermediate plane are its (grown as needed) buffers: the result is then overwritten by the next call.
 */
export function gaussianBlur(map: Float32Array, width: number, height: number, sigma: number, work?: BlurWork): Float32Array {
  checkMap(map, width, height);
  if (sigma <= 0) return map.slice();
  const kernel = cachedKernel(sigma);
  const size = map.length;
  const scratch = work?.scratch?.length === size ? work.scratch : new Float32Array(size);
  const out = work?.out?.length === size ? work.out : new Float32Array(size);
  const row = work?.row !== undefined && work.row.length >= width ? work.row : new Float64Array(width);
  if (work) {
    work.scratch = scratch;
    work.out = out;
    work.row = row;
  }
  return blurSymmetric(map, width, height, kernel, scratch, out, row);
}

/** Normalised 1-D Gaussian of 2 * radius + 1 taps. */
export function gaussianKernel(sigma: number, radius: number): Float64Array {
  const kernel = new Float64Array(2 * radius + 1);
  let sum = 0;
  for (let i = -radius; i <= radius; i++) {
    const v = Math.exp(-(i * i) / (2 * sigma * sigma));
    kernel[i + radius] = v;
    sum += v;
  }
  for (let i = 0; i < kernel.length; i++) kernel[i]! /= sum;
  return kernel;
}

const kernels = new Map<number, Float64Array>();

/** The blur kernel of a sigma, made once (a camera blurs every frame with the same one). */
function cachedKernel(sigma: number): Float64Array {
  let kernel = kernels.get(sigma);
  if (kernel === undefined) {
    kernel = gaussianKernel(sigma, Math.ceil(3 * sigma));
    if (kernels.size > 16) kernels.clear();
    kernels.set(sigma, kernel);
  }
  return kernel;
}

/**
 * The separable convolution of gaussianBlur. Horizontally, the kernel is symmetric, so each pair of taps at
 * the same distance shares one multiplication, and a row equal to the one above it (the comparator's map is
 * upsampled from half resolution, so every row comes twice) gives the same result, which is copied instead of
 * recomputed. Vertically, taps that land on equal rows (those repeated rows, and the replicated edge) are
 * merged into one tap with their summed weight. Sums are kept in float64 and rounded to float32 once per
 * pass: against the plain tap-by-tap convolution (float32 rounding after every vertical tap) the results
 * differ by float32 rounding only (tests/unit/scoring-fast.test.ts).
 */
function blurSymmetric(src: Float32Array, w: number, h: number, kernel: Float64Array, scratch: Float32Array, out: Float32Array, acc: Float64Array): Float32Array {
  const r = (kernel.length - 1) >> 1;
  const centre = kernel[r]!;
  // Each row's first equal row above it without a different row between (itself when it differs from the one above).
  const sameAs = new Int32Array(h);
  // Horizontal pass.
  for (let y = 0; y < h; y++) {
    const row = y * w;
    if (y > 0 && sameRow(src, row - w, row, w)) {
      scratch.copyWithin(row, row - w, row);
      sameAs[y] = sameAs[y - 1]!;
      continue;
    }
    sameAs[y] = y;
    for (let x = 0; x < w; x++) {
      const c = row + x;
      let a = centre * src[c]!;
      if (x >= r && x < w - r) {
        for (let j = 1; j <= r; j++) a += kernel[r - j]! * (src[c - j]! + src[c + j]!);
      } else {
        for (let j = 1; j <= r; j++) {
          const left = x - j < 0 ? 0 : x - j;
          const right = x + j >= w ? w - 1 : x + j;
          a += kernel[r - j]! * (src[row + left]! + src[row + right]!);
        }
      }
      scratch[c] = a;
    }
  }
  // Vertical pass: whole rows at a time into a float64 row, which walks memory in order.
  const tapRows = new Int32Array(kernel.length);
  const tapWeights = new Float64Array(kernel.length);
  for (let y = 0; y < h; y++) {
    let taps = 0;
    for (let k = -r; k <= r; k++) {
      const source = sameAs[y + k < 0 ? 0 : y + k >= h ? h - 1 : y + k]! * w;
      if (taps > 0 && tapRows[taps - 1] === source) {
        tapWeights[taps - 1]! += kernel[k + r]!;
      } else {
        tapRows[taps] = source;
        tapWeights[taps] = kernel[k + r]!;
        taps++;
      }
    }
    const first = tapRows[0]!;
    const firstWeight = tapWeights[0]!;
    for (let x = 0; x < w; x++) acc[x] = firstWeight * scratch[first + x]!;
    for (let t = 1; t < taps; t++) {
      const source = tapRows[t]!;
      const weight = tapWeights[t]!;
      for (let x = 0; x < w; x++) acc[x]! += weight * scratch[source + x]!;
    }
    const c = y * w;
    for (let x = 0; x < w; x++) out[c + x] = acc[x]!;
  }
  return out;
}

function sameRow(plane: Float32Array, a: number, b: number, w: number): boolean {
  for (let x = 0; x < w; x++) if (plane[a + x] !== plane[b + x]) return false;
  return true;
}

function checkMap(map: Float32Array, width: number, height: number): void {
  if (map.length !== width * height) throw new RangeError(`map has ${map.length} values, expected ${width}x${height}`);
}

/**
 * The pixels scoring leaves out: `border` pixels at each edge (reconstructions are
 * worst there) plus any set in `ignoreMask` (1 = ignore, e.g. a timestamp overlay).
 */
export function ignoredPixels(width: number, height: number, border: number, ignoreMask?: Uint8Array): Uint8Array {
  if (ignoreMask && ignoreMask.length !== width * height) {
    throw new RangeError(`ignore mask has ${ignoreMask.length} values, expected ${width}x${height}`);
  }
  const ignored = ignoreMask ? ignoreMask.slice() : new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (x < border || y < border || x >= width - border || y >= height - border) ignored[y * width + x] = 1;
    }
  }
  return ignored;
}

/** A copy of `map` with the border (and ignored pixels) set to 0, as shown in heatmaps. */
export function applyBorder(map: Float32Array, width: number, height: number, border: number, ignoreMask?: Uint8Array): Float32Array {
  checkMap(map, width, height);
  return zeroIgnored(map, ignoredPixels(width, height, border, ignoreMask));
}

export function zeroIgnored(map: Float32Array, ignored: Uint8Array): Float32Array {
  const out = map.slice();
  for (let i = 0; i < out.length; i++) if (ignored[i]) out[i] = 0;
  return out;
}

/**
 * The pixels a map is pooled over, for a caller that pools many maps with one mask (FrameScorer: every frame of a
 * camera): the mask (1 = left out) and the indices of the pixels it keeps, found once, so pooling reads only those.
 */
export interface PoolPixels {
  readonly ignored: Uint8Array;
  readonly kept: Int32Array;
}

export function poolPixels(ignored: Uint8Array): PoolPixels {
  let count = 0;
  for (let i = 0; i < ignored.length; i++) if (!ignored[i]) count++;
  const kept = new Int32Array(count);
  for (let i = 0, j = 0; i < ignored.length; i++) if (!ignored[i]) kept[j++] = i;
  return { ignored, kept };
}

/**
 * One number from a map: its max, mean, or the mean of its highest `topkFraction`
 * of pixels (at least one). Pixels set in `ignored` do not count; if every pixel
 * is ignored the result is 0. `scratch` (optional) holds top-k's working set when it is large enough.
 */
export function pool(map: Float32Array, mode: PoolingMode, topkFraction = 0.01, ignored?: Uint8Array | PoolPixels, scratch?: Float32Array): number {
  const pixels = ignored === undefined ? poolPixels(new Uint8Array(map.length)) : ignored instanceof Uint8Array ? poolPixels(ignored) : ignored;
  if (pixels.ignored.length !== map.length) throw new RangeError(`ignored has ${pixels.ignored.length} values, the map ${map.length}`);
  const { kept } = pixels;
  if (kept.length === 0) return 0;
  switch (mode) {
    case 'max': {
      let max = -Infinity;
      for (let j = 0; j < kept.length; j++) if (map[kept[j]!]! > max) max = map[kept[j]!]!;
      return max;
    }
    case 'mean': {
      let sum = 0;
      for (let j = 0; j < kept.length; j++) sum += map[kept[j]!]!;
      return sum / kept.length;
    }
    case 'topk': {
      if (!(topkFraction > 0 && topkFraction <= 1)) throw new RangeError(`topkFraction must be in (0, 1], got ${topkFraction}`);
      const k = Math.max(1, Math.ceil(topkFraction * kept.length));
      const largest = largestValues(map, kept, k, scratch !== undefined && scratch.length >= k ? scratch.subarray(0, k) : new Float32Array(k));
      // Summed smallest first, so the result does not depend on the order the values were found in.
      largest.sort();
      let sum = 0;
      for (let i = 0; i < k; i++) sum += largest[i]!;
      return sum / k;
    }
  }
}

/**
 * The `k` largest of the values at `kept`, in `heap` (a min-heap: with k = 1 % of the pixels, almost every pixel is
 * one comparison against its smallest, where quickselect copied the kept pixels and swept them several times;
 * bench:pool times both). `heap.length` must be `k`, and `k` at most `kept.length`.
 */
function largestValues(map: Float32Array, kept: Int32Array, k: number, heap: Float32Array): Float32Array {
  let size = 0;
  for (let j = 0; j < kept.length; j++) {
    const value = map[kept[j]!]!;
    if (size < k) {
      let child = size++;
      while (child > 0) {
        const parent = (child - 1) >> 1;
        if (heap[parent]! <= value) break;
        heap[child] = heap[parent]!;
        child = parent;
      }
      heap[child] = value;
    } else if (value > heap[0]!) {
      let parent = 0;
      for (;;) {
        let child = 2 * parent + 1;
        if (child >= k) break;
        if (child + 1 < k && heap[child + 1]! < heap[child]!) child++;
        if (heap[child]! >= value) break;
        heap[parent] = heap[child]!;
        parent = child;
      }
      heap[parent] = value;
    }
  }
  return heap;
}
