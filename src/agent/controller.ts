import { systemClock, type Clock, type Timer } from '../clock.js';
import { formatError, LinewatchError } from '../errors.js';
import type { Logger } from '../log.js';

/**
 * A part of the agent with a lifecycle. Required components (MQTT, models,
 * cameras, inference) make the agent: if one cannot start, the agent cannot
 * work and start-up fails. Optional ones (health page, systemd notifications,
 * integrations) add to it: if one fails, it is logged, shown as `failed` and
 * the agent runs on without it, as zigbee2mqtt does with its extensions.
 */
export interface Component {
  readonly name: string;
  readonly optional?: boolean;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export type ComponentState = 'pending' | 'running' | 'failed' | 'stopped';

export interface ComponentStatus {
  name: string;
  optional: boolean;
  state: ComponentState;
  /** Why it failed (start or stop), for the status page and /healthz. */
  error?: string;
}

export interface ControllerOptions {
  log: Logger;
  clock?: Clock;
  /** A component that takes longer than this to stop is left behind so the others still stop. Default 15 s. */
  stopTimeoutMs?: number;
}

interface Entry {
  component: Component;
  status: ComponentStatus;
}

/** Starts components in the order added, stops the started ones in reverse, contains the optional ones. */
export class Controller {
  private readonly entries: Entry[] = [];
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly stopTimeoutMs: number;
  private stopping: Promise<void> | undefined;

  constructor(options: ControllerOptions) {
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    this.stopTimeoutMs = options.stopTimeoutMs ?? 15_000;
  }

  add(component: Component): void {
    this.entries.push({ component, status: { name: component.name, optional: component.optional ?? false, state: 'pending' } });
  }

  /**
   * Starts every component in order. A required one that fails stops those
   * already started (in reverse) and rethrows its error; an optional one that
   * fails is logged and skipped.
   */
  async start(): Promise<void> {
    for (const entry of this.entries) {
      if (this.stopping) return;
      const { component, status } = entry;
      try {
        await component.start();
        status.state = 'running';
      } catch (error) {
        status.state = 'failed';
        status.error = oneLine(error);
        if (!status.optional) {
          await this.stop();
          throw error;
        }
        this.log.error(`${component.name} failed to start; linewatch runs on without it: ${formatError(error)}`);
      }
    }
  }

  /** Stops the running components in reverse order; every stop is attempted, bounded in time. Idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.stopAll();
    return this.stopping;
  }

  status(): ComponentStatus[] {
    return this.entries.map(({ status }) => ({ ...status }));
  }

  /** Marks a running optional component failed after start (e.g. its server died); it stays off until restart. */
  reportFailure(name: string, error: unknown): void {
    const entry = this.entries.find((candidate) => candidate.component.name === name);
    if (!entry) return;
    entry.status.state = 'failed';
    entry.status.error = oneLine(error);
    this.log.error(`${name} failed: ${formatError(error)}`);
  }

  private async stopAll(): Promise<void> {
    for (const { component, status } of [...this.entries].reverse()) {
      if (status.state !== 'running') continue;
      try {
        await this.withTimeout(component.stop());
        status.state = 'stopped';
      } catch (error) {
        status.state = 'failed';
        status.error = oneLine(error);
        this.log.warn(`${component.name} did not stop cleanly: ${formatError(error)}`);
      }
    }
  }

  private withTimeout(stopping: Promise<void>): Promise<void> {
    let timer: Timer | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = this.clock.setTimeout(() => reject(new Error(`still stopping after ${this.stopTimeoutMs / 1000} s; left behind`)), this.stopTimeoutMs);
    });
    return Promise.race([stopping, timeout]).finally(() => this.clock.clearTimeout(timer));
  }
}

/** What went wrong in one line, with the fix when the error carries one (status page, /healthz). */
function oneLine(error: unknown): string {
  if (error instanceof LinewatchError) return error.hint ? `${error.message} (${error.hint})` : error.message;
  return error instanceof Error ? error.message : String(error);
}
