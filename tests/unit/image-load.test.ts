import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { detectChannels, loadImages, loadMask, resolveImageList } from '../../src/image/load.js';

const DATA = path.resolve('../shared/data/magnetic-tile');
const hasData = existsSync(path.join(DATA, 'splits', 'differnet_test_defect.txt'));
if (!hasData) console.warn(`skipping Magnetic Tile checks: ${DATA} is absent (see /work/shared/data/README.md)`);

let dir: string;

const solid = (width: number, height: number, rgb: [number, number, number]) =>
  sharp({ create: { width, height, channels: 3, background: { r: rgb[0], g: rgb[1], b: rgb[2] } } });

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'linewatch-load-'));
  await mkdir(path.join(dir, 'imgs', 'nested'), { recursive: true });
  await solid(30, 20, [255, 0, 0]).jpeg({ quality: 100 }).toFile(path.join(dir, 'imgs', 'a.jpg'));
  // a.png beside a.jpg is a.jpg's mask: a white square with a soft (grey 100) rim on black.
  const mask = Buffer.alloc(30 * 20);
  for (let y = 5; y < 15; y++) for (let x = 10; x < 20; x++) mask[y * 30 + x] = y === 5 || x === 10 ? 100 : 255;
  await sharp(mask, { raw: { width: 30, height: 20, channels: 1 } }).png().toFile(path.join(dir, 'imgs', 'a.png'));
  await solid(8, 50, [0, 0, 255]).png().toFile(path.join(dir, 'imgs', 'b.png'));
  await solid(64, 64, [128, 128, 128]).webp({ lossless: true }).toFile(path.join(dir, 'imgs', 'c.webp'));
  await solid(10, 10, [0, 255, 0]).png().toFile(path.join(dir, 'imgs', 'nested', 'd.png'));
  await writeFile(path.join(dir, 'imgs', 'notes.txt'), 'not an image');
  await writeFile(path.join(dir, 'broken.jpg'), Buffer.from('this is not a jpeg at all'));
  await mkdir(path.join(dir, 'empty'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('resolveImageList', () => {
  it('lists a folder\'s images sorted, not recursive, leaving out masks beside .jpg files', async () => {
    const files = await resolveImageList(path.join(dir, 'imgs'));
    expect(files.map((f) => path.basename(f))).toEqual(['a.jpg', 'b.png', 'c.webp']);
  });

  it('reads list files relative to the list\'s folder or to root, skipping comments and blank lines', async () => {
    const list = path.join(dir, 'list.txt');
    await writeFile(list, '# normal images\nimgs/b.png\n\n  imgs/a.jpg  \r\n# done\n');
    expect(await resolveImageList(list)).toEqual([path.join(dir, 'imgs', 'b.png'), path.join(dir, 'imgs', 'a.jpg')]);
    const rooted = path.join(dir, 'empty', 'rooted.txt');
    await writeFile(rooted, 'imgs/c.webp\n');
    expect(await resolveImageList(rooted, dir)).toEqual([path.join(dir, 'imgs', 'c.webp')]);
  });

  it('says which path is wrong for missing folders, empty folders and empty lists', async () => {
    await expect(resolveImageList(path.join(dir, 'nope'))).rejects.toThrow(UsageError);
    await expect(resolveImageList(path.join(dir, 'nope'))).rejects.toThrow(/nope does not exist/);
    await expect(resolveImageList(path.join(dir, 'empty'))).rejects.toThrow(/empty holds no images/);
    const blank = path.join(dir, 'blank.txt');
    await writeFile(blank, '# nothing\n\n');
    await expect(resolveImageList(blank)).rejects.toThrow(/blank.txt names no images/);
  });
});

describe('loadImages', () => {
  it('stretches mixed sizes to the model size as planar [0,1] grey or RGB', async () => {
    const files = await resolveImageList(path.join(dir, 'imgs'));
    const rgb = await loadImages(files, { width: 16, height: 12, channels: 3 });
    expect(rgb.skipped).toEqual([]);
    expect(rgb.paths).toEqual(files);
    const plane = 16 * 12;
    for (const image of rgb.images) {
      expect(image).toMatchObject({ width: 16, height: 12, channels: 3 });
      expect(image.data).toHaveLength(plane * 3);
    }
    const red = rgb.images[0]!.data;
    expect(red[5]).toBeGreaterThan(0.95); // R plane
    expect(red[plane + 5]).toBeLessThan(0.05); // G plane
    expect(red[2 * plane + 5]).toBeLessThan(0.05); // B plane
    const blue = rgb.images[1]!.data;
    expect(blue[2 * plane + 100]).toBeCloseTo(1, 5);
    const grey = await loadImages(files, { width: 16, height: 12, channels: 1 });
    expect(grey.images[2]!.data).toHaveLength(plane);
    expect(grey.images[2]!.data[50]).toBeCloseTo(128 / 255, 2);
    // Rec. 601 luma, as ffmpeg's gray: pure red -> round(0.299 * 255) = 76, pure blue -> 29.
    expect(Math.abs(grey.images[0]!.data[50]! * 255 - 76)).toBeLessThanOrEqual(1.5);
    expect(Math.abs(grey.images[1]!.data[50]! * 255 - 29)).toBeLessThanOrEqual(1.5);
  });

  it('skips unreadable files with a reason and fails when more than half are bad', async () => {
    const good = path.join(dir, 'imgs', 'a.jpg');
    const broken = path.join(dir, 'broken.jpg');
    const missing = path.join(dir, 'missing.png');
    const size = { width: 8, height: 8, channels: 1 } as const;
    const result = await loadImages([good, broken, good, missing], size);
    expect(result.images).toHaveLength(2);
    expect(result.paths).toEqual([good, good]);
    expect(result.skipped.map((s) => s.path)).toEqual([broken, missing]);
    expect(result.skipped[1]!.reason).toBe('file not found');
    expect(result.skipped[0]!.reason.length).toBeGreaterThan(3);
    const failure = loadImages([good, broken, missing], size);
    await expect(failure).rejects.toThrow(UsageError);
    await expect(loadImages([good, broken, missing], size)).rejects.toThrow(/2 of 3 images could not be loaded[\s\S]*missing.png: file not found/);
  });
});

describe('detectChannels', () => {
  it('says 3 for colour images and 1 for greyscale ones, skipping unreadable files', async () => {
    const grey = path.join(dir, 'grey.png');
    await sharp(Buffer.alloc(16 * 16, 90), { raw: { width: 16, height: 16, channels: 1 } }).toColourspace('b-w').png().toFile(grey);
    expect(await detectChannels([grey])).toBe(1);
    expect(await detectChannels([path.join(dir, 'broken.jpg'), grey])).toBe(1);
    expect(await detectChannels([grey, path.join(dir, 'imgs', 'b.png')])).toBe(3);
  });
});

describe('loadMask', () => {
  it('reads the same-named .png beside an image, resized and thresholded above 127', async () => {
    const mask = await loadMask(path.join(dir, 'imgs', 'a.jpg'), 30, 20);
    expect(mask).toBeDefined();
    // The 255 core is 9x9 (the rim at 100 is below the threshold).
    expect(mask!.reduce((a, b) => a + b, 0)).toBe(81);
    expect(mask![10 * 30 + 15]).toBe(1);
    expect(mask![5 * 30 + 15]).toBe(0);
    expect(mask![0]).toBe(0);
    const small = await loadMask(path.join(dir, 'imgs', 'a.jpg'), 15, 10);
    expect(small).toHaveLength(150);
    expect(small![5 * 15 + 7]).toBe(1);
  });

  it('is undefined without a mask, or for a .png image itself', async () => {
    expect(await loadMask(path.join(dir, 'imgs', 'c.webp'), 8, 8)).toBeUndefined();
    expect(await loadMask(path.join(dir, 'imgs', 'b.png'), 8, 8)).toBeUndefined();
  });
});

describe.skipIf(!hasData)('Magnetic Tile', () => {
  it('resolves the standard split with --root and loads images and defect masks', async () => {
    const defects = await resolveImageList(path.join(DATA, 'splits', 'differnet_test_defect.txt'), DATA);
    expect(defects).toHaveLength(392);
    const sample = defects.filter((_, i) => i % 40 === 0);
    const loaded = await loadImages(sample, { width: 64, height: 64, channels: 1 });
    expect(loaded.skipped).toEqual([]);
    expect(loaded.images).toHaveLength(sample.length);
    const masks = await Promise.all(sample.map((f) => loadMask(f, 64, 64)));
    const defectPixels = masks.map((m) => m!.reduce((a, b) => a + b, 0));
    expect(defectPixels.every((n) => n > 0 && n < 64 * 64 / 2)).toBe(true);
    const normalFolder = await resolveImageList(path.join(DATA, 'MT_Free', 'Imgs'));
    expect(normalFolder).toHaveLength(952);
    expect(normalFolder.every((f) => f.endsWith('.jpg'))).toBe(true);
  });
});

describe.skipIf(!hasData)('Magnetic Tile channels', () => {
  it('are greyscale JPEGs, so training picks one channel', async () => {
    const paths = await resolveImageList(path.join(DATA, 'splits', 'differnet_train_good.txt'), DATA);
    expect(await detectChannels(paths)).toBe(1);
  });
});
