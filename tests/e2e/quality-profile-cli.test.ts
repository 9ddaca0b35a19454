/**
 * `linewatch quality-profile`: the camera-fault profile written into an existing bundle
 * from normal footage, the model untouched; and the errors a user can make.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadBundle } from '../../src/model/bundle.js';
import { readManifest } from '../../src/model/manifest.js';
import { DEMO_MODEL, DEMO_VIDEO, runCli } from '../helpers/agent.js';

describe('linewatch quality-profile', () => {
  let dir: string;
  let bundle: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-quality-profile-'));
    bundle = path.join(dir, 'demo');
    cpSync(DEMO_MODEL, bundle, { recursive: true });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('learns the profile of a cropped view from a video and leaves the model as it was', async () => {
    const modelBefore = readFileSync(path.join(bundle, 'model.int8.onnx'));
    const calibrationBefore = (await readManifest(bundle)).calibration;
    const result = runCli(['quality-profile', '--model', bundle, '--video', DEMO_VIDEO, '--duration', '3', '--crop', '0.25,0,0.5,1']);
    expect(result.code, result.output).toBe(0);
    expect(result.stdout).toMatch(/quality profile from 30 frames: brightness \d+-\d+, sharpness >= [\d.]+, one view/);
    const manifest = await readManifest(bundle);
    expect(manifest.quality).toMatchObject({ frames: 30, reference: 'quality-reference.png', shift: { maxX: expect.any(Number), maxY: expect.any(Number) } });
    expect(manifest.calibration).toEqual(calibrationBefore);
    expect(readFileSync(path.join(bundle, 'model.int8.onnx')).equals(modelBefore)).toBe(true);
    const loaded = await loadBundle(bundle, { threads: 1 });
    try {
      expect(loaded.sceneReference).toMatchObject({ width: 112, height: 64 });
    } finally {
      await loaded.dispose();
    }
  }, 60_000);

  it('says what is wrong with bad input, and how to fix it', () => {
    const neither = runCli(['quality-profile', '--model', bundle]);
    expect(neither.code).toBe(2);
    expect(neither.stderr).toMatch(/give either --video or --images/);
    const badCrop = runCli(['quality-profile', '--model', bundle, '--video', DEMO_VIDEO, '--crop', '0.8,0,0.5,1']);
    expect(badCrop.code).toBe(2);
    expect(badCrop.stderr).toMatch(/not a crop: use x,y,width,height/);
    const noBundle = runCli(['quality-profile', '--model', path.join(dir, 'nothing'), '--video', DEMO_VIDEO]);
    expect(noBundle.code).toBe(2);
    expect(noBundle.stderr).toMatch(/cannot read .*manifest\.json/);
  });

  it('refuses a bundle whose scene reference is missing, naming the file and the fix', async () => {
    rmSync(path.join(bundle, 'quality-reference.png'));
    await expect(loadBundle(bundle, { threads: 1 })).rejects.toThrow(/cannot use the scene reference .*quality-reference\.png/);
    await expect(loadBundle(bundle, { threads: 1 })).rejects.toMatchObject({ hint: expect.stringMatching(/linewatch quality-profile/) });
  });
});
