import { execFileSync } from 'node:child_process';
import { UsageError } from '../src/errors.js';
import type { LoadedBundle } from '../src/model/bundle.js';
import { buildFrameFilter } from '../src/source/ffmpeg-args.js';

/** Frames of the video as the agent gets them from ffmpeg: the model's size, grey, 5 fps. */
export function videoFrames(video: string, bundle: LoadedBundle): Uint8Array[] {
  const { width, height, channels } = bundle.manifest.input;
  if (channels !== 1) throw new UsageError(`the model takes ${channels}-channel frames; this benchmark feeds grey ones`, { hint: 'use a grey model such as models/demo' });
  // The agent's own filter graph (rate cap, scaling, pixel format), so the frames are the ones it scores.
  const filter = buildFrameFilter({ width, height, pixelFormat: 'gray', fps: 5 });
  const raw = execFileSync('ffmpeg', ['-hide_banner', '-loglevel', 'error', '-i', video, '-vf', filter, '-fps_mode', 'passthrough', '-f', 'rawvideo', 'pipe:1'], {
    maxBuffer: 1 << 28,
  });
  const size = width * height;
  const frames: Uint8Array[] = [];
  for (let offset = 0; offset + size <= raw.length; offset += size) frames.push(new Uint8Array(raw.buffer, raw.byteOffset + offset, size));
  if (frames.length === 0) throw new UsageError(`ffmpeg gave no frames of ${video}`, { hint: 'check the --video file' });
  return frames;
}
