import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { UsageError } from '../errors.js';
import { loadImages, resolveImageLists } from '../image/load.js';
import { toInterleavedBytes, type ImageTensor } from '../image/tensor.js';
import { MANIFEST_FILE, MANIFEST_FORMAT_VERSION, readManifest, type Manifest } from '../model/manifest.js';
import type { QualityProfile } from '../scoring/faults.js';
import { lumaOf, QualityMeter, sceneReference } from '../scoring/quality.js';
import { decodeVideoFrames } from '../source/decode.js';

/** The scene reference's file in a bundle. */
export const REFERENCE_FILE = 'quality-reference.png';
/** Training frames more than this many pixels off the reference, in more than SHIFTED_SHARE of them: not one view. */
const SAME_VIEW_PX = 2;
const SHIFTED_SHARE = 0.05;

export interface LearnedQuality {
  profile: Omit<QualityProfile, 'reference'>;
  /** The per-pixel median of the frames' grey levels: the scene without what moves through it. */
  reference: Uint8Array;
}

/**
 * The normal ranges of the quality signals over normal frames (interleaved 8-bit, the
 * model's size and channels), and the scene reference the displacement check compares
 * with. The limits themselves are set at run time (faults.ts faultRules), so a config
 * can tighten them without relearning.
 */
export function learnQualityProfile(frames: readonly Uint8Array[], width: number, height: number, channels: 1 | 3): LearnedQuality {
  if (frames.length === 0) throw new RangeError('no frames to learn the quality profile from');
  const lumas = frames.map((frame) => Uint8Array.from(lumaOf(frame, width, height, channels)));
  const reference = medianFrame(lumas, width * height);
  const meter = new QualityMeter(width, height, 1, sceneReference(reference, width, height));
  const seen = { brightness: [Infinity, -Infinity], sharpness: [Infinity, -Infinity], clipped: 0, flatShare: 0, shiftX: 0, shiftY: 0, shifted: 0 };
  for (const luma of lumas) {
    const signals = meter.measure(luma);
    seen.brightness = [Math.min(seen.brightness[0]!, signals.brightness), Math.max(seen.brightness[1]!, signals.brightness)];
    seen.sharpness = [Math.min(seen.sharpness[0]!, signals.sharpness), Math.max(seen.sharpness[1]!, signals.sharpness)];
    seen.clipped = Math.max(seen.clipped, signals.clipped);
    seen.flatShare = Math.max(seen.flatShare, signals.flatShare);
    seen.shiftX = Math.max(seen.shiftX, Math.abs(signals.shiftX));
    seen.shiftY = Math.max(seen.shiftY, Math.abs(signals.shiftY));
    if (Math.abs(signals.shiftX) > SAME_VIEW_PX || Math.abs(signals.shiftY) > SAME_VIEW_PX) seen.shifted++;
  }
  const oneView = seen.shifted <= SHIFTED_SHARE * lumas.length;
  return {
    profile: {
      frames: lumas.length,
      brightness: { min: round(seen.brightness[0]!), max: round(seen.brightness[1]!) },
      clipped: { max: round(seen.clipped) },
      flatShare: { max: round(seen.flatShare) },
      sharpness: { min: round(seen.sharpness[0]!), max: round(seen.sharpness[1]!) },
      ...(oneView ? { shift: { maxX: seen.shiftX, maxY: seen.shiftY } } : {}),
    },
    reference,
  };
}

/**
 * Writes the profile and its reference image into an existing bundle. The manifest is
 * rewritten atomically as it was, plus `quality` (and the format version that has it).
 */
export async function writeQualityProfile(bundleDir: string, learned: LearnedQuality): Promise<Manifest> {
  const file = path.join(bundleDir, MANIFEST_FILE);
  const current = await readManifest(bundleDir);
  const { width, height } = current.input;
  await writeFile(path.join(bundleDir, REFERENCE_FILE), await referencePng(learned, width, height));
  const raw = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  const next = { ...raw, formatVersion: MANIFEST_FORMAT_VERSION, quality: { ...learned.profile, reference: REFERENCE_FILE } };
  await writeFile(`${file}.tmp`, JSON.stringify(next, null, 2) + '\n');
  await rename(`${file}.tmp`, file);
  return readManifest(bundleDir);
}

/** The scene reference as the grey PNG a bundle holds. */
export async function referencePng(learned: LearnedQuality, width: number, height: number): Promise<Uint8Array> {
  return sharp(Buffer.from(learned.reference), { raw: { width, height, channels: 1 } }).png().toBuffer();
}

function medianFrame(lumas: readonly Uint8Array[], pixels: number): Uint8Array {
  const median = new Uint8Array(pixels);
  const histogram = new Uint32Array(256);
  const half = lumas.length / 2;
  for (let i = 0; i < pixels; i++) {
    histogram.fill(0);
    for (const luma of lumas) histogram[luma[i]!]!++;
    let count = 0;
    let level = 0;
    while (level < 255 && count + histogram[level]! < half) count += histogram[level++]!;
    median[i] = level;
  }
  return median;
}

function round(value: number): number {
  return Math.round(value * 1e4) / 1e4;
}

export interface ProfileBundleOptions {
  /** The bundle to write the profile into. */
  model: string;
  /** Normal footage of the camera: a video file or stream URL ... */
  video?: string;
  start?: number;
  duration?: number;
  fps?: number;
  /** The camera's crop (fractions of the video frame), so the profile sees what the model sees. */
  crop?: { x: number; y: number; width: number; height: number };
  /** ... or folders / list files of normal images. */
  images?: readonly string[];
  ffmpegPath?: string;
}

/**
 * `linewatch quality-profile`: learns the profile from normal footage at the bundle's input
 * size and writes it into the bundle, for bundles trained before profiles existed or on
 * other footage than the camera now shows. The model itself is not touched.
 */
export async function profileBundle(options: ProfileBundleOptions): Promise<{ manifest: Manifest; learned: LearnedQuality }> {
  const manifest = await readManifest(options.model);
  const { width, height, channels } = manifest.input;
  if ((options.images?.length ? 1 : 0) + (options.video ? 1 : 0) !== 1) {
    throw new UsageError('give either --video or --images', { hint: 'e.g. --video line1.mp4 --duration 60, or --images ./normal/' });
  }
  let frames: ImageTensor[];
  if (options.video) {
    frames = await decodeVideoFrames(options.video, {
      width,
      height,
      channels,
      start: options.start,
      duration: options.duration,
      fps: options.fps ?? 10,
      cropFraction: options.crop,
      ffmpegPath: options.ffmpegPath,
    });
  } else {
    frames = (await loadImages(await resolveImageLists(options.images!), { width, height, channels })).images;
  }
  if (frames.length === 0) throw new UsageError('no frames could be read from the footage given', { hint: 'check the path, and --start/--duration against the video' });
  const learned = learnQualityProfile(frames.map((frame) => toInterleavedBytes(frame)), width, height, channels);
  return { manifest: await writeQualityProfile(options.model, learned), learned };
}
