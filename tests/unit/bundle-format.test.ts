import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelError } from '../../src/errors.js';
import { writeBundle, loadBundle } from '../../src/model/bundle.js';
import { MANIFEST_FORMAT, MANIFEST_FORMAT_VERSION, readManifest } from '../../src/model/manifest.js';
import { buildVaeGraph } from '../helpers/vae-graph.js';
import { texture } from '../helpers/images.js';

const SIZE = 16;
const LATENT = 4;

/** A bundle as linewatch 0.1 (format version 1) wrote it: no comparator, no calibration method, no training extras. */
function versionOneManifest(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  const calibration = {
    heldOut: 20,
    targetFpr: 0.005,
    threshold: 3.2,
    quantiles: { p50: 0, p90: 1.3, p95: 1.7, p99: 2.4, max: 2.9 },
    mean: 0,
    std: 1,
  };
  return {
    format: MANIFEST_FORMAT,
    formatVersion: 1,
    linewatchVersion: '0.1.0',
    createdAt: '2026-11-29T21:04:31.832Z',
    input: { width: SIZE, height: SIZE, channels: 1, normalisation: 'standardise', resize: 'stretch' },
    architecture: { name: 'vae-conv-upsample', latentDim: LATENT, filters: [4, 8], beta: 0.1 },
    files: { fp32: 'model.onnx', memory: {}, memoryCount: 0 },
    scoring: { scorer: 'recon', errorMap: 'ssim', blurSigma: 2, pooling: 'max', normalisation: { recon: { mean: 0.1, std: 0.02 } } },
    calibration: { fp32: calibration },
    training: { source: 'images:train', images: 40, heldOut: 20, epochs: 25, seed: 1, dataHash: 'sha256:0', durationS: 12 },
    ...overrides,
  };
}

let dir: string;
const model = buildVaeGraph({ channels: 1, size: SIZE, filters: [4, 8], latentDim: LATENT, seed: 3 });

async function bundleWith(name: string, manifest: Record<string, unknown>): Promise<string> {
  const target = path.join(dir, name);
  await writeBundle(target, { manifest: manifest as never, files: { 'model.onnx': model } });
  return target;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'linewatch-bundle-format-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bundle format versions', () => {
  it('writes version 3', () => {
    expect(MANIFEST_FORMAT_VERSION).toBe(3);
  });

  it('still loads and scores a version 1 bundle as it did', async () => {
    const bundleDir = await bundleWith('v1', versionOneManifest());
    const manifest = await readManifest(bundleDir);
    expect(manifest.formatVersion).toBe(1);
    expect(manifest.calibration.fp32!.method).toBeUndefined();
    const bundle = await loadBundle(bundleDir, { variant: 'fp32', threads: 1 });
    try {
      expect(bundle.scorer.settings.errorMap).toBe('ssim');
      const image = texture(SIZE, SIZE);
      const outputs = await bundle.model.run(image.data, 1);
      expect(outputs.map).toBeUndefined();
      const score = bundle.scorer.score(image, outputs.recon, outputs.mu);
      expect(Number.isFinite(score.score)).toBe(true);
      expect(score.score).toBeCloseTo((score.recon - 0.1) / 0.02, 6);
    } finally {
      await bundle.dispose();
    }
  });

  it('refuses a bundle whose scoring needs the comparator its model lacks, and says to retrain', async () => {
    const manifest = versionOneManifest({ formatVersion: 2 });
    (manifest.scoring as Record<string, unknown>).errorMap = 'comparator';
    const bundleDir = await bundleWith('no-map', manifest);
    const failure = loadBundle(bundleDir, { variant: 'fp32', threads: 1 });
    await expect(failure).rejects.toThrow(ModelError);
    await expect(loadBundle(bundleDir, { variant: 'fp32', threads: 1 })).rejects.toThrow(/no anomaly_map output.*learned comparator/);
    await expect(loadBundle(bundleDir, { variant: 'fp32', threads: 1 })).rejects.toMatchObject({ hint: expect.stringMatching(/retrain/) });
  });

  it('names the versions it reads and how to get a readable bundle for any other', async () => {
    const bundleDir = await bundleWith('v4', versionOneManifest({ formatVersion: 4 }));
    const failure = readManifest(bundleDir);
    await expect(failure).rejects.toThrow(/format version 4; this linewatch reads versions 1, 2 and 3/);
    await expect(readManifest(bundleDir)).rejects.toMatchObject({ hint: expect.stringMatching(/retrain the model with this linewatch version/) });
  });
});
