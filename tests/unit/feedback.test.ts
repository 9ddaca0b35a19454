import { EventEmitter } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FEEDBACK_LIMITS, FeedbackDesk, parseCapture, parseNote, type FeedbackCamera } from '../../src/agent/feedback.js';
import type { Clock } from '../../src/clock.js';
import type { CameraConfig } from '../../src/config/index.js';
import { ApiError } from '../../src/health/api.js';
import { createLogger } from '../../src/log.js';
import type { AnomalyEventPayload } from '../../src/publish/payloads.js';
import { originalPathOf, SnapshotStore } from '../../src/publish/snapshot.js';
import type { Frame, PreviewImage } from '../../src/source/index.js';

const quiet = createLogger({ level: 'error', write: () => {} });

/** Time a hundred times faster than the wall: deadlines of seconds pass in tens of milliseconds. */
const fastClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now() * 100,
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms / 100),
  clearTimeout: (timer) => globalThis.clearTimeout(timer),
  setInterval: (callback, ms) => globalThis.setInterval(callback, ms / 100),
  clearInterval: (timer) => globalThis.clearInterval(timer),
};

class FakeCamera extends EventEmitter implements FeedbackCamera {
  readonly source = this;
  readonly bundle = { dir: 'models/line1', variant: 'int8' };
  readonly threshold = 2.5;
  readonly frameTaps = new Set<(frame: Frame) => void>();
  constructor(
    readonly name: string,
    readonly mode: 'continuous' | 'triggered' = 'continuous',
  ) {
    super();
  }
}

function cameraConfig(name: string, options: { previews: boolean; crop?: CameraConfig['crop'] }): CameraConfig {
  return {
    name,
    fps: 10,
    crop: options.crop,
    preview: { enabled: options.previews, fps: 2, width: 640 },
    snapshots: { enabled: false, retain: 5 },
  } as unknown as CameraConfig;
}

async function jpeg(width: number, height: number, grey: number): Promise<Buffer> {
  return sharp({ create: { width, height, channels: 3, background: { r: grey, g: grey, b: grey } } }).jpeg().toBuffer();
}

function expectApiError(error: unknown, status: number, code: string): void {
  expect(error).toBeInstanceOf(ApiError);
  expect(error).toMatchObject({ status, code });
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(tmpdir(), 'linewatch-feedback-unit-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function desk(dataDir: string, cameras: FakeCamera[], configs: CameraConfig[]): FeedbackDesk {
  return new FeedbackDesk({ dataDir, pipelines: () => cameras, cameras: () => configs, clock: fastClock, log: quiet });
}

function event(id: string, snapshot: string | null, extra: Partial<AnomalyEventPayload> = {}): AnomalyEventPayload {
  return {
    type: 'start',
    id,
    camera: 'line1',
    at: '2025-05-01T08:00:01.200Z',
    startedAt: '2025-05-01T08:00:01.200Z',
    score: 4.1,
    peakScore: 4.1,
    meanScore: 3.8,
    threshold: 2.5,
    frames: 3,
    durationMs: 300,
    peakAt: '2025-05-01T08:00:01.200Z',
    box: { x: 10, y: 12, width: 30, height: 20 },
    snapshot,
    ...extra,
  };
}

describe('marking an event as normal', () => {
  it('copies the original peak picture (not the overlay) with a record, once', async () => {
    const dataDir = path.join(dir, 'mark');
    const store = new SnapshotStore({ dir: path.join(dataDir, 'snapshots'), retain: 5 });
    const pixels = new Uint8Array(32 * 16).fill(90);
    const snapshot = await store.save({ camera: 'line1', eventId: 'e1', image: { pixels, width: 32, height: 16, channels: 1 }, map: new Float32Array(32 * 16), mapWidth: 32, mapHeight: 16 });
    const feedback = desk(dataDir, [new FakeCamera('line1')], [cameraConfig('line1', { previews: false, crop: { x: 0.5, y: 0, width: 0.5, height: 1 } })]);
    feedback.sink.event!(event('e1', snapshot));
    feedback.sink.event!(event('e1', snapshot, { type: 'end', endedAt: '2025-05-01T08:00:05.000Z', peakScore: 6.2, reason: 'recovered' }));

    const first = await feedback.markNormal('e1', 'Anna: a new product');
    const target = path.join(dataDir, 'feedback', 'line1');
    expect(first).toMatchObject({ created: true, image: path.join(target, 'e1.jpg'), recordFile: path.join(target, 'e1.json') });
    expect(readFileSync(first.image).equals(readFileSync(originalPathOf(snapshot)))).toBe(true);
    // The model-input frame at its own size, not the 640-wide overlay.
    expect(await sharp(first.image).metadata()).toMatchObject({ width: 32, height: 16 });
    expect(JSON.parse(readFileSync(first.recordFile, 'utf8'))).toEqual({
      kind: 'event',
      eventId: 'e1',
      camera: 'line1',
      image: 'e1.jpg',
      width: 32,
      height: 16,
      startedAt: '2025-05-01T08:00:01.200Z',
      endedAt: '2025-05-01T08:00:05.000Z',
      peakAt: '2025-05-01T08:00:01.200Z',
      peakScore: 6.2,
      threshold: 2.5,
      box: { x: 10, y: 12, width: 30, height: 20 },
      snapshot,
      model: { dir: 'models/line1', variant: 'int8' },
      crop: { x: 0.5, y: 0, width: 0.5, height: 1 },
      markedAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      note: 'Anna: a new product',
    });
    const again = await feedback.markNormal('e1', 'someone else');
    expect(again).toEqual({ ...first, created: false });
    // Two clicks at once copy once and answer both alike.
    feedback.sink.event!(event('e2', snapshot));
    const [a, b] = await Promise.all([feedback.markNormal('e2', null), feedback.markNormal('e2', null)]);
    expect(a).toBe(b);
    expect(readdirSync(target).sort()).toEqual(['e1.jpg', 'e1.json', 'e2.jpg', 'e2.json']);
  });

  it('answers 404 for an unknown or forgotten event, one without a snapshot, and one whose picture was deleted', async () => {
    const dataDir = path.join(dir, 'missing');
    const feedback = desk(dataDir, [new FakeCamera('line1')], [cameraConfig('line1', { previews: true })]);
    await expect(feedback.markNormal('nope', null)).rejects.toSatisfy((error) => (expectApiError(error, 404, 'unknown-event'), true));
    feedback.sink.event!(event('no-pictures', null));
    await expect(feedback.markNormal('no-pictures', null)).rejects.toSatisfy((error) => (expectApiError(error, 404, 'no-snapshot'), true));
    // Waited for a moment (a fresh event's snapshot is still being written), then given up.
    feedback.sink.event!(event('pruned', path.join(dataDir, 'snapshots', 'line1', 'pruned.jpg')));
    await expect(feedback.markNormal('pruned', null)).rejects.toSatisfy((error) => (expectApiError(error, 404, 'no-snapshot'), true));
    for (let i = 0; i < FEEDBACK_LIMITS.eventsKept; i++) feedback.sink.event!(event(`later-${i}`, null));
    await expect(feedback.markNormal('no-pictures', null)).rejects.toSatisfy((error) => (expectApiError(error, 404, 'unknown-event'), true));
    await expect(feedback.markNormal(`later-${FEEDBACK_LIMITS.eventsKept - 1}`, null)).rejects.toSatisfy((error) => (expectApiError(error, 404, 'no-snapshot'), true));
    expect(existsSync(path.join(dataDir, 'feedback'))).toBe(false);
  });
});

describe('capturing live frames', () => {
  it('stores the next previews as they came, and a record listing them', async () => {
    const dataDir = path.join(dir, 'capture-previews');
    const camera = new FakeCamera('line1');
    const feedback = desk(dataDir, [camera], [cameraConfig('line1', { previews: true })]);
    // A preview from before the request is not one of "the next" frames.
    camera.emit('preview', { capturedAt: Date.now(), monotonicAt: 0, jpeg: await jpeg(64, 36, 10) } satisfies PreviewImage);
    const pictures = await Promise.all([50, 100, 150].map((grey) => jpeg(64, 36, grey)));
    const capture = feedback.capture('line1', { count: 2, intervalMs: 0, note: 'morning' });
    pictures.forEach((picture, i) => camera.emit('preview', { capturedAt: Date.now() + i, monotonicAt: 1000 + i * 500, jpeg: picture } satisfies PreviewImage));
    const reply = await capture;
    expect(reply).toMatchObject({ status: 200, json: { camera: 'line1', source: 'preview', complete: true } });
    const { files, record, dir: folder } = (reply as { json: { files: string[]; record: string; dir: string } }).json;
    expect(files).toHaveLength(2);
    expect(files.map((name) => readFileSync(path.join(folder, name)))).toEqual(pictures.slice(0, 2));
    const written = JSON.parse(readFileSync(path.join(folder, record), 'utf8'));
    expect(written).toMatchObject({ kind: 'capture', camera: 'line1', source: 'preview', count: 2, complete: true, note: 'morning', threshold: 2.5, model: { dir: 'models/line1', variant: 'int8' } });
    expect(written.files.map((file: { name: string; width: number }) => [file.name, file.width])).toEqual(files.map((name) => [name, 64]));
  });

  it('without previews stores model-input frames intervalMs apart', async () => {
    const dataDir = path.join(dir, 'capture-frames');
    const camera = new FakeCamera('bare');
    const feedback = desk(dataDir, [camera], [cameraConfig('bare', { previews: false })]);
    const capture = feedback.capture('bare', { count: 2, intervalMs: 100, note: null });
    for (const [i, at] of [0, 50, 99, 100, 150].entries()) {
      const data = new Uint8Array(16 * 8).fill(i * 40);
      for (const tap of camera.frameTaps) tap({ cameraId: 'bare', seq: i, capturedAt: Date.now(), monotonicAt: at, width: 16, height: 8, channels: 1, data });
    }
    const reply = (await capture) as { status: number; json: { files: string[]; dir: string; source: string } };
    expect(reply.status).toBe(200);
    expect(reply.json.source).toBe('model-input');
    expect(camera.frameTaps.size).toBe(0);
    const greys = await Promise.all(reply.json.files.map(async (name) => (await sharp(path.join(reply.json.dir, name)).raw().toBuffer())[0]));
    // Frames 0 and 3 (at 0 and 100 ms): those between were too close.
    expect(greys.map((grey) => Math.round(grey! / 40))).toEqual([0, 3]);
  });

  it('answers 504 with what came when the camera gives too few frames in time, and keeps them', async () => {
    const dataDir = path.join(dir, 'capture-timeout');
    const camera = new FakeCamera('line1');
    const feedback = desk(dataDir, [camera], [cameraConfig('line1', { previews: true })]);
    const capture = feedback.capture('line1', { count: 3, intervalMs: 0, note: null });
    camera.emit('preview', { capturedAt: Date.now(), monotonicAt: 1, jpeg: await jpeg(8, 8, 0) } satisfies PreviewImage);
    const reply = (await capture) as { status: number; json: Record<string, unknown> };
    expect(reply.status).toBe(504);
    expect(reply.json).toMatchObject({ error: 'timeout', complete: false, files: [expect.stringMatching(/-001\.jpg$/)] });
    expect(readdirSync(path.join(dataDir, 'feedback', 'line1'))).toHaveLength(2);
  });

  it('refuses an unknown camera, a second capture at once, a triggered camera without previews and one that would take too long', async () => {
    const dataDir = path.join(dir, 'capture-refused');
    const camera = new FakeCamera('line1');
    const triggered = new FakeCamera('station', 'triggered');
    const feedback = desk(dataDir, [camera, triggered], [cameraConfig('line1', { previews: true }), cameraConfig('station', { previews: false })]);
    await expect(feedback.capture('nope', { count: 1, intervalMs: 0, note: null })).rejects.toSatisfy((error) => (expectApiError(error, 404, 'unknown-camera'), true));
    await expect(feedback.capture('station', { count: 1, intervalMs: 0, note: null })).rejects.toSatisfy((error) => (expectApiError(error, 409, 'no-frames'), true));
    // 100 previews at 2 fps: 50 s, allowed; 100 frames 2 s apart: 198 s, not.
    await expect(feedback.capture('line1', { count: 100, intervalMs: 2000, note: null })).rejects.toSatisfy((error) => (expectApiError(error, 400, 'too-long'), true));
    const running = feedback.capture('line1', { count: 1, intervalMs: 0, note: null });
    await expect(feedback.capture('line1', { count: 1, intervalMs: 0, note: null })).rejects.toSatisfy((error) => (expectApiError(error, 409, 'busy'), true));
    camera.emit('preview', { capturedAt: Date.now(), monotonicAt: 1, jpeg: await jpeg(8, 8, 0) } satisfies PreviewImage);
    expect(await running).toMatchObject({ status: 200 });
    // Done: the camera can be captured again.
    const next = feedback.capture('line1', { count: 1, intervalMs: 0, note: null });
    camera.emit('preview', { capturedAt: Date.now(), monotonicAt: 2, jpeg: await jpeg(8, 8, 0) } satisfies PreviewImage);
    expect(await next).toMatchObject({ status: 200 });
  });
});

describe('request bodies', () => {
  const bytes = (text: string) => new TextEncoder().encode(text);
  it('takes an empty body as the defaults', () => {
    expect(parseNote(bytes(''))).toBeNull();
    expect(parseCapture(bytes(' '))).toEqual({ count: FEEDBACK_LIMITS.defaultCount, intervalMs: 0, note: null });
    expect(parseCapture(bytes('{"count": 100, "intervalMs": 10000, "note": "n"}'))).toEqual({ count: 100, intervalMs: 10000, note: 'n' });
  });
  it('refuses anything but an object of the known fields with valid values, saying what is wrong', () => {
    const refused = (parse: () => unknown, message: RegExp) => {
      try {
        parse();
      } catch (error) {
        expectApiError(error, 400, 'bad-request');
        expect((error as Error).message).toMatch(message);
        return;
      }
      throw new Error('not refused');
    };
    refused(() => parseNote(bytes('{')), /not JSON/);
    refused(() => parseNote(bytes('null')), /JSON object/);
    refused(() => parseNote(bytes('{"note": 1}')), /note must be a string/);
    refused(() => parseNote(bytes('{"by": "me"}')), /unknown field\(s\) by; allowed: note/);
    refused(() => parseCapture(bytes('{"count": 0}')), /count must be a whole number from 1 to 100, got 0/);
    refused(() => parseCapture(bytes('{"count": null}')), /count must be/);
    refused(() => parseCapture(bytes('{"intervalMs": 0.5}')), /intervalMs must be a whole number from 0 to 10000/);
  });
});
