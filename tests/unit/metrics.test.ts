import { describe, expect, it } from 'vitest';
import { CalibrationSchema } from '../../src/model/manifest.js';
import { auroc, calibrate, confusionAt, pearson, pixelAuroc, quantile, rocCurve, thresholdForFpr } from '../../src/scoring/metrics.js';
import { seededRandom as random } from '../../src/toolkit/train/random.js';

function bruteForceAuroc(normal: number[], anomalous: number[]): number {
  let wins = 0;
  for (const a of anomalous) for (const n of normal) wins += a > n ? 1 : a === n ? 0.5 : 0;
  return wins / (normal.length * anomalous.length);
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('auroc', () => {
  it('is 1 for perfect separation, 0 for reversed and 0.5 when everything ties', () => {
    expect(auroc([1, 2, 3], [4, 5])).toBe(1);
    expect(auroc([4, 5], [1, 2, 3])).toBe(0);
    expect(auroc([7, 7], [7, 7, 7])).toBe(0.5);
  });

  it('counts ties as half (hand-computed 7/9 and 5/8)', () => {
    // anomalous 2 beats 1 and ties 2 -> 1.5; 3 -> 2.5; 4 -> 3.  Sum 7 of 9 pairs.
    expect(auroc([1, 2, 3], [2, 3, 4])).toBeCloseTo(7 / 9, 12);
    // anomalous [1, 3] vs normal [1, 1, 2, 3]: 1 ties two ones -> 1; 3 beats three, ties one -> 3.5.  4.5 of 8.
    expect(auroc([1, 1, 2, 3], [1, 3])).toBeCloseTo(4.5 / 8, 12);
  });

  it('matches the pairwise definition on tied random data', () => {
    const next = random(7);
    const normal = Array.from({ length: 300 }, () => Math.round(next() * 20));
    const anomalous = Array.from({ length: 120 }, () => Math.round(next() * 20 + 4));
    expect(auroc(normal, anomalous)).toBeCloseTo(bruteForceAuroc(normal, anomalous), 12);
  });

  it('refuses empty or NaN inputs', () => {
    expect(() => auroc([], [1])).toThrow(/normal scores is empty/);
    expect(() => auroc([1], [Number.NaN])).toThrow(/NaN/);
  });
});

describe('rocCurve', () => {
  it('runs from (0,0) to (1,1) and its trapezoid area equals the AUROC', () => {
    const next = random(11);
    const normal = Array.from({ length: 200 }, () => Math.round(next() * 30) / 3);
    const anomalous = Array.from({ length: 80 }, () => Math.round(next() * 30 + 6) / 3);
    const points = rocCurve(normal, anomalous);
    expect(points[0]).toEqual({ threshold: Infinity, fpr: 0, tpr: 0 });
    expect(points.at(-1)).toMatchObject({ threshold: -Infinity, fpr: 1, tpr: 1 });
    let area = 0;
    for (let i = 1; i < points.length; i++) {
      const [a, b] = [points[i - 1]!, points[i]!];
      expect(b.fpr).toBeGreaterThanOrEqual(a.fpr);
      expect(b.tpr).toBeGreaterThanOrEqual(a.tpr);
      area += ((b.fpr - a.fpr) * (a.tpr + b.tpr)) / 2;
    }
    expect(area).toBeCloseTo(auroc(normal, anomalous), 12);
  });

  it('gives each point the rates of scores strictly above its threshold', () => {
    const points = rocCurve([1, 2], [2, 3]);
    expect(points).toEqual([
      { threshold: Infinity, fpr: 0, tpr: 0 },
      { threshold: 2, fpr: 0, tpr: 0.5 },
      { threshold: 1, fpr: 0.5, tpr: 1 },
      { threshold: -Infinity, fpr: 1, tpr: 1 },
    ]);
  });
});

describe('thresholdForFpr', () => {
  const scores = range(1, 100);

  it('lets at most floor(fpr * n) normal scores lie above the threshold', () => {
    expect(thresholdForFpr(scores, 0.05)).toBe(95);
    expect(thresholdForFpr(scores, 0.07)).toBe(93);
    expect(thresholdForFpr(scores, 0.01)).toBe(99);
    expect(thresholdForFpr(scores, 0.009)).toBe(100);
    expect(thresholdForFpr(scores, 0)).toBe(100);
  });

  it('is the smallest such threshold, also with ties and in any input order', () => {
    const tied = [3, 1, 3, 2, 3];
    // 3 flags nothing (fpr 0); 2 would flag the three 3s (fpr 0.6).
    expect(thresholdForFpr(tied, 0.2)).toBe(3);
    expect(thresholdForFpr(tied, 0.6)).toBe(2);
    const next = random(3);
    const noisy = Array.from({ length: 257 }, () => next());
    for (const fpr of [0.001, 0.01, 0.1, 0.5, 0.9]) {
      const t = thresholdForFpr(noisy, fpr);
      expect(confusionAt(t, noisy, []).fpr).toBeLessThanOrEqual(fpr);
      const justBelow = Math.max(...noisy.filter((s) => s < t));
      expect(confusionAt(justBelow, noisy, []).fpr).toBeGreaterThan(fpr);
    }
  });

  it('rejects rates outside [0, 1) and empty input', () => {
    expect(() => thresholdForFpr(scores, 1)).toThrow(RangeError);
    expect(() => thresholdForFpr(scores, -0.1)).toThrow(RangeError);
    expect(() => thresholdForFpr([], 0.1)).toThrow(/empty/);
  });
});

describe('confusionAt, quantile, pearson', () => {
  it('counts strictly-above as anomalous', () => {
    const c = confusionAt(2, [1, 2, 3, 4], [2, 5, 6]);
    expect(c).toEqual({ tp: 2, fp: 2, tn: 2, fn: 1, tpr: 2 / 3, fpr: 0.5, precision: 0.5, f1: (2 * 0.5 * (2 / 3)) / (0.5 + 2 / 3) });
    expect(confusionAt(10, [1], [2])).toMatchObject({ tp: 0, fp: 0, precision: 0, f1: 0 });
  });

  it('interpolates quantiles linearly on unsorted input', () => {
    expect(quantile([4, 1, 3, 2], 0.5)).toBe(2.5);
    expect(quantile([1, 2, 3, 4], 0)).toBe(1);
    expect(quantile([1, 2, 3, 4], 1)).toBe(4);
    expect(quantile(range(0, 100), 0.95)).toBeCloseTo(95, 12);
    expect(quantile([10, 20], 0.25)).toBe(12.5);
  });

  it('correlates linear series to +-1', () => {
    const a = [1, 4, 2, 8, 5];
    expect(pearson(a, a.map((v) => 3 * v + 1))).toBeCloseTo(1, 12);
    expect(pearson(a, a.map((v) => -v))).toBeCloseTo(-1, 12);
    // Hand-computed: x = [1,2,3], y = [1,3,2] -> cov 1, var 2 and 2 -> 0.5.
    expect(pearson([1, 2, 3], [1, 3, 2])).toBeCloseTo(0.5, 12);
  });
});

describe('pixelAuroc', () => {
  it('uses only entries with masks and is 1 when defect pixels score highest', () => {
    const map = Float32Array.from([0.1, 0.2, 0.9, 0.8]);
    const mask = Uint8Array.from([0, 0, 1, 1]);
    const ignored = Float32Array.from([5, 5, 5, 5]);
    expect(pixelAuroc([map, ignored], [mask, undefined])).toBe(1);
    // Hand case: defect pixels 0.5, 0.9 vs clean 0.5, 0.1 -> (1.5 + 2) / 4.
    expect(pixelAuroc([Float32Array.from([0.5, 0.9, 0.5, 0.1])], [Uint8Array.from([1, 1, 0, 0])])).toBeCloseTo(3.5 / 4, 12);
  });

  it('sub-samples huge inputs deterministically and close to the full value', () => {
    const next = random(5);
    const maps: Float32Array[] = [];
    const masks: Uint8Array[] = [];
    for (let i = 0; i < 20; i++) {
      const mask = Uint8Array.from({ length: 4096 }, () => (next() < 0.1 ? 1 : 0));
      maps.push(Float32Array.from(mask, (m) => next() + (m ? 0.3 : 0)));
      masks.push(mask);
    }
    const full = pixelAuroc(maps, masks);
    const sampled = pixelAuroc(maps, masks, 10_000);
    expect(sampled).toBe(pixelAuroc(maps, masks, 10_000));
    expect(Math.abs(sampled - full)).toBeLessThan(0.03);
    expect(full).toBeGreaterThan(0.7);
  });

  it('refuses masks without defect pixels', () => {
    expect(() => pixelAuroc([new Float32Array(4)], [new Uint8Array(4)])).toThrow(/no defect pixels/);
  });
});

describe('calibrate', () => {
  it('sets the threshold at the target FPR and records the distribution', () => {
    // 100 * 0.05 = 5 scores above: enough to measure. The 5th largest (96) is exceeded by a fresh
    // score with probability 5/101 <= 5 %; the 6th largest (95, at most 5 of 100 above) by 6/101.
    const calibration = calibrate(range(1, 100).reverse(), 0.05);
    expect(CalibrationSchema.parse(calibration)).toEqual(calibration);
    expect(calibration).toMatchObject({ heldOut: 100, targetFpr: 0.05, threshold: 96, mean: 50.5, method: 'empirical' });
    expect(calibration.minResolvableFpr).toBeCloseTo(1 / 101, 12);
    expect(calibration.expectedFprAtThreshold).toBeCloseTo(5 / 101, 12);
    const expected = { p50: 50.5, p90: 90.1, p95: 95.05, p99: 99.01, max: 100 };
    for (const [key, value] of Object.entries(expected)) expect(calibration.quantiles[key as keyof typeof expected]).toBeCloseTo(value, 9);
    expect(calibration.std).toBeCloseTo(Math.sqrt((100 * 101) / 12), 9);
  });

  it('rejects target rates outside (0, 1)', () => {
    expect(() => calibrate([1, 2], 0)).toThrow(RangeError);
  });
});
