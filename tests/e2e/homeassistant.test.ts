/**
 * Home Assistant discovery end to end: the real agent (`linewatch run`, the demo video
 * and model, the health server) on a real mosquitto, watched by a real subscriber that
 * plays Home Assistant: it reads the retained configs, publishes the birth message,
 * renders the entities' templates on what the agent really publishes, fetches the
 * image entity's URL, and sees a camera that left the config removed on the next start.
 * line2 plays the demo video with a lens cap on for a few seconds of each loop, so that its
 * camera fault sensor has a fault to show.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import mqtt from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, writeConfig, type AgentProcess, DEMO_MODEL, DEMO_VIDEO, demoAgentMissing } from '../helpers/agent.js';
import { renderJinja2, renderTemplate } from '../helpers/jinja.js';
import { freePort, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder, type ReceivedMessage } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import { perturbedClip } from '../../bench/perturbed-video.js';

const VIDEO = DEMO_VIDEO;
const MODEL = DEMO_MODEL;
const missing = demoAgentMissing('Home Assistant tests');

const BASE = 'linewatch/testdev';
const AGENT_CONFIG = 'homeassistant/device/linewatch_testdev/config';
const LINE1_CONFIG = 'homeassistant/device/linewatch_testdev_line1/config';
const LINE2_CONFIG = 'homeassistant/device/linewatch_testdev_line2/config';
const ALL_CONFIGS = [AGENT_CONFIG, LINE1_CONFIG, LINE2_CONFIG];

// line1 publishes scores and is the one whose events are followed; line2 (at little CPU) has its lens covered
// from 4 s to 10 s of every 16 s loop (the url is that clip, made in beforeAll), for its camera fault sensor.
const LINE1 = { name: 'line1', url: VIDEO, loop: true, realtime: true, scorePublish: true };
const LINE2 = { name: 'line2', url: VIDEO, loop: true, realtime: true, fps: 2 };


function agentConfig(dir: string, brokerUrl: string, healthPort: number, cameras: unknown[]) {
  return {
    deviceId: 'testdev',
    dataDir: path.join(dir, 'data'),
    mqtt: { url: brokerUrl },
    health: { enabled: true, host: '127.0.0.1', port: healthPort },
    homeassistant: { enabled: true },
    defaults: { model: MODEL, fps: 10 },
    cameras,
  };
}

const isConfig = (topic: string) => (m: ReceivedMessage) => m.topic === topic;
const after = (mark: number, messages: readonly ReceivedMessage[]) => messages.slice(mark);

describe.skipIf(missing.length > 0)('Home Assistant discovery: linewatch run against mosquitto', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let healthPort: number;
  let recorder: MqttRecorder;
  let agent: AgentProcess | undefined;
  let configFile: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-ha-'));
    LINE2.url = await perturbedClip('covered', path.join(dir, 'covered.mp4'));
    broker = await startMosquitto();
    healthPort = await freePort();
    recorder = await recordMqtt(broker.url, ['homeassistant/#', `${BASE}/#`]);
    configFile = writeConfig(path.join(dir, 'agent.yaml'), agentConfig(dir, broker.url, healthPort, [LINE1, LINE2]));
    agent = startAgent(['run', '--config', configFile]);
    await recorder.waitFor((m) => m.topic === `${BASE}/status` && m.payload === 'online', 30_000);
  }, 60_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await recorder?.close();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('publishes one retained device config per camera (and one for the agent) with device, origin, components and availability', async () => {
    await recorder.waitUntil((all) => ALL_CONFIGS.every((topic) => all.some(isConfig(topic))), 'the three configs published', 20_000);
    // A subscriber that arrives later, as Home Assistant may, gets them from the broker's retained store.
    const late = await recordMqtt(broker.url, 'homeassistant/#');
    try {
      await late.waitUntil((all) => ALL_CONFIGS.every((topic) => all.some(isConfig(topic))), 'the three retained configs', 20_000);
      for (const topic of ALL_CONFIGS) {
        const message = late.messages.find(isConfig(topic))!;
        expect(message.retain, `${topic} retained`).toBe(true);
        expect(message.qos).toBe(1);
      }
      const config = (topic: string) => JSON.parse(late.messages.find(isConfig(topic))!.payload);

      const line1 = config(LINE1_CONFIG);
      expect(line1.dev).toMatchObject({
        identifiers: ['linewatch_testdev_line1'],
        manufacturer: 'linewatch',
        model: expect.any(String),
        sw_version: expect.stringMatching(/^\d+\.\d+\.\d+/),
        via_device: 'linewatch_testdev',
      });
      expect(line1.o).toMatchObject({ name: 'linewatch', sw_version: line1.dev.sw_version, support_url: expect.stringMatching(/^https:\/\//) });
      expect(line1.availability_mode).toBe('all');
      expect(line1.availability).toEqual([
        { topic: `${BASE}/status`, payload_available: 'online', payload_not_available: 'offline' },
        { topic: `${BASE}/line1/status`, value_template: expect.any(String), payload_available: 'online', payload_not_available: 'offline' },
      ]);
      expect(Object.keys(line1.cmps).sort()).toEqual(['anomaly', 'fault', 'last_anomaly', 'score']);
      expect(line1.cmps.anomaly).toMatchObject({
        p: 'binary_sensor',
        unique_id: 'linewatch_testdev_line1_anomaly',
        device_class: 'problem',
        state_topic: `${BASE}/line1/events`,
        value_template: "{{ 'OFF' if value_json.type == 'end' else 'ON' }}",
      });
      // The camera fault reads the retained camera status, where the agent lists the faults that hold.
      expect(line1.cmps.fault).toEqual({
        p: 'binary_sensor',
        name: 'Camera fault',
        unique_id: 'linewatch_testdev_line1_fault',
        device_class: 'problem',
        state_topic: `${BASE}/line1/status`,
        value_template: expect.stringContaining('value_json.faults'),
        json_attributes_topic: `${BASE}/line1/status`,
        json_attributes_template: expect.stringContaining('tojson'),
      });
      expect(line1.cmps.score).toMatchObject({
        p: 'sensor',
        unique_id: 'linewatch_testdev_line1_score',
        state_class: 'measurement',
        state_topic: `${BASE}/line1/score`,
        value_template: '{{ value_json.score }}',
      });
      expect(line1.cmps.last_anomaly).toMatchObject({
        p: 'image',
        unique_id: 'linewatch_testdev_line1_last_anomaly',
        url_topic: `${BASE}/line1/events`,
        url_template: `http://127.0.0.1:${healthPort}/snapshots/line1/{{ value_json.snapshot.split('/') | last }}`,
        content_type: 'image/jpeg',
      });

      // line2 does not publish scores: its score sensor is removed (platform only), the rest is the same.
      const line2 = config(LINE2_CONFIG);
      expect(line2.cmps.score).toEqual({ p: 'sensor' });
      expect(line2.cmps.anomaly.unique_id).toBe('linewatch_testdev_line2_anomaly');
      expect(line2.cmps.fault).toMatchObject({ p: 'binary_sensor', unique_id: 'linewatch_testdev_line2_fault', state_topic: `${BASE}/line2/status` });
      expect(line2.dev.via_device).toBe('linewatch_testdev');

      const agentDevice = config(AGENT_CONFIG);
      expect(agentDevice.dev).toMatchObject({ identifiers: ['linewatch_testdev'], configuration_url: `http://127.0.0.1:${healthPort}/` });
      expect(agentDevice.cmps.status).toMatchObject({ p: 'binary_sensor', device_class: 'connectivity', state_topic: `${BASE}/status` });

      const uniqueIds = ALL_CONFIGS.flatMap((topic) => Object.values(config(topic).cmps as Record<string, { unique_id?: string }>).map((c) => c.unique_id).filter(Boolean));
      expect(new Set(uniqueIds).size).toBe(uniqueIds.length);
    } finally {
      await late.close();
    }
  }, 40_000);

  it("sends every config again when Home Assistant's birth message (online on homeassistant/status) arrives", async () => {
    const homeAssistant = await mqtt.connectAsync(broker.url, { reconnectPeriod: 0 });
    try {
      const mark = recorder.messages.length;
      await homeAssistant.publishAsync('homeassistant/status', 'offline', { qos: 1 });
      await homeAssistant.publishAsync('homeassistant/status', 'online', { qos: 1 });
      await recorder.waitUntil(
        (all) => ALL_CONFIGS.every((topic) => after(mark, all).some((m) => m.topic === topic && m.payload.startsWith('{'))),
        'the three configs again after the birth message',
        10_000,
      );
      // Once for `online`, none for `offline`.
      expect(after(mark, recorder.messages).filter(isConfig(LINE1_CONFIG))).toHaveLength(1);
    } finally {
      await homeAssistant.endAsync();
    }
  }, 20_000);

  it("turns the agent's real camera status into the camera fault sensor: OFF on a clear picture, ON with the fault list while the lens is covered", async () => {
    const config = JSON.parse(recorder.messages.find(isConfig(LINE2_CONFIG))!.payload);
    const { value_template: state, json_attributes_template: attributes } = config.cmps.fault as Record<string, string>;
    const statuses = (camera: string) => recorder.messages.filter((m) => m.topic === `${BASE}/${camera}/status`);
    const faultsOf = (message: ReceivedMessage) => (JSON.parse(message.payload) as { faults: { kind: string }[] }).faults;

    // The covered stretch of line2's clip (4 s to 10 s of each loop) raises a fault, listed in its retained status.
    const covered = await recorder.waitFor((m) => m.topic === `${BASE}/line2/status` && faultsOf(m).length > 0, 40_000);
    expect(renderJinja2(state, covered.payload)).toBe('ON');
    expect(JSON.parse(renderJinja2(attributes, covered.payload))).toEqual({ kinds: faultsOf(covered).map((fault) => fault.kind), faults: faultsOf(covered) });
    expect(faultsOf(covered).map((fault) => fault.kind)).toContain('covered');
    // And the status after the lens comes off lists none: OFF again.
    const index = recorder.messages.indexOf(covered);
    const cleared = await recorder.waitFor((m) => m.topic === `${BASE}/line2/status` && recorder.messages.indexOf(m) > index && faultsOf(m).length === 0, 30_000);
    expect(renderJinja2(state, cleared.payload)).toBe('OFF');
    expect(JSON.parse(renderJinja2(attributes, cleared.payload))).toEqual({ kinds: [], faults: [] });

    // line1's picture is clear: every status of it reads OFF, with the same component on its own config.
    const line1 = JSON.parse(recorder.messages.find(isConfig(LINE1_CONFIG))!.payload);
    expect(line1.cmps.fault.value_template).toBe(state);
    expect(statuses('line1').length).toBeGreaterThan(0);
    expect(statuses('line1').map((m) => renderJinja2(state, m.payload))).toEqual(statuses('line1').map(() => 'OFF'));
  }, 80_000);

  it("renders the entities' templates on the agent's real messages: ON ... OFF, the score, availability, a snapshot URL that serves the JPEG", async () => {
    const line1 = JSON.parse(recorder.messages.find(isConfig(LINE1_CONFIG))!.payload);
    // The demo video's first change starts ~5 s in and recovers ~9 s later.
    await recorder.waitFor((m) => m.topic === `${BASE}/line1/events` && JSON.parse(m.payload).type === 'end', 90_000);
    const events = recorder.messages.filter((m) => m.topic === `${BASE}/line1/events`);
    const firstEnd = events.findIndex((m) => JSON.parse(m.payload).type === 'end');
    const oneEvent = events.slice(0, firstEnd + 1);
    for (const event of oneEvent) expect(JSON.parse(event.payload)).toHaveProperty('type');

    const states = oneEvent.map((event) => renderTemplate(line1.cmps.anomaly.value_template, event.payload));
    expect(JSON.parse(oneEvent[0]!.payload).type).toBe('start');
    expect(states[0]).toBe('ON');
    expect(states.slice(0, -1).every((state) => state === 'ON'), `${states}`).toBe(true);
    expect(states.at(-1)).toBe('OFF');

    const score = recorder.messages.find((m) => m.topic === `${BASE}/line1/score`)!;
    expect(Number(renderTemplate(line1.cmps.score.value_template, score.payload))).toBe(JSON.parse(score.payload).score);

    const streaming = recorder.messages.find((m) => m.topic === `${BASE}/line1/status` && JSON.parse(m.payload).state === 'streaming')!;
    expect(renderTemplate(line1.availability[1].value_template, streaming.payload)).toBe('online');

    // What Home Assistant's image entity would fetch after the event's messages.
    const url = renderTemplate(line1.cmps.last_anomaly.url_template, oneEvent.at(-1)!.payload);
    expect(url).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${healthPort}/snapshots/line1/[^/]+\\.jpg$`));
    const reply = await fetch(url);
    expect(reply.status).toBe(200);
    expect(reply.headers.get('content-type')).toBe('image/jpeg');
    const jpeg = Buffer.from(await reply.arrayBuffer());
    expect(jpeg.subarray(0, 2).toString('hex')).toBe('ffd8');

    payloadValidator(BASE).expectAllValid(recorder.messages.filter((m) => m.topic.startsWith(`${BASE}/`)));
  }, 120_000);

  it('clears the config of a camera removed from the config at the next start, and only that one', async () => {
    agent!.child.kill('SIGTERM');
    expect(await agent!.exited()).toBe(0);
    const stateFile = path.join(dir, 'data', 'homeassistant.json');
    expect(JSON.parse(readFileSync(stateFile, 'utf8')).topics.sort()).toEqual([...ALL_CONFIGS].sort());

    const mark = recorder.messages.length;
    writeConfig(configFile, agentConfig(dir, broker.url, healthPort, [LINE1]));
    agent = startAgent(['run', '--config', configFile]);
    await recorder.waitUntil(
      (all) => after(mark, all).some((m) => m.topic === LINE2_CONFIG && m.payload === ''),
      'an empty config for the removed camera line2',
      30_000,
    );
    expect(after(mark, recorder.messages).filter((m) => m.payload === '').map((m) => m.topic)).toEqual([LINE2_CONFIG]);

    // The broker no longer keeps a config for line2: a new subscriber gets the other two only.
    const late = await recordMqtt(broker.url, 'homeassistant/#');
    try {
      await late.waitUntil((all) => [AGENT_CONFIG, LINE1_CONFIG].every((topic) => all.some(isConfig(topic))), 'the two remaining configs', 10_000);
      // Retained messages arrive in one burst on subscribing; a moment more rules out a late one.
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(late.messages.filter(isConfig(LINE2_CONFIG))).toEqual([]);
    } finally {
      await late.close();
    }
    await expect.poll(() => JSON.parse(readFileSync(stateFile, 'utf8')).topics.sort(), { timeout: 5000 }).toEqual([AGENT_CONFIG, LINE1_CONFIG]);
    expect(agent.output()).toMatch(/removed 1 device\(s\) no longer configured/);

    agent.child.kill('SIGTERM');
    expect(await agent.exited()).toBe(0);
  }, 60_000);
});
