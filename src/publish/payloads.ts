/**
 * MQTT payload shapes. They are a public contract: schemas/*.schema.json
 * describe the same shapes and the tests validate published payloads against
 * them, so a change here needs the matching schema change.
 */

import type { EndReason, EventBox, EventMessage, EventMessageType } from '../scoring/events.js';
import type { ActiveFault } from '../scoring/faults.js';

// The event payload is exactly what the debouncer emits (with box and snapshot filled in by the wiring).
export type AnomalyEventType = EventMessageType;
export type AnomalyEventEndReason = EndReason;
/** In source-image pixels. */
export type BoundingBox = EventBox;
/** One step of an anomaly event's lifecycle. Times are ISO 8601. */
export type AnomalyEventPayload = EventMessage;

export type CameraState = 'streaming' | 'reconnecting' | 'offline';

export interface CameraStatusPayload {
  state: CameraState;
  /** Why the camera is in this state (ffmpeg's exit, a stall); null while streaming normally. */
  reason: string | null;
  /** When the camera entered this state. */
  since: string;
  fps: number;
  restarts: number;
  framesDropped: number;
  lastFrameAt: string | null;
  /** Camera faults that hold now (scoring/faults.ts); empty while the picture looks as in training. */
  faults: ActiveFault[];
}

export interface ScorePayload {
  at: string;
  score: number;
  threshold: number;
}

/** Per-camera counters the wiring supplies for `<base>/stats`. */
export interface CameraStats {
  state: CameraState;
  fps: number;
  frames: number;
  framesDropped: number;
  restarts: number;
  events: number;
}

export interface MqttCounters {
  connected: boolean;
  /** Messages the broker accepted (PUBACK for QoS 1, written for QoS 0). */
  published: number;
  /** Events waiting in the durable outbox for a PUBACK. */
  outboxSize: number;
  /** Events dropped because the outbox reached its bound. */
  dropped: number;
  /** Successful connections after the first one. */
  reconnects: number;
  /** False while dataDir cannot be written (full, read-only): events wait in memory only and a crash loses them. */
  durable: boolean;
  /** Why not durable (the write error); null while durable. */
  notDurableReason: string | null;
}

export interface StatsPayload {
  at: string;
  uptimeSec: number;
  rssBytes: number;
  mqtt: Pick<MqttCounters, 'published' | 'outboxSize' | 'dropped' | 'reconnects'>;
  cameras: Record<string, CameraStats>;
}

/** The answer to one inspect command: the verdict on the first frame captured after the command arrived. */
export interface InspectionResultPayload {
  /** The command's correlation id (e.g. the part serial), as sent. */
  id: string;
  camera: string;
  /** fail: the frame scored above the threshold. */
  result: 'pass' | 'fail';
  score: number;
  threshold: number;
  /** Region of the anomaly in source-image pixels; null for a pass. */
  box: BoundingBox | null;
  /** JPEG of the failing frame on the device; null for a pass or without snapshots. */
  snapshot: string | null;
  /** When the command arrived. */
  requestedAt: string;
  /** When the inspected frame was read from ffmpeg (after requestedAt). */
  capturedAt: string;
  /** When the result was produced. */
  at: string;
  /** Command arrival to result, on the monotonic clock. */
  latencyMs: number;
}

export const INSPECTION_ERRORS = ['invalid-command', 'unknown-camera', 'busy', 'timeout', 'scoring-failed', 'shutdown'] as const;
export type InspectionErrorCode = (typeof INSPECTION_ERRORS)[number];

/** An inspect command that got no verdict: refused, timed out, or cut short. */
export interface InspectionErrorPayload {
  /** The command's id; null when the command carried none that could be read. */
  id: string | null;
  camera: string;
  error: InspectionErrorCode;
  /** For people: what went wrong and what to do. */
  message: string;
  requestedAt: string;
  at: string;
}

export type InspectionReplyPayload = InspectionResultPayload | InspectionErrorPayload;
