/**
 * Faults 8 and 12 (health port): the real agent with every camera down must keep
 * feeding systemd's watchdog (it is alive and retrying), and a health port already
 * taken must cost the health page only, not the agent.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, startAgent, writeConfig } from '../helpers/agent.js';
import { PYTHON, startNotifyListener } from '../helpers/notify-socket.js';
import { freePort, isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';

const MODEL = path.join(REPO, 'models/demo');
const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  existsSync(PYTHON) ? undefined : `${PYTHON} is missing`,
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
].filter(Boolean);
if (missing.length) console.warn(`agent-liveness fault tests skipped: ${missing.join('; ')}`);


describe.skipIf(missing.length > 0)('agent liveness under faults', () => {
  let dir: string;
  let broker: MosquittoBroker;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-liveness-'));
    broker = await startMosquitto();
  });
  afterAll(async () => {
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('feeds the systemd watchdog while every camera is down (a switch reboot), instead of getting killed', async () => {
    const socketPath = path.join(dir, 'notify.sock');
    const listener = await startNotifyListener(socketPath);
    const received = listener.received;
    // Nothing listens on this port: the camera never delivers a frame.
    const deadCamera = `rtsp://127.0.0.1:${await freePort()}/line1`;
    const config = writeConfig(path.join(dir, 'down.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data-down'),
      mqtt: { url: broker.url },
      health: { enabled: false },
      defaults: { model: MODEL, fps: 10, socketTimeoutS: 1, backoff: { initialS: 0.5, maxS: 2 } },
      cameras: [{ name: 'line1', url: deadCamera }],
    });
    // WatchdogSec=2: pings are due every second; 8 s without any frame is four watchdog periods.
    const agent = startAgent(['run', '--config', config], { env: { NOTIFY_SOCKET: socketPath, WATCHDOG_USEC: '2000000' } });
    try {
      await agent.waitForOutput(/linewatch is watching/, 30_000);
      const readyAt = received.find((entry) => /READY=1/.test(entry.message))?.at;
      expect(readyAt, `no READY=1; got ${JSON.stringify(received)}`).toBeDefined();
      await new Promise((resolve) => setTimeout(resolve, 8000));
      expect(agent.output()).not.toMatch(/streaming/);
      const pings = received.filter((entry) => entry.message === 'WATCHDOG=1' && entry.at >= readyAt!).map((entry) => entry.at);
      expect(pings.length, `watchdog pings after READY: ${pings.length}; output:\n${agent.output().slice(-2000)}`).toBeGreaterThanOrEqual(5);
      const gaps = pings.slice(1).map((at, i) => at - pings[i]!);
      expect(Math.max(...gaps)).toBeLessThan(2000);
      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
    } finally {
      agent.child.kill('SIGKILL');
      listener.stop();
    }
  }, 60_000);

  it('runs on without its health page when the health port is taken, says so, and still publishes', async () => {
    const port = await freePort();
    const squatter: Server = createServer();
    await new Promise<void>((resolve) => squatter.listen(port, '127.0.0.1', resolve));
    const config = writeConfig(path.join(dir, 'port.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data-port'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port },
      defaults: { model: MODEL, fps: 10 },
      cameras: [{ name: 'line1', url: VIDEO, loop: true, realtime: true }],
    });
    const recorder = await recordMqtt(broker.url, 'linewatch/testdev/#');
    const agent = startAgent(['run', '--config', config]);
    try {
      await agent.waitForOutput(/health server failed to start; linewatch runs on without it/, 30_000);
      await recorder.waitFor((m) => m.topic === 'linewatch/testdev/line1/status' && JSON.parse(m.payload).state === 'streaming', 30_000);
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(agent.child.exitCode).toBeNull();
      expect(agent.output()).toMatch(new RegExp(`${port}`));
      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
    } finally {
      agent.child.kill('SIGKILL');
      await recorder.close();
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
  }, 60_000);
});
