import { systemClock, type Clock, type Timer } from '../clock.js';
import type { Logger } from '../log.js';

export interface LivenessOptions {
  /** Sends WATCHDOG=1 (throttled by the notifier); `intervalMs` null when systemd expects no pings. */
  notifier: { watchdog(): Promise<void>; readonly watchdogIntervalMs: number | null };
  /** How long the inference round in progress has run; 0 while idle. */
  inferenceBusyForMs: () => number;
  log: Logger;
  clock?: Clock;
  /** An inference round running longer than this means the pipeline hangs. Default: twice the ping interval. */
  stuckAfterMs?: number;
}

/**
 * Feeds the systemd watchdog from the agent's liveness, not from frames: a timer
 * on the event loop pings as long as the loop turns and no inference round hangs.
 * Cameras that are all down (a switch reboot) are not a reason for systemd to
 * kill the agent: it is doing its job, retrying them. A hung inference (a native
 * call that never returns) or a blocked event loop is: pings stop and systemd
 * restarts a fresh agent.
 */
export class Liveness {
  private readonly clock: Clock;
  private readonly stuckAfterMs: number;
  private timer: Timer | undefined;
  private hungReported = false;

  constructor(private readonly options: LivenessOptions) {
    this.clock = options.clock ?? systemClock;
    const interval = options.notifier.watchdogIntervalMs;
    this.stuckAfterMs = options.stuckAfterMs ?? (interval === null ? 60_000 : 2 * interval);
  }

  start(): void {
    const interval = this.options.notifier.watchdogIntervalMs;
    if (interval === null || this.timer) return;
    // Four checks per ping interval, so a ping is never late by more than a quarter of it.
    this.timer = this.clock.setInterval(() => this.check(), Math.max(50, interval / 4));
    this.check();
  }

  stop(): void {
    this.clock.clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Whether the agent is alive enough to be left running. */
  alive(): boolean {
    return this.options.inferenceBusyForMs() < this.stuckAfterMs;
  }

  private check(): void {
    if (this.alive()) {
      if (this.hungReported) this.options.log.info('inference responds again: watchdog pings resumed');
      this.hungReported = false;
      void this.options.notifier.watchdog();
      return;
    }
    if (!this.hungReported) {
      this.options.log.error(
        `an inference round has run for ${Math.round(this.options.inferenceBusyForMs() / 1000)} s: the pipeline hangs; ` +
          'watchdog pings stop so that systemd restarts the agent',
      );
      this.hungReported = true;
    }
  }
}
