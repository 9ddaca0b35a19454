/**
 * The sensor-fault guard on real video: the demo recording with each camera fault put
 * in by ffmpeg (defocus, lights out, burnt out, lens cap, bumped camera, frozen picture),
 * scored through the agent's own camera pipeline by `linewatch replay`, whose clock is
 * the recording's timeline, so "within 3 s" is measured exactly.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { replayRecording } from '../../src/agent/replay.js';
import { configFromObject, resolveCameras, type CameraConfig } from '../../src/config/index.js';
import { FAULT_KINDS, type FaultKind } from '../../src/scoring/faults.js';
import { DEMO_MODEL, DEMO_VIDEO } from '../helpers/agent.js';
import { payloadValidator } from '../helpers/payloads.js';
import { FAULT_FROM_S, FAULT_TO_S, perturbedClip } from '../../bench/perturbed-video.js';

function camera(url: string, faults: Record<string, unknown> = {}): CameraConfig {
  return resolveCameras(configFromObject({ defaults: { model: DEMO_MODEL, fps: 10, faults }, cameras: [{ name: 'line', url }] }))[0]!;
}

const seconds = (iso: string) => Date.parse(iso) / 1000;

describe('camera faults in a replayed recording', () => {
  let dir: string;
  const clips = new Map<FaultKind, string>();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-faults-'));
    for (const kind of FAULT_KINDS) clips.set(kind, await perturbedClip(kind, path.join(dir, `${kind}.mp4`)));
  }, 120_000);
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.each([...FAULT_KINDS])('%s: one fault of that kind within 3 s, no anomaly event while it holds, its end within 3 s of the picture coming back', async (kind) => {
    const result = await replayRecording({ camera: camera(clips.get(kind)!) });
    const starts = result.faults.filter((fault) => fault.type === 'start');
    expect(starts.map((fault) => fault.kind), JSON.stringify(result.faults)).toEqual([kind]);
    const [start, end] = result.faults;
    // The replay clock starts at 0 (the epoch): `at` is seconds into the recording.
    expect(seconds(start!.at)).toBeGreaterThanOrEqual(FAULT_FROM_S);
    expect(seconds(start!.at)).toBeLessThanOrEqual(FAULT_FROM_S + 3);
    expect(end).toMatchObject({ type: 'end', kind, id: start!.id, reason: 'recovered' });
    expect(seconds(end!.at)).toBeGreaterThan(FAULT_TO_S);
    expect(seconds(end!.at)).toBeLessThanOrEqual(FAULT_TO_S + 3);
    const during = result.messages.filter((event) => seconds(event.at) >= FAULT_FROM_S && seconds(event.at) <= seconds(end!.at));
    expect(during, 'anomaly event messages while the fault held').toEqual([]);
    payloadValidator().expectAllValid(result.faults.map((fault) => ({ topic: 'linewatch/dev/line/faults', payload: JSON.stringify(fault) })));
  }, 60_000);

  it('raises no fault over the whole unperturbed demo video, and its anomaly events are the same as with the checks off', async () => {
    const withChecks = await replayRecording({ camera: camera(DEMO_VIDEO) });
    const without = await replayRecording({ camera: camera(DEMO_VIDEO, { enabled: false }) });
    expect(withChecks.frames.length).toBeGreaterThan(390);
    expect(withChecks.faults).toEqual([]);
    const shape = (events: typeof withChecks.messages) => events.map(({ type, at, score, peakScore, reason }) => ({ type, at, score, peakScore, reason }));
    expect(shape(withChecks.messages)).toEqual(shape(without.messages));
    expect(withChecks.messages.some((event) => event.type === 'start')).toBe(true);
  }, 120_000);

  it('keeps anomaly events flowing through a fault when suppressEvents is off', async () => {
    const result = await replayRecording({ camera: camera(clips.get('covered')!, { suppressEvents: false }) });
    expect(result.faults.filter((fault) => fault.type === 'start').map((fault) => fault.kind)).toEqual(['covered']);
    // A black picture is far from anything the model learned: the event that the guard would hold back goes out.
    expect(result.messages.some((event) => event.type === 'start' && seconds(event.at) >= FAULT_FROM_S && seconds(event.at) <= FAULT_TO_S)).toBe(true);
  }, 60_000);
});
