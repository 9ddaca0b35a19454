import { describe, expect, it } from 'vitest';
import type { AgentSnapshot } from '../../src/health/agent-snapshot.js';
import { renderOperatorPage } from '../../src/health/page.js';
import { assessHealth } from '../../src/health/server.js';

const NOW = Date.parse('2026-12-06T12:00:00Z');

function snapshot(extra: Partial<AgentSnapshot> = {}): AgentSnapshot {
  return {
    version: '0.1.0',
    startedAt: '2026-12-06T11:00:00Z',
    cameras: [
      {
        name: 'line1',
        state: 'streaming',
        reason: null,
        since: '2026-12-06T11:00:01Z',
        fps: 10,
        restarts: 0,
        framesDropped: 0,
        lastFrameAt: '2026-12-06T11:59:59.900Z',
        faults: [],
        framesIn: 35_000,
        lastScore: 0.4,
        threshold: 1.2,
      },
    ],
    mqtt: { connected: true, outboxSize: 0, durable: true, notDurableReason: null },
    recentEvents: [],
    ...extra,
  };
}

describe('health report and operator page under degraded conditions', () => {
  it('is ok when everything works', () => {
    expect(assessHealth(snapshot(), NOW)).toEqual({ status: 'ok', cameras: { line1: 'streaming' }, problems: [] });
  });

  it('a full data folder (events in memory only) is a problem that says what to do', () => {
    const degraded = snapshot({ mqtt: { connected: true, outboxSize: 12, durable: false, notDurableReason: 'ENOSPC: no space left on device' } });
    const report = assessHealth(degraded, NOW);
    expect(report.status).toBe('unhealthy');
    expect(report.problems).toEqual(['MQTT outbox not durable (ENOSPC: no space left on device): events wait in memory only; free space in dataDir']);
    expect(renderOperatorPage(degraded, { now: NOW, refreshSeconds: 5 })).toMatch(/events in memory only: ENOSPC: no space left on device/);
  });

  it('a failed optional component is a problem, shown on the page with its error escaped', () => {
    const degraded = snapshot({
      components: [
        { name: 'mqtt', optional: false, state: 'running' },
        { name: 'systemd', optional: true, state: 'failed', error: "systemd-notify <not found>" },
      ],
    });
    expect(assessHealth(degraded, NOW).problems).toEqual(['systemd failed: systemd-notify <not found>']);
    const page = renderOperatorPage(degraded, { now: NOW, refreshSeconds: 5 });
    expect(page).toContain('systemd failed: systemd-notify &lt;not found&gt;');
  });

  it('dropped events show on the page', () => {
    const page = renderOperatorPage(snapshot({ mqtt: { connected: false, outboxSize: 10_000, dropped: 37 } }), { now: NOW, refreshSeconds: 5 });
    expect(page).toMatch(/37 event\(s\) dropped/);
  });
});
