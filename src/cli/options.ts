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

/** "0.25,0,0.5,1": a crop as fractions x,y,width,height of the frame, as a camera's `crop`. */
export function parseCrop(value: string): { x: number; y: number; width: number; height: number } {
  const parts = value.split(',').map((part) => parseNumber(part.trim()));
  const [x, y, width, height] = parts;
  if (parts.length !== 4 || !parts.every((part) => part >= 0 && part <= 1) || !(width! > 0 && height! > 0) || x! + width! > 1 + 1e-9 || y! + height! > 1 + 1e-9) {
    throw new InvalidArgumentError(`"${value}" is not a crop: use x,y,width,height as fractions of the frame, e.g. 0.25,0,0.5,1.`);
  }
  return { x: x!, y: y!, width: width!, height: height! };
}
