/**
 * Time as the agent sees it, injectable so tests can drive it with fake timers.
 *
 * Two clocks on purpose: `monotonic()` orders frames, debounces and measures
 * durations, and never goes back when NTP steps the system clock; `now()` is the
 * wall clock, used only for what people read (payload timestamps, logs).
 */
export interface Clock {
  /** Wall-clock milliseconds since the epoch: payloads and logs only. */
  now(): number;
  /** Milliseconds from an arbitrary origin that never decreases: ordering and durations. */
  monotonic(): number;
  setTimeout(callback: () => void, ms: number): Timer;
  clearTimeout(timer: Timer | undefined): void;
  setInterval(callback: () => void, ms: number): Timer;
  clearInterval(timer: Timer | undefined): void;
}

export type Timer = ReturnType<typeof globalThis.setTimeout>;

/**
 * The process's clocks. Each call reads the globals at call time, so vitest's fake
 * timers (which replace Date, performance and the timer functions) drive it too.
 */
export const systemClock: Clock = {
  now: () => Date.now(),
  monotonic: () => performance.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (timer) => globalThis.clearTimeout(timer),
  setInterval: (callback, ms) => globalThis.setInterval(callback, ms),
  clearInterval: (timer) => globalThis.clearInterval(timer),
};
