/** Pure pieces of the agent: ignore-mask rasterisation and per-camera thresholds. */
import { describe, expect, it } from 'vitest';
import { CalibrationSchema } from '../../src/model/manifest.js';
import { rasteriseIgnoreMask } from '../../src/scoring/mask.js';
import { resolveThreshold } from '../../src/scoring/threshold.js';

describe('rasteriseIgnoreMask', () => {
  it('marks the model pixels whose centres lie inside a polygon given on the full frame', () => {
    // Left half of the frame, on a 4x2 grid.
    const mask = rasteriseIgnoreMask([[[0, 0], [0.5, 0], [0.5, 1], [0, 1]]], { width: 4, height: 2 });
    expect([...mask!]).toEqual([1, 1, 0, 0, 1, 1, 0, 0]);
  });

  it('follows the crop: the model sees only the right half, where the polygon covers its left half', () => {
    const crop = { x: 0.5, y: 0, width: 0.5, height: 1 };
    const mask = rasteriseIgnoreMask([[[0.5, 0], [0.75, 0], [0.75, 1], [0.5, 1]]], { width: 4, height: 1 }, crop);
    expect([...mask!]).toEqual([1, 1, 0, 0]);
  });

  it('handles concave polygons (even-odd) and returns nothing without polygons', () => {
    // A U shape open at the top: its notch stays scored.
    const u = [[0, 0], [0.25, 0], [0.25, 0.75], [0.75, 0.75], [0.75, 0], [1, 0], [1, 1], [0, 1]] as const;
    const mask = rasteriseIgnoreMask([u.map(([x, y]) => [x, y] as const)], { width: 4, height: 4 });
    expect([...mask!.subarray(0, 4)]).toEqual([1, 0, 0, 1]);
    expect([...mask!.subarray(12, 16)]).toEqual([1, 1, 1, 1]);
    expect(rasteriseIgnoreMask([], { width: 4, height: 4 })).toBeUndefined();
  });
});

describe('resolveThreshold', () => {
  const calibration = CalibrationSchema.parse({
    heldOut: 100,
    targetFpr: 0.005,
    threshold: 3,
    quantiles: { p50: 0, p90: 1, p95: 1.5, p99: 2.5, max: 3 },
    mean: 0.1,
    std: 1,
  });

  it('takes the calibrated threshold, an absolute score, or interpolates a false-positive rate', () => {
    expect(resolveThreshold({ mode: 'manifest' }, calibration, 'cam').threshold).toBe(3);
    expect(resolveThreshold({ mode: 'absolute', value: 7.5 }, calibration, 'cam').threshold).toBe(7.5);
    expect(resolveThreshold({ mode: 'fpr', value: 0.1 }, calibration, 'cam').threshold).toBeCloseTo(1, 10);
    expect(resolveThreshold({ mode: 'fpr', value: 0.03 }, calibration, 'cam').threshold).toBeCloseTo(2, 10);
    expect(resolveThreshold({ mode: 'fpr', value: 0.6 }, calibration, 'cam').threshold).toBe(0);
  });

  it('says when a rate is finer than the held-out images can tell', () => {
    expect(resolveThreshold({ mode: 'fpr', value: 0.001 }, calibration, 'cam').note).toMatch(/below 1\/100 held-out images/);
  });

  it('refuses calibration-based modes without a calibration, saying what to do', () => {
    expect(() => resolveThreshold({ mode: 'fpr', value: 0.01 }, undefined, 'camera line1')).toThrow(/camera line1: the model bundle has no calibration/);
  });
});
