import { createHash } from 'node:crypto';
import { basename } from 'node:path';
import type { AgentSnapshot, CameraSnapshot, RecentEvent } from './agent-snapshot.js';
import { PAGE_SCRIPT } from './page-script.js';

/**
 * The operator page: one self-contained HTML document (inline CSS and one inline
 * script, no external assets, so it works on an air-gapped line and under a strict
 * CSP). The server-rendered HTML carries the essentials on its own (camera states,
 * scores against thresholds, recent events with snapshot links) and reloads itself
 * when scripts are off; the script (page-script.ts) adds the live parts from /api.
 * Pure: the same snapshot and clock give the same page.
 */

export const RECENT_EVENTS_SHOWN = 20;

export interface PageOptions {
  now: number;
  refreshSeconds: number;
  /**
   * What the script may expect of /api: `none` (no API: it only refreshes this page's
   * figures), `open`, or `token` (every /api call needs the bearer token, so the page
   * asks for it once). Default `none`.
   */
  api?: 'none' | 'open' | 'token';
}

/**
 * The page's Content-Security-Policy. The script is allowed by its hash, not by
 * 'unsafe-inline', so text that slipped through escaping still could not run.
 * blob: images are the frames the script fetched with the Authorization header
 * (an <img> cannot send one); inline styles are the bars' widths and the chart's
 * labels. Nothing else, and nothing from another origin.
 */
export const PAGE_CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  `script-src 'sha256-${createHash('sha256').update(PAGE_SCRIPT).digest('base64')}'`,
  "style-src 'unsafe-inline'",
  "img-src 'self' blob:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

/** The URL path the health server serves an event snapshot under, or null for none. */
export function snapshotLink(event: Pick<RecentEvent, 'camera' | 'snapshot'>): string | null {
  if (!event.snapshot) return null;
  return `/snapshots/${encodeURIComponent(event.camera)}/${encodeURIComponent(basename(event.snapshot))}`;
}

export function renderOperatorPage(snapshot: AgentSnapshot, options: PageOptions): string {
  const title = snapshot.deviceId ? `linewatch · ${snapshot.deviceId}` : 'linewatch';
  const events = snapshot.recentEvents.slice(0, RECENT_EVENTS_SHOWN);
  // Without scripts the page reloads itself; with them it must not (an open event would close), it refreshes its parts instead.
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="${options.refreshSeconds}"><style>.live{aspect-ratio:auto;min-height:2.5rem}</style></noscript>
<title>${escape(title)}</title>
<style>${STYLE}</style>
</head>
<body data-api="${options.api ?? 'none'}" data-refresh="${options.refreshSeconds}">
<header>
<h1>${escape(title)}</h1>
${summary(snapshot, options)}
<p class="links"><a href="/metrics">metrics</a> · <a href="/healthz">healthz</a>${
    options.api && options.api !== 'none' ? ' · <a href="/api/openapi.json">API</a>' : ''
  } · <span id="refresh-note">refreshes every ${options.refreshSeconds} s</span><span id="token-note" hidden> · <button type="button" id="forget-token" class="linkish">forget token</button></span></p>
</header>
<form id="auth" class="auth" hidden>
<label for="auth-token">API token</label>
<p id="auth-message" class="reason"></p>
<input id="auth-token" type="password" autocomplete="current-password" required>
<button type="submit">use token</button>
</form>
<h2>Cameras</h2>
${snapshot.cameras.length === 0 ? '<p>No cameras configured.</p>' : `<div class="cards">\n${snapshot.cameras.map((camera) => cameraCard(camera, events, options.now)).join('\n')}\n</div>`}
<h2>Recent events</h2>
<div data-live="events">
${events.length === 0 ? '<p>No events yet.</p>' : eventTable(events)}
</div>
<dialog id="event-dialog" aria-labelledby="event-title">
<div class="dialog-head"><h3 id="event-title">event</h3><button type="button" class="close" aria-label="close">×</button></div>
<div class="dialog-body">
<div class="event-picture"><img id="event-image" alt="the event's peak frame with its box"></div>
<div class="chart" id="event-chart"></div>
<dl id="event-facts" class="facts"></dl>
<p class="actions"><button type="button" id="mark-normal">mark as normal</button></p>
<output id="event-reply" class="reply"></output>
</div>
</dialog>
<script>${PAGE_SCRIPT}</script>
</body>
</html>
`;
}

function summary(snapshot: AgentSnapshot, options: PageOptions): string {
  const streaming = snapshot.cameras.filter((camera) => camera.state === 'streaming').length;
  const faulty = snapshot.cameras.filter((camera) => (camera.faults ?? []).length > 0).length;
  return `<div data-live="summary"><p>version ${escape(snapshot.version)} · up ${formatDuration(options.now - Date.parse(snapshot.startedAt))} · ${streaming}/${snapshot.cameras.length} cameras streaming${
    faulty ? ` · <span class="bad">${faulty} camera${faulty === 1 ? '' : 's'} with a fault</span>` : ''
  } ·
MQTT <span class="${snapshot.mqtt.connected ? 'ok' : 'bad'}">${snapshot.mqtt.connected ? 'connected' : 'disconnected'}</span>${
    snapshot.mqtt.broker ? ` to ${escape(snapshot.mqtt.broker)}` : ''
  } · outbox ${snapshot.mqtt.outboxSize}${snapshot.mqtt.dropped ? ` · <span class="bad">${snapshot.mqtt.dropped} event(s) dropped</span>` : ''}${
    snapshot.mqtt.durable === false
      ? ` · <span class="bad">events in memory only: ${escape(snapshot.mqtt.notDurableReason ?? 'data folder not writable')}</span>`
      : ''
  }</p>${failedComponents(snapshot)}</div>`;
}

function failedComponents(snapshot: AgentSnapshot): string {
  const failed = (snapshot.components ?? []).filter((component) => component.state === 'failed');
  if (failed.length === 0) return '';
  return `\n<p class="bad">${failed.map((component) => `${escape(component.name)} failed: ${escape(component.error ?? 'unknown error')}`).join('<br>')}</p>`;
}

/**
 * One camera: the live view, chart and actions are empty shells the script fills
 * (an <img> without the token cannot load /api images); the state and figures are
 * rendered here, marked data-live so that the script swaps in fresh ones.
 */
function cameraCard(camera: CameraSnapshot, events: RecentEvent[], now: number): string {
  const name = escape(camera.name);
  const lastFrame = camera.lastFrameAt ? `${formatDuration(now - Date.parse(camera.lastFrameAt))} ago` : 'never';
  const own = latestPerEvent(events.filter((event) => event.camera === camera.name)).slice(0, 6);
  return `<article class="card" data-camera="${name}">
<div class="card-head"><h3>${name}</h3><span data-live="state:${name}"><span class="state ${stateClass(camera.state)}">${escape(camera.state)}</span>${
    (camera.faults ?? []).length ? ' <span class="state bad">· camera fault</span>' : ''
  }</span></div>
<div class="live"><img class="live-image" alt="live view of ${name}"><span class="live-note">live view needs JavaScript and the API</span></div>
<div class="tools" hidden><button type="button" class="heatmap-toggle" aria-pressed="false">heat map</button><span class="live-age muted"></span></div>
<div class="chart" hidden></div>
<div data-live="stats:${name}">
${camera.reason ? `<div class="reason">${escape(camera.reason)}</div>` : ''}${
    camera.scoring?.failing ? `<div class="reason bad">frames fail scoring: ${escape(camera.scoring.lastError ?? '')}</div>` : ''
  }${faultLines(camera, now)}${scoreBar(camera.lastScore, camera.threshold)}
<dl class="figures"><div><dt>fps</dt><dd>${camera.fps.toFixed(1)}</dd></div><div><dt>frames</dt><dd>${camera.framesIn}</dd></div><div><dt>dropped</dt><dd>${camera.framesDropped}</dd></div><div><dt>restarts</dt><dd>${camera.restarts}</dd></div><div><dt>last frame</dt><dd>${lastFrame}</dd></div><div><dt>since</dt><dd>${escape(camera.since)}</dd></div></dl>${pictureChecks(camera)}
</div>
<div class="thumbs" data-live="thumbs:${name}">${
    own.length === 0
      ? '<p class="muted">No recent events.</p>'
      : own
          .map((event) => {
            const link = snapshotLink(event);
            const text = `${escape(event.at)} · peak ${formatScore(event.peakScore)}`;
            return link
              ? `<a class="thumb-link" data-event-id="${escape(event.id)}" href="${escape(link)}">${text}</a>`
              : `<span class="thumb-link" data-event-id="${escape(event.id)}">${text}</span>`;
          })
          .join('\n')
  }</div>
<div class="capture" hidden><label>frames <input type="number" class="capture-count" min="1" max="100" value="10"></label><button type="button" class="capture-button">capture normal frames</button><output class="reply capture-reply"></output></div>
</article>`;
}

/**
 * One line per camera fault that holds (the sensor-fault guard): what is wrong, since
 * when, and the signal against its limit, e.g. "camera fault: covered since 14:02:11 UTC
 * (3 min 2 s) — flatShare 1.00, expected ≤ 0.75". The time is UTC, as the page renders
 * the same for every viewer (the script shows it in the browser's time); the full ISO time is its title.
 */
function faultLines(camera: CameraSnapshot, now: number): string {
  return (camera.faults ?? [])
    .map((fault) => {
      const expected = expectedText(fault.expected ?? {});
      return `<div class="fault" data-fault="${escape(String(fault.kind))}"><span class="fault-badge">camera fault: ${escape(String(fault.kind))}</span> since <time data-clock datetime="${escape(String(fault.since))}" title="${escape(String(fault.since))}">${escape(clockTime(String(fault.since)))}</time> (${formatDuration(now - Date.parse(fault.since))}) — ${escape(String(fault.signal))} ${escape(formatSignal(fault.value))}${expected ? `, expected ${escape(expected)}` : ''}</div>`;
    })
    .join('');
}

/**
 * The guard's own figures: frames it kept from the anomaly debouncer and anomaly events
 * that would have started on them while a fault held; the rules in force as the title.
 */
function pictureChecks(camera: CameraSnapshot): string {
  const checks = camera.faultChecks;
  if (!checks) return '';
  if (!checks.enabled) return '\n<div class="reason checks">picture checks: fault checks off</div>';
  const rules = checks.rules.map((rule) => `${rule.kind} ${rule.signal} ${expectedText(rule)} (${rule.source})`).join('; ');
  const { frames, events } = checks.suppressed;
  const parts = [
    checks.rules.length === 0 ? 'no check can run' : `${checks.rules.length} check${checks.rules.length === 1 ? '' : 's'}`,
    `${frames} frame${frames === 1 ? '' : 's'} withheld`,
    `${events} event${events === 1 ? '' : 's'} suppressed`,
  ];
  return `\n<div class="reason checks"${rules ? ` title="${escape(rules)}"` : ''}>picture checks: ${escape(parts.join(' · '))}</div>`;
}

function expectedText(limit: { min?: number | undefined; max?: number | undefined }): string {
  const { min, max } = limit;
  if (min !== undefined && max !== undefined) return `${formatSignal(min)}–${formatSignal(max)}`;
  if (min !== undefined) return `≥ ${formatSignal(min)}`;
  if (max !== undefined) return `≤ ${formatSignal(max)}`;
  return '';
}

/** A quality signal or limit: brightness in grey levels, shares and sharpness in their own small units. */
function formatSignal(value: number): string {
  if (typeof value !== 'number' || !Number.isFinite(value)) return String(value);
  const size = Math.abs(value);
  if (size >= 100) return value.toFixed(0);
  if (size >= 10) return value.toFixed(1);
  if (size >= 0.1 || size === 0) return value.toFixed(2);
  return value.toPrecision(2);
}

/** HH:MM:SS UTC of an ISO time (the text as given when it is not one). */
function clockTime(iso: string): string {
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? `${new Date(ms).toISOString().slice(11, 19)} UTC` : iso;
}

/** An event sends start, updates and end under one id: the newest message of each stands for it. */
function latestPerEvent(events: RecentEvent[]): RecentEvent[] {
  const seen = new Set<string>();
  return events.filter((event) => !seen.has(event.id) && seen.add(event.id));
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
  return `<div class="bar" title="${escape(text)}"><div class="fill ${over ? 'over' : ''}" style="width:${fill.toFixed(1)}%"></div><div class="mark" style="left:${mark.toFixed(1)}%"></div></div><div class="reason">score ${escape(text)}</div>`;
}

function eventTable(events: RecentEvent[]): string {
  const rows = events.map((event) => {
    const link = snapshotLink(event);
    return `<tr data-event-id="${escape(event.id)}">
<td>${escape(event.at)}</td>
<td>${escape(event.camera)}</td>
<td><span class="type-${escape(event.type)}">${escape(event.type)}</span></td>
<td class="num">${formatScore(event.score)}</td>
<td class="num">${formatScore(event.peakScore)}</td>
<td class="num">${formatScore(event.threshold)}</td>
<td>${link ? `<a href="${escape(link)}">snapshot</a>` : '<span class="muted">none</span>'}</td>
</tr>`;
  });
  return `<div class="scroll"><table>
<thead><tr><th>at</th><th>camera</th><th>type</th><th>score</th><th>peak</th><th>threshold</th><th>snapshot</th></tr></thead>
<tbody>
${rows.join('\n')}
</tbody>
</table></div>`;
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
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,sans-serif;margin:0;padding:1rem 1.5rem 2rem;color:#1d232a;background:#f7f8fa}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}h3{font-size:1rem;margin:0}
header p{margin:.2rem 0}.links a{color:#2a5db0}
button{font:inherit;padding:.3rem .7rem;border:1px solid #aab2bd;border-radius:4px;background:#fff;color:#1d232a;cursor:pointer}
button:hover{background:#eef0f3}button:disabled{opacity:.6;cursor:progress}
button[aria-pressed=true]{background:#1d232a;color:#fff;border-color:#1d232a}
.linkish{border:0;padding:0;background:none;color:#2a5db0;text-decoration:underline}
.auth{background:#fff8e1;border:1px solid #e0c36a;border-radius:6px;padding:.8rem;margin:1rem 0;max-width:30rem}
.auth[hidden]{display:none}.auth input{width:100%;margin:.3rem 0;padding:.35rem;font:inherit}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,360px),1fr));gap:1rem;max-width:1600px}
.cards>.card:only-child{max-width:760px}
.card{background:#fff;border:1px solid #e2e5e9;border-radius:6px;padding:.8rem;display:flex;flex-direction:column;gap:.5rem;min-width:0}
.card-head{display:flex;justify-content:space-between;align-items:baseline;gap:.5rem}
.live{position:relative;background:#1d232a;border-radius:4px;aspect-ratio:16/9;overflow:hidden;display:flex;align-items:center;justify-content:center}
.live img{width:100%;height:100%;object-fit:contain;display:block}.live img:not([src]){display:none}
.live-note{color:#c8cdd3;font-size:12px;padding:.5rem;text-align:center}
.tools{display:flex;gap:.6rem;align-items:center;flex-wrap:wrap}.tools[hidden],.capture[hidden],.chart[hidden]{display:none}
.chart{position:relative;height:120px;background:#fbfcfd;border:1px solid #e2e5e9;border-radius:4px;margin-top:.2rem}
.chart svg{position:absolute;left:0;right:0;top:16px;bottom:16px;width:100%;height:calc(100% - 32px)}
.chart .line{fill:none;stroke-width:1.5;vector-effect:non-scaling-stroke}.chart .below{stroke:#3d8b5a}.chart .above{stroke:#c9372c}
.chart .threshold{stroke:#1d232a;stroke-dasharray:4 3;stroke-width:1;vector-effect:non-scaling-stroke}
.chart .now{stroke:#68707a;stroke-width:1;vector-effect:non-scaling-stroke}
.chart .label{position:absolute;font-size:11px;color:#68707a;background:rgba(251,252,253,.8);padding:0 2px;line-height:1.2;white-space:nowrap}
.chart .empty{position:absolute;inset:0;display:flex;align-items:center;justify-content:center;color:#68707a;font-size:12px}
.figures{display:flex;flex-wrap:wrap;gap:.2rem 1rem;margin:.3rem 0 0}.figures div{display:flex;gap:.3rem}
.figures dt{color:#68707a}.figures dd{margin:0;font-variant-numeric:tabular-nums}
.thumbs{display:grid;grid-template-columns:repeat(auto-fill,minmax(100px,1fr));gap:.4rem}
.thumb-link{display:block;font-size:12px;color:#2a5db0;grid-column:1/-1}
.thumb{display:flex;flex-direction:column;gap:2px;padding:0;border:1px solid #e2e5e9;background:#fff;text-align:left;font-size:11px;overflow:hidden}
.thumb img{width:100%;aspect-ratio:16/9;object-fit:cover;background:#1d232a;display:block}
.thumb span{padding:0 .3rem .2rem}.thumb.open{border-color:#c9372c}
.capture{display:flex;flex-wrap:wrap;gap:.4rem;align-items:center}.capture input{width:4.5rem;font:inherit;padding:.25rem}
.reply{display:block;white-space:pre-wrap;word-break:break-word;font:12px/1.3 ui-monospace,monospace;color:#1d232a;max-height:10rem;overflow:auto;width:100%}
.reply.bad{color:#b3261e}.reply:empty{display:none}
.scroll{overflow-x:auto;max-width:1100px}
table{border-collapse:collapse;background:#fff;width:100%}
tr[data-event-id].clickable{cursor:pointer}tr[data-event-id].clickable:hover{background:#f2f5fa}
th,td{border-bottom:1px solid #e2e5e9;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.state{font-weight:600}.ok{color:#1b7f3b}.warn{color:#a86400}.bad{color:#b3261e}
.reason,.muted{color:#68707a;font-size:12px}
.fault{background:#fdecea;border-left:3px solid #b3261e;border-radius:3px;padding:.25rem .5rem;margin:0 0 .3rem;font-size:12px;color:#1d232a}
.fault-badge{font-weight:600;color:#b3261e}
.bar{position:relative;width:100%;max-width:260px;height:10px;background:#e2e5e9;border-radius:3px;overflow:hidden}
.fill{height:100%;background:#3d8b5a}.fill.over{background:#c9372c}
.mark{position:absolute;top:0;width:2px;height:100%;background:#1d232a}
.type-start{color:#b3261e;font-weight:600}.type-end{color:#1b7f3b}
dialog{width:min(900px,96vw);max-height:94vh;border:1px solid #aab2bd;border-radius:8px;padding:0}
dialog::backdrop{background:rgba(20,24,28,.55)}
.dialog-head{display:flex;justify-content:space-between;align-items:center;padding:.6rem .8rem;border-bottom:1px solid #e2e5e9;position:sticky;top:0;background:#fff}
.dialog-body{padding:.8rem;display:flex;flex-direction:column;gap:.6rem}
.event-picture{background:#1d232a;border-radius:4px;min-height:3rem}.event-picture img{width:100%;display:block}.event-picture img:not([src]){display:none}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15rem .8rem;margin:0}.facts dt{color:#68707a}.facts dd{margin:0}
@media (max-width:600px){body{padding:.6rem .6rem 1.5rem}h1{font-size:1.2rem}th,td{padding:.3rem .4rem}}
`;
