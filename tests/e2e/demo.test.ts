/**
 * The no-configuration demo (`npm start` = `linewatch run` with config/linewatch.yaml): the
 * bundled video at native speed, the bundled model, the embedded broker. Run here on free
 * ports, with a real MQTT subscriber on the embedded broker.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { freePort } from '../../bench/net.js';
import { REPO, startAgent, writeConfig } from '../helpers/agent.js';
import { recordMqtt } from '../helpers/mosquitto.js';

describe('the demo', () => {
  it('publishes an anomaly event from the bundled video through the embedded broker, and says how to subscribe', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-demo-'));
    const demo = YAML.parse(readFileSync(path.join(REPO, 'config/linewatch.yaml'), 'utf8'));
    expect(demo.mqtt?.url).toBeUndefined();
    const [mqttPort, healthPort] = [await freePort(), await freePort()];
    const config = writeConfig(path.join(dir, 'demo.yaml'), {
      ...demo,
      deviceId: 'demo-test',
      dataDir: path.join(dir, 'data'),
      mqtt: { ...demo.mqtt, embeddedBroker: { port: mqttPort } },
      health: { ...demo.health, port: healthPort },
    });
    const agent = startAgent(['run', '--config', config]);
    try {
      await agent.waitForOutput(/subscribe: mosquitto_sub -h 127\.0\.0\.1 -p \d+ -t 'linewatch\/demo-test\/#' -v/, 20_000);
      const recorder = await recordMqtt(`mqtt://127.0.0.1:${mqttPort}`, 'linewatch/demo-test/#');
      const start = await recorder.waitFor((m) => m.topic === 'linewatch/demo-test/demo/events' && JSON.parse(m.payload).type === 'start', 30_000);
      expect(JSON.parse(start.payload).camera).toBe('demo');
      await agent.waitForOutput(/demo: anomaly started, score [\d.]+ > [\d.]+/, 5000);
      const health = await fetch(`http://127.0.0.1:${healthPort}/healthz`);
      expect(health.status).toBe(200);
      await recorder.close();
      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
    } finally {
      agent.child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
