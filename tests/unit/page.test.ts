import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { AgentSnapshot, CameraSnapshot, RecentEvent } from '../../src/health/agent-snapshot.js';
import { PAGE_SCRIPT } from '../../src/health/page-script.js';
import { PAGE_CONTENT_SECURITY_POLICY, renderOperatorPage } from '../../src/health/page.js';

const NOW = Date.parse('2026-12-06T12:00:00Z');

function camera(name: string, overrides: Partial<CameraSnapshot> = {}): CameraSnapshot {
  return {
    name,
    state: 'streaming',
    reason: null,
    since: '2026-12-06T11:00:01Z',
    fps: 10,
    restarts: 0,
    framesDropped: 0,
    lastFrameAt: '2026-12-06T11:59:59.900Z',
    framesIn: 35_000,
    lastScore: 0.4,
    threshold: 1.2,
    faults: [],
    ...overrides,
  };
}

function event(id: string, type: RecentEvent['type'], cameraName = 'line1', snapshot: string | null = `/data/snapshots/${cameraName}/${id}.jpg`): RecentEvent {
  return { id, camera: cameraName, type, at: '2026-12-06T11:59:00Z', score: 2, peakScore: 3, threshold: 1.2, snapshot };
}

function snapshot(cameras: CameraSnapshot[], recentEvents: RecentEvent[] = []): AgentSnapshot {
  return { version: '0.1.0', startedAt: '2026-12-06T11:00:00Z', cameras, mqtt: { connected: true, outboxSize: 0 }, recentEvents };
}

describe('the status page', () => {
  it("runs only its own script: the CSP allows it by hash, and it reaches nothing but this origin", () => {
    // It must parse as a script (it is a TS template string: an escape slip would break it silently).
    expect(() => new Function(PAGE_SCRIPT)).not.toThrow();
    expect(PAGE_SCRIPT).not.toMatch(/<\/script|<!--/i);
    const directives = Object.fromEntries(PAGE_CONTENT_SECURITY_POLICY.split('; ').map((part) => [part.split(' ')[0], part.split(' ').slice(1).join(' ')]));
    expect(directives['default-src']).toBe("'none'");
    expect(directives['script-src']).toBe(`'sha256-${createHash('sha256').update(PAGE_SCRIPT).digest('base64')}'`);
    expect(directives['connect-src']).toBe("'self'");
    expect(directives['img-src']).toBe("'self' blob:");
    expect(PAGE_CONTENT_SECURITY_POLICY).not.toMatch(/https?:|\*|unsafe-eval/);
    // The token goes in a header, never into a URL the browser would log or send on.
    expect(PAGE_SCRIPT).toContain("'Bearer ' + sent");
    expect(PAGE_SCRIPT).not.toMatch(/[?&](access_)?token=/);
  });

  it('renders a card per camera with its figures and its own recent events, one entry per event', () => {
    const page = renderOperatorPage(
      snapshot(
        [camera('line1'), camera('press"<2>', { state: 'reconnecting', reason: 'ffmpeg exited: <boom>', lastScore: null })],
        [event('e2', 'end'), event('e2', 'update'), event('e2', 'start'), event('e1', 'end', 'line1', null), event('e3', 'start', 'press"<2>')],
      ),
      { now: NOW, refreshSeconds: 5, api: 'token' },
    );
    expect(page).toContain('<body data-api="token" data-refresh="5">');
    expect(page).toMatch(/<noscript><meta http-equiv="refresh" content="5">[^<]*(<style>[^<]*<\/style>)?<\/noscript>/);
    expect(page.match(/<article class="card" data-camera="/g)).toHaveLength(2);
    expect(page).toContain('<article class="card" data-camera="press&quot;&lt;2&gt;">');
    expect(page).toContain('<div data-live="stats:press&quot;&lt;2&gt;">');
    expect(page).toContain('<div class="reason">ffmpeg exited: &lt;boom&gt;</div>');
    expect(page).not.toContain('<boom>');

    const line1 = page.slice(page.indexOf('data-camera="line1"'), page.indexOf('data-camera="press'));
    expect(line1).toContain('<span class="state ok">streaming</span>');
    expect(line1).toContain('class="fill " style="width:22.2%"');
    expect(line1).toContain('<dt>frames</dt><dd>35000</dd>');
    // Three messages of e2 are one event; e1 has no snapshot, so no link; e3 is the other camera's.
    expect(line1.match(/data-event-id="e2"/g)).toHaveLength(1);
    expect(line1).toContain('<a class="thumb-link" data-event-id="e2" href="/snapshots/line1/e2.jpg">');
    expect(line1).toContain('<span class="thumb-link" data-event-id="e1">');
    expect(line1).not.toContain('data-event-id="e3"');
    // Without JavaScript nothing on the card tries to load a picture.
    expect(page).not.toMatch(/\bsrc=/);
  });

  it('tells the script when there is no API, and links the API document when there is one', () => {
    const none = renderOperatorPage(snapshot([camera('line1')]), { now: NOW, refreshSeconds: 7 });
    expect(none).toContain('<body data-api="none" data-refresh="7">');
    expect(none).not.toContain('<a href="/api/openapi.json">');
    expect(renderOperatorPage(snapshot([camera('line1')]), { now: NOW, refreshSeconds: 5, api: 'open' })).toContain('<a href="/api/openapi.json">API</a>');
    expect(renderOperatorPage(snapshot([]), { now: NOW, refreshSeconds: 5 })).toContain('<p>No cameras configured.</p>');
  });

  it('shows a camera fault per line with its signal against the limit, the picture checks and what they held back, all escaped', () => {
    const faultChecks = (enabled: boolean, frames = 0, events = 0): CameraSnapshot['faultChecks'] => ({
      enabled,
      rules: enabled
        ? [
            { kind: 'covered', signal: 'flatShare', max: 0.75, source: 'learned' },
            { kind: 'dark', signal: 'brightness', min: 25, source: 'default' },
          ]
        : [],
      signals: null,
      suppressed: { frames, events },
    });
    const page = renderOperatorPage(
      snapshot([
        camera('line1', {
          faults: [
            { id: 'f1', kind: 'covered', signal: 'flatShare', since: '2026-12-06T11:56:57.250Z', value: 1, expected: { max: 0.75 } },
            // Whatever the snapshot carries is text, never markup.
            { id: 'f2', kind: '<b>dark</b>' as 'dark', signal: 'brightness', since: 'soon"<x>', value: 3.25, expected: { min: 25 } },
          ],
          faultChecks: faultChecks(true, 41, 1),
        }),
        camera('line2', { faultChecks: faultChecks(false) }),
        camera('line3'),
      ]),
      { now: NOW, refreshSeconds: 5 },
    );
    const card = (name: string, next?: string) => page.slice(page.indexOf(`data-camera="${name}"`), next ? page.indexOf(`data-camera="${next}"`) : undefined);
    const text = (html: string) => html.replace(/<[^>]*>/g, '');
    const line1 = card('line1', 'line2');

    // In the figures the script refreshes, and flagged in the card's head and the summary.
    const stats = line1.slice(line1.indexOf('<div data-live="stats:line1">'));
    expect(text(stats)).toContain('camera fault: covered since 11:56:57 UTC (3 min 2 s) — flatShare 1.00, expected ≤ 0.75');
    expect(stats).toContain('<time data-clock datetime="2026-12-06T11:56:57.250Z" title="2026-12-06T11:56:57.250Z">11:56:57 UTC</time>');
    expect(line1).toContain('<span class="state ok">streaming</span> <span class="state bad">· camera fault</span>');
    expect(text(page)).toContain('1 camera with a fault');
    expect(line1.match(/<div class="fault"/g)).toHaveLength(2);
    expect(line1).toContain('<span class="fault-badge">camera fault: &lt;b&gt;dark&lt;/b&gt;</span> since <time data-clock datetime="soon&quot;&lt;x&gt;" title="soon&quot;&lt;x&gt;">soon&quot;&lt;x&gt;</time> (?) — brightness 3.25, expected ≥ 25.0');
    expect(page).not.toContain('<b>dark');
    expect(page).not.toContain('<x>');
    expect(line1).toContain(
      '<div class="reason checks" title="covered flatShare ≤ 0.75 (learned); dark brightness ≥ 25.0 (default)">picture checks: 2 checks · 41 frames withheld · 1 event suppressed</div>',
    );

    const line2 = card('line2', 'line3');
    expect(line2).toContain('<div class="reason checks">picture checks: fault checks off</div>');
    expect(line2).not.toContain('class="fault"');
    expect(line2).not.toContain('camera fault');
    // A camera without fault figures (an older snapshot) shows neither line.
    const line3 = card('line3');
    expect(line3).not.toContain('picture checks');
    expect(line3).not.toContain('camera fault');

    const quiet = renderOperatorPage(snapshot([camera('line1', { faultChecks: faultChecks(true) })]), { now: NOW, refreshSeconds: 5 });
    expect(quiet).toContain('picture checks: 2 checks · 0 frames withheld · 0 events suppressed');
    expect(quiet).not.toContain('camera fault');
  });
});
