/**
 * The sensor-fault guard end to end: `linewatch run` plays the demo video with camera
 * faults put in by ffmpeg, one camera per fault, in real time, against a real mosquitto.
 * The faults reach `<base>/<camera>/faults` and the retained status; anomaly events stay
 * quiet while a fault holds; a fault open at shutdown ends with reason `shutdown`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FaultKind } from '../../src/scoring/faults.js';
import { DEMO_MODEL, demoAgentMissing, startAgent, writeConfig, type AgentProcess } from '../helpers/agent.js';
import { freePort, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder, type ReceivedMessage } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import { CLIP_S, FAULT_FROM_S, FAULT_TO_S, perturbedClip } from '../../bench/perturbed-video.js';

const missing = demoAgentMissing('camera-fault agent tests');
const BASE = 'linewatch/faultdev';
// The other kinds run through the same pipeline in camera-faults-replay.test.ts; these four cover each signal family.
const KINDS: FaultKind[] = ['covered', 'frozen', 'moved', 'dark'];

const json = (message: ReceivedMessage) => JSON.parse(message.payload) as Record<string, unknown>;
const seconds = (iso: unknown) => Date.parse(iso as string) / 1000;

describe.skipIf(missing.length > 0)('camera faults in a running agent', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let recorder: MqttRecorder;
  let agent: AgentProcess;
  let healthUrl: string;
  /** Capture time of each camera's first frame: the clip's time 0. */
  const startOf = new Map<string, number>();

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-faults-agent-'));
    const clips = await Promise.all([...KINDS, 'none' as const].map((kind) => perturbedClip(kind, path.join(dir, `${kind}.mp4`))));
    broker = await startMosquitto();
    recorder = await recordMqtt(broker.url, [`${BASE}/+/status`, `${BASE}/+/events`, `${BASE}/+/faults`, `${BASE}/+/score`]);
    const healthPort = await freePort();
    healthUrl = `http://127.0.0.1:${healthPort}`;
    const config = writeConfig(path.join(dir, 'linewatch.yaml'), {
      deviceId: 'faultdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port: healthPort },
      defaults: { model: DEMO_MODEL, fps: 10, loop: true, realtime: true, scorePublish: true, snapshots: { enabled: false } },
      cameras: [...KINDS.map((kind, i) => ({ name: kind, url: clips[i] })), { name: 'plain', url: clips.at(-1) }],
    });
    agent = startAgent(['run', '--config', config]);
    for (const camera of [...KINDS, 'plain']) {
      const first = await recorder.waitFor((m) => m.topic === `${BASE}/${camera}/score`, 60_000);
      startOf.set(camera, seconds(json(first).at));
    }
  }, 120_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await recorder?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('reports each fault of the right kind within 3 s, holds back anomaly events, ends it within 3 s of the picture coming back', async () => {
    const faultsOf = (camera: string) => recorder.messages.filter((m) => m.topic === `${BASE}/${camera}/faults`).map(json);
    for (const kind of KINDS) {
      await recorder.waitUntil(() => faultsOf(kind).some((fault) => fault.type === 'end'), `the end of camera ${kind}'s fault`, (FAULT_TO_S + 8) * 1000);
      const t0 = startOf.get(kind)!;
      const [start, end] = faultsOf(kind);
      expect(start, JSON.stringify(faultsOf(kind))).toMatchObject({ type: 'start', kind, camera: kind });
      expect(seconds(start!.at) - t0).toBeGreaterThanOrEqual(FAULT_FROM_S - 0.5);
      expect(seconds(start!.at) - t0).toBeLessThanOrEqual(FAULT_FROM_S + 3);
      expect(end).toMatchObject({ type: 'end', kind, id: start!.id, reason: 'recovered' });
      expect(seconds(end!.at) - t0).toBeLessThanOrEqual(FAULT_TO_S + 3);
      const events = recorder.messages.filter((m) => m.topic === `${BASE}/${kind}/events`).map(json);
      const during = events.filter((event) => seconds(event.at) >= t0 + FAULT_FROM_S && seconds(event.at) <= seconds(end!.at));
      expect(during, `camera ${kind}: anomaly event messages while its fault held`).toEqual([]);
      // The retained status listed the fault while it held, and lists none after.
      const statuses = () => recorder.messages.filter((m) => m.topic === `${BASE}/${kind}/status`).map(json);
      expect(statuses().some((status) => (status.faults as { id: string }[]).some((fault) => fault.id === start!.id))).toBe(true);
      // The status follows the end message on another topic.
      await recorder.waitUntil(() => (statuses().at(-1)!.faults as unknown[]).length === 0, `camera ${kind}'s status without the fault`, 2000);
    }
    const metrics = await (await fetch(`${healthUrl}/metrics`)).text();
    for (const kind of KINDS) expect(metrics).toMatch(new RegExp(`^linewatch_camera_faults_total\\{camera="${kind}",kind="${kind}"\\} [1-9]`, 'm'));
    expect(metrics).toMatch(/^linewatch_camera_faults_total\{camera="plain",kind="covered"\} 0$/m);
    payloadValidator(BASE).expectAllValid(recorder.messages.filter((m) => !m.topic.endsWith('/score')));
  }, 60_000);

  it('raises no fault over the whole unperturbed clip', async () => {
    const scores = () => recorder.messages.filter((m) => m.topic === `${BASE}/plain/score`);
    await recorder.waitUntil(() => seconds(json(scores().at(-1)!).at) >= startOf.get('plain')! + CLIP_S - 0.5, 'the end of the plain clip', CLIP_S * 1000);
    expect(recorder.messages.filter((m) => m.topic === `${BASE}/plain/faults`)).toEqual([]);
  }, 30_000);

  it('ends a fault open at shutdown with reason shutdown, and the last status lists no fault', async () => {
    // The clips loop: the covered camera's lens is capped again CLIP_S seconds after the first time.
    const starts = () => recorder.messages.filter((m) => m.topic === `${BASE}/covered/faults` && json(m).type === 'start');
    await recorder.waitUntil(() => starts().length >= 2, 'the second covered fault', (CLIP_S + FAULT_FROM_S + 6) * 1000);
    const second = json(starts()[1]!);
    agent.child.kill('SIGTERM');
    expect(await agent.exited()).toBe(0);
    const end = await recorder.waitFor((m) => m.topic === `${BASE}/covered/faults` && json(m).type === 'end' && json(m).id === second.id, 5000);
    expect(json(end)).toMatchObject({ reason: 'shutdown', kind: 'covered' });
    const statuses = recorder.messages.filter((m) => m.topic === `${BASE}/covered/status`).map(json);
    expect(statuses.at(-1)).toMatchObject({ state: 'offline', faults: [] });
  }, 40_000);
});
