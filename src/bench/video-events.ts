/**
 * Replays a video through a model bundle exactly as `linewatch run` scores a camera
 * (same ffmpeg scaling, same scorer, same debouncer), as fast as possible, and prints
 * the score timeline and the events it would publish. For judging a model on a
 * recording before deploying it.
 *
 *   node dist/bench/video-events.js --model models/demo --video assets/demo/bottle-detection.mp4 [--fps 10] [--json out.json]
 *     [--debounce '{"hysteresis":0.9}']
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { DebounceSchema } from '../config/schema.js';
import { normaliseInput } from '../image/normalise.js';
import { loadBundle } from '../model/bundle.js';
import { inferImages } from '../model/infer.js';
import type { Variant } from '../model/manifest.js';
import { EventTracker, type EventMessage } from '../scoring/events.js';
import { decodeVideoFrames } from '../source/decode.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string', default: 'models/demo' },
    video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
    fps: { type: 'string', default: '10' },
    variant: { type: 'string', default: 'int8' },
    json: { type: 'string' },
    /** Debounce settings as in the config file, e.g. '{"k":3,"n":5,"hysteresis":0.9}'. */
    debounce: { type: 'string', default: '{}' },
  },
});
const fps = Number(values.fps);
const bundle = await loadBundle(values.model!, { variant: values.variant as Variant, threads: 1 });
const { input } = bundle.manifest;
const frames = await decodeVideoFrames(values.video!, { width: input.width, height: input.height, channels: input.channels, fps });
const images = frames.map((frame) => normaliseInput(frame, input.normalisation));
const outputs = await inferImages(bundle.model, images, 16);
const results = images.map((image, i) => bundle.scorer.score(image, outputs.recon[i]!, outputs.mu[i]!, undefined, outputs.map?.[i]));
const scores = results.map((r) => r.score);
const threshold = bundle.calibration!.threshold;
const tracker = new EventTracker({ camera: 'replay', threshold, ...DebounceSchema.parse(JSON.parse(values.debounce!)) });
const messages: EventMessage[] = [];
scores.forEach((score, i) => messages.push(...tracker.push(score, Math.round((i * 1000) / fps))));
messages.push(...tracker.close('shutdown', Math.round((scores.length * 1000) / fps)));
await bundle.dispose();

console.log(`threshold ${threshold.toFixed(3)}; per second: max score (* = above threshold)`);
for (let second = 0; second * fps < scores.length; second++) {
  const slice = scores.slice(second * fps, (second + 1) * fps);
  const max = Math.max(...slice);
  const raw = results.slice(second * fps, (second + 1) * fps);
  const recon = Math.max(...raw.map((r) => r.recon));
  const latent = Math.max(...raw.map((r) => r.latent));
  console.log(`${String(second).padStart(3)} s ${max.toFixed(2).padStart(8)} ${max > threshold ? '*' : ' '} recon ${recon.toFixed(4)} latent ${latent.toFixed(3)} ${'#'.repeat(Math.max(0, Math.min(60, Math.round((max / threshold) * 20))))}`);
}
const events = messages.filter((m) => m.type === 'end').map((m) => ({
  start: Date.parse(m.startedAt) / 1000,
  end: Date.parse(m.endedAt!) / 1000,
  peak: m.peakScore,
  reason: m.reason,
}));
for (const e of events) console.log(`event ${e.start.toFixed(1)} s - ${e.end.toFixed(1)} s, peak ${e.peak.toFixed(2)}, ${e.reason}`);
if (values.json) await writeFile(values.json, `${JSON.stringify({ threshold, fps, scores, events }, null, 2)}\n`);
