import { describe, expect, it } from 'vitest';
import { parseEventWrites, readResidentBytes, readRssBytes, summariseEventWrites } from '../../bench/measure.js';
import { AgentMetrics } from '../../src/health/metrics.js';

describe('the benchmarks read linewatch_event_write_seconds from /metrics', () => {
  it('counts the slow writes between two readings of the histogram', async () => {
    const metrics = new AgentMetrics({ processMetrics: false });
    metrics.eventWrite(0.0008);
    metrics.eventWrite(0.3);
    const before = parseEventWrites(await metrics.render());
    expect(before?.count).toBe(2);
    for (const seconds of [0.0005, 0.015, 0.07, 0.004]) metrics.eventWrite(seconds);
    const after = parseEventWrites(await metrics.render());

    const window = summariseEventWrites(after, before);
    expect(window?.count).toBe(4);
    expect(window?.meanMs).toBeCloseTo((0.0005 + 0.015 + 0.07 + 0.004) * 250, 1);
    expect(window?.slowerThanMs).toEqual({ 10: 2, 20: 1, 50: 1, 100: 0 });
    // From the agent's start: the 300 ms write too.
    expect(summariseEventWrites(after)?.slowerThanMs).toEqual({ 10: 3, 20: 2, 50: 2, 100: 1 });
  });

  it('says nothing for an agent without the histogram', () => {
    expect(parseEventWrites('linewatch_frames_in_total{camera="a"} 3\n')).toBeUndefined();
    expect(summariseEventWrites(undefined)).toBeNull();
  });
});

describe('the benchmarks split resident memory into anonymous and file-backed pages', () => {
  it("adds up to the process's RSS, with node's code among the file-backed pages", () => {
    const before = readRssBytes(process.pid)!;
    const split = readResidentBytes(process.pid)!;
    const after = readRssBytes(process.pid)!;
    // node's own binary alone maps tens of MB of code; the heaps are anonymous.
    expect(split.file).toBeGreaterThan(10 * 2 ** 20);
    expect(split.anon).toBeGreaterThan(10 * 2 ** 20);
    expect(split.rss).toBeGreaterThan(20 * 2 ** 20);
    // RSS is anon + file + shared memory (none here); read apart, so allow what the process allocated between the reads.
    expect(split.anon! + split.file!).toBeGreaterThanOrEqual(Math.min(before, after) - 4 * 2 ** 20);
    expect(split.anon! + split.file!).toBeLessThanOrEqual(Math.max(before, after) + 4 * 2 ** 20);
  });

  it('says nothing for a process that is gone', () => {
    expect(readResidentBytes(2 ** 22 + 1)).toBeUndefined();
    expect(readRssBytes(2 ** 22 + 1)).toBeUndefined();
  });
});
