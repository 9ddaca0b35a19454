import { describe, expect, it } from 'vitest';
import { ModelError } from '../../src/errors.js';
import { imageTensor } from '../../src/image/tensor.js';
import { ScoringSettingsSchema } from '../../src/model/manifest.js';
import { componentStats, FrameScorer } from '../../src/scoring/frame.js';
import { latentNovelty } from '../../src/scoring/latent.js';
import { applyBorder, gaussianBlur, pool, poolPixels, squaredErrorMap, ssimErrorMap } from '../../src/scoring/maps.js';
import { seededRandom as random } from '../../src/toolkit/train/random.js';
import { texture } from '../helpers/images.js';


function argmax(map: Float32Array): number {
  let best = 0;
  for (let i = 1; i < map.length; i++) if (map[i]! > map[best]!) best = i;
  return best;
}

/** Copy of `image` with a `size` x `size` square at (left, top) set to `value` in every channel. */
function withSquare(image: ReturnType<typeof texture>, left: number, top: number, size: number, value: number): Float32Array {
  const out = image.data.slice();
  const plane = image.width * image.height;
  for (let c = 0; c < image.channels; c++) {
    for (let y = top; y < top + size; y++) for (let x = left; x < left + size; x++) out[c * plane + y * image.width + x] = value;
  }
  return out;
}

describe('error maps', () => {
  it('is zero for identical images (1 and 3 channels)', () => {
    for (const channels of [1, 3] as const) {
      const image = texture(40, 30, channels);
      const ssim = ssimErrorMap(image, image.data.slice());
      expect(ssim).toHaveLength(40 * 30);
      expect(Math.max(...ssim.map(Math.abs))).toBeLessThan(1e-5);
      expect(Math.max(...squaredErrorMap(image, image.data.slice()))).toBe(0);
    }
  });

  it('matches the SSIM formula on flat patches (hand-computed)', () => {
    // No variance: SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1) = 0.2501 / 0.3126.
    const input = imageTensor(16, 16, 1, new Float32Array(256).fill(0.5));
    const map = ssimErrorMap(input, new Float32Array(256).fill(0.25));
    const expected = 1 - 0.2501 / 0.3126;
    for (const v of map) expect(v).toBeCloseTo(expected, 5);
  });

  it('averages squared error over channels', () => {
    const input = imageTensor(2, 1, 3, Float32Array.from([0, 1, 0, 0, 0, 0]));
    const recon = Float32Array.from([0.5, 1, 0, 0.5, 0, 0.25]);
    const map = squaredErrorMap(input, recon);
    expect(map[0]).toBeCloseTo((0.25 + 0 + 0) / 3, 7);
    expect(map[1]).toBeCloseTo((0 + 0.25 + 0.0625) / 3, 7);
  });

  it('finds a square defect where it is, in both maps', () => {
    const image = texture(64, 48, 3, 9);
    const recon = withSquare(image, 40, 12, 6, 0.05);
    const centre = { x: 42.5, y: 14.5 };
    for (const map of [ssimErrorMap(image, recon), squaredErrorMap(image, recon)]) {
      const blurred = gaussianBlur(map, 64, 48, 2);
      const peak = argmax(blurred);
      expect(Math.abs((peak % 64) - centre.x)).toBeLessThanOrEqual(3);
      expect(Math.abs(Math.floor(peak / 64) - centre.y)).toBeLessThanOrEqual(3);
      // Far from the square the map stays (near) zero.
      expect(blurred[40 * 64 + 5]!).toBeLessThan(0.01 * blurred[peak]!);
    }
    const sq = squaredErrorMap(image, recon);
    expect(sq[12 * 64 + 40]).toBeGreaterThan(0.1);
    expect(sq[11 * 64 + 40]).toBe(0);
    expect(sq[12 * 64 + 46]).toBe(0);
  });

  it('rejects reconstructions of another size', () => {
    expect(() => ssimErrorMap(texture(8, 8), new Float32Array(63))).toThrow(/63 values/);
  });
});

describe('gaussianBlur', () => {
  it('keeps flat maps flat, spreads an impulse symmetrically and preserves its mass', () => {
    const flat = gaussianBlur(new Float32Array(100).fill(0.3), 10, 10, 1.5);
    for (const v of flat) expect(v).toBeCloseTo(0.3, 6);
    const impulse = new Float32Array(21 * 21);
    impulse[10 * 21 + 10] = 1;
    const blurred = gaussianBlur(impulse, 21, 21, 2);
    expect(blurred.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
    expect(blurred[10 * 21 + 8]).toBeCloseTo(blurred[10 * 21 + 12]!, 7);
    expect(blurred[8 * 21 + 10]).toBeCloseTo(blurred[10 * 21 + 8]!, 7);
    expect(argmax(blurred)).toBe(10 * 21 + 10);
  });

  it('returns a copy when sigma is 0', () => {
    const map = Float32Array.from([1, 2, 3, 4]);
    const out = gaussianBlur(map, 2, 2, 0);
    expect(out).toEqual(map);
    expect(out).not.toBe(map);
  });
});

describe('applyBorder and pool', () => {
  it('zeroes the border and ignored pixels', () => {
    const ones = new Float32Array(36).fill(1);
    const cropped = applyBorder(ones, 6, 6, 2);
    expect(Array.from(cropped).reduce((a, b) => a + b)).toBe(4);
    expect(cropped[2 * 6 + 2]).toBe(1);
    expect(cropped[1 * 6 + 2]).toBe(0);
    const ignore = new Uint8Array(36);
    ignore[2 * 6 + 3] = 1;
    expect(Array.from(applyBorder(ones, 6, 6, 2, ignore)).reduce((a, b) => a + b)).toBe(3);
    expect(applyBorder(ones, 6, 6, 0)).toEqual(ones);
  });

  it('pools by max, mean and top-k fraction, skipping ignored pixels', () => {
    const values = Float32Array.from({ length: 100 }, (_, i) => 100 - i);
    expect(pool(values, 'max')).toBe(100);
    expect(pool(values, 'mean')).toBe(50.5);
    expect(pool(values, 'topk', 0.05)).toBe(98);
    // At least one pixel, however small the fraction.
    expect(pool(values, 'topk', 0.0001)).toBe(100);
    expect(pool(values, 'topk', 1)).toBe(50.5);
    const ignored = new Uint8Array(100);
    ignored[0] = 1;
    ignored[1] = 1;
    expect(pool(values, 'max', 0.01, ignored)).toBe(98);
    expect(pool(values, 'topk', 0.03, ignored)).toBe(97);
    expect(pool(values, 'mean', 0.01, new Uint8Array(100).fill(1))).toBe(0);
    expect(values[0]).toBe(100); // input untouched by top-k selection
  });

  it('top-k matches sorting on random maps with ties', () => {
    const next = random(4);
    const map = Float32Array.from({ length: 4096 }, () => Math.round(next() * 50));
    const sorted = Array.from(map).sort((a, b) => b - a);
    const k = Math.ceil(0.01 * 4096);
    expect(pool(map, 'topk', 0.01)).toBeCloseTo(sorted.slice(0, k).reduce((a, b) => a + b) / k, 9);
  });

  it('top-k with ignored pixels and a reused scratch array matches sorting the kept values, whatever order the map is in', () => {
    const next = random(11);
    const scratch = new Float32Array(112 * 64).fill(1e9);
    for (const fraction of [0.0001, 0.01, 0.05, 0.5, 1]) {
      for (const order of ['random', 'rising', 'falling'] as const) {
        const values = Array.from({ length: 112 * 64 }, () => Math.fround(next() < 0.2 ? Math.round(next() * 8) : next() * 8));
        if (order !== 'random') values.sort((a, b) => (order === 'rising' ? a - b : b - a));
        const map = Float32Array.from(values);
        const ignored = Uint8Array.from(map, () => (next() < 0.3 ? 1 : 0));
        const kept = Array.from(map).filter((_, i) => !ignored[i]).sort((a, b) => b - a);
        const k = Math.max(1, Math.ceil(fraction * kept.length));
        const expected = kept.slice(0, k).reduce((a, b) => a + b) / k;
        expect(pool(map, 'topk', fraction, ignored, scratch), `${fraction} ${order}`).toBeCloseTo(expected, 9);
        expect(pool(map, 'topk', fraction, ignored), `${fraction} ${order}, no scratch`).toBe(pool(map, 'topk', fraction, ignored, scratch));
        expect(pool(map, 'max', fraction, ignored)).toBe(kept[0]);
        // The kept pixels found once (as FrameScorer does per mask) pool the same as the mask itself.
        const pixels = poolPixels(ignored);
        for (const mode of ['max', 'mean', 'topk'] as const) expect(pool(map, mode, fraction, pixels, scratch)).toBe(pool(map, mode, fraction, ignored));
      }
    }
  });

  it('refuses an ignore mask of another size than the map', () => {
    expect(() => pool(new Float32Array(10), 'topk', 0.1, new Uint8Array(9))).toThrow(/ignored has 9 values, the map 10/);
  });
});

describe('latentNovelty', () => {
  const memory = Float32Array.from([0, 0, 3, 4, 6, 8]);

  it('averages the distances to the k nearest rows (hand-computed)', () => {
    const mu = Float32Array.from([0, 0]);
    expect(latentNovelty(mu, memory, 2, 1)).toBe(0);
    expect(latentNovelty(mu, memory, 2, 2)).toBe(2.5);
    expect(latentNovelty(mu, memory, 2, 5)).toBe(5);
    expect(latentNovelty(Float32Array.from([3, 0]), memory, 2, 1)).toBe(3);
  });

  it('matches a brute-force sort on random data and reads only the first dim values of mu', () => {
    const next = random(12);
    const dim = 16;
    const rows = 300;
    const bank = Float32Array.from({ length: rows * dim }, () => next());
    const mu = Float32Array.from({ length: dim + 5 }, () => next());
    const distances = Array.from({ length: rows }, (_, r) => {
      let d2 = 0;
      for (let j = 0; j < dim; j++) d2 += (mu[j]! - bank[r * dim + j]!) ** 2;
      return Math.sqrt(d2);
    }).sort((a, b) => a - b);
    expect(latentNovelty(mu, bank, dim, 3)).toBeCloseTo((distances[0]! + distances[1]! + distances[2]!) / 3, 5);
  });

  it('refuses empty memories and mismatched sizes', () => {
    expect(() => latentNovelty(Float32Array.from([0, 0]), new Float32Array(0), 2, 1)).toThrow(/empty/);
    expect(() => latentNovelty(Float32Array.from([0, 0]), new Float32Array(5), 2, 1)).toThrow(/multiple/);
  });
});

describe('FrameScorer', () => {
  const image = texture(32, 32, 1, 21);
  const recon = withSquare(image, 12, 12, 5, 0.0);
  const memory = Float32Array.from([0, 0, 3, 4]);
  const mu = Float32Array.from([6, 8]);

  it('scores recon, latent and hybrid from the same components, z-scored by the normalisation', () => {
    const normalisation = { recon: { mean: 0.1, std: 0.05 }, latent: { mean: 2, std: 4 } };
    const parts = new FrameScorer(ScoringSettingsSchema.parse({ scorer: 'recon' }), memory, 2).score(image, recon, mu);
    expect(parts.latent).toBe(5);
    expect(parts.recon).toBeGreaterThan(0.1);
    // Without a normalisation the score is the raw component.
    expect(parts.score).toBe(parts.recon);
    const zRecon = (parts.recon - 0.1) / 0.05;
    const zLatent = (5 - 2) / 4;
    for (const [scorer, expected] of [['recon', zRecon], ['latent', zLatent], ['hybrid', zRecon + zLatent]] as const) {
      const settings = ScoringSettingsSchema.parse({ scorer, normalisation });
      const result = new FrameScorer(settings, memory, 2).score(image, recon, mu);
      expect(result.score).toBeCloseTo(expected, 6);
      expect(result.recon).toBe(parts.recon);
    }
  });

  it('follows the settings: error map, blur, pooling and border', () => {
    const settings = ScoringSettingsSchema.parse({ errorMap: 'sq', blurSigma: 0, pooling: 'max', border: 3 });
    const result = new FrameScorer(settings, new Float32Array(0), 2).score(image, recon, mu);
    const plain = squaredErrorMap(image, recon);
    expect(result.recon).toBeCloseTo(Math.max(...plain), 7);
    expect(Number.isNaN(result.latent)).toBe(true);
    expect(result.map[0]).toBe(0);
    expect(result.map[3 * 32 + 3]).toBe(plain[3 * 32 + 3]);
    expect(argmax(result.map)).toBe(argmax(plain));
    // An ignore mask over the defect hides it.
    const ignore = new Uint8Array(32 * 32);
    for (let y = 10; y < 20; y++) for (let x = 10; x < 20; x++) ignore[y * 32 + x] = 1;
    const hidden = new FrameScorer(settings, new Float32Array(0), 2).score(image, recon, mu, ignore);
    expect(hidden.recon).toBe(0);
  });

  it('defaults (ssim, blur 2, max, border 2) put the map peak on the defect', () => {
    const result = new FrameScorer(ScoringSettingsSchema.parse({}), memory, 2).score(image, recon, mu);
    const peak = argmax(result.map);
    expect(Math.abs((peak % 32) - 14)).toBeLessThanOrEqual(2);
    expect(Math.abs(Math.floor(peak / 32) - 14)).toBeLessThanOrEqual(2);
    expect(result.recon).toBeCloseTo(result.map[peak]!, 7);
  });

  it('needs a latent memory for latent and hybrid scorers', () => {
    for (const scorer of ['latent', 'hybrid'] as const) {
      expect(() => new FrameScorer(ScoringSettingsSchema.parse({ scorer }), new Float32Array(0), 2)).toThrow(ModelError);
    }
    expect(() => new FrameScorer(ScoringSettingsSchema.parse({}), new Float32Array(3), 2)).toThrow(/multiple/);
  });

  it('componentStats gives mean and sample std, never a zero std', () => {
    const stats = componentStats([1, 2, 3, 4]);
    expect(stats.mean).toBe(2.5);
    expect(stats.std).toBeCloseTo(Math.sqrt(5 / 3), 12);
    expect(componentStats([2, 2]).std).toBeGreaterThan(0);
    expect(() => componentStats([])).toThrow(RangeError);
  });
});

describe('FrameScorer latent space', () => {
  // Training codes around (0, 0, 5): dimension 0 spreads 10, dimension 1 spreads 1, dimension 2 is constant.
  const memory = Float32Array.from([10, 0, 5, -10, 0, 5, 0, 1, 5, 0, -1, 5]);
  const image = imageTensor(4, 4, 1);
  const recon = new Float32Array(16);
  const scorerIn = (latentSpace: 'raw' | 'whitened-cosine') =>
    new FrameScorer(ScoringSettingsSchema.parse({ scorer: 'latent', latentSpace, border: 0 }), memory, 3);
  const latent = (scorer: FrameScorer, mu: number[]) => scorer.score(image, recon, Float32Array.from(mu)).latent;

  it('raw: plain Euclidean distance to the nearest training code', () => {
    expect(latent(scorerIn('raw'), [10, 1, 5])).toBeCloseTo(1, 6);
  });

  it('whitened-cosine: each dimension counts relative to its spread over the training codes', () => {
    // (10, 1) lies 1 spread out along both dimensions: 45 degrees from its nearest code, 2 sin(22.5 deg) apart on the unit circle.
    expect(latent(scorerIn('whitened-cosine'), [10, 1, 5])).toBeCloseTo(2 * Math.sin(Math.PI / 8), 5);
  });

  it('whitened-cosine: distance from the training mean does not matter, only the direction', () => {
    const scorer = scorerIn('whitened-cosine');
    expect(latent(scorer, [10, 0, 5])).toBeCloseTo(0, 6);
    expect(latent(scorer, [20, 0, 5])).toBeCloseTo(0, 6);
    expect(latent(scorer, [0, 3, 5])).toBeCloseTo(0, 6);
  });
});
