import { randomUUID } from 'node:crypto';
import type { Box } from './region.js';

/**
 * Turns a stream of frame scores into anomaly events: start, rate-limited
 * updates, end. Pure: no timers and no I/O; time is the capture time fed with
 * each score, so a replayed recording gives the same events as live. Every rule
 * (k of n, durations, cooldown, update interval) runs on the monotonic capture
 * time, which an NTP step cannot move; the wall-clock capture time only fills
 * the payload's timestamps.
 *
 * Rules (per camera):
 * - Start: k of the last n frames score above the threshold. `startedAt` is the
 *   first of those above-threshold frames; the event's frames, mean and peak
 *   count from there.
 * - Hysteresis: an event ends after `endFrames` consecutive frames below the
 *   lower threshold; frames between the lower threshold and the threshold
 *   neither start nor end an event (they reset the run of low frames).
 * - Minimum duration: an event is never ended (recovered) sooner than
 *   `minDurationMs` after it started. Short blips are *extended*, not
 *   suppressed: the start goes out as soon as k of n is met (no added latency)
 *   and is never retracted; blips are already filtered by k of n. The event then
 *   ends on the first frame at or past the minimum duration where the low run
 *   is long enough.
 * - Cooldown: after a recovered event, frames are ignored for `cooldownMs`; a
 *   new event needs k of n frames after that. (Not after max-duration or close:
 *   those did not end because the scene recovered.)
 * - Max duration: an event lasting `maxDurationMs` ends with reason
 *   'max-duration'; if the anomaly persists, the next k of n frames start a new
 *   one, so consumers see bounded events for a permanent change.
 * - Updates: while active, at most one message per `updateIntervalMs` (counted
 *   from the last start or update), sent only when the peak rose since the last
 *   message. A rise during the quiet interval goes out on the first frame after it.
 * - Every end and every close clears the k-of-n window.
 * `endedAt` is the capture time of the frame (or close) that ended the event, so
 * an event's frames include its `endFrames` recovery frames.
 */

export type EventMessageType = 'start' | 'update' | 'end';
// `interrupted` is never produced here: the publisher sends it at start for an event a crash left open.
// `model-changed`: the camera's model was swapped while the event was open; its scores and threshold
// came from the old model, so it ends rather than mixing two models' scores in one peak and mean.
// `camera-fault`: a camera fault began (scoring/faults.ts): the frames no longer show the part.
export const END_REASONS = ['recovered', 'shutdown', 'max-duration', 'camera-offline', 'interrupted', 'model-changed', 'camera-fault'] as const;
export type EndReason = (typeof END_REASONS)[number];
/** Reasons an open event is ended from outside the score stream. */
export type CloseReason = Extract<EndReason, 'shutdown' | 'camera-offline' | 'model-changed' | 'camera-fault'>;

/** In source-image pixels; filled by the wiring, never by the tracker. */
export type EventBox = Box;

/** One message of an event's lifecycle: the MQTT event payload (the publisher's JSON Schema describes this shape). */
export interface EventMessage {
  type: EventMessageType;
  /** The same uuid for start, updates and end of one event. */
  id: string;
  camera: string;
  /** Capture time of the frame (or the close) that caused this message, ISO 8601. */
  at: string;
  startedAt: string;
  /** Only on `end`. */
  endedAt?: string;
  /** Score of the frame that caused this message (on a close: of the last frame seen). */
  score: number;
  peakScore: number;
  meanScore: number;
  threshold: number;
  /** Frames in the event so far. */
  frames: number;
  /** Time from the first frame of the event to this message, on the monotonic clock (so not always `at` minus `startedAt` after a clock step). */
  durationMs: number;
  /** Only on `end`. */
  reason?: EndReason;
  /** Capture time of the peak frame: the wiring attaches that frame's snapshot and box. */
  peakAt: string;
  box: EventBox | null;
  snapshot: string | null;
}

export interface DebounceRules {
  k: number;
  n: number;
  endFrames: number;
  /** Lower threshold as a fraction of the threshold (see lowerThreshold). */
  hysteresis: number;
  minDurationMs: number;
  cooldownMs: number;
  updateIntervalMs: number;
  maxDurationMs?: number;
}

export interface EventTrackerOptions extends DebounceRules {
  camera: string;
  threshold: number;
  /** Event ids; tests inject a counter. Default: crypto.randomUUID. */
  newId?: () => string;
}

/**
 * The lower (hysteresis) threshold. For a positive threshold it is
 * `threshold * hysteresis`; it stays below the threshold when the threshold is
 * negative too (hybrid z-score sums can be), by taking the fraction of |threshold|.
 */
export function lowerThreshold(threshold: number, hysteresis: number): number {
  return threshold - (1 - hysteresis) * Math.abs(threshold);
}

/**
 * When a frame was captured: `monotonicMs` on a clock that never goes back (ordering,
 * durations), `wallMs` since the epoch (payload timestamps only). A plain number is
 * both, for a recording whose timeline is the one clock (replay, tests).
 */
export type CaptureTime = number | { monotonicMs: number; wallMs: number };

export interface ScoredFrame {
  score: number;
  /** Capture time on the monotonic clock, ms. */
  timestampMs: number;
  /** Capture time on the wall clock, ms since the epoch. */
  wallMs: number;
}

interface OpenEvent {
  id: string;
  startedAtMs: number;
  startedAtWallMs: number;
  frames: number;
  scoreSum: number;
  peak: ScoredFrame;
  /** Consecutive frames below the lower threshold, up to the latest. */
  lowRun: number;
  lastScore: number;
  /** Time and peak of the last message sent (start or update). */
  lastMessageAtMs: number;
  publishedPeak: number;
}

export class EventTracker {
  readonly camera: string;
  readonly threshold: number;
  readonly lower: number;
  private readonly rules: DebounceRules;
  private readonly newId: () => string;
  /** The last n frames while no event is open (cleared when one ends). */
  private window: ScoredFrame[] = [];
  private event: OpenEvent | undefined;
  private ignoreUntilMs = Number.NEGATIVE_INFINITY;
  private lastTimestampMs = Number.NEGATIVE_INFINITY;

  constructor(options: EventTrackerOptions) {
    checkRules(options);
    if (!Number.isFinite(options.threshold)) throw new RangeError(`threshold must be a finite number, got ${options.threshold}`);
    this.camera = options.camera;
    this.threshold = options.threshold;
    this.lower = lowerThreshold(options.threshold, options.hysteresis);
    this.rules = {
      k: options.k,
      n: options.n,
      endFrames: options.endFrames,
      hysteresis: options.hysteresis,
      minDurationMs: options.minDurationMs,
      cooldownMs: options.cooldownMs,
      updateIntervalMs: options.updateIntervalMs,
      ...(options.maxDurationMs === undefined ? {} : { maxDurationMs: options.maxDurationMs }),
    };
    this.newId = options.newId ?? randomUUID;
  }

  /** Whether an event is open. */
  get active(): boolean {
    return this.event !== undefined;
  }

  /** The open event's peak frame, so the wiring can keep that frame for the snapshot; undefined when none is open. */
  get peak(): Readonly<ScoredFrame> | undefined {
    return this.event?.peak;
  }

  /**
   * Feeds one frame's score and capture time (monotonic part non-decreasing) and
   * returns the messages to publish, usually none.
   */
  push(score: number, capturedAt: CaptureTime): EventMessage[] {
    if (!Number.isFinite(score)) throw new RangeError(`camera ${this.camera}: score must be a finite number, got ${score}`);
    const frame = { score, ...this.advanceClock(capturedAt) };
    return this.event === undefined ? this.pushIdle(frame) : this.pushActive(this.event, frame);
  }

  /** Ends the open event (the camera went offline, the agent stops); returns its end message, or nothing when none is open. */
  close(reason: CloseReason, at: CaptureTime): EventMessage[] {
    const time = this.advanceClock(at);
    const event = this.event;
    this.window = [];
    if (event === undefined) return [];
    this.event = undefined;
    return [this.message('end', event, time, event.lastScore, reason)];
  }

  private pushIdle(frame: ScoredFrame): EventMessage[] {
    if (frame.timestampMs < this.ignoreUntilMs) return [];
    this.window.push(frame);
    if (this.window.length > this.rules.n) this.window.shift();
    const above = this.window.filter((candidate) => candidate.score > this.threshold);
    if (above.length < this.rules.k) return [];

    const first = this.window.indexOf(above[0]!);
    const frames = this.window.slice(first);
    this.window = [];
    const peak = frames.reduce((best, candidate) => (candidate.score > best.score ? candidate : best));
    const event: OpenEvent = {
      id: this.newId(),
      startedAtMs: frames[0]!.timestampMs,
      startedAtWallMs: frames[0]!.wallMs,
      frames: frames.length,
      scoreSum: frames.reduce((sum, candidate) => sum + candidate.score, 0),
      peak,
      // The frame that completes k of n is above the threshold, so no low run yet.
      lowRun: 0,
      lastScore: frame.score,
      lastMessageAtMs: frame.timestampMs,
      publishedPeak: peak.score,
    };
    this.event = event;
    return [this.message('start', event, frame, frame.score)];
  }

  private pushActive(event: OpenEvent, frame: ScoredFrame): EventMessage[] {
    event.frames += 1;
    event.scoreSum += frame.score;
    event.lastScore = frame.score;
    if (frame.score > event.peak.score) event.peak = frame;
    event.lowRun = frame.score < this.lower ? event.lowRun + 1 : 0;
    const durationMs = frame.timestampMs - event.startedAtMs;

    if (event.lowRun >= this.rules.endFrames && durationMs >= this.rules.minDurationMs) {
      this.end();
      this.ignoreUntilMs = frame.timestampMs + this.rules.cooldownMs;
      return [this.message('end', event, frame, frame.score, 'recovered')];
    }
    if (this.rules.maxDurationMs !== undefined && durationMs >= this.rules.maxDurationMs) {
      this.end();
      return [this.message('end', event, frame, frame.score, 'max-duration')];
    }
    if (event.peak.score > event.publishedPeak && frame.timestampMs - event.lastMessageAtMs >= this.rules.updateIntervalMs) {
      event.publishedPeak = event.peak.score;
      event.lastMessageAtMs = frame.timestampMs;
      return [this.message('update', event, frame, frame.score)];
    }
    return [];
  }

  private end(): void {
    this.event = undefined;
    this.window = [];
  }

  private advanceClock(capturedAt: CaptureTime): { timestampMs: number; wallMs: number } {
    const { monotonicMs: timestampMs, wallMs } = typeof capturedAt === 'number' ? { monotonicMs: capturedAt, wallMs: capturedAt } : capturedAt;
    if (!Number.isFinite(timestampMs)) throw new RangeError(`camera ${this.camera}: timestamp must be a finite number, got ${timestampMs}`);
    if (!Number.isFinite(wallMs)) throw new RangeError(`camera ${this.camera}: wall-clock time must be a finite number, got ${wallMs}`);
    if (timestampMs < this.lastTimestampMs) {
      throw new RangeError(
        `camera ${this.camera}: monotonic timestamps must not go back (${timestampMs} after ${this.lastTimestampMs}); feed capture times from one monotonic clock`,
      );
    }
    this.lastTimestampMs = timestampMs;
    return { timestampMs, wallMs };
  }

  private message(
    type: EventMessageType,
    event: OpenEvent,
    time: { timestampMs: number; wallMs: number },
    score: number,
    reason?: EndReason,
  ): EventMessage {
    const at = iso(time.wallMs);
    return {
      type,
      id: event.id,
      camera: this.camera,
      at,
      startedAt: iso(event.startedAtWallMs),
      ...(type === 'end' ? { endedAt: at } : {}),
      score,
      peakScore: event.peak.score,
      meanScore: event.scoreSum / event.frames,
      threshold: this.threshold,
      frames: event.frames,
      durationMs: time.timestampMs - event.startedAtMs,
      ...(reason === undefined ? {} : { reason }),
      peakAt: iso(event.peak.wallMs),
      box: null,
      snapshot: null,
    };
  }
}

function iso(timestampMs: number): string {
  return new Date(timestampMs).toISOString();
}

function checkRules(rules: DebounceRules): void {
  const wholeAtLeast = (name: keyof DebounceRules, minimum: number) => {
    const value = rules[name];
    if (!Number.isInteger(value) || (value as number) < minimum) {
      throw new RangeError(`debounce.${name} must be a whole number >= ${minimum}, got ${value}`);
    }
  };
  wholeAtLeast('k', 1);
  wholeAtLeast('n', 1);
  wholeAtLeast('endFrames', 1);
  if (rules.k > rules.n) throw new RangeError(`debounce.k (${rules.k}) must not exceed debounce.n (${rules.n})`);
  if (!(rules.hysteresis > 0 && rules.hysteresis <= 1)) throw new RangeError(`debounce.hysteresis must be in (0, 1], got ${rules.hysteresis}`);
  for (const name of ['minDurationMs', 'cooldownMs', 'updateIntervalMs'] as const) {
    if (!(rules[name] >= 0)) throw new RangeError(`debounce.${name} must be >= 0, got ${rules[name]}`);
  }
  if (rules.maxDurationMs !== undefined && !(rules.maxDurationMs > 0)) {
    throw new RangeError(`debounce.maxDurationMs must be > 0, got ${rules.maxDurationMs}`);
  }
}
