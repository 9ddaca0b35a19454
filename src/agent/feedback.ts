import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { systemClock, type Clock } from '../clock.js';
import type { CameraConfig } from '../config/index.js';
import { ApiError, type ApiResponse, type ApiRouter } from '../health/api.js';
import type { Logger } from '../log.js';
import type { AnomalyEventPayload } from '../publish/payloads.js';
import { modelFrameJpeg, originalPathOf } from '../publish/snapshot.js';
import type { Frame, PreviewImage } from '../source/index.js';
import type { EventSink } from './event-sink.js';

/**
 * Teaching the agent what normal looks like, from the operator's side: "this event was
 * normal" copies the event's original peak picture (no heat map) into
 * `<dataDir>/feedback/<camera>/`, and "capture" stores the next live frames there. Each
 * picture gets a JSON record beside it. `linewatch train --images <original> --images
 * <dataDir>/feedback/<camera>` then trains the next model with them (it reads only the
 * images of a folder, not the records). Nothing here changes the running model.
 */

export const FEEDBACK_LIMITS = {
  /** Frames one capture may ask for, and how many when it does not say. */
  maxCount: 100,
  defaultCount: 10,
  maxIntervalMs: 10_000,
  /**
   * The longest a capture may take (its frames at the source's rate, or its interval): the
   * request waits for its frames, and a request that waits minutes is a hung request to
   * every proxy and browser in between.
   */
  maxCaptureMs: 120_000,
  noteMaxChars: 1000,
  bodyMaxBytes: 4096,
  /** Events remembered for "mark as normal": the page shows 20; older ones are most likely pruned from disk anyway. */
  eventsKept: 200,
  /** A snapshot is written after its event is published: how long a very fresh event's original is waited for. */
  snapshotWaitMs: 3000,
} as const;

/** What the feedback desk needs of a camera pipeline (CameraPipeline has it). */
export interface FeedbackCamera {
  readonly name: string;
  readonly mode: 'continuous' | 'triggered';
  readonly bundle: { readonly dir: string; readonly variant: string };
  readonly threshold: number;
  readonly source: { on(event: 'preview', listener: (preview: PreviewImage) => void): unknown };
  readonly frameTaps: Set<(frame: Frame) => void>;
}

export interface FeedbackDeps {
  dataDir: string;
  /** The running pipelines (created when the cameras start). */
  pipelines: () => readonly FeedbackCamera[];
  /** The cameras' resolved configuration. */
  cameras: () => readonly CameraConfig[];
  clock?: Clock;
  log: Logger;
}

/** The JSON record beside a picture marked as normal. */
export interface NormalEventRecord {
  kind: 'event';
  eventId: string;
  camera: string;
  /** The picture's file name, in the same folder. */
  image: string;
  width: number;
  height: number;
  startedAt: string;
  endedAt: string | null;
  peakAt: string;
  peakScore: number;
  threshold: number;
  /** In source pixels, as in the event. */
  box: AnomalyEventPayload['box'];
  /** The event's snapshot (with the heat map) the picture is the original of. */
  snapshot: string;
  /** The model that raised the event. */
  model: { dir: string; variant: string };
  /** The camera's crop (fractions of the source frame): the model saw only that part of the picture. */
  crop: CameraConfig['crop'] | null;
  markedAt: string;
  /** Who marked it and why, as the caller wrote it. */
  note: string | null;
}

export interface CaptureRecord {
  kind: 'capture';
  camera: string;
  /** Full-resolution preview JPEGs, or the model-input frames when the camera makes no previews. */
  source: 'preview' | 'model-input';
  requestedAt: string;
  completedAt: string;
  count: number;
  intervalMs: number;
  files: Array<{ name: string; capturedAt: string; width: number; height: number }>;
  /** False when the camera delivered fewer frames than asked for in time. */
  complete: boolean;
  model: { dir: string; variant: string };
  threshold: number;
  crop: CameraConfig['crop'] | null;
  note: string | null;
}

interface RememberedEvent {
  payload: AnomalyEventPayload;
  model: { dir: string; variant: string };
  /** Monotonic ms of the latest message. */
  seenAt: number;
}

const SAFE_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]*$/;

export class FeedbackDesk {
  /** Add to the agent's event sinks: the desk remembers recent events by id. */
  readonly sink: Partial<EventSink>;
  private readonly events = new Map<string, RememberedEvent>();
  private readonly clock: Clock;
  private readonly marking = new Map<string, Promise<{ created: boolean; image: string; recordFile: string; record: NormalEventRecord }>>();
  private readonly capturing = new Set<string>();
  /** Pipelines whose preview events reach `previewTaps` (a source cannot drop a listener, so it is added once). */
  private readonly previewTaps = new WeakMap<FeedbackCamera, Set<(preview: PreviewImage) => void>>();
  private tempCounter = 0;

  constructor(private readonly deps: FeedbackDeps) {
    this.clock = deps.clock ?? systemClock;
    this.sink = { event: (payload) => this.remember(payload) };
  }

  get dir(): string {
    return path.join(this.deps.dataDir, 'feedback');
  }

  /** The routes, on the agent's REST API. */
  addRoutes(api: ApiRouter): void {
    const body = (properties: Record<string, unknown>) => ({
      contentType: 'application/json',
      required: false,
      maxBytes: FEEDBACK_LIMITS.bodyMaxBytes,
      schema: { type: 'object', additionalProperties: false, properties },
    });
    const note = { type: ['string', 'null'], maxLength: FEEDBACK_LIMITS.noteMaxChars, description: 'who marks it and why (kept in the JSON record)' };
    const error = (description: string) => ({ description, schema: { $ref: '#/components/schemas/Error' } });
    api.add({
      method: 'POST',
      path: '/api/events/{id}/normal',
      summary: 'Mark an event as normal: keep its original peak picture (no heat map) for the next training',
      tags: ['feedback'],
      requestBody: body({ note }),
      responses: {
        '200': {
          description:
            'the picture is in <dataDir>/feedback/<camera>/<id>.jpg with its record <id>.json; created is false when it already was (the first record is kept)',
          schema: {
            type: 'object',
            required: ['created', 'image', 'recordFile', 'record'],
            properties: { created: { type: 'boolean' }, image: { type: 'string' }, recordFile: { type: 'string' }, record: { type: 'object' } },
          },
        },
        '400': error('the body is not a JSON object of the fields above'),
        '404': error('no recent event of that id (unknown-event), or it has no snapshot or it was deleted (no-snapshot)'),
        '413': error('body too large'),
      },
      handle: async (request) => ({ status: 200, json: await this.markNormal(request.params.id!, parseNote(request.body)) }),
    });
    api.add({
      method: 'POST',
      path: '/api/cameras/{camera}/capture',
      summary: 'Store the next live frames of a camera as normal pictures for the next training',
      tags: ['feedback'],
      requestBody: body({
        count: { type: 'integer', minimum: 1, maximum: FEEDBACK_LIMITS.maxCount, default: FEEDBACK_LIMITS.defaultCount },
        intervalMs: { type: 'integer', minimum: 0, maximum: FEEDBACK_LIMITS.maxIntervalMs, default: 0, description: 'at least this long between two stored frames' },
        note,
      }),
      responses: {
        '200': {
          description: 'the frames are in <dataDir>/feedback/<camera>/capture-<time>-<n>.jpg, the record in capture-<time>.json',
          schema: {
            type: 'object',
            required: ['camera', 'dir', 'files', 'record', 'source', 'complete'],
            properties: {
              camera: { type: 'string' },
              dir: { type: 'string' },
              files: { type: 'array', items: { type: 'string' } },
              record: { type: 'string', description: 'the JSON record, in dir' },
              source: { enum: ['preview', 'model-input'] },
              complete: { type: 'boolean' },
            },
          },
        },
        '400': error('bad body, or a capture that would take over 2 minutes'),
        '404': error('no camera of that name'),
        '409': error('a capture of this camera is running (busy), or the camera gives no frames to capture (no-frames)'),
        '413': error('body too large'),
        '504': { description: 'the camera gave fewer frames in time; those it gave are stored and listed (complete false)', schema: { type: 'object' } },
      },
      handle: (request) => this.capture(request.params.camera!, parseCapture(request.body)),
    });
  }

  /** Copies the event's original peak picture into the feedback folder with its record; repeating it changes nothing. */
  markNormal(eventId: string, note: string | null) {
    const running = this.marking.get(eventId);
    if (running) return running;
    const marking = this.doMarkNormal(eventId, note).finally(() => this.marking.delete(eventId));
    this.marking.set(eventId, marking);
    return marking;
  }

  private async doMarkNormal(eventId: string, note: string | null) {
    const remembered = this.events.get(eventId);
    if (!remembered || !SAFE_NAME.test(eventId)) {
      throw new ApiError(404, 'unknown-event', `no recent event ${JSON.stringify(eventId)} (the agent remembers its last ${FEEDBACK_LIMITS.eventsKept} events)`);
    }
    const { payload, model } = remembered;
    const dir = this.cameraDir(payload.camera);
    const image = path.join(dir, `${eventId}.jpg`);
    const recordFile = path.join(dir, `${eventId}.json`);
    const existing = await readFile(recordFile, 'utf8').catch(() => undefined);
    if (existing !== undefined) return { created: false, image, recordFile, record: JSON.parse(existing) as NormalEventRecord };
    if (!payload.snapshot) {
      throw new ApiError(404, 'no-snapshot', `event ${eventId} has no snapshot (snapshots are off for camera ${payload.camera}), so there is no picture to keep`);
    }
    const original = originalPathOf(payload.snapshot);
    if (!(await this.waitForFile(original, remembered.seenAt))) {
      throw new ApiError(404, 'no-snapshot', `the picture of event ${eventId} is gone (${original}): older snapshots are deleted (snapshots.retain)`);
    }
    const { width = 0, height = 0 } = await sharp(original).metadata();
    await mkdir(dir, { recursive: true });
    await this.atomically(image, (temp) => copyFile(original, temp));
    const record: NormalEventRecord = {
      kind: 'event',
      eventId,
      camera: payload.camera,
      image: path.basename(image),
      width,
      height,
      startedAt: payload.startedAt,
      endedAt: payload.endedAt ?? null,
      peakAt: payload.peakAt,
      peakScore: payload.peakScore,
      threshold: payload.threshold,
      box: payload.box,
      snapshot: payload.snapshot,
      model,
      crop: this.config(payload.camera)?.crop ?? null,
      markedAt: new Date(this.clock.now()).toISOString(),
      note,
    };
    // The record last: its presence says the picture is complete (and makes a repeat a no-op).
    await this.atomically(recordFile, (temp) => writeFile(temp, `${JSON.stringify(record, null, 2)}\n`));
    this.deps.log.info(`feedback: event ${eventId} of camera ${payload.camera} marked as normal: ${image}`);
    return { created: true, image, recordFile, record };
  }

  /**
   * Stores the camera's next `count` frames: its preview JPEGs as ffmpeg made them (full
   * resolution) when it makes previews, else the model-input frames. Waits for them, at most
   * the time they should take plus a margin; what came by then is kept and listed.
   */
  async capture(cameraName: string, options: CaptureOptions): Promise<ApiResponse> {
    const pipeline = this.deps.pipelines().find((candidate) => candidate.name === cameraName);
    const config = this.config(cameraName);
    if (!pipeline || !config) throw new ApiError(404, 'unknown-camera', `no camera ${JSON.stringify(cameraName)}`);
    // The same rule as CameraPipeline's: previews come for the page or for snapshots.
    const previews = config.preview.enabled || config.snapshots.enabled;
    if (!previews && pipeline.mode === 'triggered') {
      throw new ApiError(409, 'no-frames', `camera ${cameraName} is triggered and makes no previews, so no frames flow to capture; enable its preview`);
    }
    const periodMs = 1000 / (previews ? config.preview.fps : config.fps);
    const expectedMs = Math.max((options.count - 1) * options.intervalMs, (options.count - 1) * periodMs);
    if (expectedMs > FEEDBACK_LIMITS.maxCaptureMs) {
      throw new ApiError(
        400,
        'too-long',
        `${options.count} frames${options.intervalMs ? ` ${options.intervalMs} ms apart` : ''} take ${Math.round(expectedMs / 1000)} s at ${previews ? 'the preview rate' : 'the analysis rate'} of camera ${cameraName}; at most ${FEEDBACK_LIMITS.maxCaptureMs / 1000} s: ask for fewer`,
      );
    }
    if (this.capturing.has(cameraName)) throw new ApiError(409, 'busy', `a capture of camera ${cameraName} is running; try again when it is done`);
    this.capturing.add(cameraName);
    try {
      return await this.runCapture(pipeline, config, previews, options, expectedMs + 2 * periodMs + 5000);
    } finally {
      this.capturing.delete(cameraName);
    }
  }

  private async runCapture(pipeline: FeedbackCamera, config: CameraConfig, previews: boolean, options: CaptureOptions, deadlineMs: number): Promise<ApiResponse> {
    const requestedAt = this.clock.now();
    const stamp = new Date(requestedAt).toISOString().replace(/[-:]/g, '').replace('.', '');
    const dir = this.cameraDir(pipeline.name);
    const model = { dir: pipeline.bundle.dir, variant: pipeline.bundle.variant };
    const threshold = pipeline.threshold;
    const files: CaptureRecord['files'] = [];
    let writeError: unknown;
    // Listening starts before anything is awaited: "the next N frames" are those after the request.
    let writes = mkdir(dir, { recursive: true }).then(
      () => undefined,
      (error: unknown) => {
        writeError = error;
      },
    );

    await new Promise<void>((resolve) => {
      let taken = 0;
      let lastAt = -Infinity;
      let stop = () => {};
      const take = (monotonicAt: number, capturedAt: number, encode: () => Promise<Buffer>) => {
        if (taken >= options.count || monotonicAt - lastAt < options.intervalMs) return;
        taken += 1;
        lastAt = monotonicAt;
        const name = `capture-${stamp}-${String(taken).padStart(3, '0')}.jpg`;
        writes = writes.then(async () => {
          if (writeError) return;
          try {
            const jpeg = await encode();
            const { width = 0, height = 0 } = await sharp(jpeg).metadata();
            await this.atomically(path.join(dir, name), (temp) => writeFile(temp, jpeg));
            files.push({ name, capturedAt: new Date(capturedAt).toISOString(), width, height });
          } catch (error) {
            writeError = error;
          }
        });
        if (taken >= options.count) stop();
      };
      const timer = this.clock.setTimeout(() => stop(), deadlineMs);
      if (previews) {
        const listener = (preview: PreviewImage) => take(preview.monotonicAt, preview.capturedAt, async () => Buffer.from(preview.jpeg));
        const taps = this.previewTapsOf(pipeline);
        taps.add(listener);
        stop = () => {
          taps.delete(listener);
          this.clock.clearTimeout(timer);
          resolve();
        };
      } else {
        const tap = (frame: Frame) => {
          // Copied now: the encoding runs later, and the frame's buffer is the pipeline's.
          const pixels = Buffer.from(frame.data);
          const { width, height, channels } = frame;
          take(frame.monotonicAt, frame.capturedAt, () => modelFrameJpeg({ pixels, width, height, channels }));
        };
        pipeline.frameTaps.add(tap);
        stop = () => {
          pipeline.frameTaps.delete(tap);
          this.clock.clearTimeout(timer);
          resolve();
        };
      }
    });
    await writes;
    if (writeError) throw new ApiError(500, 'write-failed', `cannot store a captured frame in ${dir}: ${(writeError as Error).message}`);

    const complete = files.length === options.count;
    const record: CaptureRecord = {
      kind: 'capture',
      camera: pipeline.name,
      source: previews ? 'preview' : 'model-input',
      requestedAt: new Date(requestedAt).toISOString(),
      completedAt: new Date(this.clock.now()).toISOString(),
      count: options.count,
      intervalMs: options.intervalMs,
      files,
      complete,
      model,
      threshold,
      crop: config.crop ?? null,
      note: options.note,
    };
    const recordName = `capture-${stamp}.json`;
    await this.atomically(path.join(dir, recordName), (temp) => writeFile(temp, `${JSON.stringify(record, null, 2)}\n`));
    this.deps.log.info(`feedback: captured ${files.length} of ${options.count} frame(s) of camera ${pipeline.name} into ${dir}`);
    const reply = { camera: pipeline.name, dir, files: files.map((file) => file.name), record: recordName, source: record.source, complete };
    if (complete) return { status: 200, json: reply };
    return {
      status: 504,
      json: {
        error: 'timeout',
        message: `camera ${pipeline.name} gave ${files.length} of ${options.count} frames within ${Math.round(deadlineMs / 1000)} s; those are stored`,
        ...reply,
      },
    };
  }

  private remember(payload: AnomalyEventPayload): void {
    const known = this.events.get(payload.id);
    const pipeline = this.deps.pipelines().find((candidate) => candidate.name === payload.camera);
    const model = known?.model ?? { dir: pipeline?.bundle.dir ?? '', variant: pipeline?.bundle.variant ?? '' };
    // Re-inserted so that the Map's order is the order of the latest messages: the oldest goes first.
    this.events.delete(payload.id);
    this.events.set(payload.id, { payload, model, seenAt: this.clock.monotonic() });
    for (const id of this.events.keys()) {
      if (this.events.size <= FEEDBACK_LIMITS.eventsKept) break;
      this.events.delete(id);
    }
  }

  private previewTapsOf(pipeline: FeedbackCamera): Set<(preview: PreviewImage) => void> {
    let taps = this.previewTaps.get(pipeline);
    if (!taps) {
      const created = new Set<(preview: PreviewImage) => void>();
      pipeline.source.on('preview', (preview) => {
        for (const tap of created) tap(preview);
      });
      this.previewTaps.set(pipeline, created);
      taps = created;
    }
    return taps;
  }

  private async waitForFile(file: string, seenAt: number): Promise<boolean> {
    for (;;) {
      if (await stat(file).then((info) => info.isFile(), () => false)) return true;
      if (this.clock.monotonic() - seenAt > FEEDBACK_LIMITS.snapshotWaitMs) return false;
      await new Promise((resolve) => this.clock.setTimeout(() => resolve(undefined), 100));
    }
  }

  private async atomically(target: string, write: (temp: string) => Promise<void>): Promise<void> {
    const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.${this.tempCounter++}.tmp`);
    try {
      await write(temp);
      await rename(temp, target);
    } catch (error) {
      await rm(temp, { force: true }).catch(() => undefined);
      throw error;
    }
  }

  private cameraDir(camera: string): string {
    // Camera names are one MQTT topic level and checked by the config, but this is a path.
    if (!SAFE_NAME.test(camera)) throw new ApiError(400, 'bad-camera', `camera name ${JSON.stringify(camera)} cannot name a folder`);
    return path.join(this.dir, camera);
  }

  private config(camera: string): CameraConfig | undefined {
    return this.deps.cameras().find((candidate) => candidate.name === camera);
  }
}

export interface CaptureOptions {
  count: number;
  intervalMs: number;
  note: string | null;
}

/** `{ note? }`, or an empty body. */
export function parseNote(body: Uint8Array): string | null {
  return parseNoteField(parseObject(body, ['note']));
}

/** `{ count?, intervalMs?, note? }`, or an empty body. */
export function parseCapture(body: Uint8Array): CaptureOptions {
  const fields = parseObject(body, ['count', 'intervalMs', 'note']);
  const count = 'count' in fields ? fields.count : FEEDBACK_LIMITS.defaultCount;
  if (!Number.isInteger(count) || (count as number) < 1 || (count as number) > FEEDBACK_LIMITS.maxCount) {
    throw new ApiError(400, 'bad-request', `count must be a whole number from 1 to ${FEEDBACK_LIMITS.maxCount}, got ${JSON.stringify(fields.count)}`);
  }
  const intervalMs = 'intervalMs' in fields ? fields.intervalMs : 0;
  if (!Number.isInteger(intervalMs) || (intervalMs as number) < 0 || (intervalMs as number) > FEEDBACK_LIMITS.maxIntervalMs) {
    throw new ApiError(400, 'bad-request', `intervalMs must be a whole number from 0 to ${FEEDBACK_LIMITS.maxIntervalMs}, got ${JSON.stringify(fields.intervalMs)}`);
  }
  return { count: count as number, intervalMs: intervalMs as number, note: parseNoteField(fields) };
}

function parseObject(body: Uint8Array, allowed: string[]): Record<string, unknown> {
  const text = Buffer.from(body).toString('utf8').trim();
  if (text === '') return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new ApiError(400, 'bad-request', 'the body is not JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ApiError(400, 'bad-request', 'the body must be a JSON object');
  const unknown = Object.keys(value).filter((key) => !allowed.includes(key));
  if (unknown.length) throw new ApiError(400, 'bad-request', `unknown field(s) ${unknown.join(', ')}; allowed: ${allowed.join(', ')}`);
  return value as Record<string, unknown>;
}

function parseNoteField(fields: Record<string, unknown>): string | null {
  const note = fields.note ?? null;
  if (note !== null && (typeof note !== 'string' || note.length > FEEDBACK_LIMITS.noteMaxChars)) {
    throw new ApiError(400, 'bad-request', `note must be a string of at most ${FEEDBACK_LIMITS.noteMaxChars} characters`);
  }
  return note as string | null;
}
