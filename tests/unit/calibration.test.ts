import { describe, expect, it } from 'vitest';
import { CalibrationSchema, type Calibration } from '../../src/model/manifest.js';
import { calibrate, describeCalibration, thresholdForFpr } from '../../src/scoring/metrics.js';
import { normalSampler, seededRandom, type Random } from '../../src/toolkit/train/random.js';

const TARGET = 0.005;
const POPULATION = 200_000;
const REPETITIONS = 200;

/** Score distributions with known tails: exponential (what the tail fit assumes), lighter (normal) and heavier (log-normal). */
const distributions: Record<string, (random: Random) => () => number> = {
  exponential: (random) => () => -Math.log(1 - random()),
  normal: (random) => normalSampler(random),
  'log-normal': (random) => {
    const normal = normalSampler(random);
    return () => Math.exp(0.5 * normal());
  },
};

function draws(sample: () => number, count: number): Float64Array {
  return Float64Array.from({ length: count }, sample);
}

/** Share of `population` (ascending) strictly above `threshold`: the rate a camera would see. */
function trueFpr(population: Float64Array, threshold: number): number {
  let low = 0;
  let high = population.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (population[middle]! <= threshold) low = middle + 1;
    else high = middle;
  }
  return (population.length - low) / population.length;
}

interface Trial {
  /** Mean over repetitions of the true rate at the new threshold. */
  calibrated: number;
  /** The same for the old rule, thresholdForFpr (the held-out maximum at these sizes). */
  empiricalQuantile: number;
  /** Mean of what the calibrations said to expect. */
  promised: number;
  methods: Set<string>;
}

/** Calibrate on `heldOut` fresh draws `REPETITIONS` times; measure each threshold on a large independent sample. */
function trial(distribution: string, heldOut: number, targetFpr = TARGET, repetitions = REPETITIONS): Trial {
  const make = distributions[distribution]!;
  const population = draws(make(seededRandom(1)), POPULATION).sort();
  const sample = make(seededRandom(2 + heldOut));
  let calibrated = 0;
  let empiricalQuantile = 0;
  let promised = 0;
  const methods = new Set<string>();
  for (let r = 0; r < repetitions; r++) {
    const scores = draws(sample, heldOut);
    const calibration = calibrate(scores, targetFpr);
    calibrated += trueFpr(population, calibration.threshold);
    empiricalQuantile += trueFpr(population, thresholdForFpr(scores, targetFpr));
    promised += calibration.expectedFprAtThreshold!;
    methods.add(calibration.method!);
  }
  return { calibrated: calibrated / repetitions, empiricalQuantile: empiricalQuantile / repetitions, promised: promised / repetitions, methods };
}

const percent = (rate: number) => `${(rate * 100).toFixed(2)}%`;

describe('calibrate on small held-out sets', () => {
  // Measured (seeds as here), 60/80 held-out scores: exponential 0.57/0.46 % (old rule 1.82/1.19 %),
  // normal 0.35/0.25 % (old 1.83/1.21 %), log-normal 0.68/0.53 % (old 1.83/1.21 %).
  const bounds: Record<string, [number, number]> = {
    // The tail model is exact here: on average the target, give or take the spread of 200 repetitions.
    exponential: [0.002, 0.01],
    // Lighter than exponential: extrapolating an exponential tail is conservative, but not wildly so.
    normal: [0.001, 0.0075],
    // Heavier than exponential: the fit is optimistic, yet still far nearer the target than the maximum.
    'log-normal': [0.002, 0.01],
  };
  for (const distribution of Object.keys(distributions)) {
    for (const heldOut of [60, 80]) {
      it(`brings the true false-positive rate near ${percent(TARGET)} for ${heldOut} ${distribution} scores`, () => {
        const result = trial(distribution, heldOut);
        console.info(
          `${distribution}, ${heldOut} held out: true FPR ${percent(result.calibrated)} (promised ${percent(result.promised)}),` +
            ` old rule ${percent(result.empiricalQuantile)}, target ${percent(TARGET)}`,
        );
        expect([...result.methods]).toEqual(['tail-fit']);
        const [low, high] = bounds[distribution]!;
        expect(result.calibrated).toBeGreaterThanOrEqual(low);
        expect(result.calibrated).toBeLessThanOrEqual(high);
        // The old rule's threshold is the held-out maximum, exceeded 1/(N+1) of the time: 1.2-1.6 %.
        expect(result.empiricalQuantile).toBeGreaterThan(0.01);
        // False alarms per hour go with the absolute rate: at most half the old rule's error.
        expect(Math.abs(result.calibrated - TARGET)).toBeLessThan(Math.abs(result.empiricalQuantile - TARGET) / 2);
        // What the calibration promises is the target, unless raised to a held-out score.
        expect(result.promised).toBeLessThanOrEqual(TARGET * (1 + 1e-9));
        expect(result.promised).toBeGreaterThan(TARGET * 0.8);
      });
    }
  }
});

describe('calibrate on large held-out sets', () => {
  it('uses the empirical quantile once 5 or more scores lie above the target quantile', () => {
    const sample = distributions.exponential!(seededRandom(3));
    expect(calibrate(draws(sample, 1000), TARGET).method).toBe('empirical');
    expect(calibrate(draws(sample, 999), TARGET).method).toBe('tail-fit');
    expect(calibrate(draws(sample, 500), 0.01).method).toBe('empirical');
  });

  it('takes the order statistic whose expected rate meets the target, and is right about it', () => {
    const scores = draws(distributions.exponential!(seededRandom(4)), 2400);
    const calibration = calibrate(scores, TARGET);
    // floor(0.005 * 2401) = 12: the 12th largest, exceeded by a fresh score with probability 12/2401.
    expect(calibration.threshold).toBe(Float64Array.from(scores).sort()[2400 - 12]);
    expect(calibration.expectedFprAtThreshold).toBeCloseTo(12 / 2401, 12);
    const result = trial('exponential', 2400, TARGET, 100);
    expect([...result.methods]).toEqual(['empirical']);
    expect(result.calibrated).toBeGreaterThan(0.0042);
    expect(result.calibrated).toBeLessThan(0.0058);
  });
});

describe('calibrate on degenerate held-out sets', () => {
  const cases: Record<string, number[]> = {
    'one score': [2.5],
    'two scores': [1, 3],
    'nine scores (too few to fit a tail)': [1, 2, 3, 4, 5, 6, 7, 8, 9],
    'all equal': Array.from({ length: 60 }, () => 4),
    'the top scores tied': [...Array.from({ length: 50 }, (_, i) => i / 50), ...Array.from({ length: 10 }, () => 7)],
  };
  for (const [name, scores] of Object.entries(cases)) {
    it(`falls back to the held-out maximum and says what that means: ${name}`, () => {
      const calibration = calibrate(scores, TARGET);
      expect(Number.isFinite(calibration.threshold)).toBe(true);
      expect(calibration.threshold).toBe(Math.max(...scores));
      expect(calibration.method).toBe('empirical');
      expect(calibration.expectedFprAtThreshold).toBeCloseTo(1 / (scores.length + 1), 12);
      expect(describeCalibration(calibration)).toMatch(/which cannot show rates below [\d.]+%: expect about [\d.]+%$/);
    });
  }

  it('never flags more held-out scores than the target allows, whatever the size', () => {
    const sample = distributions.exponential!(seededRandom(5));
    for (const targetFpr of [0.001, 0.005, 0.02, 0.1]) {
      for (let heldOut = 1; heldOut <= 1200; heldOut += heldOut < 40 ? 1 : 37) {
        const scores = draws(sample, heldOut);
        const calibration = calibrate(scores, targetFpr);
        const above = scores.filter((score) => score > calibration.threshold).length;
        expect(above, `${heldOut} scores at ${targetFpr}`).toBeLessThanOrEqual(Math.floor(heldOut * targetFpr + 1e-9));
        // So below 1 / N it is at least the held-out maximum.
        if (heldOut * targetFpr < 1) expect(calibration.threshold).toBeGreaterThanOrEqual(calibration.quantiles.max);
        expect(calibration.expectedFprAtThreshold).toBeGreaterThan(0);
        expect(calibration.expectedFprAtThreshold).toBeLessThanOrEqual(Math.max(targetFpr, 1 / (heldOut + 1)) * (1 + 1e-9));
      }
    }
  });
});

describe('calibration fields', () => {
  it('records the method, the finest rate the held-out set shows and the rate to expect; the schema keeps them', () => {
    const calibration = calibrate(draws(distributions.normal!(seededRandom(6)), 76), TARGET, 2);
    expect(calibration).toMatchObject({ heldOut: 76, targetFpr: TARGET, shiftTolerancePx: 2, method: 'tail-fit' });
    expect(calibration.minResolvableFpr).toBeCloseTo(1 / 77, 12);
    expect(calibration.expectedFprAtThreshold).toBeGreaterThan(0);
    expect(calibration.threshold).toBeGreaterThanOrEqual(calibration.quantiles.max);
    expect(CalibrationSchema.parse(JSON.parse(JSON.stringify(calibration)))).toEqual(calibration);
  });

  it('still reads calibrations written before the fields existed', () => {
    const old = {
      heldOut: 50,
      targetFpr: 0.005,
      threshold: 17.39,
      quantiles: { p50: 2.6, p90: 14.6, p95: 15.6, p99: 16.9, max: 17.39 },
      mean: 5,
      std: 6.9,
    };
    const parsed = CalibrationSchema.parse(old);
    expect(parsed.method).toBeUndefined();
    expect(describeCalibration(parsed)).toBe(
      'threshold 17.3900 for 0.50% false positives, measured on 50 held-out normal images, which cannot show rates below 2.0%: expect about 2.0%',
    );
  });

  it('rejects values the fields cannot take', () => {
    const valid = calibrate([1, 2, 3, 4, 5], 0.5);
    expect(() => CalibrationSchema.parse({ ...valid, method: 'guess' })).toThrow();
    expect(() => CalibrationSchema.parse({ ...valid, expectedFprAtThreshold: 1.5 })).toThrow();
    expect(() => CalibrationSchema.parse({ ...valid, minResolvableFpr: 0 })).toThrow();
  });
});

describe('describeCalibration', () => {
  const base: Calibration = {
    heldOut: 76,
    targetFpr: 0.005,
    threshold: 3.21,
    quantiles: { p50: 0, p90: 1.3, p95: 1.7, p99: 2.4, max: 2.6 },
    mean: 0,
    std: 1,
    shiftTolerancePx: 0,
    method: 'tail-fit',
    minResolvableFpr: 1 / 77,
    expectedFprAtThreshold: 0.005,
  };

  it('says where the threshold comes from and what the held-out set can show', () => {
    expect(describeCalibration(base)).toBe(
      'threshold 3.2100 for 0.50% false positives, extrapolated from the upper tail of 76 held-out normal images (they can show rates down to 1.3% directly)',
    );
    expect(describeCalibration({ ...base, heldOut: 2400, method: 'empirical', minResolvableFpr: 1 / 2401, expectedFprAtThreshold: 12 / 2401 })).toBe(
      'threshold 3.2100 for 0.50% false positives, measured on 2400 held-out normal images',
    );
  });

  it('gives the rate to expect where it differs from the target', () => {
    expect(describeCalibration({ ...base, threshold: 2.6, expectedFprAtThreshold: 0.0031 })).toMatch(/; raised to the largest of them, so about 0.31% expected$/);
    expect(describeCalibration({ ...base, heldOut: 5, method: 'empirical', minResolvableFpr: 1 / 6, expectedFprAtThreshold: 1 / 6 })).toBe(
      'threshold 3.2100 for 0.50% false positives, measured on 5 held-out normal images, which cannot show rates below 17%: expect about 17%',
    );
  });

  it('describes real calibrations in one line', () => {
    for (const heldOut of [1, 9, 60, 380, 5000]) {
      const text = describeCalibration(calibrate(draws(distributions.normal!(seededRandom(heldOut)), heldOut), TARGET));
      expect(text).toMatch(/^threshold -?[\d.]+ for 0\.50% false positives, /);
      expect(text).not.toContain('\n');
    }
  });
});
