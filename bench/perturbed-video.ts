import { spawn } from 'node:child_process';
import path from 'node:path';
import type { FaultKind } from '../src/scoring/faults.js';

/** The shipped demo recording the camera faults are put into (benchmarks and tests run from the project folder). */
export const DEMO_VIDEO = path.resolve('assets/demo/bottle-detection.mp4');

/** When the camera fault is on in each clip: seconds of the demo video, before and after it plays as recorded. */
export const FAULT_FROM_S = 4;
export const FAULT_TO_S = 10;
export const CLIP_S = 16;

const during = `enable='between(t,${FAULT_FROM_S},${FAULT_TO_S})'`;
// The demo video runs at 29.83 fps: these frame numbers are the same window.
const frozenFrames = { first: Math.round(FAULT_FROM_S * 29.83), last: Math.round(FAULT_TO_S * 29.83) };

/** ffmpeg filter graphs that put each camera fault into the demo video, as the camera itself would. */
export const PERTURBATIONS: Record<FaultKind, string> = {
  // Defocus: a Gaussian blur of 6 px on the 640 px picture.
  blur: `[0:v]gblur=sigma=6:${during}`,
  // The light failed: levels down by 35 % of the range.
  dark: `[0:v]eq=brightness=-0.35:${during}`,
  // A lamp burns the picture out.
  bright: `[0:v]eq=brightness=0.4:${during}`,
  // A lens cap.
  covered: `[0:v]drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:${during}`,
  // The camera was bumped 48 px (7.5 % of the width) to the side.
  moved: `[0:v]split[a][b];[b]crop=iw-48:ih:0:0,pad=iw+48:ih:48:0[s];[a][s]overlay=${during}`,
  // The stream goes on but repeats one picture (an encoder or network box that froze).
  frozen: `[0:v]split[a][b];[a][b]freezeframes=first=${frozenFrames.first}:last=${frozenFrames.last}:replace=${frozenFrames.first}`,
};

/** The first CLIP_S seconds of the demo video with `kind` applied from FAULT_FROM_S to FAULT_TO_S, as H.264. */
export function perturbedClip(kind: FaultKind | 'none', out: string, ffmpeg = 'ffmpeg'): Promise<string> {
  const graph = kind === 'none' ? '[0:v]null' : PERTURBATIONS[kind];
  const args = ['-v', 'error', '-y', '-i', DEMO_VIDEO, '-t', String(CLIP_S), '-filter_complex', graph, '-an', '-c:v', 'libx264', '-preset', 'ultrafast', '-g', '30', '-pix_fmt', 'yuv420p', out];
  return new Promise((resolve, reject) => {
    const child = spawn(ffmpeg, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`ffmpeg ${args.join(' ')} exited ${code}: ${stderr}`))));
  });
}
