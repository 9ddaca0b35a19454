import { afterEach } from 'vitest';
import { CameraSource, type CameraSourceOptions, type CameraStatusChange } from '../../src/source/camera.js';

/** The demo video shipped in the repo (H.264 High, 640x360, 29.83 fps, 40 s). */
export const DEMO_VIDEO = new URL('../../assets/demo/bottle-detection.mp4', import.meta.url).pathname;

/** A factory of CameraSources that are all stopped after each test, so no ffmpeg outlives its test. */
export function cameraFactory(defaultId: string): (options: Omit<CameraSourceOptions, 'id'> & { id?: string }) => CameraSource {
  const cameras: CameraSource[] = [];
  afterEach(async () => {
    await Promise.all(cameras.splice(0).map((source) => source.stop()));
  });
  return (options) => {
    const source = new CameraSource({ id: defaultId, ...options });
    cameras.push(source);
    return source;
  };
}

/** Resolves with the first status change (current or future) that matches. */
export function waitForStatus(
  source: CameraSource,
  match: (change: CameraStatusChange) => boolean,
  timeoutMs: number,
  what: string,
): Promise<CameraStatusChange> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      source.off('status', listener);
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; status ${source.status} (${source.statusReason})\n${source.stderrTail().join('\n')}`));
    }, timeoutMs);
    const listener = (change: CameraStatusChange): void => {
      if (!match(change)) return;
      clearTimeout(timer);
      source.off('status', listener);
      resolve(change);
    };
    source.on('status', listener);
  });
}
