/**
 * A camera that asks for a login: the real GStreamer RTSP server with basic authentication.
 * The password reaches the camera but never ffmpeg's command line, where every local user
 * could read it (`ps`, /proc/<pid>/cmdline): ffmpeg reads the URL from a pipe.
 */
import { readFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CameraSource } from '../../src/source/camera.js';
import { cameraFactory, DEMO_VIDEO, waitForStatus } from '../helpers/camera.js';
import { rtspServerUnavailable, startRtspServer, type RtspServer } from '../helpers/rtsp.js';

const skipReason = rtspServerUnavailable();
if (skipReason) console.warn(`RTSP login tests skipped: ${skipReason}`);
const camera = cameraFactory('rtsp-login');
const LOGIN = { user: 'operator', password: "pa ss:w'rd" };

function commandLine(pid: number): string {
  return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
}

function spawnedPid(source: CameraSource): Promise<number> {
  return new Promise((resolve) => source.once('spawn', (pid: number) => resolve(pid)));
}

describe.skipIf(skipReason !== undefined)('an RTSP camera with a login', () => {
  let server: RtspServer;
  beforeAll(async () => {
    server = await startRtspServer({ file: DEMO_VIDEO, path: 'cam', login: LOGIN });
  });
  afterAll(async () => {
    await server?.stop();
  });
  const urlWith = (user: string, password: string) => server.url.replace('rtsp://', `rtsp://${encodeURIComponent(user)}:${encodeURIComponent(password)}@`);

  it('streams with the right password, which no process listing shows', async () => {
    const source = camera({ url: urlWith(LOGIN.user, LOGIN.password), width: 64, height: 64, fps: 10, stallTimeoutMs: 5000 });
    const pid = spawnedPid(source);
    await source.start();
    const cmdline = commandLine(await pid);
    await waitForStatus(source, (change) => change.status === 'streaming', 15_000, 'streaming');
    expect(source.stats().framesIn).toBeGreaterThan(0);
    expect(cmdline).toContain('-i pipe:4');
    for (const secret of [LOGIN.password, encodeURIComponent(LOGIN.password), 'operator:']) expect(cmdline).not.toContain(secret);
    const ps = spawnSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).stdout;
    expect(ps).toContain('-i pipe:4');
    expect(ps).not.toContain(encodeURIComponent(LOGIN.password));
    expect(source.stderrTail().join('\n')).not.toContain(encodeURIComponent(LOGIN.password));
  }, 30_000);

  it('says 401 for a wrong password, without showing it', async () => {
    const wrong = 'not-the-password';
    const source = camera({ url: urlWith(LOGIN.user, wrong), width: 64, height: 64, fps: 10, backoff: { initialMs: 5000, maxMs: 5000 } });
    await source.start();
    const change = await waitForStatus(source, (candidate) => candidate.status === 'reconnecting' && /401|authori[sz]/i.test(candidate.reason), 15_000, 'a 401');
    expect(change.reason).not.toContain(wrong);
    expect(source.stderrTail().join('\n')).not.toContain(wrong);
  }, 30_000);

  it('keeps a URL without a password on the command line as it is', async () => {
    const source = camera({ url: server.url, width: 64, height: 64, fps: 10, backoff: { initialMs: 5000, maxMs: 5000 } });
    const pid = spawnedPid(source);
    await source.start();
    expect(commandLine(await pid)).toContain(`-i ${server.url}`);
    await waitForStatus(source, (candidate) => candidate.status === 'reconnecting' && /401/.test(candidate.reason), 15_000, 'a 401 (no login given)');
  }, 30_000);
});
