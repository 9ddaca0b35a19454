import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { configFromObject } from '../../src/config/index.js';
import { LinewatchError, UsageError } from '../../src/errors.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../src/publish/broker.js';
import { MqttPublisher } from '../../src/publish/mqtt.js';
import { demoAgentMissing, DEMO_MODEL, DEMO_VIDEO, startAgent, writeConfig } from '../helpers/agent.js';
import { configProblems } from '../helpers/config.js';
import { freePort, recordMqtt, type MqttRecorder } from '../helpers/mosquitto.js';
import { hasStrace, syscallsDuring } from '../helpers/strace.js';

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  cleanups.length = 0;
});

async function startBroker(port = 0): Promise<EmbeddedBroker> {
  const broker = await startEmbeddedBroker({ host: '127.0.0.1', port });
  cleanups.push(() => broker.close());
  return broker;
}

describe('startEmbeddedBroker (aedes)', () => {
  // Measured on loopback (200 messages 5 ms apart to a subscriber): with Nagle's algorithm on the
  // broker's side, p99 35-39 ms and 2.5 % over 20 ms (a message waits for the delayed ACK of the
  // one before); with TCP_NODELAY, p99 1.2-2 ms.
  it.skipIf(!hasStrace)("turns Nagle's algorithm off on every client connection (TCP_NODELAY)", async () => {
    const broker = await startBroker();
    const clients: mqtt.MqttClient[] = [];
    // mqtt.js leaves Nagle on for its own sockets: the TCP_NODELAY calls are the broker's.
    const lines = await syscallsDuring(['setsockopt'], async () => {
      for (let i = 0; i < 2; i++) clients.push(await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 }));
    });
    for (const client of clients) cleanups.push(() => client.endAsync(true));
    expect(lines.filter((line) => /setsockopt\(\d+, SOL_TCP, TCP_NODELAY, \[1\]/.test(line))).toHaveLength(2);
  });

  it('serves a real publisher and subscriber: retained availability and QoS 1 events', async () => {
    const broker = await startBroker();
    expect(broker.url).toBe(`mqtt://127.0.0.1:${broker.port}`);
    expect(broker.port).toBeGreaterThan(0);

    const dataDir = mkdtempSync(join(tmpdir(), 'linewatch-aedes-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const publisher = new MqttPublisher({
      url: broker.url,
      deviceId: 'demo',
      dataDir,
      reconnectPeriodMs: 200,
      logger: { info: () => undefined, warn: () => undefined },
    });
    cleanups.push(() => publisher.close());
    await publisher.connect();
    expect(publisher.connected).toBe(true);

    // Subscribed after `online` went out: only a retained message can reach it.
    const recorder: MqttRecorder = await recordMqtt(broker.url, 'linewatch/demo/#');
    cleanups.push(() => recorder.close());
    expect(await recorder.waitFor((m) => m.topic === 'linewatch/demo/status')).toMatchObject({
      payload: 'online',
      retain: true,
    });

    const at = new Date().toISOString();
    publisher.publishEvent({
      type: 'start',
      id: '0b7d1f0e-4a8e-4b8e-9a57-0d9c3f1e2a11',
      camera: 'bottles',
      at,
      startedAt: at,
      score: 0.5,
      peakScore: 0.5,
      meanScore: 0.5,
      threshold: 0.3,
      frames: 3,
      durationMs: 300,
      peakAt: at,
      box: null,
      snapshot: null,
    });
    const event = await recorder.waitFor((m) => m.topic === 'linewatch/demo/bottles/events');
    expect(event.qos).toBe(1);
    expect(JSON.parse(event.payload)).toMatchObject({ type: 'start', camera: 'bottles' });
  });

  it('says clearly that the port is taken and how to fix it', async () => {
    const occupant: Server = createServer();
    await new Promise<void>((resolve) => occupant.listen(0, '127.0.0.1', resolve));
    cleanups.push(() => new Promise<void>((resolve) => occupant.close(() => resolve())));
    const address = occupant.address();
    const port = typeof address === 'object' && address ? address.port : 0;

    const attempt = startEmbeddedBroker({ host: '127.0.0.1', port });
    await expect(attempt).rejects.toBeInstanceOf(LinewatchError);
    const error = (await attempt.catch((caught: unknown) => caught)) as LinewatchError;
    expect(error.message).toBe(`cannot start the embedded MQTT broker: 127.0.0.1:${port} is already in use`);
    // Not a usage error (exit 2, which systemd never restarts): the port may free itself.
    expect(error).not.toBeInstanceOf(UsageError);
    expect(error.exitCode).toBe(1);
    expect(error.hint).toContain('set mqtt.url');
    expect(error.hint).toContain('stop the other process');
  });

  it('closes even with clients still connected, and frees its port', async () => {
    const broker = await startEmbeddedBroker({ host: '127.0.0.1', port: 0 });
    const recorder = await recordMqtt(broker.url, '#', { reconnectPeriod: 0 });
    cleanups.push(() => recorder.close());
    await broker.close();
    const again = await startBroker(broker.port);
    expect(again.port).toBe(broker.port);
  });
});

/** CONNACK return code a second client gets: 0 when accepted (it disconnects again at once). */
async function connackCode(url: string, options: mqtt.IClientOptions): Promise<number> {
  try {
    const client = await mqtt.connectAsync(url, { reconnectPeriod: 0, connectTimeout: 5000, ...options });
    await client.endAsync();
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? -1;
  }
}

describe('the embedded broker keeps the agent its own', () => {
  it("refuses the agent's client id to any client without the agent's credentials, and keeps the agent connected", async () => {
    const broker = await startEmbeddedBroker({ host: '127.0.0.1', port: 0, agentClientId: 'linewatch-demo' });
    cleanups.push(() => broker.close());
    expect(broker.agentCredentials.username).toBe('linewatch-demo');
    expect(broker.agentCredentials.password.length).toBeGreaterThanOrEqual(32);

    const dataDir = mkdtempSync(join(tmpdir(), 'linewatch-aedes-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const warnings: string[] = [];
    const publisher = new MqttPublisher({
      url: broker.url,
      deviceId: 'demo', // client id linewatch-demo
      ...broker.agentCredentials,
      dataDir,
      reconnectPeriodMs: 200,
      logger: { info: () => undefined, warn: (message) => warnings.push(message) },
    });
    cleanups.push(() => publisher.close());
    await publisher.connect();
    expect(publisher.connected).toBe(true);
    const recorder = await recordMqtt(broker.url, 'linewatch/demo/status');
    cleanups.push(() => recorder.close());
    await recorder.waitFor((m) => m.payload === 'online');

    // Without the fix, each of these took the agent's session over and the broker dropped the agent.
    expect(await connackCode(broker.url, { clientId: 'linewatch-demo' })).toBe(2); // identifier rejected
    expect(await connackCode(broker.url, { clientId: 'linewatch-demo', username: 'linewatch-demo', password: 'guess' })).toBe(2);
    expect(await connackCode(broker.url, { clientId: 'linewatch-demo', username: 'linewatch-demo', password: `${broker.agentCredentials.password}x` })).toBe(2);
    // Any other client id is still welcome (the demo broker has no accounts).
    expect(await connackCode(broker.url, { clientId: 'mosquitto_sub-1' })).toBe(0);

    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(publisher.connected).toBe(true);
    expect(warnings).toEqual([]);
    // The agent's last will never fired: it was not disconnected.
    expect(recorder.messages.filter((m) => m.payload === 'offline')).toEqual([]);
  });

  it('listens on loopback addresses only', async () => {
    for (const host of ['0.0.0.0', '::', '192.168.1.10']) {
      const attempt = startEmbeddedBroker({ host, port: 0 });
      const error = (await attempt.catch((caught: unknown) => caught)) as UsageError;
      expect(error).toBeInstanceOf(UsageError);
      expect(error.exitCode).toBe(2);
      expect(error.message).toBe(`the embedded MQTT broker listens on this machine only, not on ${host}`);
      expect(error.hint).toContain('mqtt.url');
    }
    const broker = await startBroker();
    expect(broker.host).toBe('127.0.0.1');
    // The config says so before the agent starts (validate-config included).
    const cameras = [{ name: 'demo', url: DEMO_VIDEO, model: DEMO_MODEL }];
    expect(configProblems(() => configFromObject({ cameras, mqtt: { embeddedBroker: { host: '0.0.0.0' } } }))).toEqual([
      'mqtt.embeddedBroker.host: the embedded broker listens on this machine only: use 127.0.0.1 or ::1, or set mqtt.url to a real broker',
    ]);
    for (const host of ['127.0.0.1', '::1', 'localhost']) {
      expect(configFromObject({ cameras, mqtt: { embeddedBroker: { host } } }).mqtt.embeddedBroker.host).toBe(host);
    }
  });
});

const agentMissing = demoAgentMissing('embedded broker with a real agent');
describe.skipIf(agentMissing.length > 0)('a real agent on its embedded broker', () => {
  it("stays connected when another client (mosquitto_sub) tries its client id", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'linewatch-broker-agent-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const port = await freePort();
    const config = writeConfig(join(dir, 'linewatch.yaml'), {
      deviceId: 'line-7',
      dataDir: join(dir, 'data'),
      defaults: { model: DEMO_MODEL, fps: 5 },
      mqtt: { embeddedBroker: { port }, statsIntervalS: 1 },
      health: { enabled: false },
      cameras: [{ name: 'demo', url: DEMO_VIDEO, loop: true, realtime: true }],
    });
    const agent = startAgent(['run', '--config', config]);
    cleanups.push(async () => {
      agent.child.kill('SIGINT');
      await agent.exited();
    });
    await agent.waitForOutput(/MQTT connected to mqtt:\/\/127\.0\.0\.1:\d+ as linewatch-line-7/, 30_000);
    const recorder = await recordMqtt(`mqtt://127.0.0.1:${port}`, 'linewatch/line-7/#');
    cleanups.push(() => recorder.close());
    await recorder.waitFor((m) => m.topic === 'linewatch/line-7/status' && m.payload === 'online');

    const impostor = spawnSync('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(port), '-i', 'linewatch-line-7', '-t', '#', '-C', '1', '-W', '5'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    expect(impostor.status).not.toBe(0);
    expect(`${impostor.stdout}${impostor.stderr}`).toMatch(/identifier rejected/i);

    // The agent keeps publishing on its one connection: stats arrive after the attempt, no last will, no reconnect.
    const statsBefore = recorder.messages.filter((m) => m.topic === 'linewatch/line-7/stats').length;
    await recorder.waitUntil((messages) => messages.filter((m) => m.topic === 'linewatch/line-7/stats').length >= statsBefore + 2, 'two more stats messages', 10_000);
    expect(recorder.messages.filter((m) => m.topic === 'linewatch/line-7/status' && m.payload === 'offline')).toEqual([]);
    expect(agent.output()).not.toMatch(/MQTT connection to .* lost/);
    expect(agent.output().match(/MQTT connected to/g)).toHaveLength(1);
  }, 60_000);
});
