import type { IncomingMessage, ServerResponse } from 'node:http';
import { ApiError, sendJson, type ApiRequest, type ApiRouter } from '../health/api.js';
import { snapshotLink } from '../health/page.js';
import type { AnomalyEventPayload } from '../publish/payloads.js';
import type { CameraPipeline } from './camera.js';
import { SCORE_HISTORY_SECONDS } from './camera-view.js';
import { EVENT_HISTORY_KEPT, type EventHistory, type EventRecord } from './event-history.js';

/**
 * The read side of the REST API: cameras, their latest frame and heat map, their
 * recent scores, the recent events; and the inspect command, which was a special case
 * of the health server before the router existed. Handlers read the pipelines at
 * request time, so routes can be added before the cameras start.
 */

export interface ReadApiData {
  /** The running cameras (empty before they start). */
  cameras: () => readonly CameraPipeline[];
  events: EventHistory;
}

/** POST /api/cameras/{camera}/inspect: the body (at most maxBodyBytes) in, the HTTP status and JSON reply out. */
export interface InspectRoute {
  maxBodyBytes: number;
  handle(camera: string, body: Uint8Array): Promise<{ status: number; reply: unknown }>;
}

/** MJPEG clients per camera at once: each costs a socket and a copy of every preview. */
export const MAX_STREAM_CLIENTS = 4;
const DEFAULT_SCORE_SECONDS = 60;
const DEFAULT_EVENT_LIMIT = 20;
const STREAM_BOUNDARY = 'linewatch-frame';

const nullable = (schema: Record<string, unknown>) => ({ oneOf: [schema, { type: 'null' }] });
const dateTime = { type: 'string', format: 'date-time' };
const errorResponse = (description: string) => ({ description, schema: { $ref: '#/components/schemas/Error' } });

const BOX_SCHEMA = {
  type: 'object',
  description: 'Region of the peak anomaly in source-image pixels.',
  required: ['x', 'y', 'width', 'height'],
  properties: { x: { type: 'number' }, y: { type: 'number' }, width: { type: 'number' }, height: { type: 'number' } },
};

export const CAMERA_SCHEMA = {
  type: 'object',
  required: ['name', 'state', 'reason', 'since', 'fps', 'lastScore', 'threshold', 'mode', 'model', 'framesIn', 'framesDropped', 'restarts', 'lastFrameAt', 'scoring', 'preview', 'links'],
  properties: {
    name: { type: 'string' },
    state: { enum: ['streaming', 'reconnecting', 'offline'] },
    reason: { type: ['string', 'null'], description: 'Why the camera is in this state; null while streaming.' },
    since: dateTime,
    fps: { type: 'number', description: 'Frames scored per second, measured.' },
    lastScore: { type: ['number', 'null'], description: 'Score of the last scored frame; null before the first.' },
    threshold: { type: ['number', 'null'] },
    mode: { enum: ['continuous', 'triggered'] },
    model: {
      type: 'object',
      required: ['dir', 'variant', 'input'],
      properties: {
        dir: { type: 'string' },
        variant: { type: 'string' },
        input: {
          type: 'object',
          required: ['width', 'height', 'channels'],
          properties: { width: { type: 'integer' }, height: { type: 'integer' }, channels: { type: 'integer' } },
        },
      },
    },
    framesIn: { type: 'integer' },
    framesDropped: { type: 'integer' },
    restarts: { type: 'integer' },
    lastFrameAt: { type: ['string', 'null'], format: 'date-time' },
    scoring: {
      type: 'object',
      description: 'Frames that failed scoring; failing: the latest ones keep failing (the camera is unhealthy).',
      required: ['failures', 'failing', 'failingSince', 'lastError'],
      properties: {
        failures: { type: 'integer' },
        failing: { type: 'boolean' },
        failingSince: { type: ['string', 'null'], format: 'date-time' },
        lastError: { type: ['string', 'null'] },
      },
    },
    preview: { type: 'boolean', description: 'Whether the camera emits preview JPEGs (frame.jpg is then the full source picture, and stream.mjpg works).' },
    links: {
      type: 'object',
      required: ['frame', 'heatmap', 'scores', 'stream'],
      properties: { frame: { type: 'string' }, heatmap: { type: 'string' }, scores: { type: 'string' }, stream: { type: 'string' } },
    },
  },
};

const SCORE_POINTS_SCHEMA = {
  type: 'array',
  items: { type: 'object', required: ['at', 'score'], properties: { at: dateTime, score: { type: 'number' } } },
};

export const SCORES_SCHEMA = {
  type: 'object',
  required: ['threshold', 'seconds', 'points'],
  properties: {
    threshold: { type: ['number', 'null'] },
    seconds: { type: 'integer' },
    points: { ...SCORE_POINTS_SCHEMA, description: 'Scored frames, oldest first; at is the capture time (wall clock).' },
  },
};

export const EVENT_SCHEMA = {
  type: 'object',
  description: 'An anomaly event as its latest message describes it.',
  required: ['id', 'camera', 'state', 'startedAt', 'endedAt', 'at', 'reason', 'score', 'peakScore', 'meanScore', 'threshold', 'frames', 'durationMs', 'peakAt', 'box', 'snapshot', 'messages'],
  properties: {
    id: { type: 'string' },
    camera: { type: 'string' },
    state: { enum: ['open', 'ended'] },
    startedAt: dateTime,
    endedAt: { type: ['string', 'null'], format: 'date-time' },
    at: { ...dateTime, description: 'Time of the latest message.' },
    reason: { type: ['string', 'null'], description: 'Why it ended; null while open.' },
    score: { type: 'number', description: 'Score of the frame of the latest message.' },
    peakScore: { type: 'number' },
    meanScore: { type: 'number' },
    threshold: { type: 'number' },
    frames: { type: 'integer' },
    durationMs: { type: 'number' },
    peakAt: dateTime,
    box: nullable(BOX_SCHEMA),
    snapshot: { type: ['string', 'null'], description: 'URL of the snapshot JPEG on this server (/snapshots/<camera>/<file>.jpg).' },
    messages: { type: 'integer', description: 'Messages sent so far (start, updates, end).' },
  },
};

export const EVENT_DETAIL_SCHEMA = {
  type: 'object',
  required: ['event', 'messages', 'updatesDropped', 'scores'],
  properties: {
    event: EVENT_SCHEMA,
    messages: {
      type: 'array',
      description: 'The messages as published on MQTT (schemas/event.schema.json), oldest first: start, the newest updates, end.',
      items: { type: 'object', required: ['type', 'id', 'camera', 'at'], properties: { type: { enum: ['start', 'update', 'end'] } } },
    },
    updatesDropped: { type: 'integer', description: 'Older updates not kept.' },
    scores: {
      ...nullable({
        type: 'object',
        required: ['threshold', 'points', 'complete'],
        properties: {
          threshold: { type: 'number' },
          points: SCORE_POINTS_SCHEMA,
          complete: { type: 'boolean', description: 'False when the score history no longer reaches back to the start of the event.' },
        },
      }),
      description: "The camera's scores from the start of the event to its end (or now); null when none is left in the history.",
    },
  },
};

export function addReadApiRoutes(api: ApiRouter, data: ReadApiData): void {
  const camera = (name: string): CameraPipeline => {
    const pipelines = data.cameras();
    const found = pipelines.find((pipeline) => pipeline.name === name);
    if (found) return found;
    const shown = name.length > 64 ? `${name.slice(0, 64)}...` : name;
    throw new ApiError(404, 'unknown-camera', `no camera named ${JSON.stringify(shown)}; cameras: ${pipelines.map((pipeline) => pipeline.name).join(', ')}`);
  };

  api.add({
    method: 'GET',
    path: '/api/cameras',
    summary: 'Every camera: state, fps, last score against its threshold, mode, model, counters',
    tags: ['cameras'],
    responses: { '200': { description: 'the cameras, in configuration order', schema: { type: 'array', items: CAMERA_SCHEMA } } },
    handle: () => ({ status: 200, json: data.cameras().map(cameraJson) }),
  });

  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}',
    summary: 'One camera',
    tags: ['cameras'],
    responses: { '200': { description: 'the camera', schema: CAMERA_SCHEMA }, '404': errorResponse('no such camera') },
    handle: ({ params }) => ({ status: 200, json: cameraJson(camera(params.camera!)) }),
  });

  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}/frame.jpg',
    summary: "The camera's latest picture: its newest preview JPEG (whole source frame) when previews are on, else the latest scored model-input frame",
    tags: ['cameras'],
    responses: {
      '200': { description: 'a JPEG', contentType: 'image/jpeg' },
      '404': errorResponse('no such camera'),
      '503': errorResponse('no frame yet (the camera has not delivered one since the agent started)'),
    },
    handle: async ({ params }) => {
      const pipeline = camera(params.camera!);
      const jpeg = await pipeline.view.frameJpeg();
      if (!jpeg) throw noFrameYet(pipeline, 'frame');
      return { status: 200, contentType: 'image/jpeg', body: jpeg };
    },
  });

  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}/heatmap.jpg',
    summary: 'The latest scored frame with its anomaly map over it, drawn as event snapshots are',
    tags: ['cameras'],
    responses: {
      '200': { description: 'a JPEG', contentType: 'image/jpeg' },
      '404': errorResponse('no such camera'),
      '503': errorResponse('no frame scored yet (a triggered camera scores only the frames inspections ask for)'),
    },
    handle: async ({ params }) => {
      const pipeline = camera(params.camera!);
      const jpeg = await pipeline.view.heatmapJpeg();
      if (!jpeg) throw noFrameYet(pipeline, 'scored frame');
      return { status: 200, contentType: 'image/jpeg', body: jpeg };
    },
  });

  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}/scores',
    summary: `The scores of the last N seconds (at most ${SCORE_HISTORY_SECONDS}), oldest first`,
    tags: ['cameras'],
    query: [
      {
        name: 'seconds',
        in: 'query',
        description: `How far back, in whole seconds (default ${DEFAULT_SCORE_SECONDS}).`,
        schema: { type: 'integer', minimum: 1, maximum: SCORE_HISTORY_SECONDS, default: DEFAULT_SCORE_SECONDS },
      },
    ],
    responses: { '200': { description: 'the scores', schema: SCORES_SCHEMA }, '400': errorResponse('seconds is not a whole number in range'), '404': errorResponse('no such camera') },
    handle: ({ params, query }) => {
      const pipeline = camera(params.camera!);
      const seconds = integerQuery(query, 'seconds', 1, SCORE_HISTORY_SECONDS, DEFAULT_SCORE_SECONDS);
      const points = pipeline.view.scores(seconds).map((point) => ({ at: new Date(point.at).toISOString(), score: point.score }));
      return { status: 200, json: { threshold: pipeline.snapshot().threshold, seconds, points } };
    },
  });

  api.add({
    method: 'GET',
    path: '/api/cameras/{camera}/stream.mjpg',
    summary: `The camera's preview JPEGs as they come (multipart/x-mixed-replace, for an <img>); at most ${MAX_STREAM_CLIENTS} clients per camera`,
    tags: ['cameras'],
    responses: {
      '200': { description: 'an endless MJPEG stream', contentType: `multipart/x-mixed-replace; boundary=${STREAM_BOUNDARY}` },
      '404': errorResponse('no such camera'),
      '409': errorResponse('the camera emits no previews (set its preview.enabled)'),
      '503': errorResponse(`${MAX_STREAM_CLIENTS} clients already watch this camera`),
    },
    handle: ({ params }) => {
      const pipeline = camera(params.camera!);
      if (!pipeline.view.previews) throw new ApiError(409, 'no-previews', `camera ${pipeline.name} emits no preview JPEGs: set its preview.enabled`);
      return { stream: (response, request) => streamPreviews(pipeline, request, response) };
    },
  });

  api.add({
    method: 'GET',
    path: '/api/events',
    summary: `Recent anomaly events, newest first (the last ${EVENT_HISTORY_KEPT} of all cameras are kept)`,
    tags: ['events'],
    query: [
      { name: 'camera', in: 'query', description: "Only this camera's events.", schema: { type: 'string' } },
      {
        name: 'limit',
        in: 'query',
        description: `Events returned at most (default ${DEFAULT_EVENT_LIMIT}).`,
        schema: { type: 'integer', minimum: 1, maximum: EVENT_HISTORY_KEPT, default: DEFAULT_EVENT_LIMIT },
      },
    ],
    responses: {
      '200': { description: 'the events', schema: { type: 'array', items: EVENT_SCHEMA } },
      '400': errorResponse('limit is not a whole number in range'),
      '404': errorResponse('no such camera'),
    },
    handle: ({ query }) => {
      const limit = integerQuery(query, 'limit', 1, EVENT_HISTORY_KEPT, DEFAULT_EVENT_LIMIT);
      const only = query.get('camera') ?? undefined;
      if (only !== undefined) camera(only);
      return { status: 200, json: data.events.list({ camera: only, limit }).map(eventJson) };
    },
  });

  api.add({
    method: 'GET',
    path: '/api/events/{id}',
    summary: "One event: its messages from start to end and the camera's scores over it",
    tags: ['events'],
    responses: { '200': { description: 'the event', schema: EVENT_DETAIL_SCHEMA }, '404': errorResponse('no such event among the recent ones') },
    handle: ({ params }) => {
      const record = data.events.get(params.id!);
      if (!record) throw new ApiError(404, 'unknown-event', `no recent event ${JSON.stringify(params.id!.slice(0, 64))} (the last ${EVENT_HISTORY_KEPT} are kept)`);
      const last = record.messages.at(-1)!;
      const pipeline = data.cameras().find((candidate) => candidate.name === record.camera);
      const span = pipeline?.view.scoresBetween(Date.parse(last.startedAt), last.endedAt ? Date.parse(last.endedAt) : Number.POSITIVE_INFINITY);
      const scores =
        span && span.points.length > 0
          ? { threshold: last.threshold, points: span.points.map((point) => ({ at: new Date(point.at).toISOString(), score: point.score })), complete: span.complete }
          : null;
      return { status: 200, json: { event: eventJson(record), messages: record.messages, updatesDropped: record.updatesDropped, scores } };
    },
  });
}

/** POST /api/cameras/{camera}/inspect, with the status codes and replies of the inspection desk. */
export function addInspectRoute(api: ApiRouter, route: InspectRoute): void {
  api.add({
    method: 'POST',
    path: '/api/cameras/{camera}/inspect',
    summary: "A triggered inspection: scores the camera's first frame read after the command and answers with the verdict (also published on MQTT)",
    tags: ['inspection'],
    requestBody: {
      contentType: 'application/json',
      schema: { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 128, description: 'Correlation id, echoed in the reply.' } } },
      maxBytes: route.maxBodyBytes,
    },
    // The inspection replies' own vocabulary (schemas/inspection.schema.json), for the router's 400 and 413 too.
    errorCode: 'invalid-command',
    responses: {
      '200': { description: 'the verdict (pass or fail), as on <base>/<camera>/inspections', schema: { type: 'object' } },
      '400': { description: 'invalid-command: not JSON, no id, or an id too long', schema: { type: 'object' } },
      '404': { description: 'unknown-camera', schema: { type: 'object' } },
      '413': errorResponse('invalid-command: the body is too large'),
      '429': { description: 'busy: too many commands wait for this camera; retry after a second', schema: { type: 'object' } },
      '500': { description: 'scoring-failed', schema: { type: 'object' } },
      '503': { description: 'shutdown: the agent is stopping', schema: { type: 'object' } },
      '504': { description: 'timeout: no frame came in time (the camera is down)', schema: { type: 'object' } },
    },
    handle: async ({ params, body }: ApiRequest) => {
      const { status, reply } = await route.handle(params.camera!, body);
      return { status, json: reply, headers: status === 429 ? { 'Retry-After': '1' } : undefined };
    },
  });
}

function cameraJson(pipeline: CameraPipeline): Record<string, unknown> {
  const { bundle } = pipeline;
  const { width, height, channels } = bundle.manifest.input;
  const base = `/api/cameras/${encodeURIComponent(pipeline.name)}`;
  return {
    ...pipeline.snapshot(),
    mode: pipeline.mode,
    model: { dir: bundle.dir, variant: bundle.variant, input: { width, height, channels } },
    preview: pipeline.view.previews,
    links: { frame: `${base}/frame.jpg`, heatmap: `${base}/heatmap.jpg`, scores: `${base}/scores`, stream: `${base}/stream.mjpg` },
  };
}

function eventJson(record: EventRecord): Record<string, unknown> {
  const last: AnomalyEventPayload = record.messages.at(-1)!;
  return {
    id: record.id,
    camera: record.camera,
    state: last.type === 'end' ? 'ended' : 'open',
    startedAt: last.startedAt,
    endedAt: last.endedAt ?? null,
    at: last.at,
    reason: last.reason ?? null,
    score: last.score,
    peakScore: last.peakScore,
    meanScore: last.meanScore,
    threshold: last.threshold,
    frames: last.frames,
    durationMs: last.durationMs,
    peakAt: last.peakAt,
    box: last.box,
    snapshot: snapshotLink(last),
    messages: record.messages.length + record.updatesDropped,
  };
}

function noFrameYet(pipeline: CameraPipeline, what: string): ApiError {
  const why = pipeline.mode === 'triggered' && what === 'scored frame' ? ': a triggered camera scores only the frames inspections ask for' : '';
  return new ApiError(503, 'no-frame-yet', `camera ${pipeline.name} has no ${what} yet${why}`, { 'Retry-After': '1' });
}

/** A whole number in [min, max] from the query, `fallback` when absent; anything else is a 400. */
function integerQuery(query: URLSearchParams, name: string, min: number, max: number, fallback: number): number {
  const raw = query.get(name);
  if (raw === null) return fallback;
  const value = /^\d{1,9}$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(value >= min && value <= max)) throw new ApiError(400, 'bad-request', `${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(raw.slice(0, 32))}`);
  return value;
}

/**
 * Writes each new preview as one part of a multipart/x-mixed-replace response until the
 * client goes. A client that reads slower than previews come misses pictures rather
 * than making the agent buffer them.
 */
function streamPreviews(pipeline: CameraPipeline, request: IncomingMessage, response: ServerResponse): void {
  const { view } = pipeline;
  // Checked here rather than in the handler: between the two, another client may have subscribed.
  if (view.previewSubscribers >= MAX_STREAM_CLIENTS) {
    return sendJson(response, 503, { error: 'too-many-streams', message: `${MAX_STREAM_CLIENTS} clients already watch camera ${pipeline.name}` }, { 'Retry-After': '5' });
  }
  response.writeHead(200, {
    'Content-Type': `multipart/x-mixed-replace; boundary=${STREAM_BOUNDARY}`,
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
  });
  if (request.method === 'HEAD') return void response.end();
  let draining = false;
  const send = (jpeg: Uint8Array) => {
    if (draining || response.destroyed) return;
    const head = `--${STREAM_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: ${jpeg.byteLength}\r\n\r\n`;
    const ok = response.write(Buffer.concat([Buffer.from(head), jpeg, Buffer.from('\r\n')]));
    if (!ok) {
      draining = true;
      response.once('drain', () => (draining = false));
    }
  };
  const latest = view.latestPreview;
  if (latest) send(latest.jpeg);
  const unsubscribe = view.onPreview((preview) => send(preview.jpeg));
  response.once('close', unsubscribe);
}
