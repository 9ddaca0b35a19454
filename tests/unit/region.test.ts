import { describe, expect, it } from 'vitest';
import { anomalyBox, toSourceBox } from '../../src/scoring/region.js';

/** A map from rows of digits, e.g. ['0090', '0990'] (one digit per pixel). */
function mapFrom(rows: string[]): { map: Float32Array; width: number; height: number } {
  const width = rows[0]!.length;
  const height = rows.length;
  const map = new Float32Array(width * height);
  rows.forEach((row, y) => [...row].forEach((digit, x) => (map[y * width + x] = Number(digit))));
  return { map, width, height };
}

describe('anomalyBox', () => {
  it('returns null when nothing reaches the level', () => {
    const { map, width, height } = mapFrom(['123', '456']);
    expect(anomalyBox(map, width, height, 7)).toBeNull();
  });

  it('boxes the largest region, not the hottest pixel', () => {
    const { map, width, height } = mapFrom([
      '9000000',
      '0000000',
      '0005500',
      '0055550',
      '0000500',
    ]);
    expect(anomalyBox(map, width, height, 5)).toEqual({ x: 2, y: 2, width: 4, height: 3 });
  });

  it('treats the level as inclusive', () => {
    const { map, width, height } = mapFrom(['000', '050', '000']);
    expect(anomalyBox(map, width, height, 5)).toEqual({ x: 1, y: 1, width: 1, height: 1 });
  });

  it('joins diagonal neighbours (8-connectivity)', () => {
    const { map, width, height } = mapFrom([
      '5000',
      '0500',
      '0050',
      '0005',
      '5500', // 2 pixels, separate from the 4-pixel diagonal
    ]);
    expect(anomalyBox(map, width, height, 5)).toEqual({ x: 0, y: 0, width: 4, height: 4 });
  });

  it('keeps regions apart when only a gap of one pixel separates them', () => {
    const { map, width, height } = mapFrom([
      '55055',
      '55055',
      '00055',
    ]);
    expect(anomalyBox(map, width, height, 5)).toEqual({ x: 3, y: 0, width: 2, height: 3 });
  });

  it('breaks ties in favour of the region found first in row-major order', () => {
    const { map, width, height } = mapFrom(['00055', '00000', '55000']);
    expect(anomalyBox(map, width, height, 5)).toEqual({ x: 3, y: 0, width: 2, height: 1 });
  });

  it('handles regions touching every border and a map that is all anomaly', () => {
    const full = mapFrom(['99', '99']);
    expect(anomalyBox(full.map, full.width, full.height, 1)).toEqual({ x: 0, y: 0, width: 2, height: 2 });
    const ring = mapFrom(['999', '909', '999']);
    expect(anomalyBox(ring.map, ring.width, ring.height, 9)).toEqual({ x: 0, y: 0, width: 3, height: 3 });
  });

  it('ignores NaN values and does not modify the map', () => {
    const map = new Float32Array([NaN, 1, NaN, 1]);
    const copy = map.slice();
    expect(anomalyBox(map, 2, 2, 0.5)).toEqual({ x: 1, y: 0, width: 1, height: 2 });
    expect(Array.from(map)).toEqual(Array.from(copy));
  });

  it('scales to a realistic map with a blob', () => {
    const width = 64;
    const height = 64;
    const map = new Float32Array(width * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        map[y * width + x] = Math.exp(-((x - 40) ** 2 + (y - 20) ** 2) / (2 * 3 ** 2));
      }
    }
    // exp(-d^2/18) >= 0.5  <=>  d^2 <= 18 ln 2 = 12.48: |dx| <= 3 on the centre row.
    expect(anomalyBox(map, width, height, 0.5)).toEqual({ x: 37, y: 17, width: 7, height: 7 });
  });

  it('rejects a map whose length does not match its size', () => {
    expect(() => anomalyBox(new Float32Array(5), 2, 2, 0)).toThrow(/5 values, expected 2x2/);
    expect(() => anomalyBox(new Float32Array(0), 0, 0, 0)).toThrow(/positive/);
  });
});

describe('toSourceBox', () => {
  it('scales each axis from the map to the whole source', () => {
    // 64x64 map of a 640x360 source: 10 px per map column, 5.625 px per map row.
    const box = toSourceBox({ x: 10, y: 8, width: 4, height: 8 }, { width: 64, height: 64 }, { width: 640, height: 360 });
    expect(box).toEqual({ x: 100, y: 45, width: 40, height: 45 });
  });

  it('rounds outwards so the box covers every contributing source pixel', () => {
    // rows 3..4 of a 64-row map cover source rows 16.875 .. 28.125.
    const box = toSourceBox({ x: 0, y: 3, width: 1, height: 2 }, { width: 64, height: 64 }, { width: 640, height: 360 });
    expect(box).toEqual({ x: 0, y: 16, width: 10, height: 13 });
  });

  it('offsets by the crop the model saw', () => {
    const crop = { x: 200, y: 100, width: 128, height: 64 };
    const box = toSourceBox({ x: 32, y: 16, width: 16, height: 16 }, { width: 64, height: 64 }, { width: 640, height: 360 }, crop);
    expect(box).toEqual({ x: 264, y: 116, width: 32, height: 16 });
  });

  it('maps the full map to the full crop and clamps to the source', () => {
    const full = toSourceBox({ x: 0, y: 0, width: 64, height: 64 }, { width: 64, height: 64 }, { width: 640, height: 360 });
    expect(full).toEqual({ x: 0, y: 0, width: 640, height: 360 });
    // A crop that runs past the source edge: the box stops at the edge.
    const crop = { x: 600, y: 300, width: 100, height: 100 };
    const clamped = toSourceBox({ x: 0, y: 0, width: 64, height: 64 }, { width: 64, height: 64 }, { width: 640, height: 360 }, crop);
    expect(clamped).toEqual({ x: 600, y: 300, width: 40, height: 60 });
  });

  it('round-trips anomalyBox on a stretched map', () => {
    const width = 32;
    const height = 16;
    const map = new Float32Array(width * height);
    for (let y = 4; y < 8; y++) for (let x = 20; x < 26; x++) map[y * width + x] = 1;
    const box = anomalyBox(map, width, height, 0.5)!;
    expect(toSourceBox(box, { width, height }, { width: 1280, height: 720 })).toEqual({ x: 800, y: 180, width: 240, height: 180 });
  });

  it('rejects empty sizes', () => {
    expect(() => toSourceBox({ x: 0, y: 0, width: 1, height: 1 }, { width: 0, height: 4 }, { width: 4, height: 4 })).toThrow(/map size/);
    expect(() => toSourceBox({ x: 0, y: 0, width: 1, height: 1 }, { width: 4, height: 4 }, { width: 4, height: 4 }, { x: 0, y: 0, width: 0, height: 2 })).toThrow(/crop size/);
  });
});
