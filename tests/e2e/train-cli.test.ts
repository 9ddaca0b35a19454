/** `linewatch train` as a user runs it: real ffmpeg, real TF.js training, real ONNX files on disk. */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toInterleavedBytes } from '../../src/image/tensor.js';
import { loadBundle } from '../../src/model/bundle.js';
import { parseManifest, readManifest } from '../../src/model/manifest.js';
import { REPO, runCli } from '../helpers/agent.js';
import { DEMO_VIDEO } from '../helpers/camera.js';
import { texture } from '../helpers/images.js';

const TINY = ['--size', '32x16', '--filters', '4,8', '--latent', '8', '--batch-size', '8'];

describe('linewatch train', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-train-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('learns from the first seconds of a video and writes a complete, loadable bundle', async () => {
    const out = path.join(dir, 'video-bundle');
    const result = runCli(['train', '--video', DEMO_VIDEO, '--start', '0', '--duration', '2', '--epochs', '3', ...TINY, '--out', out], {
      timeoutMs: 120_000,
    });
    expect(result.code, result.output).toBe(0);
    // 3 VAE epochs, then as many for the comparator (on synthetic defects, the default).
    expect(result.stderr).toMatch(/synthetic defects on 50 %/);
    expect(result.stderr).toMatch(/epoch 1\/6 vae loss [\d.]+ .*ETA/);
    expect(result.stderr).toMatch(/epoch 6\/6 comparator loss [\d.]+ .*ETA/);
    expect(result.stdout).toMatch(/fp32: threshold [\d.]+ for 0\.50% false positives/);
    expect(readdirSync(out).sort()).toEqual(['manifest.json', 'memory.fp32.f32', 'memory.int8.f32', 'model.int8.onnx', 'model.onnx', 'quality-reference.png']);
    const manifest = await readManifest(out);
    expect(manifest.input).toMatchObject({ width: 32, height: 16, channels: 1, normalisation: 'standardise' });
    expect(manifest.training).toMatchObject({ epochs: 3, seed: 1, images: 16, heldOut: 4 });
    expect(manifest.training.source).toContain('bottle-detection.mp4');
    expect(manifest.formatVersion).toBe(3);
    // The camera-fault checks' profile of the training frames, with the scene they showed.
    expect(manifest.quality).toMatchObject({ frames: 20, reference: 'quality-reference.png', shift: { maxX: expect.any(Number), maxY: expect.any(Number) } });
    expect(manifest.quality!.brightness.min).toBeLessThanOrEqual(manifest.quality!.brightness.max);
    expect(manifest.scoring).toMatchObject({ scorer: 'recon', errorMap: 'comparator' });
    expect(manifest.architecture.comparator?.filters).toEqual([8, 16, 32]);
    expect(manifest.training).toMatchObject({ comparatorEpochs: 3, anomalies: { share: 0.5, strength: [0.2, 1] } });
    expect(manifest.calibration.int8?.shiftTolerancePx).toBe(3);
    // No frame of the training stretch scores above the threshold (the floor for video).
    expect(manifest.calibration.int8!.threshold).toBeGreaterThanOrEqual(manifest.calibration.int8!.trainingMaxScore!);
    for (const variant of ['fp32', 'int8'] as const) {
      const bundle = await loadBundle(out, { variant });
      expect(bundle.model.providers).toEqual(['cpu']);
      await bundle.dispose();
    }
    // Another run into the same folder is refused without --force, and nothing is touched.
    const before = readFileSync(path.join(out, 'model.onnx'));
    const again = runCli(['train', '--video', DEMO_VIDEO, '--duration', '1', '--epochs', '1', ...TINY, '--out', out]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/already exists.*\n.*--force/);
    expect(readFileSync(path.join(out, 'model.onnx')).equals(before)).toBe(true);
  }, 180_000);

  it('trains on a folder of images with synthetic defects, a comparator and the hybrid score, and evaluates', async () => {
    const images = path.join(dir, 'tiles');
    const textures = path.join(dir, 'textures');
    mkdirSync(images);
    mkdirSync(textures);
    for (let i = 0; i < 24; i++) {
      await sharp(toInterleavedBytes(texture(48, 48, 1, i + 1)), { raw: { width: 48, height: 48, channels: 1 } }).png().toFile(path.join(images, `tile-${i}.png`));
    }
    for (let i = 0; i < 2; i++) {
      await sharp(toInterleavedBytes(texture(40, 40, 3, 100 + i)), { raw: { width: 40, height: 40, channels: 3 } }).png().toFile(path.join(textures, `t-${i}.png`));
    }
    const out = path.join(dir, 'tile-bundle');
    const small = ['--size', '32', '--filters', '4,8', '--latent', '8', '--batch-size', '8', '--comparator-filters', '4,8'];
    const result = runCli(['train', '--images', images, '--epochs', '2', ...small, '--anomaly-textures', textures, '--anomaly-share', '0.7', '--out', out], {
      timeoutMs: 120_000,
    });
    expect(result.code, result.output).toBe(0);
    expect(result.stderr).toMatch(/synthetic defects on 70 %/);
    const manifest = await readManifest(out);
    expect(manifest.scoring).toMatchObject({ scorer: 'hybrid', errorMap: 'comparator', pooling: 'topk', blurSigma: 2 });
    expect(manifest.architecture.comparator?.filters).toEqual([4, 8]);
    expect(manifest.training.anomalies).toMatchObject({ share: 0.7, textures: 'textures' });
    expect(manifest.calibration.int8?.method).toMatch(/^(empirical|tail-fit)$/);
    const evaluated = runCli(['eval', '--model', out, '--normal', images, '--anomalous', textures, '--json', path.join(dir, 'tile-eval.json')]);
    expect(evaluated.code, evaluated.output).toBe(0);
    const summary = JSON.parse(readFileSync(path.join(dir, 'tile-eval.json'), 'utf8'));
    expect(summary.imageAuroc).toBeGreaterThanOrEqual(0);
    expect(summary.components.recon.imageAuroc).toEqual(expect.any(Number));

    // Options that cannot work together, or values out of range, are refused before any training.
    const conflicting = runCli(['train', '--images', images, '--no-comparator', '--error-map', 'comparator', ...small, '--out', path.join(dir, 'never')]);
    expect(conflicting.code).toBe(2);
    expect(conflicting.stderr).toMatch(/error map "comparator" needs a comparator/);
    const badShare = runCli(['train', '--images', images, '--anomaly-share', '1.5', '--anomaly-strength', '0.9,0.1', ...small, '--out', path.join(dir, 'never')]);
    expect(badShare.code).toBe(2);
    expect(badShare.stderr).toMatch(/share must be in \[0, 1\], got 1\.5/);
    expect(badShare.stderr).toMatch(/strength must be \[min, max\]/);
    expect(existsSync(path.join(dir, 'never'))).toBe(false);
  }, 180_000);

  it('trains on several --images at once (folders and lists), each picture once, passing over the JSON records of a feedback folder', async () => {
    const base = path.join(dir, 'several');
    const normal = path.join(base, 'normal');
    const feedback = path.join(base, 'feedback', 'line1');
    mkdirSync(normal, { recursive: true });
    mkdirSync(feedback, { recursive: true });
    for (let i = 0; i < 12; i++) {
      await sharp(toInterleavedBytes(texture(40, 40, 1, 200 + i)), { raw: { width: 40, height: 40, channels: 1 } }).png().toFile(path.join(normal, `n-${i}.png`));
    }
    for (let i = 0; i < 3; i++) {
      await sharp(toInterleavedBytes(texture(40, 40, 1, 300 + i)), { raw: { width: 40, height: 40, channels: 1 } }).jpeg().toFile(path.join(feedback, `capture-x-00${i}.jpg`));
    }
    writeFileSync(path.join(feedback, 'capture-x.json'), '{"kind": "capture"}');
    // A list naming two pictures the normal folder already gives: they must not count twice.
    const list = path.join(base, 'again.txt');
    writeFileSync(list, 'normal/n-0.png\nnormal/n-1.png\n');
    const out = path.join(base, 'bundle');
    const result = runCli(['train', '--images', normal, '--images', feedback, '--images', list, '--channels', '1', '--epochs', '1', '--size', '32', '--filters', '4,8', '--latent', '8', '--batch-size', '8', '--comparator-filters', '4,8', '--no-int8', '--out', out], {
      timeoutMs: 120_000,
    });
    expect(result.code, result.output).toBe(0);
    expect(result.stderr).toMatch(/data: 15 grey images from images:normal\+line1\+again\.txt/);
    const manifest = await readManifest(out);
    expect(manifest.training.images + manifest.training.heldOut).toBe(15);
    expect(manifest.training.source).toBe('images:normal+line1+again.txt');
  }, 150_000);

  it('writes to models/<video name> when --out is not given', () => {
    const cwd = path.join(dir, 'default-out');
    mkdirSync(cwd);
    const result = runCli(['train', '--video', DEMO_VIDEO, '--duration', '1', '--epochs', '1', ...TINY], { cwd, timeoutMs: 60_000 });
    expect(result.code, result.output).toBe(0);
    expect(result.stdout).toContain(`wrote ${path.join('models', 'bottle-detection')}`);
    expect(existsSync(path.join(cwd, 'models', 'bottle-detection', 'manifest.json'))).toBe(true);
  }, 90_000);

  it('reports an empty folder, a missing folder and an unreadable video clearly, with exit code 2', () => {
    const empty = path.join(dir, 'empty');
    mkdirSync(empty);
    const a = runCli(['train', '--images', empty, '--out', path.join(dir, 'x')]);
    expect(a.code).toBe(2);
    expect(a.stderr).toContain(empty);
    const b = runCli(['train', '--images', path.join(dir, 'nope'), '--out', path.join(dir, 'x')]);
    expect(b.code).toBe(2);
    expect(b.stderr).toContain(path.join(dir, 'nope'));
    const c = runCli(['train', '--video', path.join(dir, 'missing.mp4'), '--duration', '1', ...TINY, '--out', path.join(dir, 'x')]);
    expect(c.code).toBe(2);
    expect(c.stderr).toMatch(/missing\.mp4/);
    expect(c.stderr).toMatch(/No such file|not read|cannot/i);
    for (const r of [a, b, c]) expect(r.stderr).not.toMatch(/^\s+at /m);
    expect(existsSync(path.join(dir, 'x'))).toBe(false);
  });

  it('leaves nothing behind when interrupted with Ctrl-C', async () => {
    const out = path.join(dir, 'interrupted');
    const child = spawn(process.execPath, [path.join(REPO, 'bin/linewatch.js'), 'train', '--video', DEMO_VIDEO, '--duration', '2', '--epochs', '500', ...TINY, '--out', out], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    await new Promise<void>((resolve) =>
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (/epoch 2\//.test(stderr)) resolve();
      }),
    );
    child.kill('SIGINT');
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code).toBe(130);
    expect(stderr).toMatch(/interrupted/);
    expect(existsSync(out)).toBe(false);
    expect(readdirSync(dir).filter((name) => name.includes('interrupted'))).toEqual([]);
  }, 120_000);
});

describe('model bundle problems name the file and what is wrong', () => {
  it('refuses a manifest of another format version or of another program', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-manifest-'));
    const manifest = JSON.parse(readFileSync(path.join(REPO, 'models/demo/manifest.json'), 'utf8'));
    writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ ...manifest, formatVersion: 99 }));
    await expect(readManifest(dir)).rejects.toThrow(/manifest\.json has format version 99; this linewatch reads versions 1, 2 and 3/);
    expect(() => parseManifest(JSON.stringify({ format: 'something-else' }), 'x/manifest.json')).toThrow(/x\/manifest\.json is not a linewatch model manifest/);
    expect(() => parseManifest('{ not json', 'y/manifest.json')).toThrow(/y\/manifest\.json is not valid JSON/);
    await expect(readManifest(path.join(dir, 'absent'))).rejects.toThrow(/cannot read .*absent\/manifest\.json \(ENOENT\)/);
    rmSync(dir, { recursive: true, force: true });
  });

  it('refuses a truncated latent memory', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-memory-'));
    for (const file of readdirSync(path.join(REPO, 'models/demo'))) {
      writeFileSync(path.join(dir, file), readFileSync(path.join(REPO, 'models/demo', file)));
    }
    writeFileSync(path.join(dir, 'memory.int8.f32'), Buffer.alloc(12));
    await expect(loadBundle(dir)).rejects.toThrow(/memory\.int8\.f32 has 12 bytes, expected/);
    rmSync(dir, { recursive: true, force: true });
  });
});
