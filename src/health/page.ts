import { basename } from 'node:path';
import type { AgentSnapshot, CameraSnapshot, RecentEvent } from './agent-snapshot.js';

/**
 * The operator page: one self-contained HTML document (inline CSS, no scripts, no
 * external assets, so it works on an air-gapped line and under a strict CSP) that
 * reloads itself. Pure: the same snapshot and clock give the same page.
 */

export const RECENT_EVENTS_SHOWN = 20;

export interface PageOptions {
  now: number;
  refreshSeconds: number;
}

/** The URL path the health server serves an event snapshot under, or null for none. */
export function snapshotLink(event: Pick<RecentEvent, 'camera' | 'snapshot'>): string | null {
  if (!event.snapshot) return null;
  return `/snapshots/${encodeURIComponent(event.camera)}/${encodeURIComponent(basename(event.snapshot))}`;
}

export function renderOperatorPage(snapshot: AgentSnapshot, options: PageOptions): string {
  const title = snapshot.deviceId ? `linewatch · ${snapshot.deviceId}` : 'linewatch';
  const streaming = snapshot.cameras.filter((camera) => camera.state === 'streaming').length;
  const events = snapshot.recentEvents.slice(0, RECENT_EVENTS_SHOWN);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="${options.refreshSeconds}">
<title>${escape(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<header>
<h1>${escape(title)}</h1>
<p>version ${escape(snapshot.version)} · up ${formatDuration(options.now - Date.parse(snapshot.startedAt))} · ${streaming}/${snapshot.cameras.length} cameras streaming ·
MQTT <span class="${snapshot.mqtt.connected ? 'ok' : 'bad'}">${snapshot.mqtt.connected ? 'connected' : 'disconnected'}</span>${
    snapshot.mqtt.broker ? ` to ${escape(snapshot.mqtt.broker)}` : ''
  } · outbox ${snapshot.mqtt.outboxSize}${snapshot.mqtt.dropped ? ` · <span class="bad">${snapshot.mqtt.dropped} event(s) dropped</span>` : ''}${
    snapshot.mqtt.durable === false
      ? ` · <span class="bad">events in memory only: ${escape(snapshot.mqtt.notDurableReason ?? 'data folder not writable')}</span>`
      : ''
  }</p>${failedComponents(snapshot)}
<p class="links"><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a> · refreshes every ${options.refreshSeconds} s</p>
</header>
<h2>Cameras</h2>
${snapshot.cameras.length === 0 ? '<p>No cameras configured.</p>' : cameraTable(snapshot.cameras, options.now)}
<h2>Recent events</h2>
${events.length === 0 ? '<p>No events yet.</p>' : eventTable(events)}
</body>
</html>
`;
}

function failedComponents(snapshot: AgentSnapshot): string {
  const failed = (snapshot.components ?? []).filter((component) => component.state === 'failed');
  if (failed.length === 0) return '';
  return `\n<p class="bad">${failed.map((component) => `${escape(component.name)} failed: ${escape(component.error ?? 'unknown error')}`).join('<br>')}</p>`;
}

function cameraTable(cameras: CameraSnapshot[], now: number): string {
  const rows = cameras.map((camera) => {
    const lastFrame = camera.lastFrameAt ? `${formatDuration(now - Date.parse(camera.lastFrameAt))} ago` : 'never';
    return `<tr>
<td>${escape(camera.name)}</td>
<td><span class="state ${stateClass(camera.state)}">${escape(camera.state)}</span>${
      camera.reason ? `<div class="reason">${escape(camera.reason)}</div>` : ''
    }${
      camera.scoring?.failing ? `<div class="reason bad">frames fail scoring: ${escape(camera.scoring.lastError ?? '')}</div>` : ''
    }<div class="reason">since ${escape(camera.since)}</div></td>
<td class="num">${camera.fps.toFixed(1)}</td>
<td>${scoreBar(camera.lastScore, camera.threshold)}</td>
<td class="num">${camera.framesIn}</td>
<td class="num">${camera.framesDropped}</td>
<td class="num">${camera.restarts}</td>
<td>${lastFrame}</td>
</tr>`;
  });
  return `<table>
<thead><tr><th>camera</th><th>state</th><th>fps</th><th>last score / threshold</th><th>frames</th><th>dropped</th><th>restarts</th><th>last frame</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}

/**
 * The score as a bar on a scale of 1.5x the threshold, with the threshold marked,
 * so "how close to an alarm" reads at a glance.
 */
function scoreBar(score: number | null, threshold: number | null): string {
  if (score === null) return '<span class="muted">no score yet</span>';
  const text = `${formatScore(score)}${threshold === null ? '' : ` / ${formatScore(threshold)}`}`;
  if (threshold === null || !(threshold > 0)) return text;
  const scale = threshold * 1.5;
  const fill = Math.max(0, Math.min(100, (score / scale) * 100));
  const mark = (threshold / scale) * 100;
  const over = score >= threshold;
  return `<div class="bar" title="${escape(text)}"><div class="fill ${over ? 'over' : ''}" style="width:${fill.toFixed(1)}%"></div><div class="mark" style="left:${mark.toFixed(1)}%"></div></div><div class="reason">${escape(text)}</div>`;
}

function eventTable(events: RecentEvent[]): string {
  const rows = events.map((event) => {
    const link = snapshotLink(event);
    return `<tr>
<td>${escape(event.at)}</td>
<td>${escape(event.camera)}</td>
<td><span class="type-${escape(event.type)}">${escape(event.type)}</span></td>
<td class="num">${formatScore(event.score)}</td>
<td class="num">${formatScore(event.peakScore)}</td>
<td class="num">${formatScore(event.threshold)}</td>
<td>${link ? `<a href="${escape(link)}">snapshot</a>` : '<span class="muted">none</span>'}</td>
</tr>`;
  });
  return `<table>
<thead><tr><th>at</th><th>camera</th><th>type</th><th>score</th><th>peak</th><th>threshold</th><th>snapshot</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table>`;
}

function stateClass(state: string): string {
  return state === 'streaming' ? 'ok' : state === 'reconnecting' ? 'warn' : 'bad';
}

function formatScore(score: number): string {
  return Number.isFinite(score) ? score.toPrecision(4) : String(score);
}

function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  const hours = Math.floor(seconds / 3600);
  return hours < 48 ? `${hours} h ${Math.floor((seconds % 3600) / 60)} min` : `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

const HTML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

/** Camera names, reasons and broker URLs come from config and ffmpeg: never trust them as HTML. */
export function escape(text: string): string {
  return text.replace(/[&<>"']/g, (char) => HTML_ESCAPES[char]!);
}

const STYLE = `
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d232a;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
header p{margin:.2rem 0}.links a{color:#2a5db0}
table{border-collapse:collapse;background:#fff;width:100%;max-width:1100px}
th,td{border-bottom:1px solid #e2e5e9;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600}.ok{color:#1b7f3b}.warn{color:#a86400}.bad{color:#b3261e}
.reason,.muted{color:#68707a;font-size:12px}
.bar{position:relative;width:180px;height:10px;background:#e2e5e9;border-radius:3px;overflow:hidden}
.fill{height:100%;background:#3d8b5a}.fill.over{background:#c9372c}
.mark{position:absolute;top:0;width:2px;height:100%;background:#1d232a}
.type-start{color:#b3261e;font-weight:600}.type-end{color:#1b7f3b}
`;
