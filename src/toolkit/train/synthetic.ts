/**
 * Synthetic anomalies for training (DRAEM / NSA / CutPaste style).
 *
 * A VAE trained on normal images alone learns to reconstruct defects too when
 * they are small; corrupting some training images and asking for the clean
 * image back teaches it to replace what does not belong, and gives a
 * segmentation head a pixel-exact mask to learn from.
 *
 * Every filling is blended inside a binary mask m with a factor b:
 *   out = x * (1 - b m) + fill * b m, clipped to [0, 1]
 * and pixels outside the mask are copied, so they stay bit-identical.
 *
 * Fillings:
 * - `noise`:   Perlin noise (one or two octaves) at a random brightness and contrast,
 *              tinted per channel on colour images; Perlin-blob mask.
 * - `patch`:   the same region of another normal image (NSA), cyclically shifted,
 *              maybe flipped, brightness jittered; Perlin-blob mask.
 * - `scar`:    a thin rotated rectangle (CutPaste-scar) of a random colour or of
 *              pixels copied from elsewhere in the image; the scar is the mask.
 * - `texture`: a shifted, maybe flipped user texture (DRAEM's DTD images); Perlin-blob mask.
 */
import { UsageError } from '../../errors.js';
import type { ImageTensor } from '../../image/tensor.js';
import { randomInt, seededRandom, shuffled, type Random } from './random.js';

export const ANOMALY_KINDS = ['noise', 'patch', 'scar', 'texture'] as const;
export type AnomalyKind = (typeof ANOMALY_KINDS)[number];

export interface SyntheticAnomalyOptions {
  /** Share of images that get an anomaly, in [0, 1]. Default 0.5. */
  share?: number;
  /** Range [min, max] of the blend factor of the filling over the image inside the mask, 0 < min <= max <= 1. Default [0.2, 1]. */
  strength?: readonly [number, number];
  /** Fillings to draw from with equal probability; default ['noise','patch','scar'] plus 'texture' when textures are given. */
  kinds?: readonly AnomalyKind[];
  /** User-supplied texture images, already at the model's size and channel count ('texture' kind). */
  textures?: readonly ImageTensor[];
}

export interface CorruptedImage {
  /** The corrupted image (same size and channels), values clipped to [0, 1]; the input itself when left clean. */
  image: ImageTensor;
  /** width * height, 1 where the anomaly was placed, 0 elsewhere. */
  mask: Float32Array;
  /** null: the image was left clean (mask all zero). */
  kind: AnomalyKind | null;
}

const DEFAULT_SHARE = 0.5;
const DEFAULT_STRENGTH: readonly [number, number] = [0.2, 1];
const DEFAULT_MIN_MASK_AREA = 0.005;
const DEFAULT_MAX_MASK_AREA = 0.4;
/** DRAEM's threshold on its sqrt(2)-scaled Perlin noise: blobs of a few to ~20 % of the image. */
const MASK_THRESHOLD = 0.5;
/** Perlin draws before perlinMask gives up on the area bounds and grows a blob of the right size. */
const MASK_ATTEMPTS = 30;
/** Coarsest noise cell of a mask, in pixels: DRAEM's finest lattice (2^5 cells on 256 px) is 8 px. */
const MIN_MASK_CELL_PIXELS = 8;
/** Finest noise cell of the `noise` filling, in pixels: finer reads as pixel noise, not a texture. */
const MIN_FILL_CELL_PIXELS = 4;
/** Copied fillings move at least this share of the image side, so they never land where they came from. */
const MIN_SHIFT_SHARE = 1 / 8;
/** Brightness jitter of copied fillings: gain 1 +- this, offset +- half of it. */
const BRIGHTNESS_JITTER = 0.1;
/** CutPaste's scar size at 64 px: 2-4 px wide, 10-30 % of the side long. */
const SCAR_REFERENCE_SIDE = 64;
const SCAR_WIDTH_PX: readonly [number, number] = [2, 4];
const SCAR_LENGTH_SHARE: readonly [number, number] = [0.1, 0.3];

// ---------------------------------------------------------------------------
// Perlin noise

const LATTICE_PERIOD = 256;
/**
 * Fixed hash from lattice point to gradient slot; the gradients themselves are
 * drawn anew for every field, so a fixed permutation costs no randomness.
 */
const LATTICE_HASH = (() => {
  const order = shuffled(
    Array.from({ length: LATTICE_PERIOD }, (_, i) => i),
    seededRandom(0x5eed),
  );
  return Uint8Array.from([...order, ...order]);
})();

/** A Perlin field sampled at lattice coordinates (u, v): one unit = one cell. Roughly in [-1, 1]. */
type PerlinField = (u: number, v: number) => number;

function perlinField(random: Random): PerlinField {
  const gradientX = new Float32Array(LATTICE_PERIOD);
  const gradientY = new Float32Array(LATTICE_PERIOD);
  for (let i = 0; i < LATTICE_PERIOD; i++) {
    const angle = 2 * Math.PI * random();
    gradientX[i] = Math.cos(angle);
    gradientY[i] = Math.sin(angle);
  }
  const hash = LATTICE_HASH;
  return (u, v) => {
    const cellU = Math.floor(u);
    const cellV = Math.floor(v);
    const tu = u - cellU;
    const tv = v - cellV;
    const i0 = cellU & 255;
    const j0 = cellV & 255;
    const rowA = hash[i0]!;
    const rowB = hash[i0 + 1]!;
    const g00 = hash[rowA + j0]!;
    const g01 = hash[rowA + j0 + 1]!;
    const g10 = hash[rowB + j0]!;
    const g11 = hash[rowB + j0 + 1]!;
    const d00 = gradientX[g00]! * tu + gradientY[g00]! * tv;
    const d10 = gradientX[g10]! * (tu - 1) + gradientY[g10]! * tv;
    const d01 = gradientX[g01]! * tu + gradientY[g01]! * (tv - 1);
    const d11 = gradientX[g11]! * (tu - 1) + gradientY[g11]! * (tv - 1);
    const su = tu * tu * tu * (tu * (tu * 6 - 15) + 10);
    const sv = tv * tv * tv * (tv * (tv * 6 - 15) + 10);
    const top = d00 + su * (d10 - d00);
    const bottom = d01 + su * (d11 - d01);
    // Unit gradients peak at sqrt(1/2); DRAEM scales by sqrt(2) as well.
    return Math.SQRT2 * (top + sv * (bottom - top));
  };
}

function assertPositiveInteger(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`${name} must be a positive integer, got ${value}`);
}

/** 2-D gradient (Perlin) noise of `width` x `height`, with `cellsX` x `cellsY` lattice cells, values roughly in [-1, 1]. */
export function perlinNoise(width: number, height: number, cellsX: number, cellsY: number, random: Random): Float32Array {
  assertPositiveInteger('width', width);
  assertPositiveInteger('height', height);
  assertPositiveInteger('cellsX', cellsX);
  assertPositiveInteger('cellsY', cellsY);
  const field = perlinField(random);
  const out = new Float32Array(width * height);
  const stepU = cellsX / width;
  const stepV = cellsY / height;
  for (let y = 0; y < height; y++) {
    const v = (y + 0.5) * stepV;
    for (let x = 0; x < width; x++) out[y * width + x] = field((x + 0.5) * stepU, v);
  }
  return out;
}

/** Largest k with 2^k cells of at least `minCellPixels` across `side` pixels (0 for small images). */
function maxLatticeExponent(side: number, minCellPixels: number): number {
  return Math.max(0, Math.floor(Math.log2(side / minCellPixels)));
}

/**
 * A binary mask from thresholded Perlin noise (DRAEM: lattice scale 2^k, k random in a range, threshold 0.5,
 * random rotation), redrawn until its area lies within [minArea, maxArea] of the image (defaults 0.5 % and 40 %,
 * at least one pixel); Uint8Array of width*height 0/1. Never empty: when the draws keep missing the bounds, a
 * randomly grown blob of a size within them is returned instead.
 */
export function perlinMask(width: number, height: number, random: Random, options: { minArea?: number; maxArea?: number } = {}): Uint8Array {
  assertPositiveInteger('width', width);
  assertPositiveInteger('height', height);
  const minArea = options.minArea ?? DEFAULT_MIN_MASK_AREA;
  const maxArea = options.maxArea ?? DEFAULT_MAX_MASK_AREA;
  if (!(minArea >= 0 && minArea <= maxArea && maxArea <= 1)) {
    throw new RangeError(`mask area bounds must satisfy 0 <= minArea <= maxArea <= 1, got [${minArea}, ${maxArea}]`);
  }
  const pixels = width * height;
  const minPixels = Math.max(1, Math.ceil(minArea * pixels));
  const maxPixels = Math.max(minPixels, Math.floor(maxArea * pixels));
  const maxExponentX = maxLatticeExponent(width, MIN_MASK_CELL_PIXELS);
  const maxExponentY = maxLatticeExponent(height, MIN_MASK_CELL_PIXELS);
  const mask = new Uint8Array(pixels);
  const centreX = width / 2;
  const centreY = height / 2;

  for (let attempt = 0; attempt < MASK_ATTEMPTS; attempt++) {
    // Independent scales per axis give elongated blobs and streaks as well as round ones.
    const cellsX = 2 ** randomInt(random, 0, maxExponentX);
    const cellsY = 2 ** randomInt(random, 0, maxExponentY);
    const angle = (random() - 0.5) * Math.PI;
    const cos = Math.cos(angle);
    const sin = Math.sin(angle);
    const field = perlinField(random);
    // Rotating the sample grid instead of the thresholded image avoids resampling
    // the mask; the hashed lattice covers whatever the rotation reaches.
    const scaleU = cellsX / width;
    const scaleV = cellsY / height;
    let area = 0;
    for (let y = 0; y < height; y++) {
      const dy = y + 0.5 - centreY;
      for (let x = 0; x < width; x++) {
        const dx = x + 0.5 - centreX;
        const u = (centreX + dx * cos - dy * sin) * scaleU;
        const v = (centreY + dx * sin + dy * cos) * scaleV;
        const inside = field(u, v) > MASK_THRESHOLD ? 1 : 0;
        mask[y * width + x] = inside;
        area += inside;
      }
    }
    if (area >= minPixels && area <= maxPixels) return mask;
  }
  return grownBlob(width, height, randomInt(random, minPixels, maxPixels), random);
}

/** A connected blob of exactly `area` pixels, grown from a random pixel by adding random frontier pixels (Eden growth). */
function grownBlob(width: number, height: number, area: number, random: Random): Uint8Array {
  const mask = new Uint8Array(width * height);
  const queued = new Uint8Array(width * height);
  const frontier: number[] = [randomInt(random, 0, width * height - 1)];
  queued[frontier[0]!] = 1;
  let count = 0;
  while (count < area && frontier.length > 0) {
    const pick = Math.floor(random() * frontier.length);
    const pixel = frontier[pick]!;
    frontier[pick] = frontier[frontier.length - 1]!;
    frontier.pop();
    mask[pixel] = 1;
    count++;
    const x = pixel % width;
    const neighbours = [x > 0 ? pixel - 1 : -1, x < width - 1 ? pixel + 1 : -1, pixel - width, pixel + width];
    for (const next of neighbours) {
      if (next >= 0 && next < mask.length && !queued[next]) {
        queued[next] = 1;
        frontier.push(next);
      }
    }
  }
  return mask;
}

// ---------------------------------------------------------------------------
// Corruption

interface ImageShape {
  width: number;
  height: number;
  channels: 1 | 3;
}

function describeShape(shape: ImageShape): string {
  return `${shape.width}x${shape.height}x${shape.channels}`;
}

function sameShape(a: ImageShape, b: ImageShape): boolean {
  return a.width === b.width && a.height === b.height && a.channels === b.channels;
}

/** A cyclic shift of at least MIN_SHIFT_SHARE of the side in one axis (or both), as offsets in [0, side). */
function displacedShift(width: number, height: number, random: Random): { dx: number; dy: number } {
  const minX = Math.max(1, Math.round(width * MIN_SHIFT_SHARE));
  const minY = Math.max(1, Math.round(height * MIN_SHIFT_SHARE));
  // Pick the axis that must move; a 1-pixel-wide axis cannot.
  const moveX = height === 1 || (width > 1 && random() < 0.5);
  const dx = moveX ? randomInt(random, Math.min(minX, width - 1), Math.max(minX, width - minX)) : randomInt(random, 0, width - 1);
  const dy = moveX ? randomInt(random, 0, height - 1) : randomInt(random, Math.min(minY, height - 1), Math.max(minY, height - minY));
  return { dx, dy };
}

export class SyntheticAnomalies {
  private readonly normals: readonly ImageTensor[];
  /** The settings in force, defaults filled in (for the bundle's record of how it was trained). */
  readonly share: number;
  readonly strength: readonly [number, number];
  readonly kinds: readonly AnomalyKind[];
  private readonly textures: readonly ImageTensor[];
  /** The size every image must have: the normals', else the textures'; unknown (any size) without either. */
  private readonly shape: ImageShape | undefined;
  private readonly random: Random;

  /** `normals`: the training images (patch fillings are taken from them); throws UsageError on bad options (every problem at once). */
  constructor(normals: readonly ImageTensor[], options: SyntheticAnomalyOptions, seed: number) {
    const shape = normals[0];
    const odd = normals.findIndex((normal) => !sameShape(normal, shape!));
    if (odd >= 0) {
      throw new RangeError(`normal image ${odd} is ${describeShape(normals[odd]!)}, the first is ${describeShape(shape!)}: resize them alike first`);
    }
    const share = options.share ?? DEFAULT_SHARE;
    const strength = options.strength ?? DEFAULT_STRENGTH;
    const textures = options.textures ?? [];
    const kinds = options.kinds ?? (textures.length > 0 ? ANOMALY_KINDS : ANOMALY_KINDS.filter((kind) => kind !== 'texture'));

    const problems: string[] = [];
    if (!(share >= 0 && share <= 1)) problems.push(`share must be in [0, 1], got ${share}`);
    const [minStrength, maxStrength] = strength;
    if (strength.length !== 2 || !(minStrength! > 0 && minStrength! <= maxStrength! && maxStrength! <= 1)) {
      problems.push(`strength must be [min, max] with 0 < min <= max <= 1, got [${strength.join(', ')}]`);
    }
    if (kinds.length === 0) problems.push(`kinds must name at least one of ${ANOMALY_KINDS.join(', ')}`);
    for (const kind of kinds) {
      if (!(ANOMALY_KINDS as readonly string[]).includes(kind)) {
        problems.push(`unknown anomaly kind '${String(kind)}' (known: ${ANOMALY_KINDS.join(', ')})`);
      }
    }
    if (kinds.includes('texture') && textures.length === 0) problems.push(`kind 'texture' needs textures, none were given`);
    const textureShape = shape ?? textures[0];
    textures.forEach((texture, index) => {
      if (!sameShape(texture, textureShape!)) {
        problems.push(`texture ${index} is ${describeShape(texture)}, the model's images are ${describeShape(textureShape!)}`);
      }
    });
    if (problems.length > 0) {
      throw new UsageError(`invalid synthetic anomaly options:\n${problems.map((p) => `  - ${p}`).join('\n')}`, {
        hint: `share in [0, 1] (default ${DEFAULT_SHARE}), strength [min, max] in (0, 1] (default [${DEFAULT_STRENGTH.join(', ')}]), kinds from ${ANOMALY_KINDS.join(', ')}; 'texture' needs texture images resized to the model's input`,
      });
    }

    this.normals = normals;
    this.share = share;
    this.strength = strength;
    this.kinds = kinds.slice();
    this.textures = textures;
    this.shape = textureShape && { width: textureShape.width, height: textureShape.height, channels: textureShape.channels };
    this.random = seededRandom(seed);
  }

  /** Corrupts `image` (or leaves it clean with probability 1 - share). Deterministic for a given seed and call sequence. */
  corrupt(image: ImageTensor): CorruptedImage {
    if (this.shape && !sameShape(image, this.shape)) {
      throw new RangeError(`image is ${describeShape(image)}, expected ${describeShape(this.shape)}`);
    }
    const { width, height, channels } = image;
    const random = this.random;
    if (random() >= this.share) return { image, mask: new Float32Array(width * height), kind: null };

    const kind = this.kinds[Math.floor(random() * this.kinds.length)]!;
    const [minStrength, maxStrength] = this.strength;
    const blend = minStrength + random() * (maxStrength - minStrength);
    const fill = new Float32Array(width * height * channels);
    let mask: Uint8Array;
    if (kind === 'scar') {
      mask = this.scar(image, fill);
    } else {
      mask = perlinMask(width, height, random);
      if (kind === 'noise') this.fillNoise(image, mask, fill);
      else if (kind === 'patch') this.fillPatch(image, mask, fill);
      else this.fillCopy(this.textures[Math.floor(random() * this.textures.length)]!, mask, fill, false);
    }

    const plane = width * height;
    const data = image.data.slice();
    const outMask = new Float32Array(plane);
    const keep = 1 - blend;
    for (let i = 0; i < plane; i++) {
      if (!mask[i]) continue;
      outMask[i] = 1;
      for (let c = 0; c < channels; c++) {
        const at = c * plane + i;
        const value = data[at]! * keep + fill[at]! * blend;
        data[at] = value < 0 ? 0 : value > 1 ? 1 : value;
      }
    }
    return { image: { width, height, channels, data }, mask: outMask, kind };
  }

  /** Perlin texture (one or two octaves) at a random brightness and contrast, tinted per channel. */
  private fillNoise(image: ImageTensor, mask: Uint8Array, fill: Float32Array): void {
    const { width, height, channels } = image;
    const random = this.random;
    const cellsX = 2 ** randomInt(random, 0, maxLatticeExponent(width, MIN_FILL_CELL_PIXELS));
    const cellsY = 2 ** randomInt(random, 0, maxLatticeExponent(height, MIN_FILL_CELL_PIXELS));
    const coarse = perlinField(random);
    // A finer octave at half amplitude on half the draws: rougher, less blob-like surfaces.
    const fine = random() < 0.5 ? perlinField(random) : undefined;
    const contrast = 0.1 + 0.4 * random();
    // A base level anywhere in [0, 1]: the defect can be darker or lighter than the part.
    const level = random();
    const tint = new Float32Array(channels);
    const coloured = channels === 3 && random() < 0.5;
    for (let c = 0; c < channels; c++) tint[c] = level + (coloured ? (random() - 0.5) * 0.4 : 0);
    const plane = width * height;
    const stepU = cellsX / width;
    const stepV = cellsY / height;
    for (let y = 0; y < height; y++) {
      const v = (y + 0.5) * stepV;
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        if (!mask[i]) continue;
        const u = (x + 0.5) * stepU;
        let noise = coarse(u, v);
        if (fine) noise = (noise + 0.5 * fine(2 * u, 2 * v)) / 1.5;
        for (let c = 0; c < channels; c++) fill[c * plane + i] = tint[c]! + contrast * noise;
      }
    }
  }

  /** NSA: the masked region of another normal image (or of this one when there is no other), moved elsewhere. */
  private fillPatch(image: ImageTensor, mask: Uint8Array, fill: Float32Array): void {
    const others = this.normals.filter((normal) => normal.data !== image.data);
    const source = others.length > 0 ? others[Math.floor(this.random() * others.length)]! : image;
    this.fillCopy(source, mask, fill, true);
  }

  /** Pixels of `source` at a cyclic shift of at least 1/8 of the side, maybe flipped, optionally brightness-jittered. */
  private fillCopy(source: ImageTensor, mask: Uint8Array, fill: Float32Array, jitter: boolean): void {
    const { width, height, channels, data } = source;
    const random = this.random;
    const { dx, dy } = displacedShift(width, height, random);
    const flipX = random() < 0.5;
    const flipY = random() < 0.5;
    const gain = jitter ? 1 + (2 * random() - 1) * BRIGHTNESS_JITTER : 1;
    const offset = jitter ? (random() - 0.5) * BRIGHTNESS_JITTER : 0;
    const plane = width * height;
    for (let y = 0; y < height; y++) {
      let sy = (y + dy) % height;
      if (flipY) sy = height - 1 - sy;
      for (let x = 0; x < width; x++) {
        const i = y * width + x;
        if (!mask[i]) continue;
        let sx = (x + dx) % width;
        if (flipX) sx = width - 1 - sx;
        const from = sy * width + sx;
        for (let c = 0; c < channels; c++) fill[c * plane + i] = data[c * plane + from]! * gain + offset;
      }
    }
  }

  /** CutPaste-scar: a thin rotated rectangle, its mask returned and its filling written to `fill`. */
  private scar(image: ImageTensor, fill: Float32Array): Uint8Array {
    const { width, height, channels } = image;
    const random = this.random;
    const side = Math.min(width, height);
    const thickness = Math.max(1, (SCAR_WIDTH_PX[0] + (SCAR_WIDTH_PX[1] - SCAR_WIDTH_PX[0]) * random()) * (side / SCAR_REFERENCE_SIDE));
    const length = Math.max(thickness, side * (SCAR_LENGTH_SHARE[0] + (SCAR_LENGTH_SHARE[1] - SCAR_LENGTH_SHARE[0]) * random()));
    // Centred on a pixel centre, so that pixel is always inside and the mask never empty.
    const centreX = randomInt(random, 0, width - 1) + 0.5;
    const centreY = randomInt(random, 0, height - 1) + 0.5;
    const angle = random() * Math.PI;
    const alongX = Math.cos(angle);
    const alongY = Math.sin(angle);
    const halfLength = length / 2;
    const halfThickness = thickness / 2;
    const reachX = Math.abs(alongX) * halfLength + Math.abs(alongY) * halfThickness;
    const reachY = Math.abs(alongY) * halfLength + Math.abs(alongX) * halfThickness;

    const colour = random() < 0.5;
    const values = new Float32Array(channels);
    if (colour) {
      const grey = random();
      const tinted = channels === 3 && random() < 0.5;
      for (let c = 0; c < channels; c++) values[c] = tinted ? random() : grey;
    }
    const { dx, dy } = colour ? { dx: 0, dy: 0 } : displacedShift(width, height, random);
    const gain = colour ? 1 : 1 + (2 * random() - 1) * BRIGHTNESS_JITTER;

    const mask = new Uint8Array(width * height);
    const plane = width * height;
    const x0 = Math.max(0, Math.floor(centreX - reachX));
    const x1 = Math.min(width - 1, Math.ceil(centreX + reachX));
    const y0 = Math.max(0, Math.floor(centreY - reachY));
    const y1 = Math.min(height - 1, Math.ceil(centreY + reachY));
    for (let y = y0; y <= y1; y++) {
      const py = y + 0.5 - centreY;
      for (let x = x0; x <= x1; x++) {
        const px = x + 0.5 - centreX;
        if (Math.abs(px * alongX + py * alongY) > halfLength || Math.abs(py * alongX - px * alongY) > halfThickness) continue;
        const i = y * width + x;
        mask[i] = 1;
        const from = ((y + dy) % height) * width + ((x + dx) % width);
        for (let c = 0; c < channels; c++) fill[c * plane + i] = colour ? values[c]! : image.data[c * plane + from]! * gain;
      }
    }
    return mask;
  }
}
