/**
 * `linewatch run` end to end against real parts: mosquitto, GStreamer's RTSP server
 * serving the demo video, ffmpeg, onnxruntime with the shipped demo model, and a
 * real MQTT subscriber.
 */
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { childProcesses, processesMatching, REPO, runCli, startAgent, writeConfig } from '../helpers/agent.js';
import { freePort, isMosquittoInstalled, recordMqtt, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';
import { payloadValidator } from '../helpers/payloads.js';
import { rtspServerUnavailable, startRtspServer, type RtspServer } from '../helpers/rtsp.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');
const missing = [
  isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
  rtspServerUnavailable(),
  existsSync(path.join(MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
].filter(Boolean);
if (missing.length) console.warn(`agent tests skipped: ${missing.join('; ')}`);

const eventSchema = JSON.parse(readFileSync(path.join(REPO, 'schemas/event.schema.json'), 'utf8'));
const statusSchema = JSON.parse(readFileSync(path.join(REPO, 'schemas/camera-status.schema.json'), 'utf8'));
const ajv = new Ajv2020({ allErrors: true, strict: false });
const validateEvent = ajv.compile(eventSchema);
const validateStatus = ajv.compile(statusSchema);

function cameraConfig(url: string, extra: Record<string, unknown> = {}) {
  return {
    name: 'line1',
    url,
    stallTimeoutS: 3,
    socketTimeoutS: 2,
    backoff: { initialS: 0.5, maxS: 2 },
    ...extra,
  };
}

function baseConfig(dir: string, mqttUrl: string, cameras: unknown[]) {
  return {
    deviceId: 'testdev',
    dataDir: path.join(dir, 'data'),
    mqtt: { url: mqttUrl },
    health: { enabled: false },
    defaults: { model: MODEL, fps: 10 },
    cameras,
  };
}

describe.skipIf(missing.length > 0)('linewatch run against mosquitto and an RTSP camera', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let rtsp: RtspServer;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-agent-'));
    broker = await startMosquitto();
    rtsp = await startRtspServer({ file: VIDEO, loop: true });
  });
  afterAll(async () => {
    await rtsp?.stop();
    await broker?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('publishes online, streaming and schema-valid events; survives a 15 s camera outage; shuts down cleanly', async () => {
    const recorder = await recordMqtt(broker.url, 'linewatch/testdev/#');
    const config = writeConfig(path.join(dir, 'rtsp.yaml'), baseConfig(dir, broker.url, [cameraConfig(rtsp.url)]));
    const agent = startAgent(['run', '--config', config]);
    try {
      await recorder.waitFor((m) => m.topic === 'linewatch/testdev/status' && m.payload === 'online', 20_000);
      const streaming = await recorder.waitFor(
        (m) => m.topic === 'linewatch/testdev/line1/status' && JSON.parse(m.payload).state === 'streaming',
        30_000,
      );
      expect(streaming.retain || streaming.qos >= 0).toBe(true);
      expect(validateStatus(JSON.parse(streaming.payload)), JSON.stringify(validateStatus.errors)).toBe(true);

      // The video's normal scene lasts ~5 s, then a hand takes a bottle away: an event must start.
      const start = await recorder.waitFor(
        (m) => m.topic === 'linewatch/testdev/line1/events' && JSON.parse(m.payload).type === 'start',
        45_000,
      );
      const event = JSON.parse(start.payload);
      expect(validateEvent(event), JSON.stringify(validateEvent.errors)).toBe(true);
      expect(start.qos).toBe(1);
      expect(event.camera).toBe('line1');
      expect(event.score).toBeGreaterThan(event.threshold);
      expect(event.box).not.toBeNull();
      expect(event.box.x + event.box.width).toBeLessThanOrEqual(640);
      expect(event.box.y + event.box.height).toBeLessThanOrEqual(360);
      expect(event.snapshot).toMatch(/line1.*\.jpg$/);
      await expect.poll(() => existsSync(event.snapshot) && statSync(event.snapshot).size > 1000, { timeout: 5000 }).toBe(true);

      // Camera outage: the RTSP server goes away for 15 s and comes back on the same port.
      await rtsp.stop();
      await recorder.waitFor(
        (m) => m.topic === 'linewatch/testdev/line1/status' && JSON.parse(m.payload).state === 'reconnecting',
        15_000,
      );
      const downAt = recorder.messages.length;
      await new Promise((resolve) => setTimeout(resolve, 15_000));
      expect(agent.child.exitCode).toBeNull();
      expect(childProcesses(agent.pid).length).toBeLessThanOrEqual(1);
      rtsp = await startRtspServer({ file: VIDEO, loop: true, port: rtsp.port });
      await recorder.waitUntil(
        (all) => all.slice(downAt).some((m) => m.topic === 'linewatch/testdev/line1/status' && JSON.parse(m.payload).state === 'streaming'),
        'camera streaming again after the outage',
        30_000,
      );
      expect(childProcesses(agent.pid)).toHaveLength(1);

      // Clean shutdown: exit 0, offline published, open events ended, no ffmpeg left.
      const ffmpegPids = childProcesses(agent.pid);
      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
      await recorder.waitFor((m) => m.topic === 'linewatch/testdev/status' && m.payload === 'offline', 5000);
      for (const pid of ffmpegPids) expect(processesMatching(`${pid}`).filter((p) => p === pid)).toHaveLength(0);
      expect(processesMatching(rtsp.url)).toHaveLength(0);

      const events = recorder.messages.filter((m) => m.topic === 'linewatch/testdev/line1/events').map((m) => JSON.parse(m.payload));
      for (const e of events) expect(validateEvent(e), JSON.stringify(validateEvent.errors)).toBe(true);
      // Every payload on every topic, not only the events.
      payloadValidator('linewatch/testdev').expectAllValid(recorder.messages);
      const started = new Set(events.filter((e) => e.type === 'start').map((e) => e.id));
      const ended = new Set(events.filter((e) => e.type === 'end').map((e) => e.id));
      expect([...started].filter((id) => !ended.has(id)), 'every started event has an end').toEqual([]);
    } finally {
      agent.child.kill('SIGKILL');
      await recorder.close();
    }
  }, 180_000);
});

describe.skipIf(missing.length > 0)('linewatch run when the broker is down at start', () => {
  it('keeps running and connects once the broker comes up', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-nobroker-'));
    const port = await freePort();
    const url = `mqtt://127.0.0.1:${port}`;
    const config = writeConfig(
      path.join(dir, 'file.yaml'),
      baseConfig(dir, url, [cameraConfig(VIDEO, { loop: true, realtime: true })]),
    );
    const agent = startAgent(['run', '--config', config]);
    let broker: MosquittoBroker | undefined;
    try {
      await agent.waitForOutput(/unreachable/, 20_000);
      await new Promise((resolve) => setTimeout(resolve, 2000));
      expect(agent.child.exitCode).toBeNull();
      broker = await startMosquitto({ port });
      const recorder = await recordMqtt(broker.url, 'linewatch/testdev/#');
      await recorder.waitFor((m) => m.topic === 'linewatch/testdev/status' && m.payload === 'online', 20_000);
      await recorder.waitFor((m) => m.topic === 'linewatch/testdev/line1/status' && JSON.parse(m.payload).state === 'streaming', 20_000);
      payloadValidator('linewatch/testdev').expectAllValid(recorder.messages);
      await recorder.close();
      agent.child.kill('SIGTERM');
      expect(await agent.exited()).toBe(0);
    } finally {
      agent.child.kill('SIGKILL');
      await broker?.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});

describe('linewatch run refuses bad input with every problem listed', () => {
  it('exits 2 naming an unknown key, a bad URL and a missing model at once', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-badconfig-'));
    const config = writeConfig(path.join(dir, 'bad.yaml'), {
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      colour: 'blue',
      defaults: { model: path.join(dir, 'no-such-model') },
      cameras: [{ name: 'line1', url: 'ftp://camera/stream' }],
    });
    const result = runCli(['run', '--config', config]);
    expect(result.code, result.output).toBe(2);
    expect(result.stderr).toMatch(/colour/);
    expect(result.stderr).toMatch(/cameras\.0\.url/);
    expect(result.stderr).toMatch(/model/);
    rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(missing.length > 0)('exits 2 with the file named when the model is corrupt', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-corrupt-'));
    const model = path.join(dir, 'model');
    cpSync(MODEL, model, { recursive: true });
    const onnx = path.join(model, 'model.int8.onnx');
    truncateSync(onnx, Math.floor(statSync(onnx).size / 3));
    const config = writeConfig(path.join(dir, 'corrupt.yaml'), {
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      dataDir: path.join(dir, 'data'),
      health: { enabled: false },
      defaults: { model },
      cameras: [{ name: 'line1', url: VIDEO }],
    });
    const result = runCli(['run', '--config', config]);
    expect(result.code, result.output).toBe(2);
    expect(result.stderr).toContain('model.int8.onnx');
    expect(result.stderr).not.toMatch(/^\s+at /m);
    rmSync(dir, { recursive: true, force: true });
  });

  it.skipIf(missing.length > 0)('validate-config accepts the shipped examples that need no hardware', () => {
    const result = runCli(['validate-config', path.join(REPO, 'config/demo.yaml')]);
    expect(result.code, result.output).toBe(0);
  });
});
