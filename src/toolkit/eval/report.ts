import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import sharp, { type OverlayOptions } from 'sharp';
import { rocCurve, quantile, type RocPoint } from '../../scoring/metrics.js';
import type { EvalResult, ImageResult } from './eval.js';

/**
 * `linewatch eval --report`: pictures a person reads faster than numbers.
 * roc.png (the ROC curve with the calibrated operating point), heatmaps.png (a spread
 * of normal and anomalous images, lowest to highest score, with their anomaly maps
 * overlaid) and index.html showing both with the headline figures.
 */

export interface ReportOptions {
  /** Examples per class in heatmaps.png (default 8): a spread from highest to lowest score. */
  examplesPerClass?: number;
  /** Side of each heatmap tile in pixels (default 144). */
  tileSize?: number;
}

export interface ReportFiles {
  roc: string;
  heatmaps: string;
  index: string;
}

export const ROC_SIZE = { width: 720, height: 600 } as const;

const FONT = 'DejaVu Sans, Liberation Sans, Arial, sans-serif';
const COLOURS = { score: '#1f5fbf', recon: '#e07b00', latent: '#2a9d4b', hybrid: '#8e44ad', ok: '#2a9d4b', wrong: '#d62728', grid: '#e3e3e3' };

export async function writeReport(dir: string, result: EvalResult, options: ReportOptions = {}): Promise<ReportFiles> {
  await mkdir(dir, { recursive: true });
  const files: ReportFiles = { roc: path.join(dir, 'roc.png'), heatmaps: path.join(dir, 'heatmaps.png'), index: path.join(dir, 'index.html') };
  await writeFile(files.roc, await renderRocPng(result));
  await writeFile(files.heatmaps, await renderHeatmapsPng(result, options));
  await writeFile(files.index, renderIndexHtml(result));
  return files;
}

// ---------------------------------------------------------------- ROC

interface Curve {
  name: string;
  colour: string;
  points: RocPoint[];
  auroc: number;
  width: number;
}

function curvesOf(result: EvalResult): Curve[] {
  const normal = result.images.filter((r) => r.label === 'normal');
  const anomalous = result.images.filter((r) => r.label === 'anomalous');
  const curve = (name: string, colour: string, auroc: number | null, pick: (r: ImageResult) => number, width = 1.5): Curve[] =>
    auroc === null ? [] : [{ name, colour, auroc, width, points: rocCurve(normal.map(pick), anomalous.map(pick)) }];
  const { components, scorer } = result;
  return [
    ...curve(`frame score (${scorer})`, COLOURS.score, result.imageAuroc, (r) => r.score, 3),
    ...(scorer === 'recon' ? [] : curve('reconstruction alone', COLOURS.recon, components.recon.imageAuroc, (r) => r.recon)),
    ...(scorer === 'latent' ? [] : curve('latent novelty alone', COLOURS.latent, components.latent.imageAuroc, (r) => r.latent)),
  ];
}

/** The ROC curve as an SVG document (rendered to PNG by `renderRocPng`). */
export function rocSvg(result: EvalResult): string {
  const { width, height } = ROC_SIZE;
  const plot = { left: 70, top: 56, size: 470 };
  const x = (fpr: number) => plot.left + fpr * plot.size;
  const y = (tpr: number) => plot.top + (1 - tpr) * plot.size;
  const parts: string[] = [];
  parts.push(`<rect width="${width}" height="${height}" fill="white"/>`);
  parts.push(
    text(plot.left, 30, `ROC, image level: ${result.counts.normal} normal, ${result.counts.anomalous} anomalous (${result.variant})`, { size: 17, weight: 'bold' }),
  );
  for (let tick = 0; tick <= 1.0001; tick += 0.2) {
    const label = tick.toFixed(1);
    parts.push(line(x(tick), y(0), x(tick), y(1), COLOURS.grid), line(x(0), y(tick), x(1), y(tick), COLOURS.grid));
    parts.push(text(x(tick), y(0) + 20, label, { anchor: 'middle', size: 12 }), text(x(0) - 8, y(tick) + 4, label, { anchor: 'end', size: 12 }));
  }
  parts.push(`<rect x="${plot.left}" y="${plot.top}" width="${plot.size}" height="${plot.size}" fill="none" stroke="#444" stroke-width="1"/>`);
  parts.push(line(x(0), y(0), x(1), y(1), '#999', 1.2, '6 5'));
  parts.push(text(x(0.5), y(0) + 44, 'false-positive rate (normal images flagged)', { anchor: 'middle', size: 14 }));
  parts.push(
    `<text transform="translate(${plot.left - 46} ${y(0.5)}) rotate(-90)" text-anchor="middle" font-family="${FONT}" font-size="14" fill="#222">true-positive rate (anomalies caught)</text>`,
  );
  const curves = curvesOf(result);
  // Thin component curves first, so the frame score is drawn on top.
  for (const curve of [...curves].reverse()) {
    const path = curve.points.map((p) => `${x(p.fpr).toFixed(1)},${y(p.tpr).toFixed(1)}`).join(' ');
    parts.push(`<polyline points="${path}" fill="none" stroke="${curve.colour}" stroke-width="${curve.width}" stroke-linejoin="round"/>`);
  }
  const legend = { left: plot.left + plot.size - 250, top: y(0) - 24 - 22 * (curves.length + (result.threshold === null ? 0 : 1)) };
  parts.push(
    `<rect x="${legend.left - 10}" y="${legend.top - 18}" width="258" height="${22 * (curves.length + (result.threshold === null ? 0 : 1)) + 14}" fill="white" fill-opacity="0.9" stroke="#bbb"/>`,
  );
  curves.forEach((curve, i) => {
    const top = legend.top + 22 * i;
    parts.push(line(legend.left, top - 4, legend.left + 24, top - 4, curve.colour, curve.width));
    parts.push(text(legend.left + 32, top, `${curve.name}: AUROC ${curve.auroc.toFixed(3)}`, { size: 12.5 }));
  });
  if (result.threshold !== null && result.fpr !== null && result.tpr !== null) {
    const top = legend.top + 22 * curves.length;
    parts.push(`<circle cx="${legend.left + 12}" cy="${top - 4}" r="5.5" fill="${COLOURS.wrong}" stroke="white" stroke-width="1.5"/>`);
    parts.push(text(legend.left + 32, top, `threshold ${formatNumber(result.threshold)} (calibrated)`, { size: 12.5 }));
    parts.push(`<circle cx="${x(result.fpr)}" cy="${y(result.tpr)}" r="7" fill="${COLOURS.wrong}" stroke="white" stroke-width="2"/>`);
    const labelLeft = Math.min(x(result.fpr) + 12, plot.left + plot.size - 190);
    // Above the point, unless that would leave the plot at the top.
    const labelTop = result.tpr > 0.92 ? y(result.tpr) + 24 : y(result.tpr) - 12;
    parts.push(
      text(labelLeft, labelTop, `TPR ${percent(result.tpr)} at FPR ${percent(result.fpr)}`, {
        size: 13,
        weight: 'bold',
        fill: COLOURS.wrong,
      }),
    );
  }
  const side = plot.left + plot.size + 24;
  const facts = [
    `model: ${path.basename(result.model)}`,
    `variant: ${result.variant}`,
    `scorer: ${result.scorer}`,
    `input: ${result.input.width}x${result.input.height}x${result.input.channels}`,
    `pixel AUROC: ${result.pixelAuroc === null ? '-' : result.pixelAuroc.toFixed(3)}`,
    `F1 at threshold: ${result.f1 === null ? '-' : result.f1.toFixed(3)}`,
    `${result.msPerFrame.toFixed(2)} ms per frame`,
  ];
  facts.forEach((fact, i) => parts.push(text(side, plot.top + 14 + 22 * i, fact, { size: 12.5, fill: '#333' })));
  return svg(width, height, parts);
}

export async function renderRocPng(result: EvalResult): Promise<Buffer> {
  return sharp(Buffer.from(rocSvg(result))).flatten({ background: '#ffffff' }).png().toBuffer();
}

// ---------------------------------------------------------------- heatmaps

/** `count` items spread over `items` from first to last (all of them when there are fewer). */
export function spread<T>(items: readonly T[], count: number): T[] {
  if (items.length <= count) return [...items];
  if (count === 1) return [items[0]!];
  return Array.from({ length: count }, (_, i) => items[Math.round((i * (items.length - 1)) / (count - 1))]!);
}

const GRID = { gap: 10, caption: 36, header: 44, sectionLabel: 26, colourBar: 56 };

/** Pixel size of heatmaps.png for the given layout. */
export function heatmapGridSize(columns: number, tile: number, sections = 2): { width: number; height: number } {
  return {
    width: columns * tile + (columns + 1) * GRID.gap,
    height: GRID.header + sections * (GRID.sectionLabel + tile + GRID.caption + GRID.gap) + GRID.colourBar,
  };
}

/** matplotlib's inferno at 11 even steps: dark (low error) to bright yellow (high). */
const INFERNO = ['#000004', '#160b39', '#420a68', '#6a176e', '#932667', '#bc3754', '#dd513a', '#f37819', '#fca50a', '#f6d746', '#fcffa4'].map((hex) => [
  parseInt(hex.slice(1, 3), 16),
  parseInt(hex.slice(3, 5), 16),
  parseInt(hex.slice(5, 7), 16),
]);

export function inferno(t: number): [number, number, number] {
  const v = Math.min(1, Math.max(0, t)) * (INFERNO.length - 1);
  const i = Math.min(INFERNO.length - 2, Math.floor(v));
  const f = v - i;
  const [a, b] = [INFERNO[i]!, INFERNO[i + 1]!];
  return [a[0]! + f * (b[0]! - a[0]!), a[1]! + f * (b[1]! - a[1]!), a[2]! + f * (b[2]! - a[2]!)];
}

/** Bilinear resize of a one-channel float map (pixel centres aligned). */
export function resizeMap(map: Float32Array, width: number, height: number, toWidth: number, toHeight: number): Float32Array {
  const out = new Float32Array(toWidth * toHeight);
  for (let y = 0; y < toHeight; y++) {
    const sy = Math.min(height - 1, Math.max(0, ((y + 0.5) * height) / toHeight - 0.5));
    const y0 = Math.floor(sy);
    const y1 = Math.min(height - 1, y0 + 1);
    const fy = sy - y0;
    for (let x = 0; x < toWidth; x++) {
      const sx = Math.min(width - 1, Math.max(0, ((x + 0.5) * width) / toWidth - 0.5));
      const x0 = Math.floor(sx);
      const x1 = Math.min(width - 1, x0 + 1);
      const fx = sx - x0;
      const top = map[y0 * width + x0]! * (1 - fx) + map[y0 * width + x1]! * fx;
      const bottom = map[y1 * width + x0]! * (1 - fx) + map[y1 * width + x1]! * fx;
      out[y * toWidth + x] = top * (1 - fy) + bottom * fy;
    }
  }
  return out;
}

/** The image as the model saw it (grey models: Rec. 601 grey, as `loadImage`), `tile` pixels square, RGB bytes. */
async function baseTile(file: string, tile: number, grey: boolean): Promise<Buffer> {
  let rgb: Buffer;
  try {
    rgb = await sharp(file).rotate().removeAlpha().toColourspace('srgb').resize(tile, tile, { fit: 'fill' }).raw().toBuffer();
  } catch {
    // The file vanished or broke since it was scored: a plain grey tile still shows its map.
    return Buffer.alloc(tile * tile * 3, 96);
  }
  if (grey) {
    for (let i = 0; i < rgb.length; i += 3) {
      const y = Math.round(0.299 * rgb[i]! + 0.587 * rgb[i + 1]! + 0.114 * rgb[i + 2]!);
      rgb[i] = rgb[i + 1] = rgb[i + 2] = y;
    }
  }
  return rgb;
}

/**
 * Overlay the anomaly map on one shared scale from `low` (transparent: what normal
 * images typically show) to `high`: the higher the value, the more opaque and brighter.
 */
function overlay(base: Buffer, map: Float32Array, low: number, high: number): Buffer {
  const out = Buffer.alloc(base.length);
  const span = Math.max(high - low, 1e-9);
  for (let i = 0; i < map.length; i++) {
    const t = Math.min(1, Math.max(0, (map[i]! - low) / span));
    const alpha = 0.8 * Math.sqrt(t);
    const [r, g, b] = inferno(t);
    out[3 * i] = Math.round(base[3 * i]! * (1 - alpha) + r * alpha);
    out[3 * i + 1] = Math.round(base[3 * i + 1]! * (1 - alpha) + g * alpha);
    out[3 * i + 2] = Math.round(base[3 * i + 2]! * (1 - alpha) + b * alpha);
  }
  return out;
}

/**
 * The colour scale shared by all tiles: from the median map value of the normal images
 * shown (typical, so transparent) to the 90th percentile of the tiles' peaks (so one
 * outlier does not wash out every other tile).
 */
export function colourScale(normalMaps: readonly Float32Array[], allMaps: readonly Float32Array[]): { low: number; high: number } {
  const peaks = allMaps.map((m) => m.reduce((a, b) => (b > a ? b : a), -Infinity));
  const high = peaks.length ? quantile(peaks, 0.9) : 1;
  const typical: number[] = [];
  for (const map of normalMaps) for (let i = 0; i < map.length; i += 7) if (map[i]! > 0) typical.push(map[i]!);
  const low = typical.length ? Math.min(quantile(typical, 0.5), high * 0.9) : 0;
  return { low, high: Math.max(high, low + 1e-6) };
}

/**
 * heatmaps.png: a row of normal and a row of anomalous examples, each a spread from
 * the highest to the lowest score, with the anomaly map overlaid on one shared colour
 * scale so tiles compare. The frame is green where the calibrated threshold gets the
 * image right and red where it does not.
 */
export async function renderHeatmapsPng(result: EvalResult, options: ReportOptions = {}): Promise<Buffer> {
  const perClass = options.examplesPerClass ?? 8;
  const tile = options.tileSize ?? 144;
  const byScore = (label: ImageResult['label']) => result.images.filter((r) => r.label === label).sort((a, b) => b.score - a.score);
  const sections = [
    { title: 'normal images (highest to lowest score)', picks: spread(byScore('normal'), perClass) },
    { title: 'anomalous images (highest to lowest score)', picks: spread(byScore('anomalous'), perClass) },
  ];
  const { width, height } = heatmapGridSize(perClass, tile, sections.length);
  const scale = colourScale(
    sections[0]!.picks.map((r) => r.map),
    sections.flatMap((section) => section.picks.map((r) => r.map)),
  );
  const { width: mapWidth, height: mapHeight, channels } = result.input;
  const layers: OverlayOptions[] = [];
  const marks: string[] = [
    text(GRID.gap, 28, `Anomaly maps: ${path.basename(result.model)} (${result.variant}, scorer ${result.scorer}), image AUROC ${result.imageAuroc.toFixed(3)}`, {
      size: 16,
      weight: 'bold',
    }),
  ];
  let top = GRID.header;
  for (const section of sections) {
    marks.push(text(GRID.gap, top + 18, section.title, { size: 14, weight: 'bold', fill: '#333' }));
    top += GRID.sectionLabel;
    const tiles = await Promise.all(
      section.picks.map(async (r) => overlay(await baseTile(r.path, tile, channels === 1), resizeMap(r.map, mapWidth, mapHeight, tile, tile), scale.low, scale.high)),
    );
    section.picks.forEach((r, i) => {
      const left = GRID.gap + i * (tile + GRID.gap);
      layers.push({ input: tiles[i]!, raw: { width: tile, height: tile, channels: 3 }, left, top });
      const flagged = result.threshold === null ? undefined : r.score > result.threshold;
      const correct = flagged === undefined ? undefined : flagged === (r.label === 'anomalous');
      const frame = correct === undefined ? '#888' : correct ? COLOURS.ok : COLOURS.wrong;
      marks.push(`<rect x="${left - 2}" y="${top - 2}" width="${tile + 4}" height="${tile + 4}" fill="none" stroke="${frame}" stroke-width="3"/>`);
      marks.push(text(left, top + tile + 16, `score ${formatNumber(r.score)}`, { size: 12, fill: '#222' }));
      if (flagged !== undefined) {
        marks.push(text(left + tile, top + tile + 16, flagged ? 'flagged' : r.label === 'anomalous' ? 'missed' : 'passed', { size: 12, anchor: 'end', weight: 'bold', fill: frame }));
      }
      marks.push(text(left, top + tile + 30, ellipsis(path.basename(r.path), Math.floor(tile / 6.6)), { size: 10.5, fill: '#666' }));
    });
    top += tile + GRID.caption + GRID.gap;
  }
  marks.push(...colourBar(GRID.gap, top + 8, Math.min(360, width - 2 * GRID.gap), scale.low, scale.high));
  return sharp({ create: { width, height, channels: 3, background: '#ffffff' } })
    .composite([...layers, { input: Buffer.from(svg(width, height, marks)), left: 0, top: 0 }])
    .png()
    .toBuffer();
}

function colourBar(left: number, top: number, width: number, low: number, high: number): string[] {
  const stops = INFERNO.map((_, i) => {
    const [r, g, b] = inferno(i / (INFERNO.length - 1));
    return `<stop offset="${(i / (INFERNO.length - 1)).toFixed(2)}" stop-color="rgb(${Math.round(r)},${Math.round(g)},${Math.round(b)})"/>`;
  }).join('');
  return [
    `<defs><linearGradient id="inferno">${stops}</linearGradient></defs>`,
    `<rect x="${left}" y="${top}" width="${width}" height="12" fill="url(#inferno)" stroke="#666" stroke-width="0.5"/>`,
    text(left, top + 28, `${formatNumber(low)} and below`, { size: 11 }),
    text(left + width, top + 28, `${formatNumber(high)} and above`, { size: 11, anchor: 'end' }),
    text(left + width + 12, top + 11, 'anomaly-map value (low end: typical of the normal images shown). Frame: green = threshold right, red = wrong', {
      size: 11,
      fill: '#444',
    }),
  ];
}

// ---------------------------------------------------------------- index.html

export function renderIndexHtml(result: EvalResult): string {
  const figure = (value: number | null, digits = 3) => (value === null ? '–' : value.toFixed(digits));
  const rows: Array<[string, string]> = [
    ['model', `${result.model} (${result.variant})`],
    ['images', `${result.counts.normal} normal, ${result.counts.anomalous} anomalous, ${result.counts.skipped} skipped`],
    ['scorer', result.scorer],
    ['image AUROC', figure(result.imageAuroc)],
    ['reconstruction alone', figure(result.components.recon.imageAuroc)],
    ['latent novelty alone', figure(result.components.latent.imageAuroc)],
    ['hybrid (sum of z-scores)', figure(result.components.hybrid.imageAuroc)],
    ['pixel AUROC', figure(result.pixelAuroc)],
    ['threshold', result.threshold === null ? '– (not calibrated)' : `${formatNumber(result.threshold)} (calibrated for ${percent(result.targetFpr)} FPR)`],
    ['at threshold', `TPR ${percent(result.tpr)}, FPR ${percent(result.fpr)}, precision ${percent(result.precision)}, F1 ${figure(result.f1)}`],
    ['ms per frame', `${result.msPerFrame.toFixed(2)} (inference ${result.inferenceMsPerFrame.toFixed(2)}, scoring ${result.scoringMsPerFrame.toFixed(2)})`],
  ];
  const table = rows.map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('\n');
  const warnings = result.warnings.map((w) => `<li>${escapeHtml(w)}</li>`).join('');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>linewatch eval: ${escapeHtml(path.basename(result.model))} (${result.variant})</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1300px; }
table { border-collapse: collapse; margin-bottom: 1.5rem; }
th, td { text-align: left; padding: 0.25rem 1rem 0.25rem 0; border-bottom: 1px solid #eee; }
th { font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; margin-bottom: 1.5rem; }
.warn { color: #a33; }
</style>
</head>
<body>
<h1>linewatch eval</h1>
<table>
${table}
</table>
${warnings ? `<ul class="warn">${warnings}</ul>` : ''}
<h2>ROC curve</h2>
<img src="roc.png" alt="ROC curve: image AUROC ${figure(result.imageAuroc)}" width="${ROC_SIZE.width}">
<h2>Anomaly maps</h2>
<p>A spread of normal and anomalous images from highest to lowest score. The overlay is the anomaly map the score is pooled from;
a green frame means the calibrated threshold classifies the image correctly, red that it does not.</p>
<img src="heatmaps.png" alt="anomaly maps of normal and anomalous examples">
</body>
</html>
`;
}

// ---------------------------------------------------------------- SVG helpers

function svg(width: number, height: number, parts: string[]): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">${parts.join('')}</svg>`;
}

function line(x1: number, y1: number, x2: number, y2: number, stroke: string, width = 1, dash?: string): string {
  return `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${stroke}" stroke-width="${width}"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`;
}

function text(x: number, y: number, content: string, style: { size?: number; anchor?: 'start' | 'middle' | 'end'; weight?: string; fill?: string } = {}): string {
  return `<text x="${x}" y="${y}" font-family="${FONT}" font-size="${style.size ?? 12}" text-anchor="${style.anchor ?? 'start'}" font-weight="${style.weight ?? 'normal'}" fill="${style.fill ?? '#222'}">${escapeHtml(content)}</text>`;
}

function escapeHtml(value: string): string {
  return value.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

const ellipsis = (value: string, max: number) => (value.length <= max ? value : `${value.slice(0, Math.max(1, max - 1))}…`);
const percent = (value: number | null) => (value === null ? '–' : `${(value * 100).toFixed(1)}%`);

/** Enough digits to tell scores apart whatever their scale (z-scores ~1, raw 1-SSIM ~0.01). */
function formatNumber(value: number): string {
  const magnitude = Math.abs(value);
  if (magnitude >= 100) return value.toFixed(0);
  if (magnitude >= 1) return value.toFixed(2);
  return value.toPrecision(3);
}
