import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../bench/net.js';

/** A free loopback TCP port. */
export const freeTcpPort = freePort;

/** The real GStreamer RTSP server of scripts/rtsp-server.py serving one file, started for a test file. */
export interface RtspServer {
  /** rtsp://127.0.0.1:<port>/<path> */
  readonly url: string;
  readonly port: number;
  readonly pid: number | undefined;
  /** SIGTERM, then waits for the process to exit. */
  stop(): Promise<void>;
}

export interface RtspServerOptions {
  file: string;
  /** Fixed port (e.g. to bring a stopped server back); default: a free one. */
  port?: number;
  path?: string;
  /** Restart the file at its end so the stream never ends (default true). */
  loop?: boolean;
  /** How long to wait for "ready" (default 15000 ms). */
  readyTimeoutMs?: number;
  /** Require RTSP basic authentication with this user and password, as IP cameras do. */
  login?: { user: string; password: string };
}

const SCRIPT = fileURLToPath(new URL('../../scripts/rtsp-server.py', import.meta.url));
const PYTHON = '/usr/bin/python3';

const running = new Set<ChildProcess>();
// Vitest runs each test file in its own fork: a test that fails before its cleanup must not leave servers behind.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Why RTSP tests cannot run here, or undefined when they can. */
export function rtspServerUnavailable(): string | undefined {
  if (!existsSync(PYTHON)) return `${PYTHON} is missing`;
  const probe = spawnSync(PYTHON, ['-c', "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"], {
    stdio: 'ignore',
    timeout: 10_000,
  });
  return probe.status === 0 ? undefined : 'python3-gi with GstRtspServer (gir1.2-gst-rtsp-server-1.0) is not installed';
}


export async function startRtspServer(options: RtspServerOptions): Promise<RtspServer> {
  const port = options.port ?? (await freePort());
  const path = options.path ?? 'stream';
  const args = [SCRIPT, '--file', options.file, '--port', String(port), '--path', path, options.loop === false ? '--no-loop' : '--loop'];
  if (options.login) args.push('--user', options.login.user, '--password', options.login.password);
  const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  running.add(child);
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => running.delete(child));

  const timeoutMs = options.readyTimeoutMs ?? 15_000;
  await new Promise<void>((resolve, reject) => {
    let stdout = '';
    const timer = setTimeout(() => fail(new Error(`rtsp-server.py printed no "ready" within ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    const onEarlyExit = (code: number | null): void => fail(new Error(`rtsp-server.py exited with code ${code} before "ready":\n${stderr}`));
    const fail = (error: Error): void => {
      clearTimeout(timer);
      child.off('exit', onEarlyExit);
      child.kill('SIGKILL');
      reject(error);
    };
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      stdout += chunk;
      if (/^ready$/m.test(stdout)) {
        clearTimeout(timer);
        child.off('exit', onEarlyExit);
        resolve();
      }
    });
    child.once('exit', onEarlyExit);
  });

  return {
    url: `rtsp://127.0.0.1:${port}/${path}`,
    port,
    pid: child.pid,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
