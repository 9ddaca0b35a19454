/**
 * Teaching the agent what normal looks like: `linewatch run` with the demo video and model,
 * a real mosquitto, events marked as normal and live frames captured over the REST API; then
 * the loop closed with `linewatch train`: a frame that alarms stops alarming once it (and
 * the frames a capture of its scene gives) are trained on.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadImage } from '../../src/image/load.js';
import { normaliseInput } from '../../src/image/normalise.js';
import { loadBundle } from '../../src/model/bundle.js';
import { originalPathOf } from '../../src/publish/snapshot.js';
import { runCli, startAgent, writeConfig, type AgentProcess, DEMO_MODEL, DEMO_VIDEO, demoAgentMissing } from '../helpers/agent.js';
import { freePort, recordMqtt, startMosquitto, type MosquittoBroker, type MqttRecorder } from '../helpers/mosquitto.js';

const VIDEO = DEMO_VIDEO;
const MODEL = DEMO_MODEL;
const missing = demoAgentMissing('feedback tests');

const BASE = 'linewatch/testdev';

async function post(url: string, body?: string): Promise<{ status: number; json: Record<string, any> }> {
  const response = await fetch(url, { method: 'POST', body, headers: body === undefined ? {} : { 'Content-Type': 'application/json' } });
  return { status: response.status, json: (await response.json()) as Record<string, any> };
}

/** ffmpeg's MJPEG encoder signs its JPEGs; sharp (which draws the overlays) does not. */
const isFfmpegJpeg = (jpeg: Buffer) => jpeg.subarray(0, 2).equals(Buffer.from([0xff, 0xd8])) && jpeg.includes('Lavc');

describe.skipIf(missing.length > 0)('feedback over the REST API of a running agent', () => {
  let dir: string;
  let broker: MosquittoBroker;
  let recorder: MqttRecorder;
  let agent: AgentProcess;
  let api: string;
  let feedbackDir: string;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-feedback-'));
    broker = await startMosquitto();
    const healthPort = await freePort();
    api = `http://127.0.0.1:${healthPort}/api`;
    feedbackDir = path.join(dir, 'data', 'feedback', 'line1');
    recorder = await recordMqtt(broker.url, [`${BASE}/+/status`, `${BASE}/+/events`]);
    const config = writeConfig(path.join(dir, 'linewatch.yaml'), {
      deviceId: 'testdev',
      dataDir: path.join(dir, 'data'),
      mqtt: { url: broker.url },
      health: { enabled: true, host: '127.0.0.1', port: healthPort },
      defaults: { model: MODEL, fps: 10 },
      cameras: [
        // Previews at 640 wide: the demo video's own resolution, so they are the full picture.
        { name: 'line1', url: VIDEO, loop: true, realtime: true, preview: { enabled: true, fps: 2, width: 640 }, snapshots: { enabled: true } },
        // No previews and no snapshots: a capture stores the model-input frames.
        { name: 'bare', url: VIDEO, loop: true, realtime: true, snapshots: { enabled: false } },
      ],
    });
    agent = startAgent(['run', '--config', config]);
    for (const camera of ['line1', 'bare']) {
      await recorder.waitFor((m) => m.topic === `${BASE}/${camera}/status` && JSON.parse(m.payload).state === 'streaming', 60_000);
    }
  }, 90_000);

  afterAll(async () => {
    agent?.child.kill('SIGKILL');
    await recorder?.close();
    await broker?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('marks an event as normal: its original peak picture at full resolution and a record, once; unknown ids 404, bad bodies 400', async () => {
    // The demo video's normal scene lasts ~5 s, then a bottle is taken away: an event starts.
    const start = await recorder.waitFor((m) => m.topic === `${BASE}/line1/events` && JSON.parse(m.payload).type === 'start', 45_000);
    const event = JSON.parse(start.payload);
    expect(event.snapshot).toMatch(/line1.*\.jpg$/);

    // Right after the start message: the snapshot may still be being written, and is waited for.
    const marked = await post(`${api}/events/${event.id}/normal`, JSON.stringify({ note: 'Anna, shift 2: the line runs two bottles today' }));
    expect(marked.status, JSON.stringify(marked.json)).toBe(200);
    expect(marked.json.created).toBe(true);
    expect(marked.json.image).toBe(path.join(feedbackDir, `${event.id}.jpg`));
    expect(marked.json.recordFile).toBe(path.join(feedbackDir, `${event.id}.json`));

    // The original beside the snapshot exists, and the feedback picture is a preview as ffmpeg made it:
    // the source's full 640x360, no heat map drawn over it.
    expect(existsSync(originalPathOf(event.snapshot))).toBe(true);
    const picture = readFileSync(marked.json.image);
    expect(await sharp(picture).metadata()).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
    expect(isFfmpegJpeg(picture)).toBe(true);
    expect(isFfmpegJpeg(readFileSync(event.snapshot))).toBe(false);

    const record = JSON.parse(readFileSync(marked.json.recordFile, 'utf8'));
    expect(record).toEqual(marked.json.record);
    expect(record).toMatchObject({
      kind: 'event',
      eventId: event.id,
      camera: 'line1',
      image: `${event.id}.jpg`,
      width: 640,
      height: 360,
      startedAt: event.startedAt,
      threshold: event.threshold,
      snapshot: event.snapshot,
      model: { dir: MODEL, variant: 'int8' },
      crop: null,
      note: 'Anna, shift 2: the line runs two bottles today',
    });
    expect(record.peakScore).toBeGreaterThanOrEqual(event.peakScore);
    expect(record.peakScore).toBeGreaterThan(record.threshold);
    expect(Date.parse(record.markedAt)).toBeGreaterThanOrEqual(Date.parse(event.at));

    // Again (a double click): nothing changes, the first record stands.
    const again = await post(`${api}/events/${event.id}/normal`, JSON.stringify({ note: 'someone else' }));
    expect(again.status).toBe(200);
    expect(again.json).toMatchObject({ created: false, image: marked.json.image, record });
    expect(readFileSync(marked.json.image).equals(picture)).toBe(true);
    expect(readdirSync(feedbackDir).sort()).toEqual([`${event.id}.jpg`, `${event.id}.json`]);

    for (const id of ['no-such-event', '0b7d1f0e-4a8e-4b8e-9a57-0d9c3f1e2a11', '%2e%2e%2fsecret']) {
      const unknown = await post(`${api}/events/${id}/normal`);
      expect(unknown.status, id).toBe(404);
      expect(unknown.json.error).toBe('unknown-event');
    }
    for (const body of ['not json', '[]', '"note"', '{"note": 42}', '{"notes": "typo"}', JSON.stringify({ note: 'x'.repeat(1001) })]) {
      const bad = await post(`${api}/events/${event.id}/normal`, body);
      expect(bad.status, body).toBe(400);
      expect(bad.json).toMatchObject({ error: 'bad-request', message: expect.any(String) });
    }
    expect((await fetch(`${api}/events/${event.id}/normal`)).status).toBe(405);
    expect(readdirSync(feedbackDir)).toHaveLength(2);
  }, 90_000);

  it('captures the next N live frames: full-resolution previews, or model-input frames without previews; refuses what it cannot do', async () => {
    // Two at once for one camera: the second is refused while the first waits for its frames.
    const first = post(`${api}/cameras/line1/capture`, JSON.stringify({ count: 3, note: 'empty line, start of shift' }));
    await new Promise((resolve) => setTimeout(resolve, 200));
    const second = await post(`${api}/cameras/line1/capture`, JSON.stringify({ count: 1 }));
    expect(second.status).toBe(409);
    expect(second.json.error).toBe('busy');
    const captured = await first;
    expect(captured.status, JSON.stringify(captured.json)).toBe(200);
    expect(captured.json).toMatchObject({ camera: 'line1', dir: feedbackDir, source: 'preview', complete: true });
    const files: string[] = captured.json.files;
    expect(files).toHaveLength(3);
    for (const [i, name] of files.entries()) {
      expect(name).toMatch(new RegExp(`^capture-\\d{8}T\\d{9}Z-00${i + 1}\\.jpg$`));
      const jpeg = readFileSync(path.join(feedbackDir, name));
      expect(await sharp(jpeg).metadata()).toMatchObject({ format: 'jpeg', width: 640, height: 360 });
      expect(isFfmpegJpeg(jpeg)).toBe(true);
    }
    expect(new Set(files.map((name) => readFileSync(path.join(feedbackDir, name)).toString('base64'))).size).toBe(3);
    const record = JSON.parse(readFileSync(path.join(feedbackDir, captured.json.record), 'utf8'));
    expect(record).toMatchObject({ kind: 'capture', camera: 'line1', source: 'preview', count: 3, intervalMs: 0, complete: true, note: 'empty line, start of shift' });
    expect(record.files.map((file: { name: string }) => file.name)).toEqual(files);
    expect(record.files.every((file: { width: number; height: number }) => file.width === 640 && file.height === 360)).toBe(true);
    // Previews come at 2 fps: three of them take about a second.
    const spanMs = Date.parse(record.files[2].capturedAt) - Date.parse(record.files[0].capturedAt);
    expect(spanMs).toBeGreaterThan(600);

    // Frames apart by intervalMs.
    const spaced = await post(`${api}/cameras/line1/capture`, JSON.stringify({ count: 2, intervalMs: 1500 }));
    expect(spaced.status).toBe(200);
    const spacedRecord = JSON.parse(readFileSync(path.join(feedbackDir, spaced.json.record), 'utf8'));
    expect(Date.parse(spacedRecord.files[1].capturedAt) - Date.parse(spacedRecord.files[0].capturedAt)).toBeGreaterThanOrEqual(1400);

    // A camera without previews gives its model-input frames (112x64 grey for the demo model), at the analysis rate.
    const bare = await post(`${api}/cameras/bare/capture`);
    expect(bare.status, JSON.stringify(bare.json)).toBe(200);
    expect(bare.json).toMatchObject({ camera: 'bare', source: 'model-input', complete: true });
    expect(bare.json.files).toHaveLength(10);
    const frame = await sharp(readFileSync(path.join(bare.json.dir, bare.json.files[0]))).metadata();
    expect(frame).toMatchObject({ format: 'jpeg', width: 112, height: 64, channels: 1 });

    const unknown = await post(`${api}/cameras/nope/capture`, '{}');
    expect(unknown.status).toBe(404);
    expect(unknown.json.error).toBe('unknown-camera');
    const bad = [
      'not json',
      '[1]',
      '{"count": 0}',
      '{"count": 101}',
      '{"count": 2.5}',
      '{"count": "3"}',
      '{"intervalMs": -1}',
      '{"intervalMs": 10001}',
      '{"count": 3, "every": 100}',
      '{"note": false}',
    ];
    for (const body of bad) {
      const reply = await post(`${api}/cameras/line1/capture`, body);
      expect(reply.status, body).toBe(400);
      expect(reply.json.error, body).toBe('bad-request');
    }
    // 100 frames 10 s apart would hold the request for 16 minutes.
    const tooLong = await post(`${api}/cameras/line1/capture`, JSON.stringify({ count: 100, intervalMs: 10_000 }));
    expect(tooLong.status).toBe(400);
    expect(tooLong.json.error).toBe('too-long');
    // Nothing was written by the refused requests: the event's two files, 3 + 2 captured frames and 2 records.
    expect(readdirSync(feedbackDir).filter((name) => name.startsWith('capture-'))).toHaveLength(3 + 2 + 2);
  }, 90_000);

  it('describes both routes in the OpenAPI document', async () => {
    const document = (await (await fetch(`${api}/openapi.json`)).json()) as { paths: Record<string, Record<string, any>> };
    expect(document.paths['/api/events/{id}/normal']?.post?.requestBody?.content?.['application/json']?.schema?.properties).toHaveProperty('note');
    expect(Object.keys(document.paths['/api/cameras/{camera}/capture']?.post?.requestBody?.content?.['application/json']?.schema?.properties ?? {})).toEqual([
      'count',
      'intervalMs',
      'note',
    ]);
  });
});

/** The int8 score (what the agent runs) of one image file, and the bundle's threshold. */
async function scoreFile(bundleDir: string, file: string): Promise<{ score: number; threshold: number }> {
  const bundle = await loadBundle(bundleDir, { variant: 'int8' });
  try {
    const { input } = bundle.manifest;
    const image = normaliseInput(await loadImage(file, input), input.normalisation);
    const outputs = await bundle.model.run(image.data, 1);
    const { score } = bundle.scorer.score(image, outputs.recon, outputs.mu, undefined, outputs.map);
    return { score, threshold: bundle.calibration!.threshold };
  } finally {
    await bundle.dispose();
  }
}

/** Frames of the demo video as full-resolution JPEGs, as the agent's previews are. */
function extractFrames(out: string, prefix: string, startS: number, durationS: number, fps?: string): string[] {
  mkdirSync(out, { recursive: true });
  const args = ['-loglevel', 'error', '-ss', String(startS), '-t', String(durationS), '-i', VIDEO, ...(fps ? ['-vf', `fps=${fps}`] : []), '-q:v', '3', path.join(out, `${prefix}-%03d.jpg`)];
  const ffmpeg = spawnSync('ffmpeg', args, { encoding: 'utf8' });
  if (ffmpeg.status !== 0) throw new Error(`ffmpeg ${args.join(' ')}: ${ffmpeg.stderr}`);
  return readdirSync(out)
    .filter((name) => name.startsWith(`${prefix}-`))
    .sort()
    .map((name) => path.join(out, name));
}

/** A small model that trains in ~30 s on 2 cores; A and B below differ only in their images. */
const SMALL = ['--size', '112x64', '--channels', '1', '--filters', '4,8', '--latent', '8', '--batch-size', '8', '--comparator-filters', '4,8', '--epochs', '10', '--seed', '1'];

describe.skipIf(!existsSync(VIDEO))('the feedback loop: a frame marked as normal stops alarming after retraining', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-feedback-loop-'));
  });
  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('retrained with --images <original> --images <feedback folder>, the frame scores below the new threshold; a real anomaly still does not', async () => {
    // The original normal set: the first 4.5 s of the demo video, three bottles standing (135 frames).
    const original = path.join(dir, 'normal');
    extractFrames(original, 'n', 0, 4.5);
    const before = path.join(dir, 'model-a');
    const trainA = runCli(['train', '--images', original, ...SMALL, '--out', before], { timeoutMs: 150_000 });
    expect(trainA.code, trainA.output).toBe(0);

    // 7.4-10.4 s: one bottle has been taken away and the scene stays so, what an operator may call the
    // new normal. The frame of it that model A finds most anomalous is the one that raised the event.
    const scene = extractFrames(path.join(dir, 'scene'), 's', 7.4, 3, '2');
    const sceneBefore = await Promise.all(scene.map((file) => scoreFile(before, file)));
    const peak = sceneBefore.reduce((best, result, i) => (result.score > sceneBefore[best]!.score ? i : best), 0);
    const frame = scene[peak]!;
    const a = sceneBefore[peak]!;
    // A hand reaching into the picture (13 s): an anomaly the retrained model must still see.
    const [hand] = extractFrames(path.join(dir, 'hand'), 'h', 13, 0.04);
    const handBefore = await scoreFile(before, hand!);
    expect(a.score, 'the frame alarms under model A').toBeGreaterThan(a.threshold);
    expect(handBefore.score).toBeGreaterThan(handBefore.threshold);

    // The feedback folder as the agent fills it: the event's picture marked as normal, and a capture of
    // the scene (10 frames, the capture's default), each with its JSON record, which training must pass
    // over. The picture alone is not enough for a model this small and quick: see the README.
    const feedback = path.join(dir, 'data', 'feedback', 'line1');
    mkdirSync(feedback, { recursive: true });
    copyFileSync(frame, path.join(feedback, '0b7d1f0e-4a8e-4b8e-9a57-0d9c3f1e2a11.jpg'));
    writeFileSync(path.join(feedback, '0b7d1f0e-4a8e-4b8e-9a57-0d9c3f1e2a11.json'), JSON.stringify({ kind: 'event', note: 'two bottles is fine' }));
    const captured = extractFrames(path.join(dir, 'capture'), 'c', 7.4, 3, '10/3');
    expect(captured).toHaveLength(10);
    captured.forEach((file, i) => copyFileSync(file, path.join(feedback, `capture-20250501T080001200Z-${String(i + 1).padStart(3, '0')}.jpg`)));
    writeFileSync(path.join(feedback, 'capture-20250501T080001200Z.json'), JSON.stringify({ kind: 'capture' }));

    const after = path.join(dir, 'model-b');
    const trainB = runCli(['train', '--images', original, '--images', feedback, ...SMALL, '--out', after], { timeoutMs: 150_000 });
    expect(trainB.code, trainB.output).toBe(0);
    expect(trainB.stderr).toMatch(/data: 146 grey images from images:normal\+line1/);
    const b = await scoreFile(after, frame);
    const handAfter = await scoreFile(after, hand!);
    const sceneAfter = await Promise.all(scene.map((file) => scoreFile(after, file)));
    console.log(
      `feedback loop (int8): the frame ${a.score.toFixed(2)} > threshold ${a.threshold.toFixed(2)} before, ${b.score.toFixed(2)} vs threshold ${b.threshold.toFixed(2)} after; ` +
        `its scene before ${sceneBefore.map((r) => r.score.toFixed(1)).join(' ')}, after ${sceneAfter.map((r) => r.score.toFixed(1)).join(' ')}; ` +
        `the hand ${handBefore.score.toFixed(2)} before, ${handAfter.score.toFixed(2)} after`,
    );
    expect(b.score, 'the frame is normal to model B').toBeLessThan(b.threshold);
    expect(handAfter.score, 'the hand still alarms under model B').toBeGreaterThan(handAfter.threshold);
  }, 240_000);
});
