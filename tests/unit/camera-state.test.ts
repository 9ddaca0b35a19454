import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CameraState, FAILURE_LOG_INTERVAL_MS, UNHEALTHY_AFTER_FAILURES } from '../../src/agent/camera-state.js';
import { systemClock } from '../../src/clock.js';
import { assessHealth } from '../../src/health/server.js';
import { AgentMetrics } from '../../src/health/metrics.js';
import { memoryLogger } from '../../src/log.js';

const counters = { framesIn: 0, framesDropped: 0, restarts: 0, lastFrameAt: undefined, lastFrameMonotonicAt: undefined, previewsIn: 0 };

describe('CameraState: frames that fail scoring', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['Date', 'performance', 'setTimeout', 'setInterval'] }));
  afterEach(() => vi.useRealTimers());

  it('are counted, logged at most once a minute, shown by /healthz, and cleared by the next scored frame', async () => {
    const log = memoryLogger();
    const metrics = new AgentMetrics({ processMetrics: false });
    const state = new CameraState('line1', 1.5, { metrics, log, clock: systemClock, sourceStats: () => ({ ...counters, lastFrameAt: Date.now() }) });
    state.statusChanged({ cameraId: 'line1', status: 'streaming', previous: 'offline', reason: 'streaming', at: Date.now(), monotonicAt: performance.now() });

    // A broken model at 10 fps for two minutes: 1200 failed frames.
    for (let i = 0; i < 1200; i++) {
      state.failed(new Error('the model gave a non-finite score (NaN)'));
      vi.advanceTimersByTime(100);
    }
    const lines = log.lines.filter((line) => /frame not scored/.test(line));
    expect(lines.length).toBe(Math.ceil((1200 * 100) / FAILURE_LOG_INTERVAL_MS));
    expect(lines[1]).toMatch(/600 frames failed since the last report/);
    expect(await metrics.registry.getSingleMetricAsString('linewatch_scoring_failures_total')).toMatch(/camera="line1"} 1200/);
    expect(await metrics.registry.getSingleMetricAsString('linewatch_frames_scored_total')).toMatch(/camera="line1"} 0/);

    const failing = state.snapshot();
    expect(failing.scoring).toMatchObject({ failures: 1200, failing: true, lastError: 'the model gave a non-finite score (NaN)' });
    const report = assessHealth({ version: 'x', startedAt: '', cameras: [failing], mqtt: { connected: true, outboxSize: 0 }, recentEvents: [] }, Date.now());
    expect(report.status).toBe('unhealthy');
    expect(report.problems[0]).toMatch(/line1: frames fail scoring since .* \(the model gave a non-finite score \(NaN\)\)/);

    state.scored(0.4, performance.now(), 0.001);
    expect(state.snapshot().scoring).toMatchObject({ failures: 1200, failing: false, failingSince: null });
    expect(log.lines.at(-1)).toMatch(/scoring works again after 1200 failed frame\(s\)/);
  });

  it('a single failed frame is logged but does not make the camera unhealthy', () => {
    const state = new CameraState('line1', 1.5, { metrics: new AgentMetrics({ processMetrics: false }), log: memoryLogger(), clock: systemClock, sourceStats: () => counters });
    for (let i = 1; i < UNHEALTHY_AFTER_FAILURES; i++) state.failed(new Error('transient'));
    expect(state.snapshot().scoring?.failing).toBe(false);
    state.failed(new Error('transient'));
    expect(state.snapshot().scoring?.failing).toBe(true);
  });
});
