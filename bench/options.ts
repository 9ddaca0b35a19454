import { existsSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from '../src/errors.js';

/** The benchmarks' command-line checks, one copy: each says which flag is wrong and what it needs. */

export function positiveNumber(flag: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new UsageError(`--${flag} must be a positive number, got '${raw}'`);
  return value;
}

export function nonNegativeNumber(flag: string, raw: string): number {
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) throw new UsageError(`--${flag} must be a number >= 0, got '${raw}'`);
  return value;
}

/** A comma-separated list of camera counts (whole numbers >= 1), e.g. `--steps 8,16,32`. */
export function cameraCounts(flag: string, raw: string, example: string): number[] {
  const counts = raw.split(',').map((part) => Number(part.trim()));
  if (counts.length === 0 || counts.some((n) => !Number.isInteger(n) || n < 1)) {
    throw new UsageError(`--${flag} must be a comma-separated list of camera counts, got '${raw}'`, { hint: `e.g. --${flag} ${example}` });
  }
  return counts;
}

/** --model (a bundle folder), --variant and --video, resolved and checked to exist. */
export function modelAndVideo(values: { model?: string; variant?: string; video?: string }): { model: string; variant: 'int8' | 'fp32'; video: string } {
  const variant = values.variant;
  if (variant !== 'int8' && variant !== 'fp32') throw new UsageError(`--variant must be int8 or fp32, got '${variant}'`);
  const model = path.resolve(values.model!);
  if (!existsSync(path.join(model, 'manifest.json'))) {
    throw new UsageError(`no model bundle at ${model} (manifest.json missing)`, { hint: 'pass --model <bundle folder>, e.g. models/demo' });
  }
  const video = path.resolve(values.video!);
  if (!existsSync(video)) throw new UsageError(`video ${video} not found`, { hint: 'pass --video <file>, e.g. assets/demo/bottle-detection.mp4' });
  return { model, variant, video };
}
