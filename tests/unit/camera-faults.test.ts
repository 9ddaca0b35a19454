/**
 * The sensor-fault guard's parts: the quality signals on real demo frames and on
 * pictures with a known answer, the limits learned from normal frames, diagnosis
 * order, the debouncer, and the crash journal's end for a fault left open.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveImageList, loadImages } from '../../src/image/load.js';
import { toInterleavedBytes } from '../../src/image/tensor.js';
import { interruptedEnd, OpenEventJournal } from '../../src/publish/open-events.js';
import {
  diagnose,
  faultDebounce,
  faultRules,
  FaultTracker,
  type FaultCheckSettings,
  type FaultFinding,
  type QualityProfile,
} from '../../src/scoring/faults.js';
import { edgeProfiles, lumaOf, matchShift, QualityMeter, sceneReference } from '../../src/scoring/quality.js';
import { decodeVideoFrames } from '../../src/source/decode.js';
import { learnQualityProfile } from '../../src/toolkit/quality-profile.js';
import { DEMO_VIDEO } from '../helpers/agent.js';
import { payloadValidator } from '../helpers/payloads.js';

const W = 112;
const H = 64;
const FRAME = { width: W, height: H };
const ALL_ON: FaultCheckSettings = {
  bright: { enabled: true },
  covered: { enabled: true },
  dark: { enabled: true },
  frozen: { enabled: true },
  blur: { enabled: true },
  moved: { enabled: true },
};

/** A picture with edges in both directions: bars of different widths and levels. */
function scene(shiftX = 0, shiftY = 0): Uint8Array {
  const pixels = new Uint8Array(W * H);
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const sx = x - shiftX;
      const sy = y - shiftY;
      const column = sx >= 10 && sx < 18 ? 200 : sx >= 40 && sx < 44 ? 30 : sx >= 70 && sx < 90 ? 170 : 110;
      pixels[y * W + x] = sy >= 20 && sy < 26 ? 240 - column / 4 : column;
    }
  }
  return pixels;
}

describe('quality signals', () => {
  it('measure a flat picture as flat, without contrast or detail, and the same frame again as no change', () => {
    const meter = new QualityMeter(W, H, 1, undefined);
    const grey = new Uint8Array(W * H).fill(90);
    const first = meter.measure(grey);
    expect(first).toMatchObject({ brightness: 90, contrast: 0, clipped: 0, flatShare: 1, sharpness: 0 });
    expect(first.change).toBeNaN();
    expect(first.shiftX).toBeNaN();
    expect(meter.measure(grey).change).toBe(0);
    meter.reset();
    expect(meter.measure(grey).change).toBeNaN();
  });

  it('count burnt-out pixels and the mean level change between frames', () => {
    const meter = new QualityMeter(W, H, 1, undefined);
    const half = new Uint8Array(W * H).map((_, i) => (i < (W * H) / 2 ? 255 : 100));
    meter.measure(new Uint8Array(W * H).fill(100));
    const signals = meter.measure(half);
    expect(signals.clipped).toBeCloseTo(0.5, 6);
    expect(signals.change).toBeCloseTo(77.5, 6);
    expect(signals.brightness).toBeCloseTo(177.5, 6);
  });

  it('find how far the view moved against the reference, both ways, and say 0 for the reference itself', () => {
    const reference = sceneReference(scene(), W, H);
    const meter = new QualityMeter(W, H, 1, reference);
    expect(meter.measure(scene())).toMatchObject({ shiftX: 0, shiftY: 0 });
    expect(meter.measure(scene(6, 0))).toMatchObject({ shiftX: 6, shiftY: 0 });
    expect(meter.measure(scene(-5, 3))).toMatchObject({ shiftX: -5, shiftY: 3 });
    // A flat profile correlates with nothing: no move is read into it.
    expect(matchShift(reference.columns, new Float64Array(W), 16)).toBe(0);
  });

  it('keep sharpness when the light dims but not when the picture blurs', () => {
    const sharp = scene();
    const dimmed = sharp.map((v) => Math.round(v * 0.5));
    const blurred = new Uint8Array(W * H);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let sum = 0;
        let count = 0;
        for (let dy = -2; dy <= 2; dy++) {
          for (let dx = -2; dx <= 2; dx++) {
            const yy = Math.min(H - 1, Math.max(0, y + dy));
            const xx = Math.min(W - 1, Math.max(0, x + dx));
            sum += sharp[yy * W + xx]!;
            count++;
          }
        }
        blurred[y * W + x] = Math.round(sum / count);
      }
    }
    const meter = new QualityMeter(W, H, 1, undefined);
    const reference = meter.measure(sharp).sharpness;
    expect(meter.measure(dimmed).sharpness / reference).toBeGreaterThan(0.8);
    expect(meter.measure(blurred).sharpness / reference).toBeLessThan(0.2);
  });

  it('measure colour frames on their luma', () => {
    const rgb = new Uint8Array(W * H * 3);
    for (let i = 0; i < W * H; i++) rgb.set([255, 0, 0], i * 3);
    expect(lumaOf(rgb, W, H, 3)[0]).toBe(76);
    expect(new QualityMeter(W, H, 3, undefined).measure(rgb).brightness).toBe(76);
    expect(edgeProfiles(lumaOf(rgb, W, H, 3), W, H).columns.every((v) => v === 0)).toBe(true);
  });
});

describe('the quality profile', () => {
  let demoFrames: Uint8Array[];
  beforeAll(async () => {
    demoFrames = (await decodeVideoFrames(DEMO_VIDEO, { width: W, height: H, channels: 1, fps: 10, duration: 5 })).map((frame) => toInterleavedBytes(frame));
  }, 30_000);

  it('of a fixed camera: its ranges cover every training frame, and it has one view with no move', () => {
    const { profile, reference } = learnQualityProfile(demoFrames, W, H, 1);
    expect(profile.frames).toBe(demoFrames.length);
    expect(profile.shift).toEqual({ maxX: 0, maxY: 0 });
    expect(reference).toHaveLength(W * H);
    const { rules, unavailable } = faultRules(ALL_ON, { ...profile, reference: 'ref.png' }, FRAME);
    expect(unavailable).toEqual([]);
    expect(rules.map((rule) => `${rule.kind}:${rule.signal}`)).toEqual([
      'bright:brightness',
      'bright:clipped',
      'covered:flatShare',
      'dark:brightness',
      'frozen:change',
      'blur:sharpness',
      'moved:shift',
    ]);
    const meter = new QualityMeter(W, H, 1, sceneReference(reference, W, H));
    const findings = demoFrames.map((frame) => diagnose(meter.measure(frame), rules, FRAME)).filter((finding) => finding && finding.kind !== 'frozen');
    expect(findings).toEqual([]);
  });

  it('of separate photos (Magnetic Tile, where present): no common view, so no displacement check, and says why', async (context) => {
    const list = path.resolve('../shared/data/magnetic-tile/splits/differnet_train_good.txt');
    let paths: string[];
    try {
      paths = (await resolveImageList(list, path.resolve('../shared/data/magnetic-tile'))).slice(0, 120);
    } catch {
      if (process.env.CI === 'true') throw new Error(`${list} is missing: the evaluation data must be beside the project in CI`);
      context.skip();
      return;
    }
    const images = (await loadImages(paths, { width: 64, height: 64, channels: 1 })).images;
    const { profile } = learnQualityProfile(images.map((image) => toInterleavedBytes(image)), 64, 64, 1);
    expect(profile.shift).toBeUndefined();
    const { rules, unavailable } = faultRules(ALL_ON, { ...profile, reference: 'ref.png' }, { width: 64, height: 64 });
    expect(rules.some((rule) => rule.kind === 'moved')).toBe(false);
    expect(unavailable).toEqual([expect.stringMatching(/^moved: the training frames do not share one view/)]);
  }, 60_000);
});

describe('fault rules', () => {
  const profile: QualityProfile = {
    frames: 50,
    brightness: { min: 150, max: 160 },
    clipped: { max: 0 },
    flatShare: { max: 0.5 },
    sharpness: { min: 0.2, max: 0.3 },
    shift: { maxX: 1, maxY: 0 },
    reference: 'quality-reference.png',
  };

  it('leave room beyond what training saw', () => {
    const { rules } = faultRules(ALL_ON, profile, FRAME);
    const limit = (kind: string, signal: string) => rules.find((rule) => rule.kind === kind && rule.signal === signal);
    expect(limit('covered', 'flatShare')).toMatchObject({ max: 0.75, source: 'learned' });
    expect(limit('dark', 'brightness')).toMatchObject({ min: 100, source: 'learned' });
    expect(limit('bright', 'brightness')).toMatchObject({ max: 207.5, source: 'learned' });
    expect(limit('bright', 'clipped')).toMatchObject({ max: 0.25 });
    expect(limit('blur', 'sharpness')!.min).toBeCloseTo(0.08, 9);
    // The larger of (largest shift + 2 px) across and down, as a share of the frame: 2 of 64 rows here.
    expect(limit('moved', 'shift')!.max).toBeCloseTo(Math.max(3 / W, 2 / H), 9);
  });

  it('take the config over what was learned, and run on defaults without a profile, saying which checks cannot run', () => {
    const configured = faultRules({ ...ALL_ON, dark: { enabled: true, minBrightness: 40 }, moved: { enabled: false } }, profile, FRAME);
    expect(configured.rules.find((rule) => rule.kind === 'dark')).toMatchObject({ min: 40, source: 'config' });
    expect(configured.rules.some((rule) => rule.kind === 'moved')).toBe(false);
    const bare = faultRules(ALL_ON, undefined, FRAME);
    expect(bare.rules.map((rule) => `${rule.kind}:${rule.source}`)).toEqual(['bright:default', 'bright:default', 'covered:default', 'dark:default', 'frozen:default']);
    expect(bare.unavailable).toEqual([expect.stringMatching(/^blur: .*minSharpness/), expect.stringMatching(/^moved: .*quality-profile/)]);
    const explicit = faultRules({ ...ALL_ON, blur: { enabled: true, minSharpness: 0.05 } }, undefined, FRAME);
    expect(explicit.rules.find((rule) => rule.kind === 'blur')).toMatchObject({ min: 0.05, source: 'config' });
  });

  it('name one fault per frame, in diagnosis order: a black cover is covered, not dark or frozen', () => {
    const { rules } = faultRules(ALL_ON, profile, FRAME);
    const black = { brightness: 0, contrast: 0, clipped: 0, flatShare: 1, sharpness: 0, change: 0, shiftX: 16, shiftY: 7 };
    expect(diagnose(black, rules, FRAME)?.kind).toBe('covered');
    const burnt = { ...black, brightness: 250, clipped: 0.9 };
    expect(diagnose(burnt, rules, FRAME)?.kind).toBe('bright');
    const good = { brightness: 155, contrast: 30, clipped: 0, flatShare: 0.4, sharpness: 0.25, change: 1, shiftX: 0, shiftY: 0 };
    expect(diagnose(good, rules, FRAME)).toBeUndefined();
    expect(diagnose({ ...good, change: Number.NaN }, rules, FRAME)).toBeUndefined();
    expect(diagnose({ ...good, shiftX: 5 }, rules, FRAME)).toMatchObject({ kind: 'moved', signal: 'shift', value: 5 / W, expected: { max: 2 / H } });
  });
});

describe('the fault debouncer', () => {
  const at = (i: number) => ({ monotonicMs: i * 100, wallMs: 1_700_000_000_000 + i * 100 });
  const covered: FaultFinding = { kind: 'covered', signal: 'flatShare', value: 1, expected: { max: 0.75 } };
  const tracker = () => new FaultTracker('line', faultDebounce({ startS: 1.5, share: 0.8, endS: 1.5 }, 10));

  it('turns seconds into frames at the camera rate, never fewer than 3', () => {
    expect(faultDebounce({ startS: 1.5, share: 0.8, endS: 1.5 }, 10)).toEqual({ k: 12, n: 15, endFrames: 15 });
    expect(faultDebounce({ startS: 1.5, share: 0.8, endS: 1.5 }, 1)).toEqual({ k: 3, n: 3, endFrames: 3 });
  });

  it('starts on k of n failing frames, dated from the first of them, and ends after a run of good ones', () => {
    const faults = tracker();
    const messages = [];
    for (let i = 0; i < 40; i++) {
      // Failing from frame 5 to 24, with one good frame in between that must not reset the start.
      const failing = i >= 5 && i < 25 && i !== 10;
      messages.push(...faults.push(failing ? covered : undefined, at(i)));
    }
    expect(messages.map((m) => [m.type, m.kind])).toEqual([
      ['start', 'covered'],
      ['end', 'covered'],
    ]);
    const [start, end] = messages;
    expect(start!.since).toBe(new Date(at(5).wallMs).toISOString());
    expect(start!.at).toBe(new Date(at(17).wallMs).toISOString()); // 12 of the 15 frames 3..17
    expect(end).toMatchObject({ id: start!.id, reason: 'recovered', durationMs: (39 - 5) * 100 });
    expect(end!.at).toBe(new Date(at(39).wallMs).toISOString());
    expect(faults.active()).toEqual([]);
  });

  it('ignores short blips, and closes what is open with the reason given', () => {
    const faults = tracker();
    for (let i = 0; i < 30; i++) expect(faults.push(i % 3 === 0 ? covered : undefined, at(i))).toEqual([]);
    for (let i = 30; i < 50; i++) faults.push(covered, at(i));
    expect(faults.active()).toEqual([expect.objectContaining({ kind: 'covered', value: 1 })]);
    expect(faults.holding).toBe(true);
    const closed = faults.close('camera-offline', at(50));
    expect(closed).toEqual([expect.objectContaining({ type: 'end', kind: 'covered', reason: 'camera-offline' })]);
    expect(faults.close('shutdown', at(51))).toEqual([]);
    payloadValidator().expectAllValid(closed.map((message) => ({ topic: 'linewatch/dev/line/faults', payload: JSON.stringify(message) })));
  });
});

describe('a fault left open by a crash', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-fault-journal-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('is read back from the journal and ended with reason interrupted, a valid fault message', () => {
    const file = path.join(dir, 'open.json');
    const faults = new FaultTracker('line', { k: 1, n: 1, endFrames: 1 }, () => '3f1c7a52-7d2e-4c55-9a51-2f6f1d4c9b10');
    const [start] = faults.push({ kind: 'frozen', signal: 'change', value: 0, expected: { min: 0.02 } }, { monotonicMs: 0, wallMs: Date.parse('2026-12-06T10:00:00Z') });
    const journal = new OpenEventJournal(file, false);
    journal.record(start!);
    journal.persist();
    const reread = new OpenEventJournal(file, false);
    expect(reread.unreadable).toBeUndefined();
    expect(reread.leftovers).toEqual([start]);
    const end = interruptedEnd(reread.leftovers[0]!);
    expect(end).toMatchObject({ type: 'end', id: start!.id, kind: 'frozen', reason: 'interrupted', durationMs: 0 });
    payloadValidator().expectAllValid([{ topic: 'linewatch/dev/line/faults', payload: JSON.stringify(end) }]);
  });
});
