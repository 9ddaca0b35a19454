/**
 * Home Assistant discovery without a broker: the payloads, where snapshots are
 * fetched from, and the component's bookkeeping (announce on connect and on Home
 * Assistant's birth, clear cameras that left the config) against a fake publisher.
 * tests/e2e/homeassistant.test.ts runs the same against mosquitto and the real agent.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, configFromObject, resolveCameras, type Config } from '../../src/config/index.js';
import { memoryLogger } from '../../src/log.js';
import {
  discoveryMessages,
  HOMEASSISTANT_STATE_FILE,
  HomeAssistantDiscovery,
  snapshotBaseUrl,
  TEMPLATES,
  type DiscoveryPublisher,
} from '../../src/publish/homeassistant.js';
import { mqttTopics } from '../../src/publish/mqtt.js';
import { LINEWATCH_VERSION } from '../../src/version.js';
import { renderJinja2, renderTemplate } from '../helpers/jinja.js';

function config(extra: Record<string, unknown> = {}, cameras: unknown[] = [{ name: 'line1', url: 'a.mp4', scorePublish: true }, { name: 'line2', url: 'b.mp4' }]): Config {
  return configFromObject(
    { deviceId: 'dev1', dataDir: '/tmp/unused', mqtt: { url: 'mqtt://127.0.0.1:1883' }, defaults: { model: 'models/demo' }, cameras, ...extra },
    { baseDir: '/srv', fileExists: () => true },
  );
}

function configProblems(extra: Record<string, unknown>): string[] {
  try {
    config(extra);
    return [];
  } catch (error) {
    return (error as ConfigError).issues.map((issue) => `${issue.path}: ${issue.message}`);
  }
}

const topics = mqttTopics('linewatch/dev1');


type Handler = Parameters<DiscoveryPublisher['subscribe']>[1];

class FakePublisher implements DiscoveryPublisher {
  readonly topics = topics;
  connected = false;
  readonly sent: { topic: string; payload: string; qos: 0 | 1 }[] = [];
  readonly subscriptions = new Map<string, Handler>();
  private readonly listeners = new Set<(connected: boolean) => void>();

  publishRetained(topic: string, payload: string, qos: 0 | 1 = 1): boolean {
    if (!this.connected) return false;
    this.sent.push({ topic, payload, qos });
    return true;
  }
  subscribe(filter: string, handler: Handler, _qos: 0 | 1 = 1): () => void {
    this.subscriptions.set(filter, handler);
    return () => this.subscriptions.delete(filter);
  }
  onConnectionChange(listener: (connected: boolean) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
  setConnected(connected: boolean): void {
    this.connected = connected;
    for (const listener of this.listeners) listener(connected);
  }
  deliver(filter: string, payload: string, retain = false): void {
    const packet = { cmd: 'publish', topic: filter, payload: Buffer.from(payload), qos: 1, retain, dup: false } as const;
    this.subscriptions.get(filter)?.(filter, Buffer.from(payload), packet);
  }
}

describe('homeassistant config', () => {
  it('is off by default with the standard prefix', () => {
    expect(config().homeassistant).toEqual({ enabled: false, prefix: 'homeassistant' });
  });

  it('refuses a prefix with wildcards or empty levels, and a snapshot URL that is not http(s)', () => {
    expect(configProblems({ homeassistant: { prefix: 'ha/#' } })).toEqual(['homeassistant.prefix: must not contain MQTT wildcards (+ or #)']);
    expect(configProblems({ homeassistant: { prefix: 'ha//x' } })).toEqual(['homeassistant.prefix: must not start or end with / or have an empty level']);
    expect(configProblems({ homeassistant: { snapshotBaseUrl: 'ftp://box' } })).toEqual(['homeassistant.snapshotBaseUrl: use http://host:port or https://host:port']);
    expect(configProblems({ homeassistant: { enable: true } })).toEqual(['homeassistant.enable: unknown key (did you mean enabled?)']);
  });
});

describe('snapshotBaseUrl', () => {
  const health = (host: string, enabled = true) => ({ health: { enabled, host, port: 9464 }, homeassistant: { enabled: true, prefix: 'homeassistant' } });

  it('is the configured URL, else the health server as it listens, with a wildcard address replaced by the hostname', () => {
    expect(snapshotBaseUrl({ ...health('127.0.0.1'), homeassistant: { enabled: true, prefix: 'ha', snapshotBaseUrl: 'http://box.local:8080/' } })).toBe('http://box.local:8080');
    expect(snapshotBaseUrl(health('10.0.0.5'))).toBe('http://10.0.0.5:9464');
    expect(snapshotBaseUrl(health('0.0.0.0'))).toBe(`http://${hostname()}:9464`);
    expect(snapshotBaseUrl(health('fd00::5'))).toBe('http://[fd00::5]:9464');
    expect(snapshotBaseUrl(health('127.0.0.1', false))).toBeUndefined();
  });
});

describe('discoveryMessages', () => {
  const cfg = config();
  const messages = discoveryMessages({ prefix: 'homeassistant', deviceId: 'dev1', topics, cameras: resolveCameras(cfg), snapshotBaseUrl: 'http://box:9464' });
  const byTopic = Object.fromEntries(messages.map((message) => [message.topic, JSON.parse(message.payload)]));

  it('announces the agent first, then one device per camera', () => {
    expect(messages.map((message) => message.topic)).toEqual([
      'homeassistant/device/linewatch_dev1/config',
      'homeassistant/device/linewatch_dev1_line1/config',
      'homeassistant/device/linewatch_dev1_line2/config',
    ]);
  });

  it('gives each camera a device under the agent, the three components and both availabilities', () => {
    const line1 = byTopic['homeassistant/device/linewatch_dev1_line1/config'];
    expect(line1.dev).toEqual({
      identifiers: ['linewatch_dev1_line1'],
      name: 'dev1 line1',
      manufacturer: 'linewatch',
      model: 'anomaly camera',
      model_id: 'demo',
      sw_version: LINEWATCH_VERSION,
      via_device: 'linewatch_dev1',
    });
    expect(line1.o).toEqual({ name: 'linewatch', sw_version: LINEWATCH_VERSION, support_url: expect.stringMatching(/^https:\/\//) });
    expect(line1.cmps).toEqual({
      anomaly: {
        p: 'binary_sensor',
        name: 'Anomaly',
        unique_id: 'linewatch_dev1_line1_anomaly',
        device_class: 'problem',
        state_topic: 'linewatch/dev1/line1/events',
        value_template: TEMPLATES.anomaly,
        json_attributes_topic: 'linewatch/dev1/line1/events',
      },
      fault: {
        p: 'binary_sensor',
        name: 'Camera fault',
        unique_id: 'linewatch_dev1_line1_fault',
        device_class: 'problem',
        state_topic: 'linewatch/dev1/line1/status',
        value_template: TEMPLATES.fault,
        json_attributes_topic: 'linewatch/dev1/line1/status',
        json_attributes_template: TEMPLATES.faultAttributes,
      },
      score: {
        p: 'sensor',
        name: 'Score',
        unique_id: 'linewatch_dev1_line1_score',
        state_class: 'measurement',
        suggested_display_precision: 2,
        state_topic: 'linewatch/dev1/line1/score',
        value_template: '{{ value_json.score }}',
      },
      last_anomaly: {
        p: 'image',
        name: 'Last anomaly',
        unique_id: 'linewatch_dev1_line1_last_anomaly',
        url_topic: 'linewatch/dev1/line1/events',
        url_template: "http://box:9464/snapshots/line1/{{ value_json.snapshot.split('/') | last }}",
        content_type: 'image/jpeg',
      },
    });
    expect(line1.availability).toEqual([
      { topic: 'linewatch/dev1/status', payload_available: 'online', payload_not_available: 'offline' },
      { topic: 'linewatch/dev1/line1/status', value_template: TEMPLATES.cameraAvailable, payload_available: 'online', payload_not_available: 'offline' },
    ]);
    expect(line1.availability_mode).toBe('all');
  });

  it('removes the score sensor of a camera that does not publish scores (a platform-only component)', () => {
    expect(byTopic['homeassistant/device/linewatch_dev1_line2/config'].cmps.score).toEqual({ p: 'sensor' });
  });

  it('removes the camera fault sensor of a camera whose fault checks are off (it would only ever read OFF)', () => {
    const cameras = resolveCameras(config({}, [{ name: 'line1', url: 'a.mp4', faults: { enabled: false } }, { name: 'line2', url: 'b.mp4' }]));
    const payloads = discoveryMessages({ prefix: 'ha', deviceId: 'dev1', topics, cameras }).map((message) => JSON.parse(message.payload));
    expect(payloads[1].cmps.fault).toEqual({ p: 'binary_sensor' });
    expect(payloads[2].cmps.fault).toMatchObject({ p: 'binary_sensor', unique_id: 'linewatch_dev1_line2_fault', state_topic: 'linewatch/dev1/line2/status' });
  });

  it('removes the image without a health server or without snapshots', () => {
    const withoutHealth = discoveryMessages({ prefix: 'ha', deviceId: 'dev1', topics, cameras: resolveCameras(cfg) });
    expect(JSON.parse(withoutHealth[1]!.payload).cmps.last_anomaly).toEqual({ p: 'image' });
    const noSnapshots = resolveCameras(config({}, [{ name: 'line1', url: 'a.mp4', snapshots: { enabled: false } }]));
    const withoutSnapshots = discoveryMessages({ prefix: 'ha', deviceId: 'dev1', topics, cameras: noSnapshots, snapshotBaseUrl: 'http://box:9464' });
    expect(JSON.parse(withoutSnapshots[1]!.payload).cmps.last_anomaly).toEqual({ p: 'image' });
  });

  it('gives the agent a connectivity sensor on its availability topic and a link to its status page', () => {
    const agent = byTopic['homeassistant/device/linewatch_dev1/config'];
    expect(agent.dev).toMatchObject({ identifiers: ['linewatch_dev1'], manufacturer: 'linewatch', configuration_url: 'http://box:9464/' });
    expect(agent.cmps.status).toMatchObject({ p: 'binary_sensor', device_class: 'connectivity', state_topic: 'linewatch/dev1/status', payload_on: 'online', payload_off: 'offline' });
    expect(agent.availability).toBeUndefined();
  });

  it('uses unique ids that are unique', () => {
    const ids = Object.values(byTopic).flatMap((payload) => Object.values(payload.cmps as Record<string, { unique_id?: string }>).map((c) => c.unique_id).filter(Boolean));
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toHaveLength(8);
  });
});

describe('the templates, on payloads of the documented shapes', () => {
  it('turn an event stream into ON ... OFF', () => {
    const types = ['start', 'update', 'update', 'end', 'start', 'end'];
    expect(types.map((type) => renderTemplate(TEMPLATES.anomaly, JSON.stringify({ type, id: 'x' })))).toEqual(['ON', 'ON', 'ON', 'OFF', 'ON', 'OFF']);
  });

  it('mark only a streaming camera available, read the score and point at the snapshot', () => {
    expect(['streaming', 'reconnecting', 'offline'].map((state) => renderTemplate(TEMPLATES.cameraAvailable, JSON.stringify({ state })))).toEqual([
      'online',
      'offline',
      'offline',
    ]);
    expect(renderTemplate(TEMPLATES.score, '{"at":"x","score":0.41,"threshold":0.27}')).toBe('0.41');
    expect(renderTemplate(TEMPLATES.snapshotUrl('http://box:9464/snapshots/cam-a/'), '{"snapshot":"/var/lib/linewatch/snapshots/cam-a/0b7d1f0e.jpg"}')).toBe(
      'http://box:9464/snapshots/cam-a/0b7d1f0e.jpg',
    );
  });

  it('turn the camera status into a camera fault: ON while its faults list has entries, the faults and their kinds as attributes', () => {
    const status = { state: 'streaming', reason: null, since: '2026-12-06T11:00:00.000Z', fps: 10, restarts: 0, framesDropped: 0, lastFrameAt: '2026-12-06T12:00:00.000Z' };
    const covered = { id: 'c0a1', kind: 'covered', signal: 'flatShare', since: '2026-12-06T11:59:00.000Z', value: 1, expected: { max: 0.75 } };
    const dark = { id: 'd0b2', kind: 'dark', signal: 'brightness', since: '2026-12-06T11:59:30.000Z', value: 3.5, expected: { min: 25 } };
    const render = (payload: object) => ({
      state: renderJinja2(TEMPLATES.fault, JSON.stringify(payload)),
      attributes: JSON.parse(renderJinja2(TEMPLATES.faultAttributes, JSON.stringify(payload))) as unknown,
    });
    expect(render({ ...status, faults: [] })).toEqual({ state: 'OFF', attributes: { kinds: [], faults: [] } });
    expect(render({ ...status, faults: [covered] })).toEqual({ state: 'ON', attributes: { kinds: ['covered'], faults: [covered] } });
    expect(render({ ...status, faults: [covered, dark] })).toEqual({ state: 'ON', attributes: { kinds: ['covered', 'dark'], faults: [covered, dark] } });
    // A status without the list (an agent before the fault checks, retained on the broker) reads OFF, not an error.
    expect(render({ ...status, state: 'offline' })).toEqual({ state: 'OFF', attributes: { kinds: [], faults: [] } });
  });
});

describe('HomeAssistantDiscovery', () => {
  let dataDir: string;
  beforeEach(() => {
    dataDir = mkdtempSync(path.join(tmpdir(), 'linewatch-ha-'));
  });
  afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

  const component = (publisher: FakePublisher, cameras = [{ name: 'line1', url: 'a.mp4' }, { name: 'line2', url: 'b.mp4' }]) => {
    const cfg = config({ dataDir, homeassistant: { enabled: true } }, cameras);
    const log = memoryLogger();
    return { log, discovery: new HomeAssistantDiscovery({ publisher, config: cfg, cameras: resolveCameras(cfg), log }) };
  };
  const stateTopics = () => (JSON.parse(readFileSync(path.join(dataDir, HOMEASSISTANT_STATE_FILE), 'utf8')) as { topics: string[] }).topics;

  it('starts without a broker, announces on every connect and on Home Assistant coming online, not on it going offline', async () => {
    const publisher = new FakePublisher();
    const { discovery } = component(publisher);
    await discovery.start();
    expect(publisher.sent).toEqual([]);
    expect(stateTopics()).toHaveLength(3);

    publisher.setConnected(true);
    expect(publisher.sent.map((m) => m.topic)).toEqual(stateTopics());
    expect(publisher.sent.every((m) => m.qos === 1 && m.payload.startsWith('{'))).toBe(true);

    publisher.deliver('homeassistant/status', 'offline');
    expect(publisher.sent).toHaveLength(3);
    publisher.deliver('homeassistant/status', 'online');
    expect(publisher.sent).toHaveLength(6);
    // A retained birth is replayed on every subscribe; the connect has announced already.
    publisher.deliver('homeassistant/status', 'online', true);
    expect(publisher.sent).toHaveLength(6);

    publisher.setConnected(false);
    publisher.setConnected(true);
    expect(publisher.sent).toHaveLength(9);

    await discovery.stop();
    expect(publisher.subscriptions.size).toBe(0);
    publisher.setConnected(true);
    expect(publisher.sent).toHaveLength(9);
  });

  it('clears a camera that left the config with an empty retained config, then forgets it', async () => {
    const first = new FakePublisher();
    const { discovery: before } = component(first);
    await before.start();
    await before.stop();

    const publisher = new FakePublisher();
    publisher.connected = true;
    const { discovery, log } = component(publisher, [{ name: 'line1', url: 'a.mp4' }]);
    await discovery.start();
    expect(publisher.sent[0]).toEqual({ topic: 'homeassistant/device/linewatch_dev1_line2/config', payload: '', qos: 1 });
    expect(publisher.sent.slice(1).map((m) => m.topic)).toEqual(['homeassistant/device/linewatch_dev1/config', 'homeassistant/device/linewatch_dev1_line1/config']);
    expect(stateTopics()).toEqual(['homeassistant/device/linewatch_dev1/config', 'homeassistant/device/linewatch_dev1_line1/config']);
    expect(log.lines.join('\n')).toMatch(/removed 1 device\(s\) no longer configured \(homeassistant\/device\/linewatch_dev1_line2\/config\)/);
    await discovery.stop();
  });

  it('keeps a removed camera on record until its removal could be sent', async () => {
    await component(new FakePublisher()).discovery.start();
    const offline = new FakePublisher();
    const { discovery } = component(offline, [{ name: 'line1', url: 'a.mp4' }]);
    await discovery.start();
    // Not connected: nothing sent, so a crash now must still find line2 on record.
    expect(stateTopics()).toContain('homeassistant/device/linewatch_dev1_line2/config');
    offline.setConnected(true);
    expect(offline.sent[0]).toMatchObject({ topic: 'homeassistant/device/linewatch_dev1_line2/config', payload: '' });
    expect(stateTopics()).not.toContain('homeassistant/device/linewatch_dev1_line2/config');
  });

  it('says so and carries on when the state file is unreadable', async () => {
    writeFileSync(path.join(dataDir, HOMEASSISTANT_STATE_FILE), 'not json');
    const publisher = new FakePublisher();
    publisher.connected = true;
    const { discovery, log } = component(publisher);
    await discovery.start();
    expect(log.lines.join('\n')).toMatch(/ignoring .*homeassistant\.json/);
    expect(publisher.sent).toHaveLength(3);
    expect(stateTopics()).toHaveLength(3);
  });
});
