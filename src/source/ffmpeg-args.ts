import { sourceKind, type SourceKind } from '../config/sources.js';
import { UsageError } from '../errors.js';
import { scrubSecrets } from '../redact.js';

/** Pixel layout of the raw frames ffmpeg writes: one byte per channel, interleaved (HWC). */
export type PixelFormat = 'gray' | 'rgb24';
export const PIXEL_FORMATS: readonly PixelFormat[] = ['gray', 'rgb24'];

/** Decoder offload presets; `none` decodes in software. */
export type HwAccel = 'none' | 'nvidia' | 'jetson' | 'vaapi';
export const HW_ACCELS: readonly HwAccel[] = ['none', 'nvidia', 'jetson', 'vaapi'];

export type RtspTransport = 'tcp' | 'udp';

/** How the camera `url` is opened; decides which input options apply. */
export type InputKind = SourceKind;

/** Rectangle in source pixels, applied before scaling to the model's input size. */
export interface CropRect {
  x: number;
  y: number;
  width: number;
  height: number;
}

/** Preview JPEGs per second: enough for the status page and event snapshots, cheap to encode. */
export const DEFAULT_PREVIEW_FPS = 1;

export interface PreviewOptions {
  /** JPEGs per second (default 2). */
  fps?: number;
  /** Longest width; smaller sources are not upscaled (default 640). */
  maxWidth?: number;
  /** mjpeg `-q:v`, 2 (best) to 31 (default 5). */
  quality?: number;
}

export interface FfmpegArgsOptions {
  /** rtsp(s)://, http(s):// (MJPEG), /dev/videoN, a file path (or file://), or another ffmpeg network URL. */
  url: string;
  /** Model input size: every frame is stretched to exactly width x height. */
  width: number;
  height: number;
  pixelFormat?: PixelFormat;
  /** Most analysis frames per second (never duplicated to reach it); omitted: every decoded frame. */
  fps?: number;
  /** Crop in source pixels. */
  crop?: CropRect;
  /** Crop as fractions (0..1) of the source frame: ffmpeg resolves it against the actual size, so it survives a resolution change. */
  cropFraction?: CropRect;
  rtspTransport?: RtspTransport;
  /** Network read/connect timeout: a dead server makes ffmpeg exit instead of hanging (default 5000). */
  ioTimeoutMs?: number;
  /** Files only: restart at the end (`-stream_loop -1`). */
  loop?: boolean;
  /** Files only: read at native speed (`-re`) instead of as fast as possible. */
  realtime?: boolean;
  hwaccel?: HwAccel;
  /** vaapi render node (default /dev/dri/renderD128). */
  vaapiDevice?: string;
  /** Codec of the stream, needed by the jetson preset to pick its decoder (default h264). */
  inputCodec?: 'h264' | 'hevc';
  /**
   * ffmpeg decoder for the stream (`-c:v NAME` before `-i`), for any preset: it replaces the decoder the jetson
   * preset picks (e.g. `h264_nvmpi` for a jetson-ffmpeg build) and is added to the others (e.g. `h264_cuvid`).
   */
  decoder?: string;
  /** Decode key frames only (`-skip_frame nokey`): a large CPU saving when the analysis rate is at or below the GOP rate. */
  keyframesOnly?: boolean;
  /**
   * Decoder threads (frame and slice threading, each extra frame thread one frame of delay), for a stream one
   * core cannot decode in real time. Default: slice threading only, no added delay.
   */
  decodeThreads?: number;
  /** V4L2 capture settings for /dev/videoN. */
  device?: { inputFormat?: string; videoSize?: string; framerate?: number };
  /** Low-rate JPEG preview of the whole source frame on pipe:3, for event snapshots. */
  preview?: PreviewOptions | false;
  /** Major version of the ffmpeg binary: before 5, RTSP's socket timeout was `-stimeout` and `-fps_mode` was `-vsync` (default 5). */
  ffmpegMajorVersion?: number;
  /** Escape hatches: inserted just before `-i` / just before `pipe:1`. */
  inputArgs?: readonly string[];
  outputArgs?: readonly string[];
}

/** Down-scaling by area averaging: a 640 px frame squeezed to 64 px without aliasing. Training must decode the same way. */
export const FRAME_SCALE_FLAGS = 'area';
export const DEFAULT_IO_TIMEOUT_MS = 5000;
export const PREVIEW_FD = 3;
/** The pipe on which ffmpeg reads the input script of a camera URL with a password (see inputScript). */
export const INPUT_SCRIPT_FD = 4;
/** What the concat demuxer may open: the script's pipe and everything an RTSP(S) stream needs. */
const SCRIPT_PROTOCOLS = 'pipe,rtsp,rtsps,rtp,srtp,udp,tcp,tls,crypto';

export function channelsOf(pixelFormat: PixelFormat): 1 | 3 {
  return pixelFormat === 'gray' ? 1 : 3;
}

export function frameByteLength(options: Pick<FfmpegArgsOptions, 'width' | 'height' | 'pixelFormat'>): number {
  return options.width * options.height * channelsOf(options.pixelFormat ?? 'gray');
}

/** The config's own classifier, so a URL the config accepted as a file is opened as one. */
export const classifyInput: (url: string) => InputKind = sourceKind;

/**
 * Keeps the first frame of each 1/fps slot of stream time. Unlike ffmpeg's `fps` filter it never duplicates a
 * frame: a 5 fps camera analysed at "10" gives 5 frames a second, not 10 with every one twice, and gaps
 * (packet loss, key-frame-only decoding) stay gaps instead of becoming repeated inference. Frames without a
 * timestamp, and timestamps that jump back (a stream reset), are kept rather than starving the stream.
 * Needs `-fps_mode passthrough` on the output, or the muxer re-duplicates frames to a constant rate.
 */
export function rateCapFilter(fps: number): string {
  const keep = `isnan(t)+isnan(prev_selected_t)+lt(t,prev_selected_t)+gt(floor(t*${fps}),floor(prev_selected_t*${fps}))`;
  // gt(...,0): select sends a frame to output ceil(value)-1, so the sum must be folded to 0 or 1.
  return `select='gt(${keep},0)'`;
}

/**
 * The filtergraph that turns decoded video into analysis frames: rate first (so crop and scale only run on
 * kept frames), then crop in source pixels, then stretch to the model size, then the pixel format.
 * Exported so that training decodes frames exactly as the running agent does.
 */
export function buildFrameFilter(
  options: Pick<FfmpegArgsOptions, 'width' | 'height' | 'pixelFormat' | 'fps' | 'crop' | 'cropFraction'>,
): string {
  const steps: string[] = [];
  if (options.fps !== undefined) steps.push(rateCapFilter(options.fps));
  const crop = options.crop;
  if (crop !== undefined) steps.push(`crop=${crop.width}:${crop.height}:${crop.x}:${crop.y}`);
  const share = options.cropFraction;
  if (share !== undefined) steps.push(`crop=iw*${share.width}:ih*${share.height}:iw*${share.x}:ih*${share.y}`);
  steps.push(`scale=${options.width}:${options.height}:flags=${FRAME_SCALE_FLAGS}`);
  steps.push(`format=${options.pixelFormat ?? 'gray'}`);
  return steps.join(',');
}

/** Full ffmpeg argument list (without the binary) for one camera. Throws UsageError on invalid options. */
export function buildFfmpegArgs(options: FfmpegArgsOptions): string[] {
  validateArgsOptions(options);
  const kind = classifyInput(options.url);
  // level+info: the source resolution is only printed at info level; the level tags let failures be told apart.
  const args = ['-hide_banner', '-nostdin', '-nostats', '-loglevel', 'level+info'];
  args.push(...hwaccelArgs(options), ...decoderArgs(options));
  // Slice threads unless told otherwise: frame threads (ffmpeg's choice) hold back one decoded frame per
  // extra thread, measured 67 ms more from the RTSP server to the agent for a 30 fps camera (3 threads on 2
  // cores), and cost 25 % more CPU on the demo video; a 640x360 stream needs a few % of one core either way.
  if (options.decodeThreads !== undefined) args.push('-threads', String(options.decodeThreads));
  else args.push('-thread_type', 'slice');
  if (options.keyframesOnly === true) args.push('-skip_frame', 'nokey');
  if (inputScript(options) === undefined) {
    args.push(...inputKindArgs(kind, options));
    args.push(...(options.inputArgs ?? []));
    args.push('-i', kind === 'file' ? options.url.replace(/^file:\/\//i, '') : options.url);
  } else {
    // The URL and its RTSP options come in on INPUT_SCRIPT_FD: nothing secret on the command line.
    args.push('-f', 'concat', '-safe', '0', '-protocol_whitelist', SCRIPT_PROTOCOLS, ...(options.inputArgs ?? []), '-i', `pipe:${INPUT_SCRIPT_FD}`);
  }

  const frameFilter = buildFrameFilter(options);
  const preview = options.preview === false || options.preview === undefined ? undefined : options.preview;
  if (preview === undefined) {
    args.push('-filter_complex', `[0:v:0]${frameFilter}[frames]`);
  } else {
    const previewFilter = [
      rateCapFilter(preview.fps ?? DEFAULT_PREVIEW_FPS),
      // out_range=full + yuv420p + -strict unofficial: full-range JPEG without the deprecated yuvj420p warnings.
      `scale='min(${preview.maxWidth ?? 640},iw)':-2:out_range=full`,
      'format=yuv420p',
    ].join(',');
    args.push('-filter_complex', `[0:v:0]split=2[analysis][snapshot];[analysis]${frameFilter}[frames];[snapshot]${previewFilter}[preview]`);
  }
  const fpsMode = (mode: string) => ((options.ffmpegMajorVersion ?? 5) < 5 ? ['-vsync', mode] : ['-fps_mode', mode]);
  args.push('-map', '[frames]', ...fpsMode('passthrough'), '-f', 'rawvideo', ...(options.outputArgs ?? []), 'pipe:1');
  if (preview !== undefined) {
    // vfr, not passthrough: an RTSP stream can start with frames of equal timestamps, which the mjpeg
    // encoder rejects ("Invalid pts"), failing the whole ffmpeg; vfr drops such duplicates.
    args.push(
      '-map', '[preview]', ...fpsMode('vfr'), '-c:v', 'mjpeg', '-strict', 'unofficial', '-color_range', 'pc',
      '-q:v', String(preview.quality ?? 5), '-f', 'image2pipe', `pipe:${PREVIEW_FD}`,
    );
  }
  return args;
}

/**
 * The input script for an RTSP URL with a password, or undefined for any other source. On ffmpeg's
 * command line the password would be readable by every local user (`ps`, /proc/<pid>/cmdline; the
 * unit's ProtectProc= hides other processes from the service, not the service from others), and
 * ffmpeg 5's RTSP demuxer takes credentials only in the URL. So the URL goes into a one-file
 * ffconcat script that ffmpeg reads from a pipe (never a file on disk), with the RTSP options as
 * `option` lines, which the concat demuxer applies when it opens the stream.
 */
export function inputScript(options: FfmpegArgsOptions): string | undefined {
  if (classifyInput(options.url) !== 'rtsp' || (options.ffmpegMajorVersion ?? 5) < 5 || !hasPassword(options.url)) return undefined;
  if (/[\r\n]/.test(options.url)) throw new UsageError(`camera source ${scrubSecrets(options.url)}: the URL contains a line break`, { hint: 'remove it from the url' });
  // The RTSP input options, `-name value` pairs, as the script's `option name value` lines.
  const rtspOptions = inputKindArgs('rtsp', options);
  const optionLines = rtspOptions.filter((_, i) => i % 2 === 0).map((flag, i) => `option ${flag.slice(1)} ${rtspOptions[2 * i + 1]}`);
  // ffconcat quoting: inside '...', a quote is written '\''.
  return ['ffconcat version 1.0', `file '${options.url.replace(/'/g, "'\\''")}'`, ...optionLines, ''].join('\n');
}

function hasPassword(url: string): boolean {
  try {
    return new URL(url).password !== '';
  } catch {
    return false;
  }
}

function hwaccelArgs(options: FfmpegArgsOptions): string[] {
  switch (options.hwaccel ?? 'none') {
    case 'none':
      return [];
    // Without -hwaccel_output_format the decoded frames come back to system memory, where fps/crop/scale run:
    // the GPU saves the decode, which is the expensive part for H.264/H.265 at camera resolutions.
    case 'nvidia':
      return ['-hwaccel', 'cuda'];
    case 'vaapi':
      return ['-hwaccel', 'vaapi', '-hwaccel_device', options.vaapiDevice ?? '/dev/dri/renderD128'];
    // NVIDIA's L4T ffmpeg exposes the Jetson NVDEC engine as a decoder per codec, not as a -hwaccel method.
    case 'jetson':
      return ['-c:v', options.decoder ?? jetsonDecoder(options.inputCodec)];
  }
}

/** The Jetson hardware decoder of NVIDIA's L4T ffmpeg (JetPack's apt `ffmpeg`) for a stream codec. */
export function jetsonDecoder(codec: 'h264' | 'hevc' = 'h264'): string {
  return `${codec}_nvv4l2dec`;
}

/** `-c:v` for an explicit decoder with the presets that do not choose one themselves. */
function decoderArgs(options: FfmpegArgsOptions): string[] {
  if (options.decoder === undefined || options.hwaccel === 'jetson') return [];
  return ['-c:v', options.decoder];
}

function inputKindArgs(kind: InputKind, options: FfmpegArgsOptions): string[] {
  const timeoutUs = String(Math.round((options.ioTimeoutMs ?? DEFAULT_IO_TIMEOUT_MS) * 1000));
  switch (kind) {
    case 'rtsp': {
      // ffmpeg < 5 read -timeout on RTSP as "listen for incoming connections": it must get -stimeout there.
      const timeoutFlag = (options.ffmpegMajorVersion ?? 5) < 5 ? '-stimeout' : '-timeout';
      // -fpsprobesize 0: no frame-rate probing (frames are sampled on their timestamps). The probe held back the
      // first ~20 frames and released them in one burst, which the 2-frame queue dropped: measured on the demo
      // video served by scripts/rtsp-server.py, first frame after 0.88-0.96 s with 8-9 frames in its first
      // 100 ms at 10 fps, against 0.27-0.34 s and 2 frames with it.
      return ['-rtsp_transport', options.rtspTransport ?? 'tcp', timeoutFlag, timeoutUs, '-fpsprobesize', '0'];
    }
    case 'http':
    case 'stream':
      return ['-rw_timeout', timeoutUs];
    case 'v4l2': {
      const device = options.device ?? {};
      const args = ['-f', 'v4l2'];
      if (device.inputFormat !== undefined) args.push('-input_format', device.inputFormat);
      if (device.videoSize !== undefined) args.push('-video_size', device.videoSize);
      if (device.framerate !== undefined) args.push('-framerate', String(device.framerate));
      return args;
    }
    case 'file': {
      const args: string[] = [];
      if (options.realtime === true) args.push('-re');
      if (options.loop === true) args.push('-stream_loop', '-1');
      return args;
    }
  }
}

function validateArgsOptions(options: FfmpegArgsOptions): void {
  const where = `camera source ${scrubSecrets(options.url)}`;
  if (options.url.trim() === '') {
    throw new UsageError('camera url is empty', { hint: 'set url to an rtsp:// or http:// URL, a /dev/videoN device or a video file' });
  }
  requirePositiveInteger(options.width, 'width', where);
  requirePositiveInteger(options.height, 'height', where);
  if (options.pixelFormat !== undefined && !PIXEL_FORMATS.includes(options.pixelFormat)) {
    throw new UsageError(`${where}: unknown pixel format '${options.pixelFormat}'`, { hint: `use one of: ${PIXEL_FORMATS.join(', ')}` });
  }
  if (options.hwaccel !== undefined && !HW_ACCELS.includes(options.hwaccel)) {
    throw new UsageError(`${where}: unknown hwaccel '${options.hwaccel}'`, {
      hint: `use one of: ${HW_ACCELS.join(', ')} (or pass raw decoder flags in inputArgs)`,
    });
  }
  if (options.inputCodec !== undefined && options.inputCodec !== 'h264' && options.inputCodec !== 'hevc') {
    throw new UsageError(`${where}: unknown inputCodec '${String(options.inputCodec)}'`, { hint: 'use h264 or hevc' });
  }
  if (options.decoder !== undefined && !/^[A-Za-z0-9_]+$/.test(options.decoder)) {
    throw new UsageError(`${where}: '${options.decoder}' is not an ffmpeg decoder name`, { hint: 'e.g. hevc_nvv4l2dec, h264_nvmpi, h264_cuvid (ffmpeg -decoders lists them)' });
  }
  if (options.rtspTransport !== undefined && options.rtspTransport !== 'tcp' && options.rtspTransport !== 'udp') {
    throw new UsageError(`${where}: unknown rtspTransport '${String(options.rtspTransport)}'`, { hint: 'use tcp or udp' });
  }
  if (options.fps !== undefined && !(Number.isFinite(options.fps) && options.fps > 0)) {
    throw new UsageError(`${where}: fps must be a positive number, got ${options.fps}`, { hint: 'e.g. fps: 5 analyses five frames per second' });
  }
  if (options.ioTimeoutMs !== undefined && !(Number.isFinite(options.ioTimeoutMs) && options.ioTimeoutMs > 0)) {
    throw new UsageError(`${where}: ioTimeoutMs must be a positive number of milliseconds`, { hint: 'e.g. 5000' });
  }
  if (options.decodeThreads !== undefined) requirePositiveInteger(options.decodeThreads, 'decodeThreads', where);
  const crop = options.crop;
  if (crop !== undefined) {
    for (const key of ['x', 'y'] as const) {
      if (!Number.isInteger(crop[key]) || crop[key] < 0) {
        throw new UsageError(`${where}: crop.${key} must be a non-negative integer, got ${crop[key]}`, {
          hint: 'crop is x, y, width, height in source pixels',
        });
      }
    }
    requirePositiveInteger(crop.width, 'crop.width', where);
    requirePositiveInteger(crop.height, 'crop.height', where);
  }
  const share = options.cropFraction;
  if (share !== undefined) {
    if (crop !== undefined) throw new UsageError(`${where}: crop and cropFraction both set`, { hint: 'use one of them' });
    const within = (value: number, low: number, high: number) => Number.isFinite(value) && value >= low && value <= high;
    if (!within(share.x, 0, 1) || !within(share.y, 0, 1) || !within(share.width, 1e-6, 1) || !within(share.height, 1e-6, 1) ||
      share.x + share.width > 1 + 1e-9 || share.y + share.height > 1 + 1e-9) {
      throw new UsageError(`${where}: cropFraction ${JSON.stringify(share)} is not inside the frame`, {
        hint: 'x, y, width, height are fractions of the source frame: 0 <= x, y; 0 < width, height; x + width <= 1; y + height <= 1',
      });
    }
  }
  const preview = options.preview;
  if (preview !== undefined && preview !== false) {
    if (preview.fps !== undefined && !(Number.isFinite(preview.fps) && preview.fps > 0)) {
      throw new UsageError(`${where}: preview.fps must be a positive number`, { hint: 'e.g. 2' });
    }
    if (preview.maxWidth !== undefined) requirePositiveInteger(preview.maxWidth, 'preview.maxWidth', where);
    if (preview.quality !== undefined && !(Number.isInteger(preview.quality) && preview.quality >= 2 && preview.quality <= 31)) {
      throw new UsageError(`${where}: preview.quality must be an integer from 2 (best) to 31`, { hint: 'e.g. 5' });
    }
  }
}

function requirePositiveInteger(value: number, name: string, where: string): void {
  if (!Number.isInteger(value) || value <= 0) {
    throw new UsageError(`${where}: ${name} must be a positive integer, got ${value}`, {
      hint:
        name === 'width' || name === 'height'
          ? 'use the model input size from the bundle manifest'
          : name.startsWith('crop.')
            ? 'crop is x, y, width, height in source pixels'
            : 'use a whole number greater than zero',
    });
  }
}
