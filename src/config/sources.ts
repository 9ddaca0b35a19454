/** What a camera `url` points at; decides the ffmpeg input options (RTSP transport, file looping, V4L2). */
export type SourceKind = 'rtsp' | 'http' | 'file' | 'v4l2';

export type SourceClassification = { kind: SourceKind } | { error: string };

const V4L2_DEVICE = /^\/dev\/video\d+$/;
const SCHEME = /^([a-z][a-z0-9+.-]*):/i;

/**
 * Classifies a camera URL by its form alone (existence of files is checked by
 * the loader). A Windows drive letter (`C:\...`) is a file path, not a scheme.
 */
export function classifySource(url: string): SourceClassification {
  if (V4L2_DEVICE.test(url)) return { kind: 'v4l2' };
  if (url.startsWith('/dev/')) return { error: `unsupported device ${url}: only V4L2 devices /dev/videoN are supported` };
  const scheme = SCHEME.exec(url)?.[1]?.toLowerCase();
  if (scheme === undefined || /^[a-z]:[\\/]/i.test(url)) return { kind: 'file' };
  if (scheme === 'rtsp' || scheme === 'rtsps' || scheme === 'http' || scheme === 'https') {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return { error: `not a valid URL: ${redactUrl(url)}` };
    }
    if (parsed.hostname === '') return { error: `${scheme} URL without a host: ${redactUrl(url)}` };
    return { kind: scheme.startsWith('rtsp') ? 'rtsp' : 'http' };
  }
  return {
    error: `unsupported URL scheme "${scheme}:": use rtsp://, rtsps://, http://, https://, a video file path or /dev/videoN`,
  };
}

/** The URL with any password replaced by `***`, for logs and summaries (camera URLs often carry credentials). */
export function redactUrl(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^/@:]*):[^/]*@/i, '$1:***@');
}
