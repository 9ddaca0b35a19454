import type { AnomalyEventType, CameraStatusPayload } from '../publish/payloads.js';

/**
 * What the health server shows: a plain-data picture of the running agent that the
 * wiring assembles on request (cheap: counters it already keeps). Times are ISO 8601.
 */
export interface AgentSnapshot {
  version: string;
  startedAt: string;
  /** The device id used in MQTT topics, shown as the page title. */
  deviceId?: string;
  cameras: CameraSnapshot[];
  mqtt: MqttSnapshot;
  /** Newest first; the page shows up to 20. */
  recentEvents: RecentEvent[];
}

/** The camera's MQTT status payload plus what only the operator page needs. */
export interface CameraSnapshot extends CameraStatusPayload {
  name: string;
  framesIn: number;
  /** Score of the last scored frame; null before the first. */
  lastScore: number | null;
  threshold: number | null;
}

export interface MqttSnapshot {
  connected: boolean;
  /** Broker URL without credentials. */
  broker?: string;
  outboxSize: number;
}

export interface RecentEvent {
  id: string;
  camera: string;
  type: AnomalyEventType;
  at: string;
  score: number;
  peakScore: number;
  threshold: number;
  /** Snapshot file path as SnapshotStore.save returned it; null when none was written. */
  snapshot: string | null;
}
