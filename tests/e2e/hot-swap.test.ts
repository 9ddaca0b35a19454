/**
 * Changing a camera's model while `linewatch run` runs, against real parts: mosquitto, ffmpeg
 * playing the demo video at its native speed, onnxruntime, the REST API and SIGHUP. The
 * second and third models are copies of the demo bundle with another calibrated threshold:
 * the threshold is what a subscriber can see change in the events.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childProcesses, REPO, startAgent, writeConfig } from '../helpers/agent.js';
import { freePort, isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker, type ReceivedMessage } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
  existsSync(VIDEO) ? undefined : `${VIDEO} is missing`,
].filter(Boolean);
if (missing.length) console.warn(`hot-swap tests skipped: ${missing.join('; ')}`);

const EVENTS = 'linewatch/testdev/line1/events';

interface ApiErrorBody {
  error: string;
  message: string;
}

describe.skipIf(missing.length > 0)('changing the model of a running agent', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let demoThreshold: number;

  /** A copy of the demo bundle, its manifest edited by `edit`. */
  function bundle(name: string, edit: (manifest: Record<string, any>) => void = () => {}): string {
    const target = path.join(dir, name);
    cpSync(MODEL, target, { recursive: true });
    const file = path.join(target, 'manifest.json');
    const manifest = JSON.parse(readFileSync(file, 'utf8'));
    edit(manifest);
    writeFileSync(file, JSON.stringify(manifest, null, 2));
    return target;
  }

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-hot-swap-'));
    broker = await startMosquitto();
    demoThreshold = JSON.parse(readFileSync(path.join(MODEL, 'manifest.json'), 'utf8')).calibration.int8.threshold;
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('swaps over the REST API and on SIGHUP between frames, keeps the old model when the new one is broken, and events keep flowing', async () => {
    // The demo scores its changes far above its threshold (~50 against ~17.5): a few points more
    // still raise every event, and the events say which model judged them.
    const apiThreshold = Math.round(demoThreshold) + 3;
    const reloadThreshold = Math.round(demoThreshold) + 5;
    const viaApi = bundle('via-api', (m) => (m.calibration.int8.threshold = apiThreshold));
    const viaReload = bundle('via-reload', (m) => (m.calibration.int8.threshold = reloadThreshold));
    const corrupt = bundle('corrupt');
    writeFileSync(path.join(corrupt, 'model.int8.onnx'), Buffer.from('not an ONNX model at all'));
    // JSON has no Infinity; 1e309 is what a broken export leaves, and it reads as one.
    const nonFinite = path.join(dir, 'non-finite');
    cpSync(MODEL, nonFinite, { recursive: true });
    const manifestFile = path.join(nonFinite, 'manifest.json');
    writeFileSync(manifestFile, readFileSync(manifestFile, 'utf8').replace(/("std":\s*)[0-9.eE+-]+/, (_, key: string) => `${key}1e309`));

    const port = await freePort();
    const api = `http://127.0.0.1:${port}/api/cameras/line1/model`;
    const camera = { name: 'line1', url: VIDEO, loop: true, realtime: true, stallTimeoutS: 5 };
    const config = (model: string, extra: Record<string, unknown> = {}) => ({
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port },
      defaults: { model, fps: 10 },
      cameras: [{ ...camera, ...extra }],
    });
    const configFile = writeConfig(path.join(dir, 'agent.yaml'), config(MODEL));
    const recorder = await recordMqtt(broker.url, 'linewatch/testdev/#');
    const agent = startAgent(['run', '--config', configFile]);
    const post = (body: unknown) => fetch(api, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
    const events = () => recorder.messages.filter((m) => m.topic === EVENTS).map((m) => JSON.parse(m.payload));
    const startAfter = (index: number, threshold: number, timeoutMs: number) =>
      recorder.waitUntil(
        (all) => all.slice(index).some((m) => m.topic === EVENTS && JSON.parse(m.payload).type === 'start' && JSON.parse(m.payload).threshold === threshold),
        `an event start judged against threshold ${threshold}`,
        timeoutMs,
      );
    try {
      await agent.waitForOutput(/health: http:\/\/127\.0\.0\.1/, 30_000);
      const before = await (await fetch(api)).json();
      expect(before).toMatchObject({ camera: 'line1', model: MODEL, variant: 'int8', threshold: demoThreshold, origin: 'config' });

      // Events with the model the agent started with.
      await startAfter(0, demoThreshold, 45_000);
      const [ffmpeg] = childProcesses(agent.pid);
      expect(ffmpeg).toBeDefined();

      // Broken bundles: refused with the reason, the old model keeps scoring.
      const corruptReply = await post({ model: corrupt });
      expect(corruptReply.status).toBe(422);
      const corruptError = (await corruptReply.json()) as ApiErrorBody;
      expect(corruptError.error).toBe('invalid-model');
      expect(corruptError.message).toContain(path.join(corrupt, 'model.int8.onnx'));
      const nonFiniteReply = await post({ model: nonFinite });
      expect(nonFiniteReply.status).toBe(422);
      expect(((await nonFiniteReply.json()) as ApiErrorBody).message).toMatch(/manifest\.json.*(finite|Infinity)|(finite|Infinity).*manifest\.json/s);
      expect((await post({ model: path.join(dir, 'no-such-bundle') })).status).toBe(422);
      expect(await (await fetch(api)).json()).toMatchObject({ model: MODEL, threshold: demoThreshold });

      // A good one: switched between two frames, ffmpeg untouched.
      const swapAt = recorder.messages.length;
      const swapped = await post({ model: viaApi });
      expect(swapped.status).toBe(200);
      const reply = (await swapped.json()) as { endedEvent: string | null };
      expect(reply).toMatchObject({ camera: 'line1', model: { model: viaApi, variant: 'int8', threshold: apiThreshold, origin: 'api' }, previous: { model: MODEL, variant: 'int8' } });
      expect(await (await fetch(api)).json()).toMatchObject({ model: viaApi, threshold: apiThreshold });
      // The camera's own view follows the switch too.
      expect(await (await fetch(`http://127.0.0.1:${port}/api/cameras/line1`)).json()).toMatchObject({ threshold: apiThreshold, model: { dir: viaApi, variant: 'int8' } });
      if (reply.endedEvent !== null) {
        // An event open at the switch ends with the old model's figures.
        const end = await recorder.waitFor((m) => m.topic === EVENTS && JSON.parse(m.payload).id === reply.endedEvent && JSON.parse(m.payload).type === 'end', 5000);
        expect(JSON.parse(end.payload)).toMatchObject({ reason: 'model-changed', threshold: demoThreshold });
      }
      await startAfter(swapAt, apiThreshold, 45_000);
      expect(childProcesses(agent.pid)).toEqual([ffmpeg]);

      // SIGHUP with a changed model (and a change that needs a restart): the model is swapped, the rest reported.
      writeConfig(configFile, config(viaReload, { fps: 8 }));
      const reloadAt = recorder.messages.length;
      agent.child.kill('SIGHUP');
      await agent.waitForOutput(/config reload: camera line1 runs .*via-reload \(int8\) now/, 20_000);
      await agent.waitForOutput(/config reload: these changes need a restart to apply: cameras\.line1\.fps/, 5_000);
      expect(await (await fetch(api)).json()).toMatchObject({ model: viaReload, threshold: reloadThreshold, origin: 'reload' });
      await startAfter(reloadAt, reloadThreshold, 45_000);

      // SIGHUP with a broken model: logged, the running one stays.
      writeConfig(configFile, config(corrupt));
      agent.child.kill('SIGHUP');
      await agent.waitForOutput(/config reload: camera line1 keeps its model: cannot load ONNX model .*corrupt/, 20_000);
      expect(await (await fetch(api)).json()).toMatchObject({ model: viaReload, threshold: reloadThreshold });
      expect(agent.child.exitCode).toBeNull();
      expect(childProcesses(agent.pid)).toEqual([ffmpeg]);

      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
      await recorder.waitFor((m: ReceivedMessage) => m.topic === 'linewatch/testdev/status' && m.payload === 'offline', 5000);

      payloadValidator('linewatch/testdev').expectAllValid(recorder.messages);
      const all = events();
      const started = all.filter((e) => e.type === 'start').map((e) => e.id);
      const ended = new Set(all.filter((e) => e.type === 'end').map((e) => e.id));
      expect(started.filter((id) => !ended.has(id)), 'every started event has an end').toEqual([]);
      // An event is judged by one model from start to end: a switch ends it rather than mixing two.
      for (const id of started) {
        const thresholds = new Set(all.filter((e) => e.id === id).map((e) => e.threshold));
        expect(thresholds.size, `event ${id} keeps one threshold`).toBe(1);
      }
      // Events judged by each of the three models reached the subscriber.
      expect(new Set(all.filter((e) => e.type === 'start').map((e) => e.threshold))).toEqual(new Set([demoThreshold, apiThreshold, reloadThreshold]));
    } finally {
      agent.child.kill('SIGKILL');
      await recorder.close();
    }
  }, 240_000);
});
