/**
 * MQTT payload shapes. They are a public contract: schemas/*.schema.json
 * describe the same shapes and the tests validate published payloads against
 * them, so a change here needs the matching schema change.
 */

import type { EndReason, EventBox, EventMessage, EventMessageType } from '../scoring/events.js';

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
