import type { Command } from 'commander';
import { parseCrop, parseNumber } from './options.js';

interface QualityProfileFlags {
  model: string;
  video?: string;
  images?: string[];
  start?: number;
  duration?: number;
  fps: number;
  crop?: { x: number; y: number; width: number; height: number };
  ffmpeg: string;
}

export function registerQualityProfile(program: Command): void {
  program
    .command('quality-profile')
    .description(
      "learn what the camera's picture normally looks like (brightness, sharpness, the scene itself) from normal footage and write it into a model bundle, for the camera-fault checks; `train` does this itself",
    )
    .requiredOption('--model <dir>', 'the model bundle to write the profile into')
    .option('--video <file|url>', 'normal footage of the camera')
    .option('--start <s>', 'seconds into the video to start at', parseNumber)
    .option('--duration <s>', 'seconds of video to use (default: all of it)', parseNumber)
    .option('--fps <n>', 'frames per second taken from the video', parseNumber, 10)
    .option('--crop <x,y,w,h>', "the camera's crop, fractions of the video frame (as in its config): the profile must see what the model sees", parseCrop)
    .option('--images <dir|list...>', 'normal images instead of a video (folders or list files)')
    .option('--ffmpeg <path>', 'ffmpeg binary', 'ffmpeg')
    .action(async (flags: QualityProfileFlags) => {
      // Loaded here: the toolkit is not part of `linewatch run`.
      const { profileBundle } = await import('../toolkit/quality-profile.js');
      const { manifest } = await profileBundle({ ...flags, ffmpegPath: flags.ffmpeg });
      const quality = manifest.quality!;
      console.log(
        `${flags.model}: quality profile from ${quality.frames} frames: brightness ${quality.brightness.min.toFixed(0)}-${quality.brightness.max.toFixed(0)}, ` +
          `sharpness >= ${quality.sharpness.min.toFixed(3)}, ` +
          (quality.shift ? `one view (largest shift ${quality.shift.maxX}x${quality.shift.maxY} px)` : 'no common view: the moved check stays off'),
      );
    });
}
