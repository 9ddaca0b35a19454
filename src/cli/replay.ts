import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { describeEvent, describeFault } from '../agent/camera.js';
import { replayRecording, type ReplayResult } from '../agent/replay.js';
import { configFromObject, loadConfig, resolveCameras, sourceKind, type CameraConfig } from '../config/index.js';
import { UsageError } from '../errors.js';
import { createLogger } from '../log.js';
import { VARIANTS, type Variant } from '../model/manifest.js';
import { parseInteger } from './options.js';

interface ReplayFlags {
  config?: string;
  camera?: string;
  model?: string;
  fps?: number;
  variant?: Variant;
  json?: string;
  timeline: boolean;
}

export function registerReplay(program: Command): void {
  program
    .command('replay')
    .description(
      'score a recording exactly as `linewatch run` would score the camera (filters, mask, threshold, debouncing) and print the events it would publish',
    )
    .argument('[video]', "the recording (default: the camera's own URL when it is a file)")
    .option('-c, --config <file>', "take the camera's settings (model, crop, ignore mask, threshold, debounce, fps) from this configuration")
    .option('--camera <name>', 'which camera of the configuration (default: the first)')
    .option('--model <bundle>', 'model bundle folder (overrides the configuration; default models/demo without one)')
    .option('--fps <n>', 'frames per second to score (overrides the configuration)', parseInteger)
    .addOption(new Option('--variant <name>', 'model variant (default: the configuration\'s, int8)').choices([...VARIANTS]))
    .option('--json <file>', 'write threshold, per-frame scores and every event message as JSON')
    .option('--no-timeline', 'leave out the per-second score timeline')
    .action(async (video: string | undefined, flags: ReplayFlags) => {
      const camera = await replayCamera(video, flags);
      const log = createLogger({ level: 'warn' });
      const result = await replayRecording({
        camera,
        video,
        log,
        onEvent: (payload) => console.log(describeEvent(payload)),
        onFault: (message) => console.log(describeFault(message)),
      });
      if (flags.timeline) console.log(formatTimeline(result));
      const starts = result.messages.filter((message) => message.type === 'start').length;
      const faults = result.faults.filter((message) => message.type === 'start').length;
      console.log(
        `${result.frames.length} frames at ${result.fps} fps scored against threshold ${result.threshold.toFixed(3)}: ${starts} event(s), ${faults} camera fault(s); ` +
          `${result.msPerFrame.toFixed(2)} ms per frame for inference and scoring`,
      );
      if (flags.json) {
        await mkdir(path.dirname(path.resolve(flags.json)), { recursive: true });
        const frames = result.frames.map((frame) => ({ t: round(frame.t, 3), score: round(frame.score, 4) }));
        await writeFile(flags.json, `${JSON.stringify({ threshold: result.threshold, fps: result.fps, frames, events: result.messages, faults: result.faults }, null, 2)}\n`);
        console.log(`wrote ${flags.json}`);
      }
    });
}

/** The camera to replay as: from the configuration when one is given, else the defaults with the flags. */
async function replayCamera(video: string | undefined, flags: ReplayFlags): Promise<CameraConfig> {
  const overrides = {
    ...(flags.model ? { model: flags.model } : {}),
    ...(flags.fps ? { fps: flags.fps } : {}),
    ...(flags.variant ? { variant: flags.variant } : {}),
  };
  if (flags.config) {
    const config = await loadConfig(flags.config);
    const cameras = resolveCameras(config);
    const camera = flags.camera ? cameras.find((candidate) => candidate.name === flags.camera) : cameras[0];
    if (!camera) {
      throw new UsageError(`${flags.config} has no camera named "${flags.camera}"`, { hint: `use one of: ${cameras.map((c) => c.name).join(', ')}` });
    }
    if (!video && sourceKind(camera.url) !== 'file') {
      throw new UsageError(`camera ${camera.name} is a live stream: name the recording to replay`, { hint: 'linewatch replay <video> -c <config> --camera <name>' });
    }
    return { ...camera, ...overrides };
  }
  if (!video) throw new UsageError('name the recording to replay', { hint: 'linewatch replay <video> [--model <bundle>] or linewatch replay -c <config>' });
  const config = configFromObject({ defaults: { model: 'models/demo', ...overrides }, cameras: [{ name: path.parse(video).name.replace(/[^A-Za-z0-9_-]/g, '-') || 'replay', url: video }] });
  return resolveCameras(config)[0]!;
}

/** Per second: the highest score, marked where it crosses the threshold, as a bar. */
function formatTimeline(result: ReplayResult): string {
  const lines = [`threshold ${result.threshold.toFixed(3)}; per second: highest score (* above the threshold)`];
  const perSecond = new Map<number, number>();
  for (const frame of result.frames) {
    const second = Math.floor(frame.t + 1e-9);
    perSecond.set(second, Math.max(perSecond.get(second) ?? Number.NEGATIVE_INFINITY, frame.score));
  }
  for (const [second, max] of perSecond) {
    const bar = '#'.repeat(Math.max(0, Math.min(60, Math.round((max / Math.abs(result.threshold || 1)) * 20))));
    lines.push(`${String(second).padStart(4)} s ${max.toFixed(2).padStart(8)} ${max > result.threshold ? '*' : ' '} ${bar}`);
  }
  return lines.join('\n');
}

function round(value: number, digits: number): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}
