/** Triggered inspection: commands, the fresh-frame rule, exactly one reply, bounds and timeouts (fake timers). */
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import { CameraPipeline, type FrameSource } from '../../src/agent/camera.js';
import { CameraInspections, INSPECTION_LIMITS, InspectionDesk, inspectionTimeoutMs, parseInspectCommand, type InspectionPicture } from '../../src/agent/inspection.js';
import { systemClock } from '../../src/clock.js';
import { configFromObject, resolveCameras } from '../../src/config/index.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { memoryLogger } from '../../src/log.js';
import { loadBundle, type LoadedBundle } from '../../src/model/bundle.js';
import type { AnomalyEventPayload, InspectionErrorPayload, InspectionReplyPayload, InspectionResultPayload } from '../../src/publish/payloads.js';
import type { FrameScore } from '../../src/scoring/frame.js';
import type { CameraCounters, Frame } from '../../src/source/index.js';
import { payloadValidator } from '../helpers/payloads.js';

const fakeTimers = () => vi.useFakeTimers({ toFake: ['Date', 'performance', 'setTimeout', 'clearTimeout'] });
const bytes = (text: string) => Buffer.from(text, 'utf8');

/** A frame as the source stamps it: read now. */
const frameNow = (seq = 1) => ({ seq, monotonicAt: performance.now(), capturedAt: Date.now() });

describe('parseInspectCommand', () => {
  it('takes a JSON object with a string id and ignores other fields', () => {
    expect(parseInspectCommand('{"id":"SN-0042"}')).toEqual({ ok: true, id: 'SN-0042' });
    expect(parseInspectCommand(bytes('{"id":"A","station":7}'))).toEqual({ ok: true, id: 'A' });
    expect(parseInspectCommand(`{"id":"${'x'.repeat(INSPECTION_LIMITS.idMaxLength)}"}`)).toEqual({ ok: true, id: 'x'.repeat(128) });
  });

  it('refuses, saying why: not JSON, not an object, no id, a non-string, empty or too long id, control characters, too big', () => {
    const message = (raw: string) => {
      const parsed = parseInspectCommand(raw);
      return parsed.ok ? 'accepted' : parsed.message;
    };
    expect(message('inspect please')).toMatch(/not JSON/);
    expect(message('["A"]')).toMatch(/not a JSON object/);
    expect(message('null')).toMatch(/not a JSON object/);
    expect(message('{}')).toMatch(/no id/);
    expect(message('{"id":42}')).toMatch(/id must be a string, got number/);
    expect(message('{"id":null}')).toMatch(/got null/);
    expect(message('{"id":""}')).toMatch(/1 to 128 characters long, got 0/);
    expect(message(`{"id":"${'x'.repeat(129)}"}`)).toMatch(/got 129/);
    expect(message('{"id":"a\\nb"}')).toMatch(/control characters/);
    expect(message(`{"id":"A","pad":"${' '.repeat(1100)}"}`)).toMatch(/over the 1024-byte limit/);
  });
});

describe('CameraInspections', () => {
  beforeEach(fakeTimers);
  afterEach(() => vi.useRealTimers());

  function camera(options: { threshold?: number; maxPending?: number; describeSource?: () => string } = {}) {
    const replies: InspectionReplyPayload[] = [];
    const inspections = new CameraInspections({
      camera: 'line1',
      threshold: options.threshold ?? 2,
      fps: 10,
      clock: systemClock,
      deliver: (reply) => replies.push(reply),
      describeSource: options.describeSource,
      maxPending: options.maxPending,
    });
    return { inspections, replies };
  }
  const noPicture = (): InspectionPicture => ({ box: null, snapshot: null });

  it('answers with the first frame read after the command, never with one read before it', () => {
    const { inspections, replies } = camera();
    const before = frameNow(1);
    vi.advanceTimersByTime(5);
    expect(inspections.request('SN-1')).toBeUndefined();
    // Read in the same millisecond as the command arrived: not after it.
    expect(inspections.wants(frameNow(2))).toBe(false);
    expect(inspections.wants(before)).toBe(false);
    inspections.scored(before, 9, noPicture);
    expect(replies).toEqual([]);
    vi.advanceTimersByTime(40);
    const fresh = frameNow(3);
    expect(inspections.wants(fresh)).toBe(true);
    inspections.scored(fresh, 0.5, noPicture);
    expect(replies).toEqual([
      {
        id: 'SN-1',
        camera: 'line1',
        result: 'pass',
        score: 0.5,
        threshold: 2,
        box: null,
        snapshot: null,
        requestedAt: new Date(Date.now() - 40).toISOString(),
        capturedAt: new Date(fresh.capturedAt).toISOString(),
        at: new Date(Date.now()).toISOString(),
        latencyMs: 40,
      },
    ]);
    expect(inspections.waiting).toBe(0);
  });

  it('gives exactly one reply per command: a later frame or the timeout adds nothing', () => {
    const { inspections, replies } = camera();
    inspections.request('A');
    vi.advanceTimersByTime(10);
    inspections.scored(frameNow(), 1, noPicture);
    vi.advanceTimersByTime(10);
    inspections.scored(frameNow(), 1, noPicture);
    vi.advanceTimersByTime(10_000);
    expect(replies.map((reply) => reply.id)).toEqual(['A']);
  });

  it('fails a part above the threshold (also a negative one), with the picture taken once per frame for all it answers', () => {
    const { inspections, replies } = camera({ threshold: -0.5 });
    inspections.request('A');
    inspections.request('B');
    vi.advanceTimersByTime(1);
    const pictures: boolean[] = [];
    const picture = (failed: boolean): InspectionPicture => {
      pictures.push(failed);
      return { box: { x: 1, y: 2, width: 3, height: 4 }, snapshot: '/data/snapshots/line1/inspection-x.jpg' };
    };
    inspections.scored(frameNow(), -0.2, picture);
    expect(pictures).toEqual([true]);
    expect(replies.map((reply) => [reply.id, (reply as InspectionResultPayload).result, (reply as InspectionResultPayload).box])).toEqual([
      ['A', 'fail', { x: 1, y: 2, width: 3, height: 4 }],
      ['B', 'fail', { x: 1, y: 2, width: 3, height: 4 }],
    ]);
    // A frame that answers nothing takes no picture.
    inspections.scored(frameNow(), 5, picture);
    expect(pictures).toEqual([true]);
    // At the threshold is a pass, as the debouncer counts only scores above it.
    inspections.request('C');
    vi.advanceTimersByTime(1);
    inspections.scored(frameNow(), -0.5, noPicture);
    expect((replies[2] as InspectionResultPayload).result).toBe('pass');
  });

  it('keeps the verdict when the picture fails', () => {
    const { inspections, replies } = camera();
    inspections.request('A');
    vi.advanceTimersByTime(1);
    inspections.scored(frameNow(), 3, () => {
      throw new Error('disk full');
    });
    expect(replies).toMatchObject([{ id: 'A', result: 'fail', box: null, snapshot: null }]);
  });

  it('answers a command no frame came for with timeout after two frame periods plus a bound, naming the camera state', () => {
    const { inspections, replies } = camera({ describeSource: () => 'reconnecting: ffmpeg exited with code 1' });
    expect(inspectionTimeoutMs(10)).toBe(1200);
    expect(inspectionTimeoutMs(1)).toBe(3000);
    inspections.request('late');
    vi.advanceTimersByTime(1199);
    expect(replies).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(replies).toEqual([
      {
        id: 'late',
        camera: 'line1',
        error: 'timeout',
        message: 'no frame of camera line1 within 1200 ms of the command (camera reconnecting: ffmpeg exited with code 1)',
        requestedAt: new Date(Date.now() - 1200).toISOString(),
        at: new Date(Date.now()).toISOString(),
      },
    ]);
    expect(inspections.waiting).toBe(0);
  });

  it('refuses more than maxPending waiting commands without delivering the refusal, and accepts again once answered', () => {
    const { inspections, replies } = camera({ maxPending: 2 });
    expect(inspections.request('1')).toBeUndefined();
    expect(inspections.request('2')).toBeUndefined();
    expect(inspections.request('3')).toMatchObject({ id: '3', camera: 'line1', error: 'busy' });
    expect(replies).toEqual([]);
    vi.advanceTimersByTime(1);
    inspections.scored(frameNow(), 0, noPicture);
    expect(replies.map((reply) => reply.id)).toEqual(['1', '2']);
    expect(inspections.request('4')).toBeUndefined();
  });

  it('answers the commands a frame that failed scoring would have answered with scoring-failed; later ones keep waiting', () => {
    const { inspections, replies } = camera();
    inspections.request('A');
    vi.advanceTimersByTime(1);
    const broken = frameNow();
    vi.advanceTimersByTime(1);
    inspections.request('B');
    inspections.failed(broken, new Error('the model gave a non-finite score (NaN)'));
    expect(replies).toMatchObject([{ id: 'A', error: 'scoring-failed', message: 'the frame could not be scored: the model gave a non-finite score (NaN)' }]);
    expect(inspections.waiting).toBe(1);
  });

  it('on close answers every waiting command with shutdown and refuses new ones', () => {
    const { inspections, replies } = camera();
    inspections.request('A');
    inspections.close();
    expect(replies).toMatchObject([{ id: 'A', error: 'shutdown' }]);
    expect(inspections.request('B')).toMatchObject({ id: 'B', error: 'shutdown' });
    vi.advanceTimersByTime(10_000);
    expect(replies).toHaveLength(1);
  });

  it('still tells the waiting caller when delivering to MQTT throws', () => {
    const errors: unknown[] = [];
    const inspections = new CameraInspections({
      camera: 'line1',
      threshold: 1,
      fps: 10,
      clock: systemClock,
      deliver: () => {
        throw new Error('sink broken');
      },
      onError: (error) => errors.push(error),
    });
    const seen: InspectionReplyPayload[] = [];
    inspections.request('A', (reply) => seen.push(reply));
    vi.advanceTimersByTime(1);
    inspections.scored(frameNow(), 0, noPicture);
    expect(seen).toMatchObject([{ id: 'A', result: 'pass' }]);
    expect(errors).toHaveLength(1);
  });
});

describe('InspectionDesk', () => {
  beforeEach(fakeTimers);
  afterEach(() => vi.useRealTimers());

  function desk() {
    const replies: InspectionReplyPayload[] = [];
    const refused: InspectionErrorPayload[] = [];
    const log = memoryLogger();
    const line1 = new CameraInspections({ camera: 'line1', threshold: 1, fps: 10, clock: systemClock, deliver: (reply) => replies.push(reply), maxPending: 2 });
    const line2 = new CameraInspections({ camera: 'line2', threshold: 1, fps: 10, clock: systemClock, deliver: (reply) => replies.push(reply) });
    const inspections = new InspectionDesk({ cameras: [line1, line2], clock: systemClock, log, refuse: (reply) => refused.push(reply) });
    return { inspections, line1, line2, replies, refused, log };
  }

  it('routes a command to its camera and answers bad ones with an error on the camera topic', () => {
    const { inspections, line1, line2, replies, refused } = desk();
    inspections.command('line2', bytes('{"id":"P-1"}'));
    expect(line2.waiting).toBe(1);
    inspections.command('line1', bytes('not json'));
    inspections.command('line1', bytes('{"serial":"P-2"}'));
    inspections.command('line9', bytes('{"id":"P-3"}'));
    inspections.command('line1', bytes('{"id":"P-4"}'), true);
    expect(refused.map((reply) => [reply.camera, reply.id, reply.error])).toEqual([
      ['line1', null, 'invalid-command'],
      ['line1', null, 'invalid-command'],
      ['line9', 'P-3', 'unknown-camera'],
      ['line1', null, 'invalid-command'],
    ]);
    expect(refused[2]!.message).toBe('no camera named "line9"; cameras: line1, line2');
    expect(refused[3]!.message).toMatch(/retained/);
    expect(line1.waiting).toBe(0);
    // Refusals are not replies to accepted commands: nothing went to the durable path.
    expect(replies).toEqual([]);
    // A topic level that is empty (`<base>//inspect`) names no camera and no reply topic.
    inspections.command('', bytes('{"id":"x"}'));
    expect(refused).toHaveLength(4);
  });

  it('refuses commands beyond the pending bound as busy', () => {
    const { inspections, line1, refused } = desk();
    for (const id of ['1', '2', '3']) inspections.command('line1', bytes(JSON.stringify({ id })));
    expect(line1.waiting).toBe(2);
    expect(refused).toMatchObject([{ id: '3', error: 'busy' }]);
  });

  it('rate-limits error replies to a flood and logs it once per minute with a count', () => {
    const { inspections, refused, log } = desk();
    for (let i = 0; i < 100; i++) inspections.command('line1', bytes('garbage'));
    expect(refused).toHaveLength(INSPECTION_LIMITS.errorReplyBurst);
    for (let i = 0; i < 100; i++) inspections.command('nope', bytes('{"id":"x"}'));
    // Unknown names share one allowance, so made-up camera names cannot multiply it.
    for (let i = 0; i < 100; i++) inspections.command(`nope-${i}`, bytes('{"id":"x"}'));
    expect(refused).toHaveLength(2 * INSPECTION_LIMITS.errorReplyBurst);
    vi.advanceTimersByTime(1000);
    for (let i = 0; i < 100; i++) inspections.command('line1', bytes('garbage'));
    expect(refused).toHaveLength(2 * INSPECTION_LIMITS.errorReplyBurst + INSPECTION_LIMITS.errorRepliesPerSecond);
    const warnings = () => log.lines.filter((line) => line.includes('refused'));
    expect(warnings()).toHaveLength(1);
    vi.advanceTimersByTime(60_000);
    inspections.command('line1', bytes('garbage'));
    expect(warnings()).toHaveLength(2);
    expect(warnings()[1]).toMatch(/\(400 refused since the last report, 350 of them unanswered/);
  });

  it('answers HTTP with the reply and a status: 200, 400, 404, 429, 504, 503', async () => {
    const { inspections, line1, replies } = desk();
    const ok = inspections.http('line1', bytes('{"id":"H-1"}'));
    vi.advanceTimersByTime(30);
    line1.scored(frameNow(), 0.2, () => ({ box: null, snapshot: null }));
    await expect(ok).resolves.toMatchObject({ status: 200, reply: { id: 'H-1', result: 'pass', latencyMs: 30 } });
    // Accepted over HTTP, published too.
    expect(replies.map((reply) => reply.id)).toEqual(['H-1']);

    await expect(inspections.http('line1', bytes('{}'))).resolves.toMatchObject({ status: 400, reply: { id: null, error: 'invalid-command' } });
    await expect(inspections.http('line7', bytes('{"id":"H-2"}'))).resolves.toMatchObject({ status: 404, reply: { id: 'H-2', camera: 'line7', error: 'unknown-camera' } });

    const waiting = [inspections.http('line1', bytes('{"id":"H-3"}')), inspections.http('line1', bytes('{"id":"H-4"}'))];
    await expect(inspections.http('line1', bytes('{"id":"H-5"}'))).resolves.toMatchObject({ status: 429, reply: { error: 'busy' } });
    vi.advanceTimersByTime(1200);
    for (const reply of await Promise.all(waiting)) expect(reply).toMatchObject({ status: 504, reply: { error: 'timeout' } });

    const stopping = inspections.http('line1', bytes('{"id":"H-6"}'));
    line1.close();
    await expect(stopping).resolves.toMatchObject({ status: 503, reply: { id: 'H-6', error: 'shutdown' } });
    await expect(inspections.http('line1', bytes('{"id":"H-7"}'))).resolves.toMatchObject({ status: 503 });
  });
});

describe('inspection payload schema', () => {
  const validator = payloadValidator('linewatch/dev1');
  const topic = 'linewatch/dev1/line1/inspections';
  const problems = (value: unknown) => validator.problems({ topic, payload: JSON.stringify(value) });
  const at = '2025-05-01T08:00:01.500Z';
  const result: InspectionResultPayload = {
    id: 'SN-0042',
    camera: 'line1',
    result: 'pass',
    score: -1.3,
    threshold: -0.2,
    box: null,
    snapshot: null,
    requestedAt: at,
    capturedAt: at,
    at,
    latencyMs: 61.4,
  };
  const error: InspectionErrorPayload = { id: null, camera: 'line1', error: 'invalid-command', message: 'command is not JSON', requestedAt: at, at };

  it('accepts results (negative scores, a fail with its box and snapshot) and errors', () => {
    expect(problems(result)).toEqual([]);
    expect(problems({ ...result, result: 'fail', score: 3.2, box: { x: 1, y: 2, width: 30, height: 40 }, snapshot: '/d/line1/inspection-1.jpg' })).toEqual([]);
    expect(problems(error)).toEqual([]);
    expect(problems({ ...error, id: 'SN-1', error: 'timeout' })).toEqual([]);
  });

  it('rejects what breaks the contract', () => {
    expect(problems({ ...result, extra: 1 })).not.toEqual([]);
    expect(problems({ ...result, result: 'maybe' })).not.toEqual([]);
    expect(problems({ ...result, latencyMs: -1 })).not.toEqual([]);
    expect(problems({ ...result, id: 'x'.repeat(129) })).not.toEqual([]);
    const { latencyMs: _, ...noLatency } = result;
    expect(problems(noLatency)).not.toEqual([]);
    expect(problems({ ...error, error: 'oops' })).not.toEqual([]);
    // Half a result and half an error is neither.
    expect(problems({ ...result, error: 'timeout', message: 'x' })).not.toEqual([]);
    expect(problems({ ...error, id: undefined })).not.toEqual([]);
  });
});

describe('CameraPipeline modes', () => {
  // The shipped demo bundle: the pipeline needs a real manifest and calibration.
  let bundle: LoadedBundle;
  beforeAll(async () => {
    bundle = await loadBundle('models/demo', { variant: 'int8' });
  });
  afterAll(async () => bundle?.dispose());

  class FakeSource implements FrameSource {
    readonly queue: Frame[] = [];
    readonly sourceSize = { width: 640, height: 360 };
    async start() {}
    async stop() {}
    take() {
      return this.queue.shift();
    }
    stats(): CameraCounters {
      return { framesIn: 0, framesDropped: 0, restarts: 0, lastFrameAt: undefined, lastFrameMonotonicAt: undefined, previewsIn: 0 };
    }
    previewNear() {
      return undefined;
    }
    on() {
      return this;
    }
    push(seq: number): Frame {
      const { width, height, channels } = bundle.manifest.input;
      const frame: Frame = { cameraId: 'line1', seq, capturedAt: Date.now(), monotonicAt: performance.now(), width, height, channels: channels as 1 | 3, data: new Uint8Array(width * height * channels) };
      this.queue.push(frame);
      return frame;
    }
  }

  function pipeline(mode: 'continuous' | 'triggered') {
    const config = configFromObject(
      // Synthetic frames: flat and unchanging, which the camera-fault guard rightly calls a covered lens.
      { defaults: { model: 'models/demo', mode, debounce: { k: 1, n: 1, minDurationMs: 0 }, snapshots: { enabled: false }, faults: { enabled: false } }, cameras: [{ name: 'line1', url: 'clip.mp4' }] },
      { env: {}, baseDir: process.cwd(), fileExists: () => true, hostname: 'h' },
    );
    const [camera] = resolveCameras(config);
    const events: AnomalyEventPayload[] = [];
    const replies: InspectionReplyPayload[] = [];
    const source = new FakeSource();
    const cameraPipeline = new CameraPipeline({
      camera: camera!,
      bundle,
      ffmpegPath: 'ffmpeg',
      sink: { event: (payload) => events.push(payload), cameraStatus: () => {}, score: () => {}, inspection: (payload) => replies.push(payload) },
      metrics: new AgentMetrics({ processMetrics: false }),
      snapshots: undefined,
      log: memoryLogger(),
      source,
      clock: systemClock,
    });
    const { width, height } = bundle.manifest.input;
    const hot = (): FrameScore => {
      // One hot spot: a box comes out of the map.
      const map = new Float32Array(width * height);
      map[10 * width + 20] = 1;
      return { score: cameraPipeline.threshold + 10, recon: 0, latent: Number.NaN, map };
    };
    return { cameraPipeline, source, events, replies, hot };
  }

  beforeEach(fakeTimers);
  afterEach(() => vi.useRealTimers());

  it('triggered: frames nobody asked for are passed over, the first one after a command is scored, and no events start', () => {
    const { cameraPipeline, source, events, replies, hot } = pipeline('triggered');
    expect(cameraPipeline.mode).toBe('triggered');
    source.push(1);
    vi.advanceTimersByTime(100);
    source.push(2);
    expect(cameraPipeline.take()).toBeUndefined();
    expect(source.queue).toEqual([]);

    source.push(3);
    vi.advanceTimersByTime(20);
    expect(cameraPipeline.inspections.request('SN-7')).toBeUndefined();
    vi.advanceTimersByTime(80);
    const fresh = source.push(4);
    const taken = cameraPipeline.take();
    expect(taken?.seq).toBe(4);
    cameraPipeline.scored(fresh, hot(), 0.001);
    expect(replies).toMatchObject([{ id: 'SN-7', result: 'fail', latencyMs: 80, snapshot: null }]);
    const box = (replies[0] as InspectionResultPayload).box;
    expect(box).not.toBeNull();
    expect(events).toEqual([]);
    // Answered: the next frames are passed over again.
    source.push(5);
    expect(cameraPipeline.take()).toBeUndefined();
  });

  it('continuous: every frame is scored and an inspection is answered by the next scored frame, beside the events', () => {
    const { cameraPipeline, source, events, replies, hot } = pipeline('continuous');
    const old = source.push(1);
    vi.advanceTimersByTime(10);
    cameraPipeline.inspections.request('SN-8');
    vi.advanceTimersByTime(90);
    const fresh = source.push(2);
    expect(cameraPipeline.take()).toBe(old);
    cameraPipeline.scored(old, hot(), 0.001);
    expect(replies).toEqual([]);
    expect(cameraPipeline.take()).toBe(fresh);
    cameraPipeline.scored(fresh, hot(), 0.001);
    expect(replies).toMatchObject([{ id: 'SN-8', result: 'fail', latencyMs: 90 }]);
    expect(events.map((event) => event.type)).toEqual(['start']);
  });

  it('answers waiting inspections with shutdown when the camera stops', async () => {
    const { cameraPipeline, replies } = pipeline('triggered');
    cameraPipeline.inspections.request('SN-9');
    await cameraPipeline.stop();
    expect(replies).toMatchObject([{ id: 'SN-9', error: 'shutdown' }]);
  });
});
