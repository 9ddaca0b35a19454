import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { UsageError } from '../errors.js';
import { fromInterleavedBytes, type ImageTensor } from './tensor.js';

/** File types a folder spec picks up. */
export const IMAGE_EXTENSIONS = ['.jpg', '.jpeg', '.png', '.bmp', '.webp'] as const;

export interface ImageSize {
  width: number;
  height: number;
  channels: 1 | 3;
}

export interface SkippedImage {
  path: string;
  reason: string;
}

export interface LoadedImages {
  images: ImageTensor[];
  /** Paths of `images`, in the same order (skipped files are left out). */
  paths: string[];
  skipped: SkippedImage[];
}

/**
 * Decoding 1000 full-size images at once would hold them all in memory;
 * a few at a time keeps both cores busy without that.
 */
export const LOAD_CONCURRENCY = 3;

const isImageFile = (name: string) => (IMAGE_EXTENSIONS as readonly string[]).includes(path.extname(name).toLowerCase());

/**
 * The images named by `spec`: a folder (its image files, sorted, not recursive) or a
 * list file (one path per line, relative to `root` if given, else to the list's folder;
 * blank lines and `#` comments ignored).
 *
 * Datasets such as Magnetic Tile keep a same-named `.png` mask beside each `.jpg`;
 * in a folder holding both `x.jpg` and `x.png` the `.png` is the mask and is not listed.
 */
export async function resolveImageList(spec: string, root?: string): Promise<string[]> {
  let info;
  try {
    info = await stat(spec);
  } catch (cause) {
    throw new UsageError(`image folder or list ${spec} does not exist`, {
      hint: 'pass a folder of .jpg/.png images or a text file listing one image path per line',
      cause,
    });
  }
  return info.isDirectory() ? listFolder(spec) : readListFile(spec, root);
}

/**
 * The images of several folders or list files, each named once (absolute paths): a picture named
 * twice (a folder and a list of it) would weigh double in training or in a profile.
 */
export async function resolveImageLists(specs: readonly string[], root?: string): Promise<string[]> {
  const lists = await Promise.all(specs.map((spec) => resolveImageList(spec, root)));
  return [...new Set(lists.flat().map((file) => path.resolve(file)))];
}

async function listFolder(folder: string): Promise<string[]> {
  const names = (await readdir(folder, { withFileTypes: true })).filter((e) => e.isFile() && isImageFile(e.name)).map((e) => e.name);
  const stems = new Set(names.filter((n) => path.extname(n).toLowerCase() !== '.png').map((n) => stemOf(n)));
  const images = names.filter((n) => path.extname(n).toLowerCase() !== '.png' || !stems.has(stemOf(n))).sort();
  if (images.length === 0) {
    throw new UsageError(`image folder ${folder} holds no images (${IMAGE_EXTENSIONS.join(', ')})`, {
      hint: 'point at the folder that holds the image files themselves (folders are not searched recursively), or pass a list file',
    });
  }
  return images.map((n) => path.join(folder, n));
}

async function readListFile(listFile: string, root: string | undefined): Promise<string[]> {
  const base = root ?? path.dirname(listFile);
  const text = await readFile(listFile, 'utf8');
  const entries = text
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'));
  if (entries.length === 0) {
    throw new UsageError(`image list ${listFile} names no images`, {
      hint: 'write one image path per line (relative to --root, or to the list file\'s folder); lines starting with # are comments',
    });
  }
  return entries.map((entry) => path.resolve(base, entry));
}

const stemOf = (file: string) => file.slice(0, file.length - path.extname(file).length);

/**
 * Rec. 601 luma weights: what ffmpeg's `gray` conversion uses, so a grey model sees
 * still images exactly as it sees camera frames (sharp's own greyscale differs for colour).
 */
const LUMA = [0.299, 0.587, 0.114] as const;

/** Decode one image, convert to grey or RGB, stretch to width x height, scale to [0,1] CHW. */
export async function loadImage(file: string, size: ImageSize): Promise<ImageTensor> {
  const { data, info } = await sharp(file, { failOn: 'error' })
    .rotate()
    .removeAlpha()
    .toColourspace('srgb')
    .resize(size.width, size.height, { fit: 'fill' })
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.channels !== 3) throw new Error(`decoded to ${info.channels} channels, expected RGB`);
  if (size.channels === 3) return fromInterleavedBytes(data, size.width, size.height, 3);
  const plane = size.width * size.height;
  const grey = new Float32Array(plane);
  for (let i = 0; i < plane; i++) {
    grey[i] = Math.round(LUMA[0] * data[3 * i]! + LUMA[1] * data[3 * i + 1]! + LUMA[2] * data[3 * i + 2]!) / 255;
  }
  return { width: size.width, height: size.height, channels: 1, data: grey };
}

/**
 * Load many images at `size`. Unreadable or corrupt files are skipped and reported;
 * when more than half fail the input is probably wrong, which is a UsageError.
 */
export async function loadImages(paths: readonly string[], size: ImageSize): Promise<LoadedImages> {
  const results = await mapWithConcurrency(paths, LOAD_CONCURRENCY, async (file) => {
    try {
      return { file, image: await loadImage(file, size) };
    } catch (error) {
      return { file, reason: describeLoadFailure(error) };
    }
  });
  const loaded: LoadedImages = { images: [], paths: [], skipped: [] };
  for (const r of results) {
    if (r.image) {
      loaded.images.push(r.image);
      loaded.paths.push(r.file);
    } else {
      loaded.skipped.push({ path: r.file, reason: r.reason });
    }
  }
  assertMostlyReadable(paths.length, loaded.skipped);
  return loaded;
}

/** Throws when more than half of `total` images could not be loaded, quoting a few reasons. */
export function assertMostlyReadable(total: number, skipped: readonly SkippedImage[]): void {
  if (skipped.length === 0 || skipped.length * 2 <= total) return;
  const examples = skipped
    .slice(0, 3)
    .map((s) => `  ${s.path}: ${s.reason}`)
    .join('\n');
  throw new UsageError(`${skipped.length} of ${total} images could not be loaded, for example:\n${examples}`, {
    hint: 'check the image paths (list entries are relative to --root, or to the list file\'s folder) and that the files are images',
  });
}

export function describeLoadFailure(error: unknown): string {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ENOENT') return 'file not found';
  const message = error instanceof Error ? error.message : String(error);
  if (/missing|no such file/i.test(message)) return 'file not found';
  return message.split('\n')[0]!.trim() || 'unreadable';
}

/**
 * The ground-truth mask beside `imagePath` (same name, `.png`), resized to width x height;
 * 1 = defect. Masks have soft edges, so pixels count as defect above 127.
 * Undefined when there is no mask file (or the image is itself that `.png`).
 */
export async function loadMask(imagePath: string, width: number, height: number): Promise<Uint8Array | undefined> {
  const maskPath = `${stemOf(imagePath)}.png`;
  if (maskPath === imagePath) return undefined;
  try {
    if (!(await stat(maskPath)).isFile()) return undefined;
  } catch {
    return undefined;
  }
  const data = await sharp(maskPath).removeAlpha().greyscale().resize(width, height, { fit: 'fill' }).raw().toBuffer();
  const mask = new Uint8Array(width * height);
  for (let i = 0; i < mask.length; i++) mask[i] = data[i]! > 127 ? 1 : 0;
  return mask;
}

/** Runs `task` over `items` with at most `limit` in flight; results keep the input order. */
export async function mapWithConcurrency<T, R>(items: readonly T[], limit: number, task: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index]!, index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

/**
 * 3 when any of the first `sample` readable images is in colour, else 1: a folder of
 * greyscale parts trains a grey model, colour defects keep their colour. Images stored
 * as RGB but holding grey pixels count as colour (harmless: the same information, a
 * little slower).
 */
export async function detectChannels(paths: readonly string[], sample = 8): Promise<1 | 3> {
  for (const file of paths.slice(0, sample)) {
    try {
      const { channels, space } = await sharp(file).metadata();
      if (space !== 'b-w' && (channels ?? 1) >= 3) return 3;
    } catch {
      // Unreadable files are reported (and skipped) when the images are loaded.
    }
  }
  return 1;
}
