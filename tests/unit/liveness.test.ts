import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Liveness } from '../../src/agent/liveness.js';
import { memoryLogger } from '../../src/log.js';

/** Counts pings the way SystemdNotifier throttles them: at most one per interval. */
function notifier(intervalMs: number) {
  let last = Number.NEGATIVE_INFINITY;
  const pings: number[] = [];
  return {
    watchdogIntervalMs: intervalMs,
    pings,
    watchdog: async () => {
      const now = performance.now();
      if (now - last < intervalMs) return;
      last = now;
      pings.push(now);
    },
  };
}

describe('Liveness (systemd watchdog feed)', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout', 'performance', 'Date'] }));
  afterEach(() => vi.useRealTimers());

  it('keeps pinging while no frame arrives at all (every camera down), once per interval', async () => {
    const systemd = notifier(15_000); // WatchdogSec=30
    const liveness = new Liveness({ notifier: systemd, inferenceBusyForMs: () => 0, log: memoryLogger() });
    liveness.start();
    await vi.advanceTimersByTimeAsync(120_000);
    liveness.stop();
    // 0, 15, 30, ... 120 s: never a gap of WatchdogSec.
    expect(systemd.pings.length).toBeGreaterThanOrEqual(8);
    const gaps = systemd.pings.slice(1).map((at, i) => at - systemd.pings[i]!);
    expect(Math.max(...gaps)).toBeLessThan(30_000);
  });

  it('stops pinging while an inference round hangs, says so once, and resumes when it returns', async () => {
    const systemd = notifier(15_000);
    const log = memoryLogger();
    let hungSince: number | undefined;
    const liveness = new Liveness({
      notifier: systemd,
      inferenceBusyForMs: () => (hungSince === undefined ? 0 : performance.now() - hungSince),
      log,
    });
    liveness.start();
    await vi.advanceTimersByTimeAsync(20_000);
    hungSince = performance.now();
    const before = systemd.pings.length;
    await vi.advanceTimersByTimeAsync(90_000);
    // Pings go on until the round has hung for twice the interval (30 s), then stop.
    const lastPing = systemd.pings.at(-1)!;
    expect(lastPing - hungSince).toBeLessThanOrEqual(30_000);
    expect(systemd.pings.length - before).toBeLessThanOrEqual(2);
    expect(log.lines.filter((line) => /the pipeline hangs/.test(line))).toHaveLength(1);
    hungSince = undefined;
    await vi.advanceTimersByTimeAsync(4000);
    expect(systemd.pings.at(-1)!).toBeGreaterThan(lastPing + 60_000);
    expect(log.lines.join('\n')).toMatch(/watchdog pings resumed/);
    liveness.stop();
  });

  it('does nothing when systemd expects no pings', async () => {
    const liveness = new Liveness({
      notifier: { watchdogIntervalMs: null, watchdog: () => Promise.reject(new Error('must not ping')) },
      inferenceBusyForMs: () => 0,
      log: memoryLogger(),
    });
    liveness.start();
    await vi.advanceTimersByTimeAsync(60_000);
    liveness.stop();
  });
});
