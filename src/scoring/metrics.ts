import type { Calibration } from '../model/manifest.js';

/**
 * Detection metrics. Convention used everywhere in linewatch: a frame is anomalous
 * when its score is strictly greater than the threshold.
 */

export interface RocPoint {
  /** Scores strictly above this count as anomalous (+Infinity for the (0, 0) corner). */
  threshold: number;
  fpr: number;
  tpr: number;
}

export interface Confusion {
  tp: number;
  fp: number;
  tn: number;
  fn: number;
  tpr: number;
  fpr: number;
  /** 0 when nothing is flagged. */
  precision: number;
  f1: number;
}

const ascending = (values: ArrayLike<number>) => Float64Array.from(values as ArrayLike<number>).sort();

function requireScores(values: ArrayLike<number>, what: string): void {
  if (values.length === 0) throw new RangeError(`${what} is empty`);
  for (let i = 0; i < values.length; i++) {
    if (Number.isNaN(values[i])) throw new RangeError(`${what} contains NaN at index ${i}`);
  }
}

/**
 * Area under the ROC curve: the probability that a random anomalous score exceeds a
 * random normal one, ties counting half (Mann-Whitney U / (n_normal * n_anomalous)).
 */
export function auroc(normalScores: ArrayLike<number>, anomalousScores: ArrayLike<number>): number {
  requireScores(normalScores, 'normal scores');
  requireScores(anomalousScores, 'anomalous scores');
  return aurocOfSorted(ascending(normalScores), ascending(anomalousScores));
}

function aurocOfSorted(normal: Float64Array, anomalous: Float64Array): number {
  // For each anomalous score: normals strictly below count 1, equal ones 1/2.
  let below = 0;
  let belowOrEqual = 0;
  let wins = 0;
  for (let a = 0; a < anomalous.length; a++) {
    const v = anomalous[a]!;
    while (below < normal.length && normal[below]! < v) below++;
    if (belowOrEqual < below) belowOrEqual = below;
    while (belowOrEqual < normal.length && normal[belowOrEqual]! <= v) belowOrEqual++;
    wins += below + (belowOrEqual - below) / 2;
  }
  return wins / (normal.length * anomalous.length);
}

/**
 * ROC points from (0, 0) to (1, 1): one per distinct score, whose threshold is the
 * next lower distinct score (-Infinity for the last), so each point flags one more
 * group of tied scores than the one before.
 */
export function rocCurve(normalScores: ArrayLike<number>, anomalousScores: ArrayLike<number>): RocPoint[] {
  requireScores(normalScores, 'normal scores');
  requireScores(anomalousScores, 'anomalous scores');
  const normal = ascending(normalScores);
  const anomalous = ascending(anomalousScores);
  const distinctDescending = Array.from(new Set([...normal, ...anomalous])).sort((a, b) => b - a);
  const thresholds = [...distinctDescending.slice(1), -Infinity];
  const points: RocPoint[] = [{ threshold: Infinity, fpr: 0, tpr: 0 }];
  // Counts of scores <= threshold, shrinking as the threshold falls.
  let normalAtOrBelow = normal.length;
  let anomalousAtOrBelow = anomalous.length;
  for (const threshold of thresholds) {
    while (normalAtOrBelow > 0 && normal[normalAtOrBelow - 1]! > threshold) normalAtOrBelow--;
    while (anomalousAtOrBelow > 0 && anomalous[anomalousAtOrBelow - 1]! > threshold) anomalousAtOrBelow--;
    points.push({
      threshold,
      fpr: (normal.length - normalAtOrBelow) / normal.length,
      tpr: (anomalous.length - anomalousAtOrBelow) / anomalous.length,
    });
  }
  return points;
}

/**
 * Pixel-level AUROC over anomaly maps and ground-truth masks (1 = defect); entries
 * without a mask are left out. Beyond `maxPixels` pixels every n-th pixel is used,
 * so the result is deterministic.
 */
export function pixelAuroc(maps: readonly Float32Array[], masks: readonly (Uint8Array | undefined)[], maxPixels = 4_000_000): number {
  if (maps.length !== masks.length) throw new RangeError(`got ${maps.length} maps but ${masks.length} masks`);
  let total = 0;
  for (let i = 0; i < maps.length; i++) {
    const mask = masks[i];
    if (!mask) continue;
    if (mask.length !== maps[i]!.length) throw new RangeError(`mask ${i} has ${mask.length} pixels, its map ${maps[i]!.length}`);
    total += mask.length;
  }
  const stride = Math.max(1, Math.ceil(total / maxPixels));
  const defect: number[] = [];
  const clean: number[] = [];
  let index = 0;
  for (let i = 0; i < maps.length; i++) {
    const mask = masks[i];
    if (!mask) continue;
    const map = maps[i]!;
    for (let p = 0; p < map.length; p++, index++) {
      if (index % stride !== 0) continue;
      (mask[p] ? defect : clean).push(map[p]!);
    }
  }
  if (defect.length === 0) throw new RangeError('no defect pixels in the masks: pixel AUROC needs at least one');
  if (clean.length === 0) throw new RangeError('no defect-free pixels in the masks: pixel AUROC needs at least one');
  return aurocOfSorted(ascending(clean), ascending(defect));
}

/** The q-quantile (0..1) with linear interpolation between order statistics; input need not be sorted. */
export function quantile(values: ArrayLike<number>, q: number): number {
  requireScores(values, 'values');
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile must be in [0, 1], got ${q}`);
  const sorted = isAscending(values) ? values : ascending(values);
  const position = q * (sorted.length - 1);
  const lower = Math.floor(position);
  const upper = Math.min(lower + 1, sorted.length - 1);
  return sorted[lower]! + (position - lower) * (sorted[upper]! - sorted[lower]!);
}

function isAscending(values: ArrayLike<number>): boolean {
  for (let i = 1; i < values.length; i++) if (values[i]! < values[i - 1]!) return false;
  return true;
}

/**
 * The smallest threshold whose false-positive rate on `normalScores` is <= `fpr`
 * (anomalous = score > threshold): it is always one of the scores, and at most
 * floor(fpr * n) of them lie above it.
 */
export function thresholdForFpr(normalScores: ArrayLike<number>, fpr: number): number {
  requireScores(normalScores, 'normal scores');
  if (!(fpr >= 0 && fpr < 1)) throw new RangeError(`target false-positive rate must be in [0, 1), got ${fpr}`);
  const sorted = ascending(normalScores);
  // The epsilon keeps e.g. 0.07 * 100 = 7.000000000000001 from rounding the wrong way.
  const allowedAbove = Math.floor(fpr * sorted.length + 1e-9);
  return sorted[sorted.length - 1 - allowedAbove]!;
}

export function confusionAt(threshold: number, normalScores: ArrayLike<number>, anomalousScores: ArrayLike<number>): Confusion {
  let fp = 0;
  for (let i = 0; i < normalScores.length; i++) if (normalScores[i]! > threshold) fp++;
  let tp = 0;
  for (let i = 0; i < anomalousScores.length; i++) if (anomalousScores[i]! > threshold) tp++;
  const tn = normalScores.length - fp;
  const fn = anomalousScores.length - tp;
  const tpr = anomalousScores.length ? tp / anomalousScores.length : 0;
  const fpr = normalScores.length ? fp / normalScores.length : 0;
  const precision = tp + fp ? tp / (tp + fp) : 0;
  const f1 = precision + tpr ? (2 * precision * tpr) / (precision + tpr) : 0;
  return { tp, fp, tn, fn, tpr, fpr, precision, f1 };
}

/** Pearson correlation of two equally long series (NaN when either is constant). */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new RangeError(`series differ in length: ${a.length} vs ${b.length}`);
  if (a.length < 2) throw new RangeError('pearson needs at least two pairs');
  const n = a.length;
  let meanA = 0;
  let meanB = 0;
  for (let i = 0; i < n; i++) {
    meanA += a[i]!;
    meanB += b[i]!;
  }
  meanA /= n;
  meanB /= n;
  let cov = 0;
  let varA = 0;
  let varB = 0;
  for (let i = 0; i < n; i++) {
    const da = a[i]! - meanA;
    const db = b[i]! - meanB;
    cov += da * db;
    varA += da * da;
    varB += db * db;
  }
  return cov / Math.sqrt(varA * varB);
}

/**
 * The calibration stored in a bundle: threshold at `targetFpr` on held-out normal
 * scores (never the training images, whose scores are optimistic), plus the score
 * distribution so operators can see the margin.
 */
export function calibrate(heldOutNormalScores: ArrayLike<number>, targetFpr: number, shiftTolerancePx = 0): Calibration {
  requireScores(heldOutNormalScores, 'held-out normal scores');
  if (!(targetFpr > 0 && targetFpr < 1)) throw new RangeError(`target false-positive rate must be in (0, 1), got ${targetFpr}`);
  const sorted = ascending(heldOutNormalScores);
  const n = sorted.length;
  let mean = 0;
  for (const v of sorted) mean += v;
  mean /= n;
  let squares = 0;
  for (const v of sorted) squares += (v - mean) ** 2;
  return {
    heldOut: n,
    targetFpr,
    shiftTolerancePx,
    threshold: thresholdForFpr(sorted, targetFpr),
    quantiles: {
      p50: quantile(sorted, 0.5),
      p90: quantile(sorted, 0.9),
      p95: quantile(sorted, 0.95),
      p99: quantile(sorted, 0.99),
      max: sorted[n - 1]!,
    },
    mean,
    std: n > 1 ? Math.sqrt(squares / (n - 1)) : 0,
  };
}
