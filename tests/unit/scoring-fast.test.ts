import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { tensorOf } from '../../src/agent/scheduler.js';
import { normaliseInput, standardisedBytes } from '../../src/image/normalise.js';
import { fromInterleavedBytes } from '../../src/image/tensor.js';
import { loadBundle, type LoadedBundle } from '../../src/model/bundle.js';
import { inferImages } from '../../src/model/infer.js';
import { probabilities } from '../../src/scoring/frame.js';
import { gaussianBlur, gaussianKernel, ignoredPixels, pool, zeroIgnored } from '../../src/scoring/maps.js';
import type { Frame } from '../../src/source/index.js';

/**
 * The per-frame scoring path was made cheaper (fused input normalisation, the comparator's sigmoid and the blur
 * computed once per 2x2 block / repeated row, a blur that folds the symmetric kernel and sums in float64).
 * These tests hold the new code against the code it replaced, kept here verbatim, on the demo model's real
 * frames: the input tensor and the probabilities are identical, the blurred map and the scores differ by
 * float32 rounding only.
 */

// ------------------------------------------------ the replaced code, verbatim

function referenceBlur(map: Float32Array, width: number, height: number, sigma: number): Float32Array {
  if (sigma <= 0) return map.slice();
  const kernel = gaussianKernel(sigma, Math.ceil(3 * sigma));
  return convolveSeparable(map, width, height, kernel, new Float32Array(map.length), new Float32Array(map.length));
}

function convolveSeparable(src: Float32Array, w: number, h: number, kernel: Float64Array, scratch: Float32Array, out: Float32Array): Float32Array {
  const radius = (kernel.length - 1) >> 1;
  const clampX = (x: number) => (x < 0 ? 0 : x >= w ? w - 1 : x);
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      let acc = 0;
      if (x >= radius && x < w - radius) {
        const start = row + x - radius;
        for (let k = 0; k < kernel.length; k++) acc += kernel[k]! * src[start + k]!;
      } else {
        for (let k = -radius; k <= radius; k++) acc += kernel[k + radius]! * src[row + clampX(x + k)]!;
      }
      scratch[row + x] = acc;
    }
  }
  for (let y = 0; y < h; y++) {
    const target = y * w;
    out.fill(0, target, target + w);
    for (let k = -radius; k <= radius; k++) {
      const yy = y + k < 0 ? 0 : y + k >= h ? h - 1 : y + k;
      const weight = kernel[k + radius]!;
      const source = yy * w;
      for (let x = 0; x < w; x++) out[target + x]! += weight * scratch[source + x]!;
    }
  }
  return out;
}

function referenceProbabilities(logits: Float32Array): Float32Array {
  const out = new Float32Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = 1 / (1 + Math.exp(-logits[i]!));
  return out;
}

// ------------------------------------------------ helpers

function mismatches(a: Float32Array, b: Float32Array): number {
  expect(a.length).toBe(b.length);
  let count = 0;
  for (let i = 0; i < a.length; i++) if (!Object.is(a[i], b[i])) count++;
  return count;
}

/** Largest |a - b| relative to the largest |b| (the map's scale). */
function relativeError(a: Float32Array, b: Float32Array): number {
  let scale = 0;
  let worst = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!));
  return scale === 0 ? worst : worst / scale;
}

function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

// ------------------------------------------------ synthetic maps

describe('gaussianBlur against the tap-by-tap convolution it replaced', () => {
  const random = seededRandom(7);
  const cases: [number, number, number][] = [
    [112, 64, 4],
    [64, 48, 2],
    [21, 21, 2],
    [10, 7, 4], // narrower than the kernel: every pixel is an edge pixel
    [1, 9, 1.5],
    [9, 1, 1.5],
    [33, 17, 0.8],
  ];
  for (const [w, h, sigma] of cases) {
    it(`${w}x${h}, sigma ${sigma}: equal within float32 rounding, on random and on 2x2-block maps`, () => {
      const noise = Float32Array.from({ length: w * h }, () => random());
      expect(relativeError(gaussianBlur(noise, w, h, sigma), referenceBlur(noise, w, h, sigma))).toBeLessThan(2e-6);
      const blocks = new Float32Array(w * h);
      for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) blocks[y * w + x] = noise[(y >> 1) * w + (x >> 1)]!;
      expect(relativeError(gaussianBlur(blocks, w, h, sigma), referenceBlur(blocks, w, h, sigma))).toBeLessThan(2e-6);
    });
  }

  it('reuses the buffers it is given, and leaves its input alone', () => {
    const map = Float32Array.from({ length: 30 * 20 }, () => random());
    const before = map.slice();
    const work = {};
    const first = gaussianBlur(map, 30, 20, 2, work);
    const firstValues = first.slice();
    const second = gaussianBlur(map, 30, 20, 2, work);
    expect(second).toBe(first);
    expect(mismatches(second, firstValues)).toBe(0);
    expect(mismatches(map, before)).toBe(0);
    expect(mismatches(gaussianBlur(map, 30, 20, 2), firstValues)).toBe(0);
  });

  it('probabilities: the same values as a sigmoid per pixel, NaN and infinities included', () => {
    const logits = Float32Array.from({ length: 12 * 6 }, (_, i) => (i % 5 === 0 ? 3 : (random() - 0.5) * 20));
    logits.set(logits.subarray(12, 24), 24); // a repeated row
    logits[40] = Number.NaN;
    logits[41] = Number.POSITIVE_INFINITY;
    logits[42] = Number.NEGATIVE_INFINITY;
    expect(mismatches(probabilities(logits, 12), referenceProbabilities(logits))).toBe(0);
  });
});

// ------------------------------------------------ the demo model on the demo video

const VIDEO = path.resolve('assets/demo/bottle-detection.mp4');
const MODEL = path.resolve('models/demo');

function demoFrames(width: number, height: number): Uint8Array[] {
  const raw = execFileSync('ffmpeg', ['-v', 'error', '-i', VIDEO, '-vf', `fps=5,scale=${width}:${height}:flags=area,format=gray`, '-f', 'rawvideo', 'pipe:1'], {
    maxBuffer: 64 * 2 ** 20,
  });
  const size = width * height;
  return Array.from({ length: Math.floor(raw.length / size) }, (_, i) => new Uint8Array(raw.buffer, raw.byteOffset + i * size, size));
}

describe('the demo model on the demo video: new scoring path against the old', () => {
  let bundle: LoadedBundle;
  let frames: Uint8Array[];

  beforeAll(async () => {
    bundle = await loadBundle(MODEL, { variant: 'int8', threads: 1 });
    frames = demoFrames(bundle.manifest.input.width, bundle.manifest.input.height);
  }, 60_000);

  it('input tensors are identical to normaliseInput(fromInterleavedBytes(...))', () => {
    const { width, height, channels, normalisation } = bundle.manifest.input;
    expect(frames.length).toBeGreaterThan(150);
    for (const bytes of frames) {
      const old = normaliseInput(fromInterleavedBytes(bytes, width, height, channels), normalisation);
      const frame = { data: bytes } as Frame;
      expect(mismatches(tensorOf(bundle, frame).data, old.data)).toBe(0);
      // Written into a slot of a batch (the scheduler's reused input): the same values, in that slot only.
      const batch = new Float32Array(old.data.length * 2).fill(-1);
      const written = tensorOf(bundle, frame, batch.subarray(old.data.length));
      expect(written.data.buffer).toBe(batch.buffer);
      expect(mismatches(batch.subarray(old.data.length), old.data)).toBe(0);
      expect(batch.subarray(0, old.data.length).every((v) => v === -1)).toBe(true);
    }
    expect(() => standardisedBytes(frames[0]!, width, height, channels, new Float32Array(3))).toThrow(/holds 3 values/);
    // Colour frames take the same planar order.
    const rgb = Uint8Array.from({ length: 8 * 5 * 3 }, (_, i) => (i * 37) % 256);
    expect(mismatches(standardisedBytes(rgb, 8, 5, 3).data, normaliseInput(fromInterleavedBytes(rgb, 8, 5, 3), 'standardise').data)).toBe(0);
  });

  it('probabilities identical, maps and scores within float32 rounding, the same verdict on every frame', async () => {
    const { width, height } = bundle.manifest.input;
    const s = bundle.scorer.settings;
    const ignored = ignoredPixels(width, height, s.border);
    const threshold = bundle.calibration!.threshold;
    let worstScore = 0;
    let worstMap = 0;
    for (let start = 0; start < frames.length; start += 16) {
      const images = frames.slice(start, start + 16).map((data) => tensorOf(bundle, { data } as Frame));
      const outputs = await inferImages(bundle.model, images, 16);
      images.forEach((image, i) => {
        const logits = outputs.map![i]!;
        const fresh = bundle.scorer.score(image, outputs.recon[i]!, outputs.mu[i]!, undefined, logits);
        const probabilitiesOld = referenceProbabilities(logits);
        expect(mismatches(probabilities(logits, width), probabilitiesOld)).toBe(0);
        const blurredOld = referenceBlur(probabilitiesOld, width, height, s.blurSigma);
        const reconOld = pool(blurredOld, s.pooling, s.topkFraction, ignored);
        const scoreOld = bundle.scorer.combine(reconOld, fresh.latent);
        worstScore = Math.max(worstScore, Math.abs(fresh.score - scoreOld));
        worstMap = Math.max(worstMap, relativeError(fresh.map, zeroIgnored(blurredOld, ignored)));
        expect(fresh.score > threshold).toBe(scoreOld > threshold);
      });
    }
    expect(worstMap).toBeLessThan(2e-6);
    // z-scores of a pooled probability whose held-out std is ~0.012: float32 rounding of the map is ~1e-5 here.
    expect(worstScore).toBeLessThan(1e-3);
  }, 60_000);

  it("the model's blurred map (what the scheduler hands the scorer): the same maps and scores within float32 rounding, batched or not", async () => {
    const { width, height } = bundle.manifest.input;
    const plane = width * height;
    const s = bundle.scorer.settings;
    const ignored = ignoredPixels(width, height, s.border);
    const threshold = bundle.calibration!.threshold;
    const latentDim = bundle.manifest.architecture.latentDim;
    let worstScore = 0;
    let worstMap = 0;
    for (let start = 0; start < frames.length; start += 8) {
      const images = frames.slice(start, start + 8).map((data) => tensorOf(bundle, { data } as Frame));
      const packed = new Float32Array(plane * images.length);
      images.forEach((image, i) => packed.set(image.data, i * plane));
      const outputs = await bundle.model.run(packed, images.length);
      expect(outputs.blurredMap).toHaveLength(plane * images.length);
      for (const [i, image] of images.entries()) {
        const row = (values: Float32Array, size: number) => values.subarray(i * size, (i + 1) * size);
        const logits = row(outputs.map!, plane);
        const blurred = row(outputs.blurredMap!, plane);
        expect(relativeError((await bundle.model.run(image.data, 1)).blurredMap!, blurred.slice())).toBeLessThan(1e-6); // alone as in a batch
        const viaOnnx = bundle.scorer.score(image, row(outputs.recon, plane), row(outputs.mu, latentDim), undefined, logits, blurred);
        const blurredOld = referenceBlur(referenceProbabilities(logits), width, height, s.blurSigma);
        const scoreOld = bundle.scorer.combine(pool(blurredOld, s.pooling, s.topkFraction, ignored), viaOnnx.latent);
        worstScore = Math.max(worstScore, Math.abs(viaOnnx.score - scoreOld));
        worstMap = Math.max(worstMap, relativeError(viaOnnx.map, zeroIgnored(blurredOld, ignored)));
        expect(viaOnnx.score > threshold).toBe(scoreOld > threshold);
      }
    }
    expect(worstMap).toBeLessThan(5e-6);
    expect(worstScore).toBeLessThan(1e-3);
  }, 60_000);
});
