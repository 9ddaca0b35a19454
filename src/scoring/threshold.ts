import { UsageError } from '../errors.js';
import type { Calibration } from './settings.js';
import { describeCalibration } from './metrics.js';

export interface ThresholdSetting {
  mode: 'manifest' | 'absolute' | 'fpr';
  value?: number;
}

/**
 * The score threshold a camera runs with: the bundle's calibrated one, an absolute
 * score, or the score that a target false-positive rate gives on the held-out normal
 * images. For `fpr`, the calibration keeps quantiles at 50/90/95/99/100 %; between
 * them the threshold is interpolated linearly, and a rate below 1/heldOut cannot be
 * told apart from the maximum (said in the returned note).
 */
export function resolveThreshold(setting: ThresholdSetting, calibration: Calibration | undefined, where: string): { threshold: number; note: string } {
  if (setting.mode === 'absolute') return { threshold: setting.value!, note: 'absolute (config)' };
  if (!calibration) {
    throw new UsageError(`${where}: the model bundle has no calibration for this variant, so threshold mode "${setting.mode}" cannot work`, {
      hint: 'set threshold: { mode: absolute, value: <score> }, or retrain the bundle',
    });
  }
  if (setting.mode === 'manifest') {
    return { threshold: calibration.threshold, note: `calibrated: ${describeCalibration(calibration)}` };
  }
  const fpr = setting.value!;
  const { p50, p90, p95, p99, max } = calibration.quantiles;
  const points: [number, number][] = [
    [0.5, p50],
    [0.9, p90],
    [0.95, p95],
    [0.99, p99],
    [1, max],
  ];
  const q = 1 - fpr;
  if (q <= 0.5) return { threshold: p50, note: `fpr ${fpr}: clamped to the held-out median` };
  for (let i = 1; i < points.length; i++) {
    const [q0, v0] = points[i - 1]!;
    const [q1, v1] = points[i]!;
    if (q <= q1) {
      const threshold = v0 + ((q - q0) / (q1 - q0)) * (v1 - v0);
      const coarse = fpr < 1 / calibration.heldOut ? ` (below 1/${calibration.heldOut} held-out images: close to their maximum)` : '';
      return { threshold, note: `interpolated for ${(fpr * 100).toFixed(2)}% false positives${coarse}` };
    }
  }
  return { threshold: max, note: 'held-out maximum' };
}
