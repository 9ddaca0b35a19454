/**
 * Image-quality signals of one frame at the model's resolution: what tells a
 * broken camera (fogged, dark, burnt out, covered, frozen, bumped) from a broken
 * part. Computed on the 8-bit frame the model gets, so they cost a few passes
 * over ~7 000 pixels and no extra decoding. Pure arithmetic; the per-camera
 * QualityMeter only keeps its scratch buffers and the previous frame.
 */

/** One frame's signals. Levels are 0-255 grey (luma for colour frames). */
export interface QualitySignals {
  /** Mean level. */
  brightness: number;
  /** Standard deviation of the levels. */
  contrast: number;
  /** Share of pixels at 250 or above: burnt out. */
  clipped: number;
  /**
   * Share of pixels within ±6 levels of the most common level: near 1 when something flat
   * (a lens cap, a cloth, a board) fills the view.
   */
  flatShare: number;
  /**
   * Variance of the Laplacian over the variance of the levels: how much of the picture's
   * contrast is fine detail. Dividing by the contrast keeps it the same when the light
   * dims, so only focus (or fog) moves it.
   */
  sharpness: number;
  /** Mean absolute level change since the previous frame (NaN for the first): 0 when the picture froze. */
  change: number;
  /** Displacement of the view against the reference, in pixels (NaN without a reference). */
  shiftX: number;
  shiftY: number;
}

/** The scene the model was trained on, as the displacement check needs it. */
export interface SceneReference {
  width: number;
  height: number;
  /** Edge-strength profiles of the reference frame along x (one value per column) and y (per row). */
  columns: Float64Array;
  rows: Float64Array;
}

/** Largest displacement searched, as a share of the frame's width or height. */
export const MAX_SHIFT_SEARCHED = 0.15;
const CLIPPED_LEVEL = 250;
const FLAT_BAND = 6;

/** Levels of one frame: the grey plane itself, or the luma of an interleaved RGB frame written into `out`. */
export function lumaOf(data: Uint8Array, width: number, height: number, channels: 1 | 3, out?: Uint8Array): Uint8Array {
  const pixels = width * height;
  if (channels === 1) return data.subarray(0, pixels);
  const luma = out ?? new Uint8Array(pixels);
  for (let i = 0, j = 0; i < pixels; i++, j += 3) {
    // BT.601 weights in fixed point (77 + 150 + 29 = 256): what ffmpeg's rgb-to-grey gives.
    luma[i] = (77 * data[j]! + 150 * data[j + 1]! + 29 * data[j + 2]!) >> 8;
  }
  return luma;
}

/**
 * Edge-strength profiles of a grey frame: for each column (row) the sum of absolute
 * horizontal and vertical differences in it. Comparing them with the reference's finds
 * how far the view moved (see matchShift) at a fraction of a 2-D correlation's cost,
 * and edges rather than levels keep it indifferent to the light.
 */
export function edgeProfiles(
  luma: Uint8Array,
  width: number,
  height: number,
  out?: { columns: Float64Array; rows: Float64Array },
): { columns: Float64Array; rows: Float64Array } {
  const columns = out?.columns ?? new Float64Array(width);
  const rows = out?.rows ?? new Float64Array(height);
  columns.fill(0);
  rows.fill(0);
  for (let y = 0; y < height; y++) {
    const row = y * width;
    let rowSum = 0;
    for (let x = 0; x < width; x++) {
      const i = row + x;
      const v = luma[i]!;
      const edge = (x < width - 1 ? Math.abs(luma[i + 1]! - v) : 0) + (y < height - 1 ? Math.abs(luma[i + width]! - v) : 0);
      columns[x]! += edge;
      rowSum += edge;
    }
    rows[y] = rowSum;
  }
  return { columns, rows };
}

/**
 * The shift s (|s| <= maxShift) at which `moved[i + s]` best matches `reference[i]`, by the
 * correlation coefficient over the overlap. 0 when nothing correlates (a flat picture).
 */
export function matchShift(reference: Float64Array, moved: Float64Array, maxShift: number): number {
  const n = reference.length;
  let best = Number.NEGATIVE_INFINITY;
  let bestShift = 0;
  for (let shift = -maxShift; shift <= maxShift; shift++) {
    const from = Math.max(0, -shift);
    const to = Math.min(n, n - shift);
    const count = to - from;
    if (count < n / 2) continue;
    let sumA = 0;
    let sumB = 0;
    let sumAB = 0;
    let sumAA = 0;
    let sumBB = 0;
    for (let i = from; i < to; i++) {
      const a = reference[i]!;
      const b = moved[i + shift]!;
      sumA += a;
      sumB += b;
      sumAB += a * b;
      sumAA += a * a;
      sumBB += b * b;
    }
    const covariance = sumAB - (sumA * sumB) / count;
    const spread = (sumAA - (sumA * sumA) / count) * (sumBB - (sumB * sumB) / count);
    if (!(spread > 0)) continue;
    const r = covariance / Math.sqrt(spread);
    // Ties go to the smaller shift: a flat stretch must not read as a move.
    if (r > best + 1e-12 || (Math.abs(r - best) <= 1e-12 && Math.abs(shift) < Math.abs(bestShift))) {
      best = r;
      bestShift = shift;
    }
  }
  return bestShift;
}

/** Reference profiles of a grey frame (the median of the training frames, see learnQualityProfile). */
export function sceneReference(luma: Uint8Array, width: number, height: number): SceneReference {
  return { width, height, ...edgeProfiles(luma, width, height) };
}

/**
 * One camera's meter: measures each frame against the previous one and the scene
 * reference, with buffers allocated once (it runs on every analysed frame).
 */
export class QualityMeter {
  private readonly pixels: number;
  private readonly lumaScratch: Uint8Array;
  private previous: Uint8Array;
  private hasPrevious = false;
  private readonly histogram = new Uint32Array(256);
  private readonly profiles: { columns: Float64Array; rows: Float64Array };

  constructor(
    readonly width: number,
    readonly height: number,
    readonly channels: 1 | 3,
    private readonly reference: SceneReference | undefined,
  ) {
    this.pixels = width * height;
    this.lumaScratch = new Uint8Array(this.pixels);
    this.previous = new Uint8Array(this.pixels);
    this.profiles = { columns: new Float64Array(width), rows: new Float64Array(height) };
    if (reference && (reference.width !== width || reference.height !== height)) {
      throw new RangeError(`the scene reference is ${reference.width}x${reference.height}, frames are ${width}x${height}`);
    }
  }

  /** Forget the previous frame (the stream restarted: the next frame is no "change" from the last one). */
  reset(): void {
    this.hasPrevious = false;
  }

  measure(data: Uint8Array): QualitySignals {
    const { width, height, pixels, histogram } = this;
    const luma = lumaOf(data, width, height, this.channels, this.lumaScratch);
    histogram.fill(0);
    let sum = 0;
    let sumSquares = 0;
    let changeSum = 0;
    const previous = this.previous;
    for (let i = 0; i < pixels; i++) {
      const v = luma[i]!;
      sum += v;
      sumSquares += v * v;
      histogram[v]!++;
      changeSum += Math.abs(v - previous[i]!);
    }
    const brightness = sum / pixels;
    const variance = Math.max(0, sumSquares / pixels - brightness * brightness);
    let clipped = 0;
    for (let v = CLIPPED_LEVEL; v < 256; v++) clipped += histogram[v]!;
    const signals: QualitySignals = {
      brightness,
      contrast: Math.sqrt(variance),
      clipped: clipped / pixels,
      flatShare: flatShare(histogram, pixels),
      sharpness: laplacianVariance(luma, width, height) / (variance + 1),
      change: this.hasPrevious ? changeSum / pixels : Number.NaN,
      shiftX: Number.NaN,
      shiftY: Number.NaN,
    };
    if (this.reference) {
      const profiles = edgeProfiles(luma, width, height, this.profiles);
      signals.shiftX = matchShift(this.reference.columns, profiles.columns, Math.round(width * MAX_SHIFT_SEARCHED));
      signals.shiftY = matchShift(this.reference.rows, profiles.rows, Math.round(height * MAX_SHIFT_SEARCHED));
    }
    // Keep this frame for the next one's change (a copy: the frame's buffer is not ours).
    this.previous.set(luma);
    this.hasPrevious = true;
    return signals;
  }
}

/** Share of pixels within ±FLAT_BAND levels of the busiest band. */
function flatShare(histogram: Uint32Array, pixels: number): number {
  let window = 0;
  for (let v = 0; v <= FLAT_BAND && v < 256; v++) window += histogram[v]!;
  let best = window;
  for (let centre = 1; centre < 256; centre++) {
    const enter = centre + FLAT_BAND;
    const leave = centre - FLAT_BAND - 1;
    if (enter < 256) window += histogram[enter]!;
    if (leave >= 0) window -= histogram[leave]!;
    if (window > best) best = window;
  }
  return best / pixels;
}

/** Variance of the 4-neighbour Laplacian over the frame's interior. */
function laplacianVariance(luma: Uint8Array, width: number, height: number): number {
  let sum = 0;
  let sumSquares = 0;
  for (let y = 1; y < height - 1; y++) {
    const row = y * width;
    for (let x = 1; x < width - 1; x++) {
      const i = row + x;
      const laplacian = 4 * luma[i]! - luma[i - 1]! - luma[i + 1]! - luma[i - width]! - luma[i + width]!;
      sum += laplacian;
      sumSquares += laplacian * laplacian;
    }
  }
  const count = (width - 2) * (height - 2);
  if (count <= 0) return 0;
  const mean = sum / count;
  return Math.max(0, sumSquares / count - mean * mean);
}
