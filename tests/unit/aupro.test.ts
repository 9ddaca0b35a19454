import { describe, expect, it } from 'vitest';
import { aupro } from '../../src/scoring/metrics.js';
import { seededRandom } from '../../src/toolkit/train/random.js';

/** A width x rows image from rows of numbers (map) or 0/1 (mask). */
const map = (...rows: number[][]) => Float32Array.from(rows.flat());
const mask = (...rows: number[][]) => Uint8Array.from(rows.flat());
const tenths = Array.from({ length: 10 }, (_, k) => k / 10);
const row = (value: number) => Array<number>(10).fill(value);

describe('aupro', () => {
  it('is 1 when every defect pixel scores above every normal pixel', () => {
    const random = seededRandom(1);
    const maps = [0, 1].map(() => Float32Array.from({ length: 64 }, () => random() * 0.5));
    const masks = [new Uint8Array(64), new Uint8Array(64)];
    for (const p of [9, 10, 17, 18, 45]) {
      masks[1]![p] = 1;
      maps[1]![p] = 1;
    }
    expect(aupro(maps, masks, 8)).toBe(1);
  });

  it('is 0.15 for a map that does not depend on the masks (area 0.045 under the diagonal up to FPR 0.3)', () => {
    // A defect row and a normal row holding the same scores: each threshold flags as large a share of both.
    expect(aupro([map(tenths, tenths)], [mask(row(1), row(0))], 10)).toBeCloseTo(0.15, 12);
    // Random maps and masks: close to the diagonal.
    const random = seededRandom(7);
    const maps = Array.from({ length: 20 }, () => Float32Array.from({ length: 32 * 32 }, () => random()));
    const masks = maps.map((_, i) => {
      const m = new Uint8Array(32 * 32);
      if (i % 2 === 1) for (let y = 4 + i; y < 10 + i; y++) for (let x = 3; x < 3 + i; x++) m[y * 32 + x] = 1;
      return m;
    });
    expect(aupro(maps, masks, 32)).toBeCloseTo(0.15, 1);
  });

  it('averages over regions: one region found and one missed gives 0.5, one found and one at chance 0.575', () => {
    // Rows 0 and 2 are two regions (not touching), rows 1 and 3 normal.
    const masks = [mask(row(1), row(0), row(1), row(0))];
    expect(aupro([map(row(2), tenths, row(-1), tenths)], masks, 10)).toBeCloseTo(0.5, 12);
    // PRO = (1 + FPR) / 2 on the diagonal: (0.3 * 0.5 + 0.045 / 2) / 0.3 = 0.575.
    expect(aupro([map(row(2), tenths, tenths, tenths)], masks, 10)).toBeCloseTo(0.575, 12);
  });

  it('counts each 8-connected region once, whatever its size', () => {
    // Diagonal neighbours (0,0) and (1,1) are one region, found; (3,3) is another, missed: PRO 1/2 (4-connectivity would give 2/3).
    const masks = [mask([1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1])];
    expect(aupro([map([2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, -1])], masks, 4)).toBeCloseTo(0.5, 12);
    // A 1-pixel region found and an 8-pixel region missed: still 1/2, where the share of defect pixels found is 1/9.
    const big = [mask([1, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1])];
    expect(aupro([map([2, 0, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1], [0, 0, -1, -1])], big, 4)).toBeCloseTo(0.5, 12);
  });

  it('takes the FPR over the normal pixels of every entry with a mask, normal images included', () => {
    const anomalous = map([1, 0, 0, 0], [0, 0, 0, 0]);
    const normal = map(Array<number>(4).fill(2), Array<number>(4).fill(2));
    const defect = mask([1, 0, 0, 0], [0, 0, 0, 0]);
    // The normal image's 8 pixels outscore the defect: 8 of 15 normal pixels (53 %) are flagged before it.
    expect(aupro([anomalous, normal], [defect, new Uint8Array(8)], 4)).toBe(0);
    // Without a mask an entry is left out.
    expect(aupro([anomalous, normal], [defect, undefined], 4)).toBe(1);
  });

  it('integrates only up to the given false-positive rate', () => {
    // One region of ten: half its pixels above every normal one, the rest at chance with the normal row.
    const maps = [map([2, 2, 2, 2, 2, 0.9, 0.7, 0.5, 0.3, 0.1], tenths)];
    const masks = [mask(row(1), row(0))];
    expect(aupro(maps, masks, 10, 1)).toBeGreaterThan(aupro(maps, masks, 10, 0.3));
    expect(aupro(maps, masks, 10, 0.3)).toBeGreaterThan(0.5);
  });

  it('refuses masks without defect or normal pixels, NaN scores and mismatched inputs', () => {
    expect(() => aupro([new Float32Array(4)], [new Uint8Array(4)], 2)).toThrow(/no defect pixels/);
    expect(() => aupro([new Float32Array(4)], [Uint8Array.from([1, 1, 1, 1])], 2)).toThrow(/no defect-free pixels/);
    expect(() => aupro([Float32Array.from([0, Number.NaN, 0, 0])], [Uint8Array.from([1, 0, 0, 0])], 2)).toThrow(/NaN/);
    expect(() => aupro([new Float32Array(4)], [], 2)).toThrow(/1 maps but 0 masks/);
    expect(() => aupro([new Float32Array(4)], [new Uint8Array(4)], 2, 0)).toThrow(/limit/);
  });
});
