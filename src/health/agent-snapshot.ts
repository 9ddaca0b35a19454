import type { ComponentStatus } from '../agent/controller.js';
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
  /** The agent's components as the controller sees them (a failed optional one shows here). */
  components?: ComponentStatus[];
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
  /** Frames the model could not score (inference threw or the score was non-finite). */
  scoring?: ScoringHealth;
  /** The sensor-fault guard: its limits, the last frame's signals, what it held back. */
  faultChecks?: FaultChecksSnapshot;
}

export interface FaultChecksSnapshot {
  enabled: boolean;
  rules: { kind: string; signal: string; min?: number; max?: number; source: string }[];
  /** The last analysed frame's quality signals (null: none yet). */
  signals: Record<string, number | null> | null;
  /** Frames kept from the anomaly debouncer, and anomaly events that would have started on them while a fault held. */
  suppressed: { frames: number; events: number };
}

export interface ScoringHealth {
  failures: number;
  /** True while the latest frames keep failing: the camera is unhealthy. */
  failing: boolean;
  failingSince: string | null;
  lastError: string | null;
}

export interface MqttSnapshot {
  connected: boolean;
  /** Broker URL without credentials. */
  broker?: string;
  outboxSize: number;
  /** Events dropped because the outbox reached its bound. */
  dropped?: number;
  /** False while the data folder cannot be written (full, read-only): events wait in memory only. */
  durable?: boolean;
  notDurableReason?: string | null;
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
