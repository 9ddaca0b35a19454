/**
 * renderSnapshot as it was before the overlay was drawn in JS: sharp resizes the colour map
 * (linear), composites it and an SVG box outline (librsvg) onto the base. The reference picture
 * the hand-written overlay must match (tests/unit/snapshot.test.ts) and the baseline it is timed
 * against (bench/snapshot-render.ts), with the map both draw.
 */
import sharp, { type OverlayOptions } from 'sharp';
import { colourMap, type SnapshotInput } from '../src/publish/snapshot.js';
import type { Box, Size } from '../src/scoring/region.js';

export async function referenceRender(input: SnapshotInput): Promise<Buffer> {
  const { map, mapWidth, mapHeight } = input;
  const base = await referenceBase(input);
  const { width, height } = base;
  const region = clampBox(input.crop ?? { x: 0, y: 0, ...base.source }, base.source);
  const left = Math.round((region.x - base.view.x) * base.scaleX);
  const top = Math.round((region.y - base.view.y) * base.scaleY);
  const overlayWidth = Math.max(1, Math.min(width - left, Math.round(region.width * base.scaleX)));
  const overlayHeight = Math.max(1, Math.min(height - top, Math.round(region.height * base.scaleY)));
  const overlay = await sharp(colourMap(map, mapWidth, mapHeight, input.scoreLevel), { raw: { width: mapWidth, height: mapHeight, channels: 4 } })
    .resize(overlayWidth, overlayHeight, { fit: 'fill', kernel: 'linear' })
    .raw()
    .toBuffer();
  const layers: OverlayOptions[] = [{ input: overlay, raw: { width: overlayWidth, height: overlayHeight, channels: 4 }, left, top }];
  if (input.box) {
    const x = (input.box.x - base.view.x) * base.scaleX;
    const y = (input.box.y - base.view.y) * base.scaleY;
    layers.push({ input: Buffer.from(boxSvg(width, height, { x, y, width: input.box.width * base.scaleX, height: input.box.height * base.scaleY })), left: 0, top: 0 });
  }
  return sharp(base.rgb, { raw: { width, height, channels: 3 } }).composite(layers).jpeg({ quality: 85, chromaSubsampling: '4:4:4' }).toBuffer();
}

async function referenceBase(input: SnapshotInput): Promise<{ rgb: Buffer; width: number; height: number; source: Size; view: Box; scaleX: number; scaleY: number }> {
  if ('jpeg' in input.image) {
    const { data, info } = await sharp(input.image.jpeg, { failOn: 'error' }).removeAlpha().toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
    const rgb = info.channels === 3 ? data : expandToRgb(data, info.width, info.height, info.channels);
    const source = input.source ?? { width: info.width, height: info.height };
    return { rgb, width: info.width, height: info.height, source, view: { x: 0, y: 0, ...source }, scaleX: info.width / source.width, scaleY: info.height / source.height };
  }
  const { pixels, width: frameWidth, height: frameHeight, channels } = input.image;
  const source = input.source ?? { width: frameWidth, height: frameHeight };
  const view = clampBox(input.crop ?? { x: 0, y: 0, ...source }, source);
  const enlarge = 640 / Math.max(view.width, view.height);
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
  for (let i = 0; i < width * height; i++) rgb.fill(data[i * channels]!, i * 3, i * 3 + 3);
  return rgb;
}

function boxSvg(width: number, height: number, box: Box): string {
  const stroke = Math.max(3, Math.round(Math.min(width, height) / 120));
  const half = stroke / 2;
  const left = Math.max(0, box.x) + half;
  const top = Math.max(0, box.y) + half;
  const right = Math.min(width, box.x + box.width) - half;
  const bottom = Math.min(height, box.y + box.height) - half;
  const w = Math.max(0, right - left);
  const h = Math.max(0, bottom - top);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}">` +
    `<rect x="${left.toFixed(1)}" y="${top.toFixed(1)}" width="${w.toFixed(1)}" height="${h.toFixed(1)}" fill="none" stroke="#ff2d2d" stroke-width="${stroke}"/>` +
    '</svg>';
}

function clampBox(box: Box, size: Size): Box {
  const x = Math.min(Math.max(0, box.x), size.width - 1);
  const y = Math.min(Math.max(0, box.y), size.height - 1);
  return { x, y, width: Math.max(1, Math.min(box.width, size.width - x)), height: Math.max(1, Math.min(box.height, size.height - y)) };
}

/** A 112x64 map like the model's: a blurred hot spot and a weaker one on seeded speckle. */
export function realisticMap(width = 112, height = 64): Float32Array {
  let seed = 12345;
  const random = (): number => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const map = new Float32Array(width * height);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      map[y * width + x] = 0.05 + 0.08 * random() + 0.9 * Math.exp(-((x - 70) ** 2 / 60 + (y - 26) ** 2 / 30)) + 0.4 * Math.exp(-((x - 20) ** 2 + (y - 50) ** 2) / 40);
    }
  }
  return map;
}
