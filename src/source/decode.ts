import { spawn } from 'node:child_process';
import { sourceKind } from '../config/sources.js';
import { UsageError } from '../errors.js';
import { fromInterleavedBytes, type ImageTensor } from '../image/tensor.js';
import { buildFrameFilter } from './ffmpeg-args.js';
import { scrubCredentials } from './ffmpeg-log.js';

export interface DecodeOptions {
  width: number;
  height: number;
  channels: 1 | 3;
  /** Seconds from the start of the stream. */
  start?: number;
  /** Seconds to decode; the whole stream when absent (refused for live streams). */
  duration?: number;
  /** Frames per second to sample. */
  fps: number;
  /** The camera's crop (shares of the source frame), applied as a running camera applies it. */
  cropFraction?: { x: number; y: number; width: number; height: number };
  ffmpegPath?: string;
  signal?: AbortSignal;
}

/**
 * Decode a bounded stretch of a video file or stream into model-sized frames, for
 * training. ffmpeg does the sampling and scaling so Node only sees small frames.
 */
export async function decodeVideoFrames(url: string, options: DecodeOptions): Promise<ImageTensor[]> {
  const kind = sourceKind(url);
  // Anything but a file (a camera device too) never ends by itself.
  const live = kind !== 'file';
  if (live && options.duration === undefined) {
    throw new UsageError(`${scrubCredentials(url)} is a live stream: say how much of it to learn from`, { hint: 'add --duration <seconds>' });
  }
  const args = ['-hide_banner', '-nostdin', '-loglevel', 'error'];
  if (kind === 'rtsp') args.push('-rtsp_transport', 'tcp', '-timeout', '10000000');
  // Input-side seek is exact when decoding a file; a live stream cannot seek, so it skips by decoding.
  if (options.start && !live) args.push('-ss', String(options.start));
  args.push('-i', url);
  if (options.start && live) args.push('-ss', String(options.start));
  if (options.duration !== undefined) args.push('-t', String(options.duration));
  // The same filter graph as a running camera (src/source/ffmpeg-args.ts), so the model learns from frames
  // sampled, scaled and converted exactly like the ones it will score.
  const pixelFormat = options.channels === 1 ? 'gray' : 'rgb24';
  const filter = buildFrameFilter({ width: options.width, height: options.height, pixelFormat, fps: options.fps, cropFraction: options.cropFraction });
  args.push('-an', '-vf', filter, '-fps_mode', 'passthrough', '-pix_fmt', pixelFormat, '-f', 'rawvideo', 'pipe:1');

  const frameBytes = options.width * options.height * options.channels;
  const child = spawn(options.ffmpegPath ?? 'ffmpeg', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const onAbort = () => child.kill('SIGTERM');
  options.signal?.addEventListener('abort', onAbort, { once: true });

  const frames: ImageTensor[] = [];
  let pending: Buffer = Buffer.alloc(0);
  child.stdout.on('data', (chunk: Buffer) => {
    pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
    while (pending.length >= frameBytes) {
      frames.push(fromInterleavedBytes(pending.subarray(0, frameBytes), options.width, options.height, options.channels));
      pending = pending.subarray(frameBytes);
    }
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });

  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'ENOENT'
          ? new UsageError(`ffmpeg not found at "${options.ffmpegPath ?? 'ffmpeg'}"`, {
              hint: 'install it (apt-get install ffmpeg) or pass its path',
            })
          : error,
      );
    });
    child.on('close', resolve);
  }).finally(() => options.signal?.removeEventListener('abort', onAbort));

  options.signal?.throwIfAborted();
  if (frames.length === 0) {
    const reason = stderr.trim().split('\n').slice(-3).join(' / ') || `ffmpeg exited with code ${code}`;
    throw new UsageError(`cannot read frames from ${scrubCredentials(url)}: ${scrubCredentials(reason)}`, {
      hint: 'check the path or URL, and that --start lies within the video',
    });
  }
  return frames;
}

/** Width and height of the first video stream, from ffprobe (installed beside ffmpeg). */
export async function probeVideoSize(url: string, ffmpegPath = 'ffmpeg'): Promise<{ width: number; height: number }> {
  const ffprobe = ffmpegPath.replace(/ffmpeg(\.exe)?$/, 'ffprobe$1');
  const args = ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=width,height', '-of', 'csv=p=0'];
  if (sourceKind(url) === 'rtsp') args.push('-rtsp_transport', 'tcp', '-timeout', '10000000');
  args.push(url);
  const child = spawn(ffprobe, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  await new Promise<void>((resolve, reject) => {
    child.on('error', (error: NodeJS.ErrnoException) =>
      reject(error.code === 'ENOENT' ? new UsageError(`ffprobe not found at "${ffprobe}"`, { hint: 'install ffmpeg (apt-get install ffmpeg), or pass --size' }) : error),
    );
    child.on('close', () => resolve());
  });
  const match = /^(\d+),(\d+)/.exec(stdout.trim());
  if (!match) {
    throw new UsageError(`cannot read the video size of ${scrubCredentials(url)}: ${scrubCredentials(stderr.trim()) || 'no video stream'}`, {
      hint: 'check the path or URL, or pass --size',
    });
  }
  return { width: Number(match[1]), height: Number(match[2]) };
}
