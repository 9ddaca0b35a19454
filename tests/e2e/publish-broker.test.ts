import { createServer, type Server } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { LinewatchError, UsageError } from '../../src/errors.js';
import { startEmbeddedBroker, type EmbeddedBroker } from '../../src/publish/broker.js';
import { MqttPublisher } from '../../src/publish/mqtt.js';
import { recordMqtt, type MqttRecorder } from '../helpers/mosquitto.js';

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
