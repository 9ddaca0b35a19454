/**
 * Fault 6: a bundle whose scores come out non-finite must be refused at load, saying which value is
 * wrong and how to get a good bundle, instead of loading and then failing every frame. JSON cannot
 * hold NaN, so the broken bundles here are the ways a real one ends up scoring NaN or Infinity:
 * constants that overflow the z-score, a latent memory or ONNX weights holding NaN, and numbers
 * JSON turns into Infinity.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { afterAll, describe, expect, it } from 'vitest';

import { ModelError } from '../../src/errors.js';
import { loadBundle } from '../../src/model/bundle.js';
import { allFinite } from '../../src/model/infer.js';
import type { Variant } from '../../src/model/manifest.js';
import { REPO, runCli, writeConfig } from '../helpers/agent.js';

const { onnx } = onnxProto;
const DEMO = new URL('../../models/demo', import.meta.url).pathname;
const haveDemo = existsSync(path.join(DEMO, 'manifest.json'));
if (!haveDemo) console.warn('bundle-non-finite tests skipped: models/demo is missing');

const root = mkdtempSync(path.join(tmpdir(), 'linewatch-non-finite-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let copies = 0;
/** A copy of the demo bundle with its manifest text edited (text, so that 1e309 reaches JSON.parse as written). */
function brokenBundle(editManifest: (text: string) => string = (text) => text): string {
  const dir = path.join(root, `bundle-${++copies}`);
  cpSync(DEMO, dir, { recursive: true });
  const file = path.join(dir, 'manifest.json');
  const before = readFileSync(file, 'utf8');
  const after = editManifest(before);
  writeFileSync(file, after);
  return dir;
}

/** Replaces `"key": <number>` inside the first `"section": {` that holds it. */
function setNumber(text: string, section: string, key: string, value: string): string {
  const start = text.indexOf(`"${section}": {`);
  expect(start, `manifest has a "${section}" object`).toBeGreaterThanOrEqual(0);
  const pattern = new RegExp(`("${key}":\\s*)-?[0-9.eE+-]+`);
  const head = text.slice(0, start);
  const tail = text.slice(start);
  expect(pattern.test(tail), `"${section}" has "${key}"`).toBe(true);
  return head + tail.replace(pattern, `$1${value}`);
}

async function loadFailure(dir: string, variant: Variant = 'int8'): Promise<ModelError> {
  let bundle;
  try {
    bundle = await loadBundle(dir, { variant, threads: 1 });
  } catch (error) {
    expect(error).toBeInstanceOf(ModelError);
    return error as ModelError;
  }
  await bundle.dispose();
  throw new Error(`loadBundle(${dir}, ${variant}) accepted the bundle`);
}

const HOW_TO_FIX = /retrain|re-export/;

describe('allFinite', () => {
  it('is false as soon as one value is NaN or infinite', () => {
    expect(allFinite(new Float32Array([0, -1.5, 3e38]))).toBe(true);
    expect(allFinite(new Float32Array(0))).toBe(true);
    expect(allFinite(new Float32Array([0, Number.NaN, 1]))).toBe(false);
    expect(allFinite([1, Number.POSITIVE_INFINITY])).toBe(false);
    expect(allFinite(new Float64Array([-Number.MAX_VALUE, Number.NEGATIVE_INFINITY]))).toBe(false);
  });
});

describe.skipIf(!haveDemo)('loading a bundle whose scores come out non-finite', () => {
  it('the demo bundle itself loads, both variants (the checks refuse only broken bundles)', async () => {
    for (const variant of ['fp32', 'int8'] as const) {
      const bundle = await loadBundle(DEMO, { variant, threads: 1 });
      await bundle.dispose();
    }
  });

  it('a normalisation std so small that every z-score is infinite', async () => {
    // 1e-320 is a positive double, so the schema's "std > 0" lets it through.
    const dir = brokenBundle((text) => setNumber(text, 'recon', 'std', '1e-320'));
    const error = await loadFailure(dir);
    expect(error.message).toContain('scoring.normalisation.recon.std');
    expect(error.message).toContain('1e-320');
    expect(error.file).toBe(path.join(dir, 'manifest.json'));
    expect(error.hint).toMatch(HOW_TO_FIX);
  });

  it('a normalisation mean whose z-score overflows to Infinity', async () => {
    const dir = brokenBundle((text) => setNumber(text, 'recon', 'mean', '-1.7e308'));
    const error = await loadFailure(dir);
    expect(error.message).toMatch(/score.*(Infinity|NaN)/);
    expect(error.message).toContain('scoring.normalisation.recon');
    expect(error.hint).toMatch(HOW_TO_FIX);
  });

  it('a latent memory that holds NaN', async () => {
    const dir = brokenBundle((text) => text.replace(/"scorer": "recon"/, '"scorer": "hybrid"'));
    const file = path.join(dir, 'memory.int8.f32');
    const memory = new Float32Array(new Uint8Array(readFileSync(file)).buffer);
    memory[64 * 7 + 3] = Number.NaN;
    writeFileSync(file, new Uint8Array(memory.buffer));
    const error = await loadFailure(dir);
    expect(error.message).toContain('memory.int8.f32');
    expect(error.message).toMatch(/NaN|non-finite/);
    expect(error.file).toBe(file);
    expect(error.hint).toMatch(HOW_TO_FIX);
  });

  it('ONNX weights that are NaN, so the model outputs NaN', async () => {
    const dir = brokenBundle();
    const file = path.join(dir, 'model.onnx');
    const model = onnx.ModelProto.decode(readFileSync(file));
    // As when the comparator's last layer diverged in training: its anomaly_map is NaN, recon and mu are fine.
    const head = model.graph?.initializer?.find((tensor) => tensor.name === 'comparator.head.bias');
    expect(head?.rawData?.length, 'the demo model has a comparator head bias in raw data').toBeGreaterThan(0);
    head!.rawData = new Uint8Array(new Float32Array(head!.rawData!.length / 4).fill(Number.NaN).buffer);
    writeFileSync(file, onnx.ModelProto.encode(model).finish());
    const error = await loadFailure(dir, 'fp32');
    expect(error.message).toContain('model.onnx');
    expect(error.message).toContain('anomaly_map');
    expect(error.message).toMatch(/NaN|non-finite/);
    expect(error.file).toBe(file);
    expect(error.hint).toMatch(HOW_TO_FIX);
  });

  it('calibration or normalisation numbers that JSON reads as Infinity, or null', async () => {
    const cases: [string, (text: string) => string, string][] = [
      ['threshold 1e309', (text) => setNumber(text, 'int8', 'threshold', '1e309'), 'calibration.int8.threshold'],
      ['std null', (text) => setNumber(text, 'latent', 'std', 'null'), 'scoring.normalisation.latent.std'],
      ['quantile -1e999', (text) => setNumber(text, 'int8', 'p99', '-1e999'), 'calibration.int8.quantiles.p99'],
    ];
    for (const [what, edit, field] of cases) {
      const error = await loadFailure(brokenBundle(edit));
      expect(error.message, what).toContain(field);
      expect(error.hint, what).toMatch(HOW_TO_FIX);
    }
  });

  it('`linewatch run` refuses such a bundle at start: exit 2, the value and the fix, no per-frame failures', () => {
    const model = brokenBundle((text) => setNumber(text, 'recon', 'mean', '-1.7e308'));
    const config = writeConfig(path.join(root, 'run.yaml'), {
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      dataDir: path.join(root, 'data'),
      health: { enabled: false },
      defaults: { model },
      cameras: [{ name: 'line1', url: path.join(REPO, 'assets/demo/bottle-detection.mp4') }],
    });
    const result = runCli(['run', '--config', config], { timeoutMs: 30_000 });
    expect(result.code, result.output).toBe(2);
    expect(result.stderr).toContain('scoring.normalisation.recon');
    expect(result.stderr).toMatch(/hint: .*retrain/);
    expect(result.stderr).not.toMatch(/scoring failed/);
  });
});
