import type { Calibration } from './settings.js';
import { labelRegions } from './region.js';

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

/** The false-positive rate up to which AUPRO integrates, as in the MVTec AD benchmark. */
export const AUPRO_MAX_FPR = 0.3;

/**
 * Area under the per-region-overlap curve (Bergmann et al., "The MVTec Anomaly Detection
 * Dataset", IJCV 2021) up to a false-positive rate of `maxFpr`, divided by `maxFpr`.
 * At each threshold, PRO is the mean over the ground-truth regions (8-connected components
 * of each mask, 1 = defect) of the share of the region's pixels scoring above it, and FPR
 * is the share of defect-free pixels (of every entry, normal images included) above it.
 * Each region counts the same however small it is, so one large defect found cannot hide
 * many small ones missed, as it can in pixel AUROC. The curve is exact (a point per
 * distinct score), integrated by trapezoids, cut at `maxFpr` by linear interpolation.
 * 1: every region lies wholly above every normal pixel; a map unrelated to the masks has
 * PRO = FPR and scores maxFpr / 2 (0.15 for 0.3). Entries without a mask are left out.
 */
export function aupro(maps: readonly Float32Array[], masks: readonly (Uint8Array | undefined)[], width: number, maxFpr = AUPRO_MAX_FPR): number {
  if (maps.length !== masks.length) throw new RangeError(`got ${maps.length} maps but ${masks.length} masks`);
  if (!(maxFpr > 0 && maxFpr <= 1)) throw new RangeError(`AUPRO's false-positive limit must be in (0, 1], got ${maxFpr}`);
  let normalCount = 0;
  let defectCount = 0;
  for (let i = 0; i < maps.length; i++) {
    const mask = masks[i];
    if (!mask) continue;
    if (mask.length !== maps[i]!.length) throw new RangeError(`mask ${i} has ${mask.length} pixels, its map ${maps[i]!.length}`);
    for (let p = 0; p < mask.length; p++) {
      if (Number.isNaN(maps[i]![p])) throw new RangeError(`map ${i} has NaN at pixel ${p}`);
      if (mask[p]) defectCount++;
      else normalCount++;
    }
  }
  if (defectCount === 0) throw new RangeError('no defect pixels in the masks: AUPRO needs at least one');
  if (normalCount === 0) throw new RangeError('no defect-free pixels in the masks: AUPRO needs at least one');

  // Normal pixels each add 1 / normalCount to the FPR; a region's pixels each add 1 / (its size) to the sum of overlaps.
  const normal = new Float32Array(normalCount);
  const defect = new Float64Array(defectCount);
  const weight = new Float64Array(defectCount);
  let n = 0;
  let d = 0;
  let regions = 0;
  for (let i = 0; i < maps.length; i++) {
    const mask = masks[i];
    if (!mask) continue;
    const map = maps[i]!;
    const { labels, sizes } = labelRegions(mask, width, mask.length / width);
    regions += sizes.length;
    for (let p = 0; p < map.length; p++) {
      if (labels[p] === 0) {
        normal[n++] = map[p]!;
      } else {
        defect[d] = map[p]!;
        weight[d++] = 1 / sizes[labels[p]! - 1]!;
      }
    }
  }
  normal.sort();
  const order = Uint32Array.from({ length: defectCount }, (_, i) => i).sort((a, b) => defect[a]! - defect[b]!);

  // Sweep the thresholds from the highest score down; each step flags every pixel of the next distinct score.
  let ni = normalCount - 1;
  let di = defectCount - 1;
  let flaggedNormal = 0;
  let overlapSum = 0;
  let lastFpr = 0;
  let lastPro = 0;
  let area = 0;
  while (ni >= 0 || di >= 0) {
    const level = Math.max(ni >= 0 ? normal[ni]! : -Infinity, di >= 0 ? defect[order[di]!]! : -Infinity);
    while (ni >= 0 && normal[ni]! >= level) {
      flaggedNormal++;
      ni--;
    }
    while (di >= 0 && defect[order[di]!]! >= level) overlapSum += weight[order[di--]!]!;
    const fpr = flaggedNormal / normalCount;
    const pro = overlapSum / regions;
    if (fpr >= maxFpr) {
      const proAtLimit = lastPro + ((maxFpr - lastFpr) / (fpr - lastFpr)) * (pro - lastPro);
      area += ((maxFpr - lastFpr) * (lastPro + proAtLimit)) / 2;
      break;
    }
    area += ((fpr - lastFpr) * (lastPro + pro)) / 2;
    lastFpr = fpr;
    lastPro = pro;
  }
  return area / maxFpr;
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

/*
 * Calibration. N held-out normal scores show a false-positive rate directly only down to
 * about 1/N: with the usual 50-80 held-out images and a 0.5 % target, the empirical
 * (1 - target) quantile is just their maximum, and a fresh normal score exceeds the maximum
 * of N others with probability 1/(N+1) (1.2-2 %), whatever the target says. So:
 *
 * - With enough scores (N * target >= MIN_SCORES_ABOVE_EMPIRICAL) the threshold is an order
 *   statistic, the one with k scores above it where k + 1 = floor(target * (N + 1)): a fresh
 *   normal score exceeds the k+1-th largest of N with probability exactly (k+1)/(N+1) for any
 *   continuous distribution, so this is the lowest order statistic whose expected rate does
 *   not exceed the target. 5 scores above keep the rate's spread across held-out draws to
 *   about 1/sqrt(5) = 45 %, no worse than the tail fit, without assuming a tail shape.
 * - Otherwise the upper tail is extrapolated (peaks over threshold): the excesses of the top
 *   m scores over the next one, u, are taken as exponential (the light-tailed end of the
 *   generalised Pareto family; normal-like scores come out conservative). With few excesses
 *   the plug-in threshold u + mean excess * ln(p_u / target) overshoots the target by half or
 *   more on average (the rate is convex in the estimated scale, and m is 9-12 for 60-80 scores), so the
 *   threshold is where the predictive exceedance probability equals the target:
 *   P(X > u + y) = p_u * (1 + y / S)^-m, S the sum of the excesses, p_u = (m+1)/(N+1). That is
 *   the exponential tail with its scale's uncertainty integrated out (scale-invariant prior),
 *   and it hits the target on average for an exponential tail at any N (tests/calibration.test.ts).
 * - The threshold never lets more held-out scores above it than the target allows
 *   (thresholdForFpr): the tail fit may put it below the held-out maximum, but a calibration
 *   that flags its own normal images would read as broken, and this only lowers the rate.
 */

/** Held-out scores that must lie above the empirical quantile for it to be used as is. */
const MIN_SCORES_ABOVE_EMPIRICAL = 5;
/** Share of held-out scores in the fitted tail: u at about the 85th percentile. */
const TAIL_SHARE = 0.15;
/** Fewer excesses say too little about the tail's scale; so the tail fit needs 2 * 5 = 10 scores. */
const MIN_TAIL_EXCESSES = 5;
/** With many scores, more excesses buy little precision but pull u lower, where the tail is less exponential. */
const MAX_TAIL_EXCESSES = 50;

export type CalibrationMethod = NonNullable<Calibration['method']>;

interface ThresholdChoice {
  threshold: number;
  method: CalibrationMethod;
  expectedFpr: number;
}

/** Exponential upper tail above `from`, fitted to the `excesses` largest held-out scores. */
interface ExponentialTail {
  from: number;
  excesses: number;
  excessSum: number;
  /** Probability that a fresh score exceeds `from`, an order statistic. */
  exceedance: number;
}

/**
 * The calibration stored in a bundle: threshold at `targetFpr` on held-out normal
 * scores (never the training images, whose scores are optimistic), plus the score
 * distribution so operators can see the margin, and what the threshold can promise
 * (see above and CalibrationSchema).
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
  const choice = chooseThreshold(sorted, targetFpr);
  return {
    heldOut: n,
    targetFpr,
    shiftTolerancePx,
    threshold: choice.threshold,
    quantiles: {
      p50: quantile(sorted, 0.5),
      p90: quantile(sorted, 0.9),
      p95: quantile(sorted, 0.95),
      p99: quantile(sorted, 0.99),
      max: sorted[n - 1]!,
    },
    mean,
    std: n > 1 ? Math.sqrt(squares / (n - 1)) : 0,
    method: choice.method,
    minResolvableFpr: 1 / (n + 1),
    expectedFprAtThreshold: choice.expectedFpr,
  };
}

function chooseThreshold(sorted: Float64Array, targetFpr: number): ThresholdChoice {
  // The epsilon (here and below) keeps a product that should be whole from rounding just below it.
  if (sorted.length * targetFpr + 1e-9 >= MIN_SCORES_ABOVE_EMPIRICAL) return empiricalThreshold(sorted, targetFpr);
  const tail = fitExponentialTail(sorted);
  // Too few scores or no spread in the top ones: nothing to extrapolate from.
  if (!tail) return empiricalThreshold(sorted, targetFpr);
  const fitted = tail.from + tail.excessSum * ((tail.exceedance / targetFpr) ** (1 / tail.excesses) - 1);
  const threshold = Math.max(fitted, thresholdForFpr(sorted, targetFpr));
  return { threshold, method: 'tail-fit', expectedFpr: tailFpr(tail, threshold) };
}

/** The lowest order statistic whose expected rate (k+1)/(N+1) is within the target; the maximum when none is. */
function empiricalThreshold(sorted: Float64Array, targetFpr: number): ThresholdChoice {
  const n = sorted.length;
  const above = Math.max(0, Math.floor(targetFpr * (n + 1) + 1e-9) - 1);
  // Ties at the threshold only lower the rate, so the expectation is then an upper bound.
  return { threshold: sorted[n - 1 - above]!, method: 'empirical', expectedFpr: (above + 1) / (n + 1) };
}

function fitExponentialTail(sorted: Float64Array): ExponentialTail | undefined {
  const n = sorted.length;
  const excesses = Math.min(MAX_TAIL_EXCESSES, Math.max(MIN_TAIL_EXCESSES, Math.round(TAIL_SHARE * n)));
  // u must stay in the upper half, or the "tail" is most of the distribution.
  if (excesses > n / 2) return undefined;
  const from = sorted[n - 1 - excesses]!;
  let excessSum = 0;
  for (let i = n - excesses; i < n; i++) excessSum += sorted[i]! - from;
  if (!(excessSum > 0 && Number.isFinite(excessSum))) return undefined;
  return { from, excesses, excessSum, exceedance: (excesses + 1) / (n + 1) };
}

/** Predictive probability that a fresh score exceeds `threshold` (>= tail.from) under the fitted tail. */
function tailFpr(tail: ExponentialTail, threshold: number): number {
  return tail.exceedance * (1 + (threshold - tail.from) / tail.excessSum) ** -tail.excesses;
}

/**
 * One line for people: the threshold, the rate it is for, how it was reached and, where
 * that differs from the target, the rate to expect. Calibrations from before `method`
 * was stored used the empirical quantile (thresholdForFpr), whose expected rate follows
 * from N and the target alone.
 */
export function describeCalibration(c: Calibration): string {
  const n = c.heldOut;
  const method = c.method ?? 'empirical';
  const minResolvable = c.minResolvableFpr ?? 1 / (n + 1);
  const expected = c.expectedFprAtThreshold ?? (Math.floor(c.targetFpr * n + 1e-9) + 1) / (n + 1);
  // Shifted copies are scored too, so heldOut then counts scores, not images.
  const heldOut =
    c.shiftTolerancePx > 0 ? `${n} held-out normal scores of images and their ${c.shiftTolerancePx} px shifts` : `${n} held-out normal image${n === 1 ? '' : 's'}`;
  let text = `threshold ${c.threshold.toFixed(4)} for ${formatRate(c.targetFpr)} false positives, `;
  text +=
    method === 'tail-fit'
      ? `extrapolated from the upper tail of ${heldOut} (they can show rates down to ${formatRate(minResolvable)} directly)`
      : `measured on ${heldOut}`;
  if (Math.abs(expected - c.targetFpr) > 0.05 * c.targetFpr) {
    if (expected > c.targetFpr && c.targetFpr < minResolvable) {
      text += `, which cannot show rates below ${formatRate(minResolvable)}: expect about ${formatRate(expected)}`;
    } else if (method === 'tail-fit' && expected < c.targetFpr) {
      text += `; raised to ${c.threshold === c.quantiles.max ? 'the largest' : 'one'} of them, so about ${formatRate(expected)} expected`;
    } else {
      text += `; about ${formatRate(expected)} expected`;
    }
  }
  if (c.trainingMaxScore !== undefined && c.threshold === c.trainingMaxScore) {
    text += `; raised to ${c.threshold.toFixed(4)}, the highest score of a training frame (the whole training stretch is normal by definition)`;
  }
  return text;
}

/** A rate as a percentage with two significant digits (whole percents from 10 up): 0.50%, 1.3%, 17%. */
function formatRate(rate: number): string {
  const percent = rate * 100;
  return `${percent >= 10 ? percent.toFixed(0) : percent.toPrecision(2)}%`;
}
