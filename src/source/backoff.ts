export interface BackoffOptions {
  /** Delay before the first retry (ms). */
  initialMs: number;
  /** Cap on the delay (ms). */
  maxMs: number;
  /** Growth per failed attempt. */
  factor: number;
  /**
   * Fraction of the delay taken off at random, so that cameras dropped by the same network outage do not
   * all reconnect in the same instant.
   */
  jitter: number;
}

export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = { initialMs: 1000, maxMs: 30_000, factor: 2, jitter: 0.3 };

/** Delay before retry number `attempt` (0-based): capped exponential growth, reduced by up to `jitter`. */
export function backoffDelayMs(attempt: number, options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const exponential = options.initialMs * options.factor ** Math.max(0, attempt);
  const capped = Math.min(options.maxMs, exponential);
  return Math.round(capped * (1 - options.jitter * random()));
}
