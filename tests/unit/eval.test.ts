import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Command } from 'commander';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerEval } from '../../src/cli/eval.js';
import { UsageError } from '../../src/errors.js';
import { evaluate, type EvalResult } from '../../src/toolkit/eval/eval.js';
import { heatmapGridSize, ROC_SIZE } from '../../src/toolkit/eval/report.js';
import { loadImage, resolveImageList } from '../../src/image/load.js';
import { loadBundle, type LoadedBundle } from '../../src/model/bundle.js';
import { auroc, confusionAt } from '../../src/scoring/metrics.js';
import { seededRandom } from '../../src/toolkit/train/random.js';
import { trainBundle } from '../../src/toolkit/train/pipeline.js';

const SIZE = 32;
const MT = path.resolve('../shared/data/magnetic-tile');
const hasMagneticTile = existsSync(path.join(MT, 'splits', 'differnet_test_defect.txt'));
if (!hasMagneticTile) console.warn(`skipping the Magnetic Tile eval: ${MT} is absent (see /work/shared/data/README.md)`);

let dir: string;
let bundleDir: string;

/**
 * Smooth shaded surfaces (what a VAE reconstructs well); anomalous ones carry a sharp
 * bright square, with a same-named .png mask as Magnetic Tile has.
 */
async function writeSurface(file: string, random: () => number, defect: boolean): Promise<void> {
  const size = 96;
  const pixels = Buffer.alloc(size * size);
  const mask = Buffer.alloc(size * size);
  const [fx, fy, phase, base] = [1 + random() * 2, 1 + random() * 2, random() * 6, 70 + random() * 60];
  const square = { x: 16 + Math.floor(random() * 56), y: 16 + Math.floor(random() * 56), side: 14 + Math.floor(random() * 8) };
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const shade = base + 35 * Math.sin((fx * x) / size * Math.PI + phase) * Math.cos((fy * y) / size * Math.PI);
      const inside = defect && x >= square.x && x < square.x + square.side && y >= square.y && y < square.y + square.side;
      pixels[y * size + x] = Math.round(inside ? 250 : shade);
      mask[y * size + x] = inside ? 255 : 0;
    }
  }
  await sharp(pixels, { raw: { width: size, height: size, channels: 1 } }).jpeg({ quality: 95 }).toFile(file);
  if (defect) await sharp(mask, { raw: { width: size, height: size, channels: 1 } }).png().toFile(file.replace(/\.jpg$/, '.png'));
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'linewatch-eval-'));
  const random = seededRandom(42);
  for (const [folder, count, defect] of [['train', 40, false], ['normal', 16, false], ['anomalous', 16, true]] as const) {
    await mkdir(path.join(dir, folder));
    for (let i = 0; i < count; i++) await writeSurface(path.join(dir, folder, `${folder}-${String(i).padStart(2, '0')}.jpg`), random, defect);
  }
  // One corrupt file among the normal images: evaluation skips and counts it.
  await writeFile(path.join(dir, 'normal', 'zz-corrupt.jpg'), Buffer.from('not a jpeg'));
  bundleDir = path.join(dir, 'bundle');
  await trainBundle({
    images: path.join(dir, 'train'),
    width: SIZE,
    height: SIZE,
    channels: 1,
    normalisation: 'unit',
    filters: [8, 16],
    latentDim: 16,
    beta: 0.1,
    epochs: 8,
    batchSize: 8,
    seed: 1,
    valFraction: 0.2,
    scoring: { scorer: 'hybrid', border: 1 },
    targetFpr: 0.1,
    int8: true,
    out: bundleDir,
    force: false,
  });
}, 120_000);

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('evaluate', () => {
  let bundle: LoadedBundle;
  let result: EvalResult;

  beforeAll(async () => {
    bundle = await loadBundle(bundleDir, { variant: 'fp32', threads: 1 });
    const normal = await resolveImageList(path.join(dir, 'normal'));
    const anomalous = await resolveImageList(path.join(dir, 'anomalous'));
    result = await evaluate(bundle, normal, anomalous, { masks: true, batch: 5 });
  }, 60_000);

  afterAll(async () => {
    await bundle?.dispose();
  });

  it('counts images, skips the corrupt one, and keeps a map and mask per image', () => {
    expect(result.counts).toEqual({ normal: 16, anomalous: 16, skipped: 1 });
    expect(result.skipped[0]!.path).toMatch(/zz-corrupt\.jpg$/);
    expect(result.images).toHaveLength(32);
    for (const image of result.images) {
      expect(image.map).toHaveLength(SIZE * SIZE);
      if (image.label === 'anomalous') expect(image.mask!.some((v) => v === 1)).toBe(true);
      else expect(image.mask).toBeUndefined();
    }
    expect(result).toMatchObject({ variant: 'fp32', scorer: 'hybrid', input: { width: SIZE, height: SIZE, channels: 1 }, batch: 5 });
  });

  it('reports metrics that agree with the per-image scores and the bundle calibration', () => {
    const pick = (label: string, key: 'score' | 'recon' | 'latent') => result.images.filter((r) => r.label === label).map((r) => r[key]);
    expect(result.imageAuroc).toBe(auroc(pick('normal', 'score'), pick('anomalous', 'score')));
    expect(result.components.recon.imageAuroc).toBe(auroc(pick('normal', 'recon'), pick('anomalous', 'recon')));
    expect(result.components.latent.imageAuroc).toBe(auroc(pick('normal', 'latent'), pick('anomalous', 'latent')));
    expect(result.components.hybrid.imageAuroc).toBe(result.imageAuroc);
    expect(result.threshold).toBe(bundle.manifest.calibration.fp32!.threshold);
    const confusion = confusionAt(result.threshold!, pick('normal', 'score'), pick('anomalous', 'score'));
    expect([result.tpr, result.fpr, result.f1]).toEqual([confusion.tpr, confusion.fpr, confusion.f1]);
    expect(result.msPerFrame).toBeCloseTo(result.inferenceMsPerFrame + result.scoringMsPerFrame, 9);
    expect(result.msPerFrame).toBeGreaterThan(0);
  });

  it('separates sharp bright defects from smooth surfaces, and finds them in the maps', () => {
    // A VAE cannot reconstruct a sharp square it never saw: the structural error must rank defects first.
    expect(result.components.recon.imageAuroc).toBeGreaterThan(0.9);
    expect(result.pixelAuroc).toBeGreaterThan(0.8);
    // The same maps and masks: AUPRO (per-region overlap up to 30% FPR) finds the squares too.
    expect(result.pixelAupro).toBeGreaterThan(0.5);
  });

  it('scores each image exactly as a single unbatched run through the bundle would', async () => {
    const sample = result.images[20]!;
    const image = await loadImage(sample.path, bundle.manifest.input);
    const outputs = await bundle.model.run(image.data, 1);
    const direct = bundle.scorer.score(image, outputs.recon, outputs.mu);
    expect(direct.score).toBeCloseTo(sample.score, 4);
    expect(direct.recon).toBeCloseTo(sample.recon, 5);
  });

  it('refuses an empty side', async () => {
    await expect(evaluate(bundle, [], [result.images[0]!.path])).rejects.toThrow(UsageError);
  });
});

/** Run `linewatch eval ...` in-process; returns what it printed. */
async function runCli(args: string[]): Promise<string> {
  const program = new Command('linewatch').exitOverride();
  registerEval(program);
  const printed: string[] = [];
  const log = vi.spyOn(console, 'log').mockImplementation((...parts: unknown[]) => void printed.push(parts.join(' ')));
  const error = vi.spyOn(console, 'error').mockImplementation(() => {});
  try {
    await program.parseAsync(['node', 'linewatch', 'eval', ...args]);
  } finally {
    log.mockRestore();
    error.mockRestore();
  }
  return printed.join('\n');
}

async function pngSize(file: string): Promise<{ width?: number; height?: number; format?: string }> {
  const { width, height, format } = await sharp(await readFile(file)).metadata();
  return { width, height, format };
}

describe('linewatch eval (CLI)', () => {
  it('prints the table, writes the JSON and a report with valid PNGs', async () => {
    const json = path.join(dir, 'out', 'eval.json');
    const report = path.join(dir, 'report');
    // List files exercise --root; the default variant is int8 where the bundle has one.
    const listOf = async (folder: string) => (await resolveImageList(path.join(dir, folder))).map((f) => path.relative(dir, f)).join('\n');
    await writeFile(path.join(dir, 'normal.txt'), await listOf('normal'));
    await writeFile(path.join(dir, 'anomalous.txt'), `# defects\n\n${await listOf('anomalous')}\n`);
    const printed = await runCli([
      '--model', bundleDir, '--normal', path.join(dir, 'normal.txt'), '--anomalous', path.join(dir, 'anomalous.txt'),
      '--root', dir, '--masks', '--json', json, '--report', report, '--batch', '7', '--threads', '1',
    ]);
    expect(printed).toMatch(/image AUROC\s+\d\.\d{3}/);
    expect(printed).toMatch(/16 normal, 16 anomalous, 1 skipped/);
    expect(printed).toMatch(/pixel AUPRO\s+\d\.\d{3} \(per-region overlap up to 30\.0% FPR\)/);
    expect(printed).toMatch(/int8/);
    const written = JSON.parse(await readFile(json, 'utf8'));
    expect(written).toMatchObject({ variant: 'int8', scorer: 'hybrid', counts: { normal: 16, anomalous: 16, skipped: 1 }, batch: 7 });
    for (const key of ['imageAuroc', 'pixelAuroc', 'pixelAupro', 'threshold', 'tpr', 'fpr', 'f1', 'msPerFrame']) expect(typeof written[key]).toBe('number');
    expect(typeof written.components.recon.imageAuroc).toBe('number');
    expect(typeof written.components.latent.imageAuroc).toBe('number');
    expect(written.model).toBe(path.resolve(bundleDir));
    expect(written.perImage).toHaveLength(32);
    expect(await pngSize(path.join(report, 'roc.png'))).toEqual({ ...ROC_SIZE, format: 'png' });
    expect(await pngSize(path.join(report, 'heatmaps.png'))).toEqual({ ...heatmapGridSize(8, 144), format: 'png' });
    const html = await readFile(path.join(report, 'index.html'), 'utf8');
    expect(html).toContain('src="roc.png"');
    expect(html).toContain('src="heatmaps.png"');
    expect(html).toContain(written.imageAuroc.toFixed(3));
  }, 60_000);

  it('without --masks has no pixel AUROC; a missing folder is a usage error naming it', async () => {
    const json = path.join(dir, 'plain.json');
    await runCli(['--model', bundleDir, '--normal', path.join(dir, 'normal'), '--anomalous', path.join(dir, 'anomalous'), '--variant', 'fp32', '--json', json]);
    const plain = JSON.parse(await readFile(json, 'utf8'));
    expect(plain).toMatchObject({ pixelAuroc: null, pixelAupro: null, variant: 'fp32' });
    // Several folders per label (one per defect type, say) are evaluated together.
    const twice = path.join(dir, 'twice.json');
    await runCli(['--model', bundleDir, '--normal', path.join(dir, 'normal'), '--anomalous', path.join(dir, 'anomalous'), path.join(dir, 'anomalous'), '--json', twice]);
    expect(JSON.parse(await readFile(twice, 'utf8')).counts).toEqual({ ...plain.counts, anomalous: 2 * plain.counts.anomalous });
    await expect(runCli(['--model', bundleDir, '--normal', path.join(dir, 'nowhere'), '--anomalous', path.join(dir, 'anomalous')])).rejects.toThrow(
      /nowhere does not exist/,
    );
  }, 60_000);
});

describe.skipIf(!hasMagneticTile)('Magnetic Tile (real data, standard split lists with --root)', () => {
  it('evaluates grey tiles with their ground-truth masks', async () => {
    const take = async (list: string, every: number) => (await resolveImageList(path.join(MT, 'splits', list), MT)).filter((_, i) => i % every === 0);
    const bundle = await loadBundle(bundleDir, { variant: 'int8', threads: 1 });
    try {
      const result = await evaluate(bundle, await take('differnet_test_good.txt', 10), await take('differnet_test_defect.txt', 20), { masks: true });
      expect(result.counts).toEqual({ normal: 20, anomalous: 20, skipped: 0 });
      expect(result.pixelAuroc).not.toBeNull();
      // Thin cracks vanish at 32 px (a mask pixel counts above half coverage); eval says how many.
      const blank = result.images.filter((r) => r.label === 'anomalous' && !r.mask!.includes(1)).length;
      expect(blank).toBeLessThan(10);
      expect(result.warnings.join('\n')).toMatch(blank ? new RegExp(`${blank} anomalous masks mark no defect pixel at 32x32`) : /^$/);
    } finally {
      await bundle.dispose();
    }
  }, 60_000);
});
