import { scrubSecrets } from '../redact.js';

/**
 * What a camera `url` points at; decides the ffmpeg input options (RTSP transport, file looping, V4L2).
 * `stream` is any other URL scheme ffmpeg may open (srt://, rtmp://, udp://): the config refuses it,
 * the ffmpeg argument builder (a library of its own) passes it through with a network timeout.
 */
export type SourceKind = 'rtsp' | 'http' | 'file' | 'v4l2' | 'stream';

/** The kinds a camera in the config may be. */
export type CameraSourceKind = Exclude<SourceKind, 'stream'>;

export type SourceClassification = { kind: CameraSourceKind } | { error: string };

const V4L2_DEVICE = /^\/dev\/video\d+$/;
const SCHEME = /^([a-z][a-z0-9+.-]*):/i;
const WINDOWS_DRIVE = /^[a-z]:[\\/]/i;

/**
 * The one place that tells URL kinds apart, by form alone. A Windows drive letter
 * (`C:\...`) is a file path, not a scheme; `file://` is a file.
 */
export function sourceKind(url: string): SourceKind {
  if (V4L2_DEVICE.test(url)) return 'v4l2';
  const scheme = SCHEME.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined || WINDOWS_DRIVE.test(url) || scheme === 'file') return 'file';
  if (scheme === 'rtsp' || scheme === 'rtsps') return 'rtsp';
  if (scheme === 'http' || scheme === 'https') return 'http';
  return 'stream';
}

/**
 * Classifies a camera URL of the config, or says why the config cannot use it
 * (existence of files is checked by the loader, which resolves plain paths only).
 */
export function classifySource(url: string): SourceClassification {
  const kind = sourceKind(url);
  if (kind === 'file' && url.startsWith('/dev/')) {
    return { error: `unsupported device ${url}: only V4L2 devices /dev/videoN are supported` };
  }
  const scheme = SCHEME.exec(url)?.[1]?.toLowerCase();
  if (kind === 'stream' || (kind === 'file' && scheme === 'file')) {
    return {
      error: `unsupported URL scheme "${scheme}:": use rtsp://, rtsps://, http://, https://, a video file path or /dev/videoN`,
    };
  }
  if (kind === 'rtsp' || kind === 'http') {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return { error: `not a valid URL: ${scrubSecrets(url)}` };
    }
    if (parsed.hostname === '') return { error: `${scheme} URL without a host: ${scrubSecrets(url)}` };
  }
  return { kind };
}
