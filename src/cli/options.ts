import { InvalidArgumentError } from 'commander';

/** Commander argument parsers that reject bad values with a message naming the expectation. */
export function parseNumber(value: string): number {
  const number = Number(value);
  if (value.trim() === '' || !Number.isFinite(number)) throw new InvalidArgumentError(`"${value}" is not a number.`);
  return number;
}

export function parseInteger(value: string): number {
  const number = parseNumber(value);
  if (!Number.isInteger(number)) throw new InvalidArgumentError(`"${value}" is not a whole number.`);
  return number;
}

export function parseIntegerList(value: string): number[] {
  return value.split(',').map((part) => {
    const number = parseInteger(part.trim());
    if (number < 1) throw new InvalidArgumentError(`"${part}" must be >= 1.`);
    return number;
  });
}

/** "64" or "96x64" (width x height). */
export function parseSize(value: string): { width: number; height: number } {
  const match = /^(\d+)(?:x(\d+))?$/i.exec(value.trim());
  if (!match) throw new InvalidArgumentError(`"${value}" is not a size: use N or WxH, e.g. 64 or 96x64.`);
  const width = Number(match[1]);
  return { width, height: match[2] ? Number(match[2]) : width };
}

export function parseChannels(value: string): 1 | 3 {
  if (value !== '1' && value !== '3') throw new InvalidArgumentError(`"${value}" must be 1 (grey) or 3 (RGB).`);
  return Number(value) as 1 | 3;
}

/** "0.2,1": a range [min, max] of numbers. */
export function parseRange(value: string): [number, number] {
  const parts = value.split(',').map((part) => parseNumber(part.trim()));
  if (parts.length !== 2) throw new InvalidArgumentError(`"${value}" is not a range: use min,max, e.g. 0.2,1.`);
  return [parts[0]!, parts[1]!];
}
