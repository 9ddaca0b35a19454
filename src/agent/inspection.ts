import type { Clock, Timer } from '../clock.js';
import type { Logger } from '../log.js';
import type {
  BoundingBox,
  InspectionErrorCode,
  InspectionErrorPayload,
  InspectionReplyPayload,
  InspectionResultPayload,
} from '../publish/payloads.js';

/**
 * Triggered inspection (the PLC pattern): a command names a part (`{"id": ...}`), the
 * camera's first frame captured after the command arrived is scored, and exactly one
 * reply goes back: the verdict, or an error saying why there is none.
 *
 * - CameraInspections: one camera's waiting commands. The pipeline asks it which
 *   frames are wanted and hands it each scored (or failed) frame.
 * - InspectionDesk: the agent's front door for commands (MQTT and HTTP): parses them,
 *   routes them to their camera, and refuses what cannot be accepted.
 *
 * Everything here is bounded: a camera holds at most `maxPending` commands, each
 * with a timer, and refusals over MQTT are rate limited, so a flood costs neither
 * memory nor the durable outbox.
 */

export const INSPECTION_LIMITS = {
  /** Longest correlation id accepted: room for a UUID, a serial number or a barcode, not for a document. */
  idMaxLength: 128,
  /** Largest command accepted (MQTT payload or HTTP body), bytes. */
  commandMaxBytes: 1024,
  /**
   * Commands of one camera waiting at once. They all share the next fresh frame, so
   * more would not cost inference; the bound is for memory and for a runaway sender.
   */
  maxPending: 8,
  /** Added to two frame periods before a waiting command is answered with `timeout`. */
  timeoutSlackMs: 1000,
  /** MQTT error replies per camera: a burst, then a steady rate; beyond that a flood goes unanswered (and logged). */
  errorReplyBurst: 20,
  errorRepliesPerSecond: 10,
  /** At most one log line per this long about refused commands. */
  refusalLogIntervalMs: 60_000,
} as const;

/**
 * How long a command may wait for its frame: the next frame is due within one frame
 * period, so two periods plus a margin for inference and a busy machine. A camera that
 * is down is reported after this instead of never.
 */
export function inspectionTimeoutMs(fps: number): number {
  return Math.ceil((2 * 1000) / fps) + INSPECTION_LIMITS.timeoutSlackMs;
}

export type ParsedCommand = { ok: true; id: string } | { ok: false; message: string };

/** An inspect command: a JSON object with a string `id`; other fields are ignored, so senders may add their own. */
export function parseInspectCommand(raw: Uint8Array | string): ParsedCommand {
  const size = typeof raw === 'string' ? Buffer.byteLength(raw) : raw.byteLength;
  const usage = 'send {"id":"<correlation id>"}';
  if (size > INSPECTION_LIMITS.commandMaxBytes) {
    return { ok: false, message: `command of ${size} bytes is over the ${INSPECTION_LIMITS.commandMaxBytes}-byte limit: ${usage}` };
  }
  let value: unknown;
  try {
    value = JSON.parse(typeof raw === 'string' ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('utf8'));
  } catch {
    return { ok: false, message: `command is not JSON: ${usage}` };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return { ok: false, message: `command is not a JSON object: ${usage}` };
  const id = (value as { id?: unknown }).id;
  if (id === undefined) return { ok: false, message: `command has no id: ${usage}` };
  if (typeof id !== 'string') return { ok: false, message: `id must be a string, got ${id === null ? 'null' : typeof id}` };
  if (id.length === 0 || id.length > INSPECTION_LIMITS.idMaxLength) {
    return { ok: false, message: `id must be 1 to ${INSPECTION_LIMITS.idMaxLength} characters long, got ${id.length}` };
  }
  if (/[\u0000-\u001f\u007f]/.test(id)) return { ok: false, message: 'id must not contain control characters' };
  return { ok: true, id };
}

/** What an inspected frame shows: the box and snapshot of a failing part. */
export interface InspectionPicture {
  box: BoundingBox | null;
  snapshot: string | null;
}

/** The parts of a frame an inspection reads (a source Frame is one). */
export interface InspectedFrame {
  /** Monotonic ms when the frame was read from ffmpeg: compared with the command's arrival. */
  monotonicAt: number;
  /** Wall-clock ms, for the payload. */
  capturedAt: number;
}

export interface CameraInspectionsOptions {
  camera: string;
  threshold: number;
  /** The camera's analysis rate, for the timeout. */
  fps: number;
  clock: Clock;
  /** Every reply to an accepted command, exactly one per command (the agent publishes it at QoS 1 through the outbox). */
  deliver: (reply: InspectionReplyPayload) => void;
  /** The camera's state, for a timeout's message (e.g. "reconnecting: ffmpeg exited with code 1"). */
  describeSource?: () => string;
  /** Called when delivering a reply throws (a broken sink must not keep the HTTP caller waiting). */
  onError?: (error: unknown) => void;
  maxPending?: number;
  timeoutMs?: number;
}

interface PendingInspection {
  id: string;
  /** Monotonic ms of the command's arrival: only frames read after it answer it. */
  arrivedAt: number;
  /** Wall-clock ms of the same moment, for the payload. */
  requestedAt: number;
  timer: Timer | undefined;
  onReply: ((reply: InspectionReplyPayload) => void) | undefined;
}

/** One camera's inspect commands waiting for a frame. */
export class CameraInspections {
  readonly camera: string;
  readonly timeoutMs: number;
  private readonly options: CameraInspectionsOptions;
  private readonly clock: Clock;
  private readonly maxPending: number;
  private readonly pending: PendingInspection[] = [];
  private closedBecause: string | undefined;

  constructor(options: CameraInspectionsOptions) {
    this.options = options;
    this.camera = options.camera;
    this.clock = options.clock;
    this.maxPending = options.maxPending ?? INSPECTION_LIMITS.maxPending;
    this.timeoutMs = options.timeoutMs ?? inspectionTimeoutMs(options.fps);
  }

  /** Commands waiting for their frame. */
  get waiting(): number {
    return this.pending.length;
  }

  /**
   * Accepts a command, or returns why not (busy, shutting down) without delivering it:
   * a refusal is the caller's to send (QoS 0, or an HTTP status). `onReply` also gets
   * the one reply of an accepted command (the HTTP route waits on it).
   */
  request(id: string, onReply?: (reply: InspectionReplyPayload) => void): InspectionErrorPayload | undefined {
    const arrivedAt = this.clock.monotonic();
    const requestedAt = this.clock.now();
    if (this.closedBecause !== undefined) return this.error(id, 'shutdown', this.closedBecause, requestedAt);
    if (this.pending.length >= this.maxPending) {
      return this.error(id, 'busy', `${this.pending.length} inspections of camera ${this.camera} already wait for a frame; send the next command after a reply`, requestedAt);
    }
    const entry: PendingInspection = { id, arrivedAt, requestedAt, timer: undefined, onReply };
    entry.timer = this.clock.setTimeout(() => this.expire(entry), this.timeoutMs);
    this.pending.push(entry);
    return undefined;
  }

  /** The camera's model was swapped: verdicts from the next scored frame on use its threshold. */
  useThreshold(threshold: number): void {
    this.options.threshold = threshold;
  }

  /** Whether a frame answers a waiting command: it was read after the command arrived. */
  wants(frame: InspectedFrame): boolean {
    return this.pending.some((entry) => entry.arrivedAt < frame.monotonicAt);
  }

  /**
   * A frame was scored: every command that arrived before it gets its verdict. `picture`
   * runs once per frame and only when it answers something (it may write a snapshot).
   */
  scored(frame: InspectedFrame, score: number, picture: (failed: boolean) => InspectionPicture): void {
    const answered = this.takeAnsweredBy(frame);
    if (answered.length === 0) return;
    const failed = score > this.options.threshold;
    let shown: InspectionPicture;
    try {
      shown = picture(failed);
    } catch (error) {
      // The verdict stands without its picture.
      this.options.onError?.(error);
      shown = { box: null, snapshot: null };
    }
    const at = new Date(this.clock.now()).toISOString();
    const capturedAt = new Date(frame.capturedAt).toISOString();
    const now = this.clock.monotonic();
    for (const entry of answered) {
      const result: InspectionResultPayload = {
        id: entry.id,
        camera: this.camera,
        result: failed ? 'fail' : 'pass',
        score,
        threshold: this.options.threshold,
        box: shown.box,
        snapshot: shown.snapshot,
        requestedAt: new Date(entry.requestedAt).toISOString(),
        capturedAt,
        at,
        latencyMs: Math.round((now - entry.arrivedAt) * 10) / 10,
      };
      this.answer(entry, result);
    }
  }

  /** The frame could not be scored: the commands it would have answered get `scoring-failed`, not a wait for the timeout. */
  failed(frame: InspectedFrame, error: Error): void {
    for (const entry of this.takeAnsweredBy(frame)) {
      this.answer(entry, this.error(entry.id, 'scoring-failed', `the frame could not be scored: ${error.message}`, entry.requestedAt));
    }
  }

  /** No more commands; those waiting are answered with `shutdown`. */
  close(message = `the agent is stopping; camera ${this.camera} takes no more inspections`): void {
    this.closedBecause = message;
    for (const entry of this.pending.splice(0)) this.answer(entry, this.error(entry.id, 'shutdown', message, entry.requestedAt));
  }

  private takeAnsweredBy(frame: InspectedFrame): PendingInspection[] {
    const answered: PendingInspection[] = [];
    for (let i = 0; i < this.pending.length; ) {
      if (this.pending[i]!.arrivedAt < frame.monotonicAt) answered.push(...this.pending.splice(i, 1));
      else i++;
    }
    return answered;
  }

  private expire(entry: PendingInspection): void {
    const index = this.pending.indexOf(entry);
    if (index < 0) return;
    this.pending.splice(index, 1);
    entry.timer = undefined;
    const state = this.options.describeSource?.();
    this.answer(
      entry,
      this.error(entry.id, 'timeout', `no frame of camera ${this.camera} within ${this.timeoutMs} ms of the command${state ? ` (camera ${state})` : ''}`, entry.requestedAt),
    );
  }

  private answer(entry: PendingInspection, reply: InspectionReplyPayload): void {
    this.clock.clearTimeout(entry.timer);
    for (const send of [this.options.deliver, entry.onReply]) {
      try {
        send?.(reply);
      } catch (error) {
        this.options.onError?.(error);
      }
    }
  }

  private error(id: string | null, error: InspectionErrorCode, message: string, requestedAt: number): InspectionErrorPayload {
    return errorPayload(id, this.camera, error, message, requestedAt, this.clock.now());
  }
}

function errorPayload(id: string | null, camera: string, error: InspectionErrorCode, message: string, requestedAt: number, at: number): InspectionErrorPayload {
  return { id, camera, error, message, requestedAt: new Date(requestedAt).toISOString(), at: new Date(at).toISOString() };
}

/** A token bucket on the monotonic clock. */
class RateLimit {
  private tokens: number;
  private refilledAt: number;

  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
    private readonly clock: Clock,
  ) {
    this.tokens = burst;
    this.refilledAt = clock.monotonic();
  }

  take(): boolean {
    const now = this.clock.monotonic();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) / 1000) * this.perSecond);
    this.refilledAt = now;
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }
}

/** HTTP status for each reply of the inspect route. */
const HTTP_STATUS: Record<InspectionErrorCode | 'result', number> = {
  result: 200,
  'invalid-command': 400,
  'unknown-camera': 404,
  busy: 429,
  'scoring-failed': 500,
  shutdown: 503,
  timeout: 504,
};

export interface InspectionHttpReply {
  status: number;
  reply: InspectionReplyPayload;
}

export interface InspectionDeskOptions {
  cameras: readonly CameraInspections[];
  clock: Clock;
  log: Pick<Logger, 'warn'>;
  /**
   * Sends the error reply to a refused MQTT command (malformed, unknown camera, busy) on
   * `<base>/<camera>/inspections` at QoS 0: not through the outbox, so a flood of bad
   * commands can neither fill it nor push events out of it.
   */
  refuse: (reply: InspectionErrorPayload) => void;
}

/** The agent's door for inspect commands, over MQTT and HTTP. */
export class InspectionDesk {
  private readonly cameras = new Map<string, CameraInspections>();
  private readonly clock: Clock;
  private readonly options: InspectionDeskOptions;
  /** Per known camera, plus one ('') shared by all unknown names: a bounded map. */
  private readonly replyLimits = new Map<string, RateLimit>();
  private refusedSinceLog = 0;
  private unansweredSinceLog = 0;
  private lastRefusalLogAt = Number.NEGATIVE_INFINITY;

  constructor(options: InspectionDeskOptions) {
    this.options = options;
    this.clock = options.clock;
    for (const camera of options.cameras) this.cameras.set(camera.camera, camera);
  }

  /** A command on `<base>/<camera>/inspect`. Replies come on `<base>/<camera>/inspections`; never throws on bad input. */
  command(camera: string, payload: Uint8Array, retained = false): void {
    if (camera === '') return;
    const requestedAt = this.clock.now();
    if (retained) {
      // A retained command would inspect again on every reconnect.
      return this.refuse(camera, null, 'invalid-command', 'retained inspect commands are ignored: publish commands without the retain flag (and clear this one)', requestedAt);
    }
    const parsed = parseInspectCommand(payload);
    if (!parsed.ok) return this.refuse(camera, null, 'invalid-command', parsed.message, requestedAt);
    const target = this.cameras.get(camera);
    if (!target) return this.refuse(camera, parsed.id, 'unknown-camera', this.unknownCamera(camera), requestedAt);
    const refused = target.request(parsed.id);
    if (refused) this.send(refused);
  }

  /** `POST /api/cameras/<camera>/inspect`: resolves with the reply (also published on MQTT when the command was accepted). */
  async http(camera: string, body: Uint8Array): Promise<InspectionHttpReply> {
    const requestedAt = this.clock.now();
    const parsed = parseInspectCommand(body);
    // The caller sees an HTTP refusal in its status code: not logged, unlike MQTT ones whose sender may never look.
    const immediate = (id: string | null, error: InspectionErrorCode, message: string): InspectionHttpReply => ({
      status: HTTP_STATUS[error],
      reply: errorPayload(id, camera, error, message, requestedAt, this.clock.now()),
    });
    if (!parsed.ok) return immediate(null, 'invalid-command', parsed.message);
    const target = this.cameras.get(camera);
    if (!target) return immediate(parsed.id, 'unknown-camera', this.unknownCamera(camera));
    return new Promise<InspectionHttpReply>((resolve) => {
      const settle = (reply: InspectionReplyPayload) => resolve({ status: HTTP_STATUS['error' in reply ? reply.error : 'result'], reply });
      const refused = target.request(parsed.id, settle);
      if (refused) settle(refused);
    });
  }

  private unknownCamera(camera: string): string {
    const shown = camera.length > 64 ? `${camera.slice(0, 64)}...` : camera;
    return `no camera named ${JSON.stringify(shown)}; cameras: ${[...this.cameras.keys()].join(', ')}`;
  }

  private refuse(camera: string, id: string | null, error: InspectionErrorCode, message: string, requestedAt: number): void {
    this.send(errorPayload(id, camera, error, message, requestedAt, this.clock.now()));
  }

  private send(reply: InspectionErrorPayload): void {
    this.refusedSinceLog++;
    const key = this.cameras.has(reply.camera) ? reply.camera : '';
    let limit = this.replyLimits.get(key);
    if (!limit) {
      limit = new RateLimit(INSPECTION_LIMITS.errorReplyBurst, INSPECTION_LIMITS.errorRepliesPerSecond, this.clock);
      this.replyLimits.set(key, limit);
    }
    if (limit.take()) this.options.refuse(reply);
    else this.unansweredSinceLog++;
    this.logRefusals(reply);
  }

  /** One line per interval: a sender with a bug must not flood the journal. */
  private logRefusals(latest: InspectionErrorPayload): void {
    const now = this.clock.monotonic();
    if (now - this.lastRefusalLogAt < INSPECTION_LIMITS.refusalLogIntervalMs) return;
    const unanswered = this.unansweredSinceLog > 0 ? `, ${this.unansweredSinceLog} of them unanswered (error replies are rate limited)` : '';
    const count = this.refusedSinceLog > 1 ? ` (${this.refusedSinceLog} refused since the last report${unanswered})` : '';
    this.options.log.warn(`inspect command for camera ${JSON.stringify(latest.camera.slice(0, 64))} refused: ${latest.error}: ${latest.message}${count}`);
    this.lastRefusalLogAt = now;
    this.refusedSinceLog = 0;
    this.unansweredSinceLog = 0;
  }
}
