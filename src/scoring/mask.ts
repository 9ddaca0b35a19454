import type { Box, Size } from './region.js';

/** [x, y] as fractions (0..1) of the full source frame. */
export type Polygon = readonly (readonly [number, number])[];

/**
 * Rasterise ignore polygons onto the model's input grid (1 = ignore). Polygons are
 * given on the full source frame; the model sees only `crop` (fractions of the
 * frame), stretched to `grid`. A pixel is ignored when its centre lies inside any
 * polygon (even-odd rule). Returns undefined when there is nothing to ignore.
 */
export function rasteriseIgnoreMask(polygons: readonly Polygon[], grid: Size, crop?: Box): Uint8Array | undefined {
  if (polygons.length === 0) return undefined;
  const view = crop ?? { x: 0, y: 0, width: 1, height: 1 };
  const mask = new Uint8Array(grid.width * grid.height);
  for (let row = 0; row < grid.height; row++) {
    const fy = view.y + ((row + 0.5) / grid.height) * view.height;
    for (let col = 0; col < grid.width; col++) {
      const fx = view.x + ((col + 0.5) / grid.width) * view.width;
      if (polygons.some((polygon) => containsPoint(polygon, fx, fy))) mask[row * grid.width + col] = 1;
    }
  }
  return mask;
}

function containsPoint(polygon: Polygon, x: number, y: number): boolean {
  let inside = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i]!;
    const [xj, yj] = polygon[j]!;
    if (yi > y !== yj > y && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}
