import { describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { imageTensor, type ImageTensor } from '../../src/image/tensor.js';
import { seededRandom } from '../../src/toolkit/train/random.js';
import { ANOMALY_KINDS, perlinMask, perlinNoise, SyntheticAnomalies, type AnomalyKind, type CorruptedImage } from '../../src/toolkit/train/synthetic.js';
import { texture } from '../helpers/images.js';


function normals(count: number, channels: 1 | 3 = 1, size = 64): ImageTensor[] {
  return Array.from({ length: count }, (_, i) => texture(size, size, channels, i + 1));
}

function area(mask: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < mask.length; i++) sum += mask[i]!;
  return sum;
}

/** Pixels (over all channels) outside the mask that differ from the input, and masked pixels that differ in some channel. */
function compare(input: ImageTensor, result: CorruptedImage): { changedOutside: number; changedInside: number; masked: number } {
  const plane = input.width * input.height;
  let changedOutside = 0;
  let changedInside = 0;
  let masked = 0;
  for (let i = 0; i < plane; i++) {
    let differs = false;
    for (let c = 0; c < input.channels; c++) {
      // Object.is: bit-level equality for floats, no tolerance.
      if (!Object.is(result.image.data[c * plane + i], input.data[c * plane + i])) differs = true;
    }
    if (result.mask[i]) {
      masked++;
      if (differs) changedInside++;
    } else if (differs) {
      changedOutside++;
    }
  }
  return { changedOutside, changedInside, masked };
}

/** Bit-identical float arrays (toEqual on typed arrays is slow in loops). */
function identical(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

function expectUsageError(action: () => unknown): UsageError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return error as UsageError;
  }
  throw new Error('expected a UsageError');
}

describe('perlinNoise', () => {
  it('is smooth, roughly in [-1, 1], and varies with the seed', () => {
    const noise = perlinNoise(64, 48, 4, 3, seededRandom(1));
    expect(noise).toHaveLength(64 * 48);
    const values = Array.from(noise);
    expect(Math.min(...values)).toBeGreaterThanOrEqual(-1.01);
    expect(Math.max(...values)).toBeLessThanOrEqual(1.01);
    // Not flat: spans a good part of the range.
    expect(Math.max(...values) - Math.min(...values)).toBeGreaterThan(0.5);
    // Smooth: 16-pixel cells change little from one pixel to the next.
    let maxStep = 0;
    for (let y = 0; y < 48; y++) for (let x = 1; x < 64; x++) maxStep = Math.max(maxStep, Math.abs(noise[y * 64 + x]! - noise[y * 64 + x - 1]!));
    expect(maxStep).toBeLessThan(0.2);
    expect(Array.from(perlinNoise(64, 48, 4, 3, seededRandom(1)))).toEqual(values);
    expect(Array.from(perlinNoise(64, 48, 4, 3, seededRandom(2)))).not.toEqual(values);
  });

  it('rejects non-integer sizes', () => {
    expect(() => perlinNoise(0, 8, 1, 1, seededRandom(1))).toThrow(RangeError);
    expect(() => perlinNoise(8, 8, 1.5, 1, seededRandom(1))).toThrow(RangeError);
  });
});

describe('perlinMask', () => {
  it('is binary, never empty and within the default area bounds (0.5 % to 40 %)', () => {
    const random = seededRandom(7);
    for (let i = 0; i < 100; i++) {
      const mask = perlinMask(64, 64, random);
      expect(mask).toHaveLength(64 * 64);
      expect(mask.every((v) => v === 0 || v === 1)).toBe(true);
      const share = area(mask) / mask.length;
      expect(share).toBeGreaterThanOrEqual(0.005);
      expect(share).toBeLessThanOrEqual(0.4);
    }
  });

  it('honours tight custom bounds, also on non-square and tiny images', () => {
    const random = seededRandom(8);
    for (const [width, height] of [
      [64, 64],
      [80, 32],
      [4, 4],
    ] as const) {
      for (let i = 0; i < 20; i++) {
        const mask = perlinMask(width, height, random, { minArea: 0.2, maxArea: 0.25 });
        const share = area(mask) / (width * height);
        expect(share).toBeGreaterThanOrEqual(0.2);
        expect(share).toBeLessThanOrEqual(0.25);
      }
    }
    // A minimum below one pixel still yields at least one.
    expect(area(perlinMask(8, 8, random, { minArea: 0, maxArea: 0 }))).toBe(1);
  });

  it('varies from draw to draw and rejects inverted bounds', () => {
    const random = seededRandom(9);
    expect(Array.from(perlinMask(32, 32, random))).not.toEqual(Array.from(perlinMask(32, 32, random)));
    expect(() => perlinMask(32, 32, random, { minArea: 0.5, maxArea: 0.1 })).toThrow(RangeError);
  });
});

describe('SyntheticAnomalies', () => {
  it('changes only masked pixels, and with strength [1, 1] most of them, for every kind (grey and colour)', () => {
    for (const channels of [1, 3] as const) {
      const images = normals(4, channels);
      const textures = [texture(64, 64, channels, 99)];
      for (const kind of ANOMALY_KINDS) {
        const anomalies = new SyntheticAnomalies(images, { share: 1, strength: [1, 1], kinds: [kind], textures }, 3);
        for (let i = 0; i < 20; i++) {
          const input = images[i % images.length]!;
          const before = input.data.slice();
          const result = anomalies.corrupt(input);
          expect(result.kind).toBe(kind);
          expect(result.image.width).toBe(64);
          expect(result.image.channels).toBe(channels);
          expect(result.image.data).toHaveLength(input.data.length);
          expect(result.mask.every((v) => v === 0 || v === 1)).toBe(true);
          const { changedOutside, changedInside, masked } = compare(input, result);
          expect(masked).toBeGreaterThan(0);
          expect(changedOutside).toBe(0);
          expect(changedInside / masked).toBeGreaterThan(0.8);
          expect(result.image.data.every((v) => v >= 0 && v <= 1)).toBe(true);
          // The input is not modified in place.
          expect(identical(input.data, before)).toBe(true);
        }
      }
    }
  });

  it('blends weakly with a weak strength', () => {
    const images = normals(2);
    const anomalies = new SyntheticAnomalies(images, { share: 1, strength: [0.1, 0.1], kinds: ['noise'] }, 4);
    for (let i = 0; i < 10; i++) {
      const result = anomalies.corrupt(images[0]!);
      for (let p = 0; p < result.mask.length; p++) {
        // |x*(1-b) + f*b - x| = b |f - x| <= 0.1 for values in [0, 1].
        if (result.mask[p]) expect(Math.abs(result.image.data[p]! - images[0]!.data[p]!)).toBeLessThanOrEqual(0.1 + 1e-6);
      }
    }
  });

  it('draws scars as thin shapes: a small share of the image, bounded by the scar size', () => {
    const anomalies = new SyntheticAnomalies(normals(2), { share: 1, kinds: ['scar'] }, 5);
    for (let i = 0; i < 50; i++) {
      const share = area(anomalies.corrupt(normals(1)[0]!).mask) / (64 * 64);
      // At most 4 px x 30 % of 64 px (plus rounding at the ends) of 4096 pixels.
      expect(share).toBeGreaterThan(0);
      expect(share).toBeLessThan(0.025);
    }
  });

  it('takes patch fillings from another normal image, or a shifted copy of the only one', () => {
    const dark = imageTensor(32, 32, 1, new Float32Array(32 * 32).fill(0.1));
    const light = imageTensor(32, 32, 1, new Float32Array(32 * 32).fill(0.9));
    const anomalies = new SyntheticAnomalies([dark, light], { share: 1, strength: [1, 1], kinds: ['patch'] }, 6);
    for (let i = 0; i < 10; i++) {
      const result = anomalies.corrupt(dark);
      for (let p = 0; p < result.mask.length; p++) {
        // The light image's pixels with brightness jitter, never the dark one's.
        if (result.mask[p]) expect(result.image.data[p]).toBeGreaterThan(0.7);
      }
    }
    const single = texture(32, 32, 1, 3);
    const alone = new SyntheticAnomalies([single], { share: 1, strength: [1, 1], kinds: ['patch'] }, 6);
    const result = alone.corrupt(single);
    const { changedOutside, changedInside, masked } = compare(single, result);
    expect(changedOutside).toBe(0);
    expect(changedInside / masked).toBeGreaterThan(0.8);
  });

  it('fills texture anomalies from the given textures', () => {
    const images = [imageTensor(32, 32, 3, new Float32Array(32 * 32 * 3).fill(0.5))];
    const red = imageTensor(32, 32, 3, new Float32Array(32 * 32 * 3));
    red.data.fill(1, 0, 32 * 32);
    const anomalies = new SyntheticAnomalies(images, { share: 1, strength: [1, 1], textures: [red], kinds: ['texture'] }, 7);
    const result = anomalies.corrupt(images[0]!);
    const plane = 32 * 32;
    expect(area(result.mask)).toBeGreaterThan(0);
    for (let p = 0; p < plane; p++) {
      const expected = result.mask[p] ? [1, 0, 0] : [0.5, 0.5, 0.5];
      expect([result.image.data[p], result.image.data[plane + p], result.image.data[2 * plane + p]]).toEqual(expected);
    }
  });

  it('includes texture in the default kinds only when textures are given', () => {
    const images = normals(2, 1, 32);
    const kindsSeen = (anomalies: SyntheticAnomalies) => {
      const seen = new Set<AnomalyKind | null>();
      for (let i = 0; i < 200; i++) seen.add(anomalies.corrupt(images[0]!).kind);
      return seen;
    };
    expect([...kindsSeen(new SyntheticAnomalies(images, { share: 1 }, 8))].sort()).toEqual(['noise', 'patch', 'scar']);
    expect([...kindsSeen(new SyntheticAnomalies(images, { share: 1, textures: [texture(32, 32, 1, 5)] }, 8))].sort()).toEqual([
      'noise',
      'patch',
      'scar',
      'texture',
    ]);
  });

  it('corrupts about `share` of the images and leaves the others clean with an empty mask', () => {
    const images = normals(3);
    for (const share of [0, 0.3, 1]) {
      const anomalies = new SyntheticAnomalies(images, { share }, 9);
      let corrupted = 0;
      for (let i = 0; i < 400; i++) {
        const input = images[i % images.length]!;
        const result = anomalies.corrupt(input);
        if (result.kind === null) {
          expect(area(result.mask)).toBe(0);
          expect(identical(result.image.data, input.data)).toBe(true);
        } else {
          corrupted++;
          expect(area(result.mask)).toBeGreaterThan(0);
        }
      }
      if (share === 0) expect(corrupted).toBe(0);
      else if (share === 1) expect(corrupted).toBe(400);
      // Binomial(400, 0.3): standard deviation ~9.2, so +-40 is over 4 sigma.
      else expect(Math.abs(corrupted - 120)).toBeLessThan(40);
    }
  });

  it('is deterministic for a seed and call sequence, and differs between seeds', () => {
    const images = normals(3, 3, 32);
    const run = (seed: number) => {
      const anomalies = new SyntheticAnomalies(images, { textures: [texture(32, 32, 3, 9)] }, seed);
      return Array.from({ length: 30 }, (_, i) => anomalies.corrupt(images[i % images.length]!));
    };
    const first = run(11);
    const again = run(11);
    const other = run(12);
    expect(again.map((r) => r.kind)).toEqual(first.map((r) => r.kind));
    for (let i = 0; i < first.length; i++) {
      expect(identical(again[i]!.mask, first[i]!.mask)).toBe(true);
      expect(identical(again[i]!.image.data, first[i]!.image.data)).toBe(true);
    }
    const same = first.every((r, i) => r.kind === other[i]!.kind && area(r.mask) === area(other[i]!.mask));
    expect(same).toBe(false);
  });

  it('rejects bad options, naming every problem at once', () => {
    const images = normals(1, 1, 32);
    const all = expectUsageError(
      () =>
        new SyntheticAnomalies(
          images,
          { share: 1.5, strength: [0.8, 0.2], kinds: ['noise', 'bogus' as AnomalyKind, 'texture'] },
          1,
        ),
    );
    expect(all.message).toMatch(/share must be in \[0, 1\], got 1\.5/);
    expect(all.message).toMatch(/strength .* got \[0\.8, 0\.2\]/);
    expect(all.message).toMatch(/unknown anomaly kind 'bogus'/);
    expect(all.message).toMatch(/'texture' needs textures/);
    expect(all.hint).toBeTruthy();

    const wrongSize = expectUsageError(
      () => new SyntheticAnomalies(images, { textures: [texture(32, 32, 1), texture(16, 32, 1), texture(32, 32, 3)] }, 1),
    );
    expect(wrongSize.message).toMatch(/texture 1 is 16x32x1, the model's images are 32x32x1/);
    expect(wrongSize.message).toMatch(/texture 2 is 32x32x3/);
    expect(wrongSize.message).not.toMatch(/texture 0/);

    expect(expectUsageError(() => new SyntheticAnomalies(images, { strength: [0, 0.5] }, 1)).message).toMatch(/strength/);
    expect(expectUsageError(() => new SyntheticAnomalies(images, { kinds: [] }, 1)).message).toMatch(/at least one/);
    expect(expectUsageError(() => new SyntheticAnomalies(images, { share: Number.NaN }, 1)).message).toMatch(/share/);
    // Valid edge values pass.
    expect(() => new SyntheticAnomalies(images, { share: 0, strength: [1, 1], kinds: ['scar'] }, 1)).not.toThrow();
  });

  it('rejects images of another size than the normals', () => {
    const anomalies = new SyntheticAnomalies(normals(1, 1, 32), {}, 1);
    expect(() => anomalies.corrupt(texture(16, 16))).toThrow(RangeError);
  });
});
