/**
 * Fault 9: NTP steps the wall clock back while the agent runs. The real agent runs under
 * libfaketime (Debian package `faketime`), which fakes only the wall clock (CLOCK_REALTIME) and
 * reads its offset from a file on every call, so the test moves the agent's clock back by an hour
 * mid-run, in the middle of an anomaly event, as `ntpd -g`/chrony's makestep would. The
 * monotonic clock is left alone: that is what frames, debouncing and durations must run on.
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { REPO, startAgent, writeConfig } from '../helpers/agent.js';
import { isMosquittoInstalled, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const LIBFAKETIME = ['/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1', '/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1'].find((file) =>
  existsSync(file),
);
const STEP_S = 3600;

const missing = [
  LIBFAKETIME ? undefined : 'libfaketime is not installed (scripts/setup.sh installs the faketime package)',
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  existsSync(VIDEO) ? undefined : `${VIDEO} is missing`,
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
].filter(Boolean);
if (missing.length) console.warn(`clock-step tests skipped: ${missing.join('; ')}`);

interface Received {
  topic: string;
  payload: Record<string, unknown>;
  /** The test's own wall clock (not faked) when the message arrived. */
  receivedAt: number;
}

describe.skipIf(missing.length > 0)('the wall clock steps back an hour while the agent runs', () => {
  let dir: string;
  let broker: MosquittoBroker;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-clock-step-'));
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('keeps scoring; events start and end in order with real durations; payload times follow the wall clock', async () => {
    const offsetFile = path.join(dir, 'faketime');
    writeFileSync(offsetFile, '+0\n');
    const config = writeConfig(path.join(dir, 'agent.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url, scoreTopic: { maxRateHz: 10 } },
      health: { enabled: false },
      defaults: { model: MODEL, fps: 10 },
      cameras: [{ name: 'line1', url: VIDEO, loop: true, realtime: true, scorePublish: true, stallTimeoutS: 3 }],
    });

    const received: Received[] = [];
    const client = await mqtt.connectAsync(broker.url);
    client.on('message', (topic, payload) => {
      if (!topic.startsWith('linewatch/testdev/line1/')) return;
      received.push({ topic, payload: JSON.parse(payload.toString('utf8')) as Record<string, unknown>, receivedAt: Date.now() });
    });
    await client.subscribeAsync('linewatch/testdev/#', { qos: 1 });
    const waitFor = async (what: string, done: () => boolean, timeoutMs: number): Promise<void> => {
      const until = Date.now() + timeoutMs;
      while (!done()) {
        if (Date.now() > until) throw new Error(`timed out waiting for ${what}; agent output:\n${agent.output().slice(-4000)}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    };
    const events = () => received.filter((message) => message.topic.endsWith('/events'));
    const scores = () => received.filter((message) => message.topic.endsWith('/score'));

    const agent = startAgent(['run', '--config', config], {
      env: {
        LD_PRELOAD: LIBFAKETIME,
        FAKETIME_TIMESTAMP_FILE: offsetFile,
        FAKETIME_NO_CACHE: '1',
        // Only CLOCK_REALTIME moves, as with an NTP step.
        FAKETIME_DONT_FAKE_MONOTONIC: '1',
      },
    });
    let stepAt = 0;
    try {
      // The demo video's normal scene lasts ~5 s, then a hand takes a bottle away: step while that event is open.
      await waitFor('the first event to start', () => events().some((message) => message.payload.type === 'start'), 60_000);
      const firstId = events().find((message) => message.payload.type === 'start')!.payload.id;
      stepAt = Date.now();
      writeFileSync(offsetFile, `-${STEP_S}\n`);
      const scoresBeforeStep = scores().length;

      // That event must end, and a later one start and end, all on the stepped clock.
      await waitFor(
        'the open event to end and a new one to start and end after the step',
        () => {
          const after = events().filter((message) => message.receivedAt > stepAt);
          const ended = new Set(after.filter((message) => message.payload.type === 'end').map((message) => message.payload.id));
          const startedAfter = after.filter((message) => message.payload.type === 'start').map((message) => message.payload.id);
          return ended.has(firstId) && startedAfter.some((id) => ended.has(id));
        },
        100_000,
      );
      // Soft from here on: each check is a separate symptom, and a failure should show all of them.
      const output = agent.output();
      expect.soft(output).not.toMatch(/scoring failed/i);
      expect.soft(output).not.toMatch(/must not go back/);
      expect.soft(agent.child.exitCode, output.slice(-3000)).toBeNull();
      // 10 fps, scores published at up to 10 Hz: dozens in the seconds since the step.
      const scoredAfter = scores().length - scoresBeforeStep;
      expect.soft(scoredAfter, `score messages: ${scoresBeforeStep} before the step, ${scoredAfter} in the ${Date.now() - stepAt} ms after`).toBeGreaterThan(20);

      // Events: start, then updates, then one end, per id; durations measured, not wall-clock differences.
      const byId = new Map<unknown, Received[]>();
      for (const message of events()) byId.set(message.payload.id, [...(byId.get(message.payload.id) ?? []), message]);
      for (const [id, messages] of byId) {
        const types = messages.map((message) => message.payload.type);
        const describe = `event ${String(id)}: ${messages.map((message) => `${message.payload.type} durationMs=${message.payload.durationMs} at=${message.payload.at}`).join(', ')}`;
        expect.soft(types[0], describe).toBe('start');
        expect.soft(types.slice(1, -1).every((type) => type === 'update'), describe).toBe(true);
        if (types.length > 1) expect.soft(types.at(-1), describe).toMatch(/^(update|end)$/);
        const durations = messages.map((message) => message.payload.durationMs as number);
        for (const duration of durations) {
          expect.soft(duration, describe).toBeGreaterThanOrEqual(0);
          // The video loops every 40 s; an event that spans the step lasts seconds, not an hour.
          expect.soft(duration, describe).toBeLessThan(60_000);
        }
        for (let i = 1; i < durations.length; i++) expect.soft(durations[i]!, describe).toBeGreaterThanOrEqual(durations[i - 1]!);
      }

      // Payload times follow the agent's wall clock: now, then an hour back once it stepped.
      const settled = (message: Received) => Math.abs(message.receivedAt - stepAt) > 2000;
      for (const message of [...events(), ...scores()].filter(settled)) {
        const expected = message.receivedAt - (message.receivedAt > stepAt ? STEP_S * 1000 : 0);
        const at = Date.parse(String(message.payload.at));
        expect.soft(Math.abs(at - expected), `${message.topic} at=${message.payload.at} received ${new Date(message.receivedAt).toISOString()}`).toBeLessThan(5000);
      }
    } finally {
      agent.child.kill('SIGTERM');
      await agent.exited();
      await client.endAsync();
    }
  }, 240_000);
});
