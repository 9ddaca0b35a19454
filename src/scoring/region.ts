/**
 * Where in the frame an anomaly is: the bounding box of the strongest region of an
 * anomaly map, and its mapping back to the camera's own pixels.
 * Pure functions: no I/O, inputs are never modified.
 */

/** An axis-aligned box in pixels; `width` and `height` count pixels (a single pixel is 1 x 1). */
export interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface Size {
  width: number;
  height: number;
}

/**
 * The bounding box (map pixels) of the largest 8-connected region of map values
 * `>= level`, or null when no value reaches it (NaN never does).
 *
 * The largest region by pixel count wins, because a single hot pixel next to a large
 * warm blob is more often noise than the defect; ties go to the region found first in
 * row-major order so the result is deterministic.
 *
 * `level` is usually the camera's score threshold when the frame score is the maximum
 * of this same map (then every anomalous frame has a box); for mean or top-k pooling,
 * pick a fraction of the map's maximum instead.
 */
export function anomalyBox(map: Float32Array, width: number, height: number, level: number): Box | null {
  checkDimensions(map, width, height);
  const above = new Uint8Array(width * height);
  for (let i = 0; i < above.length; i++) if (map[i]! >= level) above[i] = 1;
  const { labels, sizes } = labelRegions(above, width, height);
  if (sizes.length === 0) return null;
  let largest = 0;
  for (let r = 1; r < sizes.length; r++) if (sizes[r]! > sizes[largest]!) largest = r;
  const label = largest + 1;
  let minX = width;
  let minY = height;
  let maxX = -1;
  let maxY = -1;
  for (let index = 0; index < labels.length; index++) {
    if (labels[index] !== label) continue;
    const x = index % width;
    const y = (index - x) / width;
    if (x < minX) minX = x;
    if (x > maxX) maxX = x;
    if (y < minY) minY = y;
    if (y > maxY) maxY = y;
  }
  return { x: minX, y: minY, width: maxX - minX + 1, height: maxY - minY + 1 };
}

export interface Regions {
  /** Per pixel: 0 outside every region, else the region's number 1..sizes.length. */
  labels: Int32Array;
  /** Pixel count of region r at sizes[r - 1]. */
  sizes: number[];
}

/**
 * The 8-connected regions of the pixels where `inside` is nonzero, numbered 1, 2, ... in
 * row-major order of their first pixel.
 */
export function labelRegions(inside: ArrayLike<number>, width: number, height: number): Regions {
  checkDimensions(inside, width, height);
  const size = width * height;
  const labels = new Int32Array(size);
  const sizes: number[] = [];
  const stack = new Int32Array(size);
  for (let seed = 0; seed < size; seed++) {
    if (!inside[seed] || labels[seed] !== 0) continue;
    const label = sizes.length + 1;
    labels[seed] = label;
    stack[0] = seed;
    let top = 1;
    let count = 0;
    while (top > 0) {
      const index = stack[--top]!;
      const x = index % width;
      const y = (index - x) / width;
      count++;
      for (let dy = -1; dy <= 1; dy++) {
        const ny = y + dy;
        if (ny < 0 || ny >= height) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          if (nx < 0 || nx >= width) continue;
          const neighbour = ny * width + nx;
          if (inside[neighbour] && labels[neighbour] === 0) {
            labels[neighbour] = label;
            stack[top++] = neighbour;
          }
        }
      }
    }
    sizes.push(count);
  }
  return { labels, sizes };
}

/**
 * Maps a box from anomaly-map pixels to source-image pixels. The model saw `crop`
 * (source pixels; the whole source when absent) stretched to the map's size, so each
 * axis scales independently. Edges are rounded outwards (floor the start, ceil the
 * end) so the box covers every source pixel that fed the region, then clamped to
 * the source image.
 */
export function toSourceBox(box: Box, map: Size, source: Size, crop?: Box): Box {
  checkSize('map', map);
  checkSize('source', source);
  const region = crop ?? { x: 0, y: 0, width: source.width, height: source.height };
  checkSize('crop', region);
  const scaleX = region.width / map.width;
  const scaleY = region.height / map.height;
  const left = clamp(Math.floor(region.x + box.x * scaleX), 0, source.width);
  const top = clamp(Math.floor(region.y + box.y * scaleY), 0, source.height);
  const right = clamp(Math.ceil(region.x + (box.x + box.width) * scaleX), left, source.width);
  const bottom = clamp(Math.ceil(region.y + (box.y + box.height) * scaleY), top, source.height);
  return { x: left, y: top, width: right - left, height: bottom - top };
}

function clamp(value: number, low: number, high: number): number {
  return Math.min(high, Math.max(low, value));
}

function checkDimensions(map: ArrayLike<number>, width: number, height: number): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new RangeError(`map size must be positive integers, got ${width}x${height}`);
  }
  if (map.length !== width * height) {
    throw new RangeError(`map has ${map.length} values, expected ${width}x${height} = ${width * height}`);
  }
}

function checkSize(what: string, size: Size): void {
  if (!(size.width > 0) || !(size.height > 0)) {
    throw new RangeError(`${what} size must be positive, got ${size.width}x${size.height}`);
  }
}
