/**
 * Fault 7: credentials must never leave the agent. Secrets are planted where
 * operators put them (camera URL userinfo, camera query strings, the MQTT password
 * and broker URL), the real agent runs against a real mosquitto that requires that
 * password, a real RTSP server, ffmpeg and the demo model, and every channel a
 * person or another program reads is searched for them: every log line, every
 * MQTT message, the health server's pages, and the CLI's output (validate-config
 * text and --json, config errors). bin/linewatch.js runs dist/: build first.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli, startAgent, writeConfig } from '../helpers/agent.js';
import { freePort, isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';
import { rtspServerUnavailable, startRtspServer, type RtspServer } from '../helpers/rtsp.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  rtspServerUnavailable(),
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
  existsSync(path.join(REPO, 'dist/cli/index.js')) ? undefined : 'dist/ is not built',
].filter(Boolean);
if (missing.length) console.warn(`secrets tests skipped: ${missing.join('; ')}`);

/** Distinctive values, so a hit can only be a leak. */
const SECRETS = {
  cameraPassword: 'CamPw7731xq',
  queryPwd: 'QryPwd5519zz',
  queryToken: 'QryTok8824yy',
  accessToken: 'AccTok4471tt',
  httpPassword: 'HttpPass3301ww',
  httpKey: 'HttpKey6612vv',
  mqttPassword: 'MqttPw3390uu',
};
const OBSERVER = { username: 'observer', password: 'observer-pw' };

/** Each secret in the forms it could leak in: as is, and inside an HTTP Basic header (the values need no percent-encoding). */
function forms(): { name: string; text: string }[] {
  return Object.entries(SECRETS).flatMap(([name, value]) => [
    { name, text: value },
    { name: `${name} (HTTP Basic)`, text: Buffer.from(`camuser:${value}`).toString('base64') },
  ]);
}

function leaks(where: string, text: string): string[] {
  return forms()
    .filter((form) => text.includes(form.text))
    .map((form) => `${where} shows ${form.name}: …${text.slice(Math.max(0, text.indexOf(form.text) - 80), text.indexOf(form.text) + 40)}…`);
}

/** The camera URLs, each holding secrets. */
function cameraUrls(rtspPort: number, closedPort: number) {
  return {
    live: `rtsp://camuser:${SECRETS.cameraPassword}@127.0.0.1:${rtspPort}/stream?pwd=${SECRETS.queryPwd}&token=${SECRETS.queryToken}`,
    gate: `rtsp://camuser:${SECRETS.cameraPassword}@127.0.0.1:${closedPort}/stream?pwd=${SECRETS.queryPwd}&access_token=${SECRETS.accessToken}`,
    mjpeg: `http://camuser:${SECRETS.cameraPassword}@127.0.0.1:${closedPort}/video.cgi?user=admin&password=${SECRETS.httpPassword}&key=${SECRETS.httpKey}`,
  };
}

describe.skipIf(missing.length > 0)('planted secrets never show', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let rtsp: RtspServer;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-secrets-'));
    broker = await startMosquitto({ users: { agent: SECRETS.mqttPassword, [OBSERVER.username]: OBSERVER.password } });
    rtsp = await startRtspServer({ file: VIDEO, loop: true });
  });
  afterAll(async () => {
    await rtsp?.stop();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function agentConfig(healthPort: number, closedPort: number) {
    const urls = cameraUrls(rtsp.port, closedPort);
    const fast = { stallTimeoutS: 3, socketTimeoutS: 2, backoff: { initialS: 0.5, maxS: 2 } };
    return {
      deviceId: 'secrets',
      dataDir: path.join(dir, 'data'),
      log: { level: 'debug' },
      mqtt: {
        url: `mqtt://agent:${SECRETS.mqttPassword}@127.0.0.1:${broker.port}`,
        username: 'agent',
        password: SECRETS.mqttPassword,
        scoreTopic: { enabled: true, maxRateHz: 2 },
        statsIntervalS: 1,
      },
      health: { enabled: true, host: '127.0.0.1', port: healthPort },
      defaults: { model: MODEL, fps: 5, ...fast },
      cameras: [
        { name: 'clip', url: VIDEO, loop: true, realtime: true },
        { name: 'live', url: urls.live },
        { name: 'gate', url: urls.gate },
        { name: 'mjpeg', url: urls.mjpeg },
      ],
    };
  }

  it('validate-config (text and --json) and config errors mask every secret', async () => {
    const good = writeConfig(path.join(dir, 'good.yaml'), agentConfig(await freePort(), await freePort()));
    const found: string[] = [];

    const text = runCli(['validate-config', good]);
    expect(text.code, text.output).toBe(0);
    // The URLs are shown, masked: proof that the output was searched where the secrets would be.
    expect.soft(text.stdout).toContain(`rtsp://***@127.0.0.1:${rtsp.port}/stream?pwd=***&token=***`);
    expect.soft(text.stdout).toMatch(/video\.cgi\?user=admin&password=\*\*\*&key=\*\*\*/);
    found.push(...leaks('validate-config', text.output));

    const json = runCli(['validate-config', good, '--json']);
    expect(json.code, json.output).toBe(0);
    const printed = JSON.parse(json.stdout);
    expect.soft(printed.mqtt.password).toBe('***');
    expect.soft(printed.cameras.map((camera: { url: string }) => camera.url)).toContain(`rtsp://***@127.0.0.1:${rtsp.port}/stream?pwd=***&token=***`);
    found.push(...leaks('validate-config --json', json.output));

    // Config errors quote the URLs they reject.
    const bad = writeConfig(path.join(dir, 'bad.yaml'), {
      mqtt: { url: `mqtt://agent:${SECRETS.mqttPassword}@`, password: SECRETS.mqttPassword },
      defaults: { model: MODEL },
      cameras: [
        { name: 'a', url: `rtsp://camuser:${SECRETS.cameraPassword}@/stream?pwd=${SECRETS.queryPwd}` },
        { name: 'b', url: `http://camuser:${SECRETS.cameraPassword}@[bad/x?token=${SECRETS.queryToken}` },
        { name: 'c', url: `rtsp:/camuser:${SECRETS.cameraPassword}@cam/x?key=${SECRETS.httpKey}` },
        { name: 'd', url: `ftp://camuser:${SECRETS.cameraPassword}@cam/x?password=${SECRETS.httpPassword}` },
      ],
    });
    for (const args of [['validate-config', bad], ['run', '--config', bad]]) {
      const result = runCli(args);
      expect(result.code, result.output).toBe(args[0] === 'run' ? 2 : 1);
      expect(result.stderr).toContain('cameras.0.url');
      expect.soft(result.stderr).toContain('not a valid URL: http://***@[bad/x?token=***');
      found.push(...leaks(args.join(' '), result.output));
    }

    expect(found).toEqual([]);
  });

  it('the running agent: logs, every MQTT message and the health pages mask every secret', async () => {
    const healthPort = await freePort();
    const closedPort = await freePort();
    const recorder = await recordMqtt(broker.url, '#', OBSERVER);
    const config = writeConfig(path.join(dir, 'agent.yaml'), agentConfig(healthPort, closedPort));
    const agent = startAgent(['run', '--config', config]);
    const found: string[] = [];
    const pages: Record<string, string> = {};
    try {
      const status = (camera: string, state: string) => (m: { topic: string; payload: string }) =>
        m.topic === `linewatch/secrets/${camera}/status` && JSON.parse(m.payload).state === state;
      await recorder.waitFor((m) => m.topic === 'linewatch/secrets/status' && m.payload === 'online', 30_000);
      await recorder.waitFor(status('clip', 'streaming'), 30_000);
      await recorder.waitFor(status('live', 'streaming'), 30_000);
      // The failing cameras' status reasons quote ffmpeg, which quotes the URL.
      await recorder.waitFor((m) => status('gate', 'reconnecting')(m) && /Connection refused/.test(m.payload), 30_000);
      await recorder.waitFor((m) => status('mjpeg', 'reconnecting')(m) && /refused/i.test(m.payload), 30_000);
      await recorder.waitFor((m) => m.topic === 'linewatch/secrets/clip/score', 20_000);
      await recorder.waitFor((m) => m.topic === 'linewatch/secrets/stats', 20_000);

      const get = async (page: string) => {
        const response = await fetch(`http://127.0.0.1:${healthPort}${page}`);
        pages[page] = `${response.status} ${await response.text()}`;
      };
      // The documented pages, likely names of a JSON status, and whatever the status page links to.
      for (const page of ['/', '/healthz', '/metrics', '/status', '/status.json', '/api/status']) await get(page);
      const linked = [...pages['/']!.matchAll(/href="(\/[^"#]*)"/g)].map((match) => match[1]!).filter((page) => !page.endsWith('.jpg'));
      for (const page of linked) if (pages[page] === undefined) await get(page);
      expect(pages['/']).toMatch(/^200 /);
      expect.soft(pages['/']).toContain(`rtsp://***@127.0.0.1:${closedPort}/stream?pwd=***&amp;access_token=***`);
      expect(pages['/healthz']).toMatch(/^503 .*gate: reconnecting/);

      // A camera that streamed, then lost its server: its warning quotes ffmpeg's last lines.
      await rtsp.stop();
      await recorder.waitFor(status('live', 'reconnecting'), 30_000);
      await agent.waitForOutput(/camera live: .*ffmpeg's last lines/, 30_000);
      rtsp = await startRtspServer({ file: VIDEO, loop: true, port: rtsp.port });

      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
      await recorder.waitFor((m) => m.topic === 'linewatch/secrets/status' && m.payload === 'offline', 10_000);
    } finally {
      agent.child.kill('SIGKILL');
      await recorder.close();
    }

    const output = agent.output();
    // The log did show the cameras' URLs, masked.
    expect.soft(output).toContain(`rtsp://***@127.0.0.1:${closedPort}/stream?pwd=***&access_token=***`);
    expect.soft(output).toContain(`rtsp://***@127.0.0.1:${rtsp.port}/stream?pwd=***&token=***`);
    output.split('\n').forEach((line, index) => found.push(...leaks(`log line ${index + 1}`, line)));
    expect(recorder.messages.length).toBeGreaterThan(10);
    for (const message of recorder.messages) found.push(...leaks(`MQTT ${message.topic}`, `${message.topic} ${message.payload}`));
    for (const [page, body] of Object.entries(pages)) found.push(...leaks(`GET ${page}`, body));

    expect(found).toEqual([]);
  }, 180_000);
});
