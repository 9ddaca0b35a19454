import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import sharp from 'sharp';
import { LinewatchError, UsageError } from '../errors.js';
import { defaultLogger } from '../log.js';
import type { Box, Size } from '../scoring/region.js';

/**
 * Event snapshots: the peak frame of an anomaly event with its anomaly map overlaid
 * as a colour map and its box drawn, written as `<dir>/<camera>/<eventId>.jpg`.
 * Writes are atomic (temp file + rename) so the operator page and MQTT consumers
 * never see half a JPEG, and each camera keeps only its newest `retain` files so a
 * flapping camera cannot fill the disk.
 *
 * Beside each snapshot goes the picture it was drawn on, untouched, as
 * `<eventId>.original.jpg` (see originalPathOf): an operator who marks an event as
 * normal teaches the next model with what the camera saw, not with the heat map.
 */

export type SnapshotImage =
  /** A full-resolution preview JPEG of the whole source frame (the better picture). */
  | { jpeg: Buffer }
  /** The model-input frame: the crop, stretched to the model's size, interleaved bytes. */
  | { pixels: Uint8Array; width: number; height: number; channels: 1 | 3 };

export interface SnapshotInput {
  camera: string;
  eventId: string;
  image: SnapshotImage;
  /** The anomaly map of the same frame, row-major mapWidth x mapHeight. */
  map: Float32Array;
  mapWidth: number;
  mapHeight: number;
  /** Anomaly box in source pixels (toSourceBox); none drawn when absent. */
  box?: Box | null;
  /**
   * Size of the camera's frames, which `box` and `crop` refer to. Default: the preview
   * JPEG's size, or the model-input frame's size.
   */
  source?: Size;
  /** The part of the source the model saw (source pixels); default the whole frame. */
  crop?: Box;
  /**
   * Map values at or below `low` are left clear, values at or above `high` get the
   * hottest colour. Default: the map's own minimum and maximum.
   */
  scoreLevel?: { low: number; high: number };
}

export interface SnapshotStoreOptions {
  dir: string;
  /** Snapshots kept per camera; older ones are deleted. */
  retain: number;
  /**
   * Bytes the snapshots of one camera may take (each counted with its original); the oldest
   * are deleted beyond it. Default: no limit but `retain`.
   */
  maxBytes?: number;
  /** Problems that do not lose the new snapshot (a failed cleanup). */
  onWarning?: (message: string) => void;
}

/** Long side of a snapshot made from the small model-input frame. */
const UPSCALED_LONG_SIDE = 640;
const JPEG_QUALITY = 85;
const OVERLAY_MAX_ALPHA = 0.65;
/** Temp files older than this are leftovers of a crash, not a write in progress. */
const STALE_TEMP_MS = 10 * 60_000;
/** Saves after which a camera's snapshot folder is listed again rather than trusted from memory. */
const RESCAN_EVERY = 500;

/** The original of `x.jpg` is `x.original.jpg`; it lives and dies with its snapshot. */
export const ORIGINAL_SUFFIX = '.original.jpg';
/**
 * For a long-running agent: no libvips operation cache (it keeps decoded images of past snapshots)
 * and one libvips thread per operation (a snapshot every second or so needs no more): both keep
 * the agent's resident memory down (README "Memory limits").
 */
export function leanImageMemory(): void {
  sharp.cache(false);
  sharp.concurrency(1);
}

/** Quality of an original made from model-input pixels: it may become training data. */
const ORIGINAL_JPEG_QUALITY = 95;

const SAFE_CAMERA = /^[A-Za-z0-9_-]+$/;
const SAFE_EVENT_ID = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

export class SnapshotStore {
  readonly dir: string;
  readonly retain: number;
  readonly maxBytes: number;
  readonly #warn: (message: string) => void;
  #tempCounter = 0;
  /** Each camera folder's snapshots, oldest first, and the saves since it was last listed (#keepWithinBounds). */
  readonly #kept = new Map<string, { snapshots: KeptSnapshot[]; saves: number }>();
  /** Saves waiting for their turn (save), oldest first. */
  #waiting: { target: string; input: SnapshotInput; settle: { resolve: (path: string) => void; reject: (error: unknown) => void }[] }[] = [];
  #saving = false;

  constructor(options: SnapshotStoreOptions) {
    if (!Number.isInteger(options.retain) || options.retain < 1) {
      throw new UsageError(`snapshots.retain must be a whole number >= 1, got ${options.retain}`, {
        hint: 'set snapshots.retain to how many snapshots to keep per camera, or disable snapshots',
      });
    }
    if (options.maxBytes !== undefined && !(options.maxBytes > 0)) {
      throw new UsageError(`snapshots.maxMegabytes must be above 0, got ${options.maxBytes / 1e6}`, {
        hint: 'set snapshots.maxMegabytes to the disk space the snapshots of one camera may take, or disable snapshots',
      });
    }
    this.dir = options.dir;
    this.retain = options.retain;
    this.maxBytes = options.maxBytes ?? Number.POSITIVE_INFINITY;
    this.#warn = options.onWarning ?? ((message) => defaultLogger().warn(message));
  }

  /** Where the snapshot of this event is (or will be) written. */
  pathFor(camera: string, eventId: string): string {
    if (!SAFE_CAMERA.test(camera)) throw new RangeError(`camera name ${JSON.stringify(camera)} is not safe as a directory name`);
    if (!SAFE_EVENT_ID.test(eventId) || eventId.includes('..')) throw new RangeError(`event id ${JSON.stringify(eventId)} is not safe as a file name`);
    return join(this.dir, camera, `${eventId}.jpg`);
  }

  /**
   * Renders and writes the snapshot and its original, replacing earlier ones of the same
   * event (a new peak), then deletes the camera's oldest snapshots beyond `retain`. Returns its path.
   * Throws a LinewatchError saying what to do when the image cannot be rendered or the
   * disk refuses the write.
   *
   * One save at a time: when many cameras start events together, their renders take turns with
   * the frames waiting for inference instead of running back to back on the event loop (each
   * render draws its overlay in JS). A save still waiting when a newer one of the same event
   * comes (a new peak) is replaced by it, so a slow disk cannot make the queue grow.
   */
  save(input: SnapshotInput): Promise<string> {
    return new Promise<string>((resolve, reject) => {
      // Inside the promise: an unsafe name rejects, as every other failure of a save does.
      const target = this.pathFor(input.camera, input.eventId);
      const waiting = this.#waiting.find((job) => job.target === target);
      if (waiting) {
        waiting.input = input;
        waiting.settle.push({ resolve, reject });
      } else {
        this.#waiting.push({ target, input, settle: [{ resolve, reject }] });
      }
      void this.#saveInTurn();
    });
  }

  async #saveInTurn(): Promise<void> {
    if (this.#saving) return;
    this.#saving = true;
    try {
      for (let job = this.#waiting.shift(); job !== undefined; job = this.#waiting.shift()) {
        try {
          const path = await this.#saveNow(job.target, job.input);
          for (const { resolve } of job.settle) resolve(path);
        } catch (error) {
          for (const { reject } of job.settle) reject(error);
        }
      }
    } finally {
      this.#saving = false;
    }
  }

  async #saveNow(target: string, input: SnapshotInput): Promise<string> {
    const jpeg = await renderSnapshot(input).catch((error: unknown) => {
      throw new LinewatchError(`cannot render the snapshot of event ${input.eventId} (${input.camera}): ${messageOf(error)}`, {
        hint: 'the preview JPEG or the frame is probably corrupt; the event is still published without a snapshot',
        cause: error,
      });
    });
    const original = await originalJpeg(input.image).catch((error: unknown) => {
      throw new LinewatchError(`cannot encode the original picture of event ${input.eventId} (${input.camera}): ${messageOf(error)}`, { cause: error });
    });
    const cameraDir = join(this.dir, input.camera);
    // The original first: whoever sees the snapshot (its path is in the event) finds the original too.
    for (const [bytes, path] of [[original, originalPathOf(target)], [jpeg, target]] as const) {
      const temp = join(cameraDir, `.${input.eventId}.jpg.${process.pid}.${this.#tempCounter++}.tmp`);
      try {
        await mkdir(cameraDir, { recursive: true });
        await writeFile(temp, bytes);
        await rename(temp, path);
      } catch (error) {
        await rm(temp, { force: true }).catch(() => undefined);
        throw writeError(error, target, this.dir);
      }
    }
    await this.#keepWithinBounds(cameraDir, { path: target, bytes: jpeg.length + original.length }).catch((error: unknown) => {
      this.#warn(`cannot delete old snapshots in ${cameraDir}: ${messageOf(error)}`);
    });
    return target;
  }

  /**
   * Applies `retain` and the byte budget to a camera's snapshots now (at start: a budget lowered
   * since the last run applies before the next event); a camera without snapshots is left alone.
   */
  async prune(camera: string): Promise<void> {
    if (!SAFE_CAMERA.test(camera)) throw new RangeError(`camera name ${JSON.stringify(camera)} is not safe as a directory name`);
    const cameraDir = join(this.dir, camera);
    this.#kept.delete(cameraDir);
    await this.#keepWithinBounds(cameraDir).catch((error: unknown) => {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    });
  }

  /**
   * Records a snapshot just written (newest), then deletes the oldest beyond `retain` and the byte
   * budget. The camera's snapshots are listed from the folder once, and again every RESCAN_EVERY
   * saves (files deleted or left by others); in between the list is kept here, because listing
   * and stat-ing a full folder (200 files at the default `retain`) cost more than rendering.
   */
  async #keepWithinBounds(cameraDir: string, written?: KeptSnapshot): Promise<void> {
    let kept = this.#kept.get(cameraDir);
    if (kept === undefined || kept.saves >= RESCAN_EVERY) {
      kept = { snapshots: await this.#scan(cameraDir), saves: 0 };
      this.#kept.set(cameraDir, kept);
    } else if (written) {
      // Newest last; a rewritten snapshot (a new peak of the same event) moves to the end.
      kept.snapshots = kept.snapshots.filter((snapshot) => snapshot.path !== written.path);
      kept.snapshots.push(written);
    }
    if (written) kept.saves += 1;
    // Kept from the newest while both `retain` and the byte budget allow; from the first that does
    // not fit on, all older ones go, so the oldest always go first. The newest stays even when it
    // alone is over the budget: its event names it.
    let count = 0;
    let bytes = 0;
    let firstKept = kept.snapshots.length;
    while (firstKept > 0) {
      const size = kept.snapshots[firstKept - 1]!.bytes;
      if (count > 0 && (count >= this.retain || bytes + size > this.maxBytes)) break;
      count += 1;
      bytes += size;
      firstKept -= 1;
    }
    const old = kept.snapshots.splice(0, firstKept);
    for (const snapshot of old) {
      await rm(snapshot.path, { force: true });
      await rm(originalPathOf(snapshot.path), { force: true });
    }
  }

  /** The camera's snapshots on disk, oldest first, each counted with its original; removes stale temp files and lone originals. */
  async #scan(cameraDir: string): Promise<KeptSnapshot[]> {
    const names = await readdir(cameraDir);
    const now = Date.now();
    const snapshots: Array<{ path: string; name: string; mtimeNs: bigint; bytes: number }> = [];
    /** Size of each original, by the path of its snapshot. */
    const originalBytes = new Map<string, number>();
    for (const name of names) {
      const path = join(cameraDir, name);
      const info = await stat(path, { bigint: true }).catch(() => null);
      if (!info?.isFile()) continue;
      if (name.startsWith('.') && name.endsWith('.tmp')) {
        if (now - Number(info.mtimeMs) > STALE_TEMP_MS) await rm(path, { force: true });
      } else if (name.endsWith(ORIGINAL_SUFFIX)) {
        // Not counted: it goes with its snapshot below. One left alone (its snapshot's write
        // failed, or someone deleted it) goes once it is old enough not to be a save in progress.
        const snapshot = join(cameraDir, `${name.slice(0, -ORIGINAL_SUFFIX.length)}.jpg`);
        originalBytes.set(snapshot, Number(info.size));
        if (now - Number(info.mtimeMs) > STALE_TEMP_MS && !(await stat(snapshot).catch(() => null))) await rm(path, { force: true });
      } else if (name.endsWith('.jpg') && !name.startsWith('.')) {
        snapshots.push({ path, name, mtimeNs: info.mtimeNs, bytes: Number(info.size) });
      }
    }
    // Oldest first; the name breaks ties of equal timestamps so the order is stable. By code unit, not
    // localeCompare: the order must not depend on the locale, and a collator maps about 2.6 MB of
    // node's ICU data into the agent's resident memory for the rest of its life.
    const byName = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
    snapshots.sort((a, b) => (a.mtimeNs === b.mtimeNs ? byName(a.name, b.name) : a.mtimeNs < b.mtimeNs ? -1 : 1));
    return snapshots.map(({ path, bytes }) => ({ path, bytes: bytes + (originalBytes.get(path) ?? 0) }));
  }
}

/** A snapshot on disk and the bytes it takes with its original. */
interface KeptSnapshot {
  path: string;
  bytes: number;
}

/** Where the original picture of the snapshot at `snapshotPath` is. */
export function originalPathOf(snapshotPath: string): string {
  return `${snapshotPath.replace(/\.jpg$/, '')}${ORIGINAL_SUFFIX}`;
}

/**
 * The picture under the overlay, untouched: the preview JPEG byte for byte (full resolution,
 * no re-encoding), or the model-input frame at its own size.
 */
async function originalJpeg(image: SnapshotImage): Promise<Buffer> {
  return 'jpeg' in image ? image.jpeg : modelFrameJpeg(image);
}

/** A model-input frame as a JPEG at its own size, good enough to train on; a grey frame stays one channel. */
export function modelFrameJpeg(frame: { pixels: Uint8Array; width: number; height: number; channels: 1 | 3 }): Promise<Buffer> {
  const { pixels, width, height, channels } = frame;
  const encoder = sharp(pixels, { raw: { width, height, channels } });
  return (channels === 1 ? encoder.toColourspace('b-w') : encoder).jpeg({ quality: ORIGINAL_JPEG_QUALITY, chromaSubsampling: '4:4:4' }).toBuffer();
}

/**
 * The snapshot JPEG, without touching the disk.
 *
 * sharp decodes the base picture and encodes the result; the overlay (bilinear upsampling of the
 * colour map, "over" blending) and the box outline are drawn here in plain JS on the RGB bytes.
 * Hand-written because the libvips path cost far more than the pixels need: measured on a 2-core
 * edge box for a 640x360 preview, the RGBA resize took ~8 ms, the composite ~5 ms and the librsvg
 * box ~3 ms of a ~23 ms render (decode 2.4 ms, encode 4.5 ms), and 20 cameras starting events
 * together made that a CPU burst that delayed event delivery. The picture is the same as that
 * path's (tests/unit/snapshot.test.ts keeps it as the reference; bench/snapshot-render.ts times both).
 * The blend awaits `pause` between slices of rows (BLEND_PIXELS_PER_SLICE).
 */
export async function renderSnapshot(input: SnapshotInput, pause: () => Promise<void> = nextTurnOfEventLoop): Promise<Buffer> {
  const { map, mapWidth, mapHeight } = input;
  if (map.length !== mapWidth * mapHeight || mapWidth <= 0 || mapHeight <= 0) {
    throw new RangeError(`map has ${map.length} values, expected ${mapWidth}x${mapHeight}`);
  }
  const base = await decodeBase(input);
  const { rgb, width, height } = base;

  // The overlay covers the crop the model saw, mapped into the output image.
  const region = clampBox(input.crop ?? { x: 0, y: 0, ...base.source }, base.source);
  const left = Math.round((region.x - base.view.x) * base.scaleX);
  const top = Math.round((region.y - base.view.y) * base.scaleY);
  const overlayWidth = Math.max(1, Math.min(width - left, Math.round(region.width * base.scaleX)));
  const overlayHeight = Math.max(1, Math.min(height - top, Math.round(region.height * base.scaleY)));
  await blendOverlay(rgb, width, height, colourMap(map, mapWidth, mapHeight, input.scoreLevel), mapWidth, mapHeight, { x: left, y: top, width: overlayWidth, height: overlayHeight }, pause);

  if (input.box) {
    const x = (input.box.x - base.view.x) * base.scaleX;
    const y = (input.box.y - base.view.y) * base.scaleY;
    drawBoxOutline(rgb, width, height, { x, y, width: input.box.width * base.scaleX, height: input.box.height * base.scaleY });
  }
  // 4:4:4 chroma: the default 4:2:0 smears the thin red outline into the background.
  return sharp(rgb, { raw: { width, height, channels: 3 } }).jpeg({ quality: JPEG_QUALITY, chromaSubsampling: '4:4:4' }).toBuffer();
}

/**
 * Where output pixel i of `outSize` samples a row (or column) of `inSize` map cells, edges
 * clamped: at i * inSize / outSize - 0.5, where libvips' linear upsizing samples (measured: half
 * an output pixel before the centre-aligned position). Returns the first cell, the second and
 * the weight of the second.
 */
function bilinearTaps(outSize: number, inSize: number): { first: Int32Array; second: Int32Array; weight: Float32Array } {
  const first = new Int32Array(outSize);
  const second = new Int32Array(outSize);
  const weight = new Float32Array(outSize);
  const step = inSize / outSize;
  for (let i = 0; i < outSize; i++) {
    const at = Math.min(inSize - 1, Math.max(0, i * step - 0.5));
    const cell = Math.min(inSize - 1, Math.floor(at));
    first[i] = cell;
    second[i] = Math.min(inSize - 1, cell + 1);
    weight[i] = at - cell;
  }
  return { first, second, weight };
}

/**
 * Blends the RGBA colour map, stretched bilinearly onto `area` (premultiplied, as libvips
 * resizes an image with alpha), over the RGB picture in place ("over": colour x alpha +
 * picture x (1 - alpha)). `area` lies inside the picture except for a negative-free overhang
 * that is clipped.
 */
async function blendOverlay(
  rgb: Uint8Array,
  width: number,
  height: number,
  rgba: Uint8Array,
  mapWidth: number,
  mapHeight: number,
  area: Box,
  pause: () => Promise<void>,
): Promise<void> {
  const { width: areaWidth, height: areaHeight } = area;
  const rows = bilinearTaps(areaHeight, mapHeight);
  const stretched = takeScratch(mapHeight * areaWidth * 4);
  try {
    stretchMapRows(rgba, mapWidth, mapHeight, areaWidth, stretched);
    await blendRows(rgb, width, height, stretched, rows, area, pause);
  } finally {
    giveBackScratch(stretched);
  }
}

/**
 * Each map row, premultiplied, stretched to `areaWidth` into `stretched`; every output row then
 * mixes two of them.
 */
function stretchMapRows(rgba: Uint8Array, mapWidth: number, mapHeight: number, areaWidth: number, stretched: Float32Array): void {
  // Premultiplied colour (0..255) and alpha (0..1) of each map cell.
  const cells = mapWidth * mapHeight;
  const premultiplied = new Float32Array(cells * 4);
  for (let i = 0; i < cells; i++) {
    const alpha = rgba[i * 4 + 3]! / 255;
    premultiplied[i * 4] = rgba[i * 4]! * alpha;
    premultiplied[i * 4 + 1] = rgba[i * 4 + 1]! * alpha;
    premultiplied[i * 4 + 2] = rgba[i * 4 + 2]! * alpha;
    premultiplied[i * 4 + 3] = alpha;
  }
  const columns = bilinearTaps(areaWidth, mapWidth);
  for (let my = 0; my < mapHeight; my++) {
    const rowIn = my * mapWidth * 4;
    const rowOut = my * areaWidth * 4;
    for (let x = 0; x < areaWidth; x++) {
      const a = rowIn + columns.first[x]! * 4;
      const b = rowIn + columns.second[x]! * 4;
      const w = columns.weight[x]!;
      const o = rowOut + x * 4;
      for (let c = 0; c < 4; c++) {
        const va = premultiplied[a + c]!;
        stretched[o + c] = va + (premultiplied[b + c]! - va) * w;
      }
    }
  }
}

/** The output rows of `area`, each mixing two stretched map rows over the picture, in slices with `pause` between them. */
async function blendRows(
  rgb: Uint8Array,
  width: number,
  height: number,
  stretched: Float32Array,
  rows: ReturnType<typeof bilinearTaps>,
  area: Box,
  pause: () => Promise<void>,
): Promise<void> {
  const { x: left, y: top, width: areaWidth, height: areaHeight } = area;
  const x0 = Math.max(0, -left);
  const x1 = Math.min(areaWidth, width - left);
  const rowsPerSlice = Math.max(1, Math.floor(BLEND_PIXELS_PER_SLICE / Math.max(1, x1 - x0)));
  const firstRow = Math.max(0, -top);
  for (let y = firstRow; y < areaHeight && top + y < height; y++) {
    if (y > firstRow && (y - firstRow) % rowsPerSlice === 0) await pause();
    const a = rows.first[y]! * areaWidth * 4;
    const b = rows.second[y]! * areaWidth * 4;
    const w = rows.weight[y]!;
    let out = ((top + y) * width + left + x0) * 3;
    for (let x = x0; x < x1; x++, out += 3) {
      const ia = a + x * 4;
      const ib = b + x * 4;
      const alphaA = stretched[ia + 3]!;
      const alpha = alphaA + (stretched[ib + 3]! - alphaA) * w;
      if (alpha <= 0) continue;
      const keep = 1 - alpha;
      for (let c = 0; c < 3; c++) {
        const ca = stretched[ia + c]!;
        // Truncated (the typed array drops the fraction), as libvips' composite does.
        rgb[out + c] = Math.min(255, ca + (stretched[ib + c]! - ca) * w + rgb[out + c]! * keep);
      }
    }
  }
}

/**
 * Output pixels blended between two pauses (turns of the event loop): about 0.4 ms of work here.
 * A render shares the agent's one JS thread with inference. Blending a 640x360 preview in one go
 * held that thread for 4-5 ms, and four cameras starting events together put about 20 ms of it in
 * front of the next inference round: the capture -> event tail at 4 cameras. In slices, a waiting
 * round runs between two of them.
 */
export const BLEND_PIXELS_PER_SLICE = 25_000;

/**
 * Stretched-map arrays, reused from render to render. A render spans several turns of the event
 * loop (its slices), so a fresh array would outlive young-generation collections and wait for a
 * full GC to be freed: 4 cameras at 10 fps rose to about 175 MB resident instead of 160. One per
 * render running at once (the snapshot store renders one at a time; a live heatmap view may add one).
 */
const stretchedScratch: Float32Array[] = [];
const MAX_SCRATCH_KEPT = 2;

function takeScratch(length: number): Float32Array {
  const index = stretchedScratch.findIndex((array) => array.length >= length);
  const array = index >= 0 ? stretchedScratch.splice(index, 1)[0]! : new Float32Array(length);
  return array.length === length ? array : array.subarray(0, length);
}

function giveBackScratch(array: Float32Array): void {
  const whole = new Float32Array(array.buffer, 0, array.buffer.byteLength / Float32Array.BYTES_PER_ELEMENT);
  stretchedScratch.push(whole);
  // The largest ones are kept: they serve every size.
  stretchedScratch.sort((a, b) => b.length - a.length).splice(MAX_SCRATCH_KEPT);
}

/**
 * Renders that bring the overlay code to V8's optimising compiler. Measured in a fresh node, a
 * render held the event loop for 31 and 34 ms the first two times, 6 ms the third, 2-4 ms from
 * then on: so the first events after a start (cameras often start theirs together) waited behind
 * about 30 ms each for the snapshots of the others.
 */
const WARM_UP_RENDERS = 4;

/**
 * Renders snapshots of a made-up frame, both kinds of base picture (a preview JPEG and a model
 * frame), and throws them away: run at start, before any camera, so that the first real events do
 * not pay for compiling the renderer. Touches no disk. Resolves to the milliseconds it took.
 */
export async function warmUpSnapshotRendering(renders = WARM_UP_RENDERS): Promise<number> {
  const began = performance.now();
  const width = 112;
  const height = 64;
  const pixels = new Uint8Array(width * height);
  const map = new Float32Array(width * height);
  for (let i = 0; i < pixels.length; i++) {
    pixels[i] = (i * 7) % 256;
    map[i] = (i % width) / width;
  }
  const preview = await sharp(Buffer.alloc(640 * 360 * 3, 128), { raw: { width: 640, height: 360, channels: 3 } }).jpeg().toBuffer();
  const box = { x: width / 4, y: height / 4, width: width / 2, height: height / 2 };
  for (let i = 0; i < renders; i++) {
    const image: SnapshotImage = i % 2 === 0 ? { pixels, width, height, channels: 1 } : { jpeg: preview };
    const input: SnapshotInput = { camera: 'warm-up', eventId: 'warm-up', image, map, mapWidth: width, mapHeight: height, box, source: { width, height } };
    await renderSnapshot(input);
    await originalJpeg(image);
  }
  return performance.now() - began;
}

function nextTurnOfEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

const BOX_COLOUR = [0xff, 0x2d, 0x2d] as const;

/** Width of the box outline in output pixels. */
function boxStroke(width: number, height: number): number {
  return Math.max(3, Math.round(Math.min(width, height) / 120));
}

/**
 * Draws the box outline in #ff2d2d into the RGB picture, anti-aliased by pixel coverage. The
 * stroke runs just inside the box (and inside the image), so it never hides pixels outside the
 * box and a box on the image edge stays fully visible.
 */
function drawBoxOutline(rgb: Uint8Array, width: number, height: number, box: Box): void {
  const stroke = boxStroke(width, height);
  // The outline's outer edge, on the tenth of a pixel as the SVG rectangle it replaces had it.
  const tenth = (value: number): number => Math.round(value * 10) / 10;
  const half = stroke / 2;
  const centreLeft = tenth(Math.max(0, box.x) + half);
  const centreTop = tenth(Math.max(0, box.y) + half);
  const centreWidth = tenth(Math.max(0, Math.min(width, box.x + box.width) - half - (Math.max(0, box.x) + half)));
  const centreHeight = tenth(Math.max(0, Math.min(height, box.y + box.height) - half - (Math.max(0, box.y) + half)));
  if (!(centreWidth > 0 && centreHeight > 0)) return; // an empty rectangle draws nothing
  const outer = { x0: centreLeft - half, y0: centreTop - half, x1: centreLeft + centreWidth + half, y1: centreTop + centreHeight + half };
  const inner = { x0: outer.x0 + stroke, y0: outer.y0 + stroke, x1: outer.x1 - stroke, y1: outer.y1 - stroke };
  const hasInner = inner.x1 > inner.x0 && inner.y1 > inner.y0;
  /** Part of pixel [i, i + 1) inside [from, to). */
  const cover = (i: number, from: number, to: number): number => Math.max(0, Math.min(to, i + 1) - Math.max(from, i));
  const firstColumn = Math.max(0, Math.floor(outer.x0));
  const endColumn = Math.min(width, Math.ceil(outer.x1));
  const outerX = new Float32Array(endColumn - firstColumn);
  const innerX = new Float32Array(endColumn - firstColumn);
  for (let x = firstColumn; x < endColumn; x++) {
    outerX[x - firstColumn] = cover(x, outer.x0, outer.x1);
    innerX[x - firstColumn] = hasInner ? cover(x, inner.x0, inner.x1) : 0;
  }
  // Columns fully inside the inner rectangle, skipped on rows fully inside it too.
  const innerFirst = hasInner ? Math.ceil(inner.x0) : endColumn;
  const innerEnd = hasInner ? Math.floor(inner.x1) : endColumn;
  for (let y = Math.max(0, Math.floor(outer.y0)); y < Math.min(height, Math.ceil(outer.y1)); y++) {
    const outerY = cover(y, outer.y0, outer.y1);
    const innerY = hasInner ? cover(y, inner.y0, inner.y1) : 0;
    for (let x = firstColumn; x < endColumn; x++) {
      if (innerY === 1 && x === innerFirst && innerEnd > innerFirst) {
        x = innerEnd - 1;
        continue;
      }
      const coverage = outerX[x - firstColumn]! * outerY - innerX[x - firstColumn]! * innerY;
      if (coverage <= 0) continue;
      const out = (y * width + x) * 3;
      for (let c = 0; c < 3; c++) {
        rgb[out + c] = Math.min(255, BOX_COLOUR[c]! * coverage + rgb[out + c]! * (1 - coverage));
      }
    }
  }
}

interface DecodedBase {
  /** Interleaved RGB of the output image. */
  rgb: Buffer;
  width: number;
  height: number;
  source: Size;
  /** The part of the source the output image shows (source pixels). */
  view: Box;
  /** Output pixels per source pixel. */
  scaleX: number;
  scaleY: number;
}

/** The picture under the overlay as RGB, plus how its pixels relate to the source's. */
async function decodeBase(input: SnapshotInput): Promise<DecodedBase> {
  if ('jpeg' in input.image) {
    const { data, info } = await sharp(input.image.jpeg, { failOn: 'error' })
      .removeAlpha()
      .toColourspace('srgb')
      .raw()
      .toBuffer({ resolveWithObject: true });
    const rgb = info.channels === 3 ? data : expandToRgb(data, info.width, info.height, info.channels);
    const source = input.source ?? { width: info.width, height: info.height };
    return {
      rgb,
      width: info.width,
      height: info.height,
      source,
      view: { x: 0, y: 0, ...source },
      scaleX: info.width / source.width,
      scaleY: info.height / source.height,
    };
  }
  const { pixels, width: frameWidth, height: frameHeight, channels } = input.image;
  if (pixels.length < frameWidth * frameHeight * channels) {
    throw new RangeError(`frame has ${pixels.length} bytes, expected ${frameWidth}x${frameHeight}x${channels}`);
  }
  const source = input.source ?? { width: frameWidth, height: frameHeight };
  // The model-input frame is the crop stretched to the model's size: show it at the
  // crop's own aspect ratio again, enlarged so the operator can see something.
  const view = clampBox(input.crop ?? { x: 0, y: 0, ...source }, source);
  const enlarge = UPSCALED_LONG_SIDE / Math.max(view.width, view.height);
  const width = Math.max(1, Math.round(view.width * enlarge));
  const height = Math.max(1, Math.round(view.height * enlarge));
  const { data, info } = await sharp(pixels, { raw: { width: frameWidth, height: frameHeight, channels } })
    .resize(width, height, { fit: 'fill', kernel: 'cubic' })
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  const rgb = info.channels === 3 ? data : expandToRgb(data, width, height, info.channels);
  return { rgb, width, height, source, view, scaleX: width / view.width, scaleY: height / view.height };
}

function expandToRgb(data: Buffer, width: number, height: number, channels: number): Buffer {
  const rgb = Buffer.alloc(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    const v = data[i * channels]!;
    rgb[i * 3] = v;
    rgb[i * 3 + 1] = v;
    rgb[i * 3 + 2] = v;
  }
  return rgb;
}

/**
 * RGBA pixels: turbo colours with opacity growing with the value, so normal parts of
 * the frame stay visible and only the anomaly lights up.
 */
export function colourMap(map: Float32Array, width: number, height: number, level?: { low: number; high: number }): Buffer {
  let low = level?.low ?? Infinity;
  let high = level?.high ?? -Infinity;
  if (!level) {
    for (const value of map) {
      if (value < low) low = value;
      if (value > high) high = value;
    }
  }
  const span = high - low;
  const rgba = Buffer.alloc(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    const value = map[i]!;
    const t = span > 0 && Number.isFinite(value) ? Math.min(1, Math.max(0, (value - low) / span)) : 0;
    rgba[i * 4] = turboChannel(TURBO.red, t);
    rgba[i * 4 + 1] = turboChannel(TURBO.green, t);
    rgba[i * 4 + 2] = turboChannel(TURBO.blue, t);
    rgba[i * 4 + 3] = Math.round(255 * OVERLAY_MAX_ALPHA * t);
  }
  return rgba;
}

/** Google's Turbo colour map, polynomial approximation (A. Mikhailov, 2019): coefficients of t^0..t^5. */
const TURBO = {
  red: [0.13572138, 4.6153926, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
  green: [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
  blue: [0.1066733, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
};

/** One channel (0..255) of the colour at t: Horner's rule, no allocation (it runs for every map cell). */
function turboChannel(coefficients: readonly number[], t: number): number {
  let value = 0;
  for (let i = coefficients.length - 1; i >= 0; i--) value = value * t + coefficients[i]!;
  return Math.round(255 * Math.min(1, Math.max(0, value)));
}

function clampBox(box: Box, size: Size): Box {
  const x = Math.min(Math.max(0, box.x), size.width - 1);
  const y = Math.min(Math.max(0, box.y), size.height - 1);
  return { x, y, width: Math.max(1, Math.min(box.width, size.width - x)), height: Math.max(1, Math.min(box.height, size.height - y)) };
}

function writeError(error: unknown, target: string, dir: string): LinewatchError {
  const code = (error as NodeJS.ErrnoException).code;
  const what = `cannot write snapshot ${target}: ${messageOf(error)}`;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return new LinewatchError(what, { hint: `the disk holding ${dir} is full: free space there or lower snapshots.retain or snapshots.maxMegabytes`, cause: error });
  }
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new LinewatchError(what, {
      hint: `linewatch may not write to ${dir}: fix its owner or permissions, or point dataDir elsewhere (under systemd the unit allows only /var/lib/linewatch)`,
      cause: error,
    });
  }
  return new LinewatchError(what, { hint: `check that ${dir} is a writable directory`, cause: error });
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
