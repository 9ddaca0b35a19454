/**
 * Replays a video through a model bundle exactly as `linewatch run` scores a camera
 * (same ffmpeg scaling, same scorer, same debouncer), as fast as possible, and prints
 * the score timeline and the events it would publish. For judging a model on a
 * recording before deploying it.
 *
 *   node dist-bench/bench/video-events.js --model models/demo --video assets/demo/bottle-detection.mp4 [--fps 10] [--json out.json]
 *     [--debounce '{"hysteresis":0.9}']
 */
import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import type { Variant } from '../src/model/manifest.js';
import { replayVideo } from './replay.js';

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
const { threshold, frames, events } = await replayVideo({
  model: values.model!,
  video: values.video!,
  fps,
  variant: values.variant as Variant,
  debounce: JSON.parse(values.debounce!),
});
const scores = frames.map((f) => f.score);

console.log(`threshold ${threshold.toFixed(3)}; per second: max score (* = above threshold)`);
for (let second = 0; second * fps < scores.length; second++) {
  const slice = scores.slice(second * fps, (second + 1) * fps);
  const max = Math.max(...slice);
  const raw = frames.slice(second * fps, (second + 1) * fps);
  const recon = Math.max(...raw.map((r) => r.recon));
  const latent = Math.max(...raw.map((r) => r.latent));
  console.log(`${String(second).padStart(3)} s ${max.toFixed(2).padStart(8)} ${max > threshold ? '*' : ' '} recon ${recon.toFixed(4)} latent ${latent.toFixed(3)} ${'#'.repeat(Math.max(0, Math.min(60, Math.round((max / threshold) * 20))))}`);
}
for (const e of events) console.log(`event ${e.start.toFixed(1)} s - ${e.end.toFixed(1)} s, peak ${e.peak.toFixed(2)}, ${e.reason}`);
if (values.json) await writeFile(values.json, `${JSON.stringify({ threshold, fps, scores, events }, null, 2)}\n`);
