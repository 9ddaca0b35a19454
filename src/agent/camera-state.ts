import type { Clock } from '../clock.js';
import type { CameraSnapshot } from '../health/agent-snapshot.js';
import type { AgentMetrics } from '../health/metrics.js';
import type { Logger } from '../log.js';
import type { CameraStats, CameraStatusPayload } from '../publish/payloads.js';
import type { ActiveFault, FaultMessage } from '../scoring/faults.js';
import type { CameraStatusChange, CameraCounters } from '../source/index.js';

/** One line per this many milliseconds at most while frames keep failing: a broken model must not flood the journal. */
export const FAILURE_LOG_INTERVAL_MS = 60_000;
/** Consecutive failed frames after which the camera counts as unhealthy (/healthz 503). */
export const UNHEALTHY_AFTER_FAILURES = 5;

/**
 * A camera's state and counters: its MQTT status, fps, frames scored, events,
 * scoring failures. Holds no frames and publishes nothing itself.
 */
export class CameraState {
  private status: CameraStatusPayload;
  private framesScored = 0;
  private events = 0;
  private lastScore: number | null = null;
  private fpsEstimate = 0;
  private lastScoredAt: number | undefined;
  private reportedDrops = 0;
  private reportedRestarts = 0;
  private failures = 0;
  private consecutiveFailures = 0;
  private failingSince: number | undefined;
  private lastFailure: string | null = null;
  private failuresSinceLog = 0;
  private lastFailureLogAt = Number.NEGATIVE_INFINITY;

  constructor(
    readonly name: string,
    private thresholdValue: number,
    private readonly deps: { metrics: AgentMetrics; log: Logger; clock: Clock; sourceStats: () => CameraCounters },
  ) {
    this.status = { state: 'offline', reason: 'not started', since: new Date(deps.clock.now()).toISOString(), fps: 0, restarts: 0, framesDropped: 0, lastFrameAt: null, faults: [] };
    deps.metrics.addCamera(name, thresholdValue);
  }

  get threshold(): number {
    return this.thresholdValue;
  }

  /** The camera runs another model (or the same with another calibration). */
  thresholdChanged(threshold: number): void {
    this.thresholdValue = threshold;
    this.deps.metrics.threshold(this.name, threshold);
  }

  /** A frame was scored; `monotonicAt` is its capture time on the monotonic clock. */
  scored(score: number, monotonicAt: number, inferenceSeconds: number): void {
    this.framesScored++;
    this.lastScore = score;
    if (this.lastScoredAt !== undefined) {
      const interval = (monotonicAt - this.lastScoredAt) / 1000;
      if (interval > 0) this.fpsEstimate = this.fpsEstimate === 0 ? 1 / interval : 0.9 * this.fpsEstimate + 0.1 / interval;
    }
    this.lastScoredAt = monotonicAt;
    if (this.consecutiveFailures > 0) {
      this.deps.log.info(`camera ${this.name}: scoring works again after ${this.consecutiveFailures} failed frame(s)`);
      this.consecutiveFailures = 0;
      this.failingSince = undefined;
      this.failuresSinceLog = 0;
    }
    this.deps.metrics.frameScored(this.name, score, inferenceSeconds);
    this.syncCounters();
  }

  /** A frame failed scoring: counted, visible in health, logged at most once a minute. */
  failed(error: Error): void {
    const now = this.deps.clock.monotonic();
    this.failures++;
    this.consecutiveFailures++;
    this.failuresSinceLog++;
    this.failingSince ??= this.deps.clock.now();
    this.lastFailure = error.message;
    this.deps.metrics.scoringFailed(this.name);
    if (now - this.lastFailureLogAt >= FAILURE_LOG_INTERVAL_MS) {
      const more = this.failuresSinceLog > 1 ? ` (${this.failuresSinceLog} frames failed since the last report)` : '';
      this.deps.log.error(`camera ${this.name}: frame not scored: ${error.message}${more}`);
      this.lastFailureLogAt = now;
      this.failuresSinceLog = 0;
    }
    this.syncCounters();
  }

  eventStarted(): void {
    this.events++;
  }

  /** A fault's start or end (metrics; the status follows with faultsChanged). */
  faultMessage(message: FaultMessage): void {
    this.deps.metrics.faultMessage(this.name, message.kind, message.type);
  }

  /** A frame kept from the anomaly debouncer by a (possible) camera fault; `eventSuppressed`: an event would have started on it. */
  anomalyFrameWithheld(eventSuppressed: boolean): void {
    this.deps.metrics.anomalyWithheld(this.name, eventSuppressed);
  }

  /** Camera faults started or ended; returns the MQTT status payload to publish. */
  faultsChanged(faults: ActiveFault[]): CameraStatusPayload {
    this.status = { ...this.status, faults };
    return this.current();
  }

  /** Applies a source status change and returns the MQTT status payload to publish. */
  statusChanged(change: CameraStatusChange): CameraStatusPayload {
    this.status = {
      ...this.status,
      state: change.status,
      reason: change.status === 'streaming' ? null : change.reason,
      since: new Date(change.at).toISOString(),
    };
    this.deps.metrics.cameraState(this.name, change.status);
    if (change.status !== 'streaming') {
      this.fpsEstimate = 0;
      this.lastScoredAt = undefined;
    }
    this.syncCounters();
    return this.current();
  }

  current(): CameraStatusPayload {
    const counters = this.deps.sourceStats();
    return {
      ...this.status,
      fps: round(this.fpsEstimate),
      restarts: counters.restarts,
      framesDropped: counters.framesDropped,
      lastFrameAt: counters.lastFrameAt === undefined ? null : new Date(counters.lastFrameAt).toISOString(),
    };
  }

  stats(): CameraStats {
    const counters = this.deps.sourceStats();
    return {
      state: this.status.state,
      fps: round(this.fpsEstimate),
      frames: this.framesScored,
      framesDropped: counters.framesDropped,
      restarts: counters.restarts,
      events: this.events,
    };
  }

  snapshot(): CameraSnapshot {
    return {
      ...this.current(),
      name: this.name,
      framesIn: this.deps.sourceStats().framesIn,
      lastScore: this.lastScore,
      threshold: this.threshold,
      scoring: {
        failures: this.failures,
        failing: this.consecutiveFailures >= UNHEALTHY_AFTER_FAILURES,
        failingSince: this.failingSince === undefined ? null : new Date(this.failingSince).toISOString(),
        lastError: this.lastFailure,
      },
    };
  }

  private syncCounters(): void {
    const counters = this.deps.sourceStats();
    const { metrics } = this.deps;
    if (counters.framesDropped > this.reportedDrops) metrics.frameDropped(this.name, counters.framesDropped - this.reportedDrops);
    if (counters.restarts > this.reportedRestarts) metrics.ffmpegRestart(this.name, counters.restarts - this.reportedRestarts);
    this.reportedDrops = counters.framesDropped;
    this.reportedRestarts = counters.restarts;
  }
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
