import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import path from 'node:path';

/** A TCP port on 127.0.0.1 that was free a moment ago (for brokers and servers started by tests and benchmarks). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts TCP connections on 127.0.0.1:port. */
export async function waitForListener(port: number, timeoutMs: number, what = 'a server'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const accepted = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port });
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (accepted) return;
    if (Date.now() > deadline) throw new Error(`${what} did not listen on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** `linewatch run` started by a benchmark, its output in a log file. */
export interface BenchAgent {
  readonly process: ChildProcess;
  /** Resolves when it exited, with how and when (ms since the epoch). */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  /** Whether it has exited. */
  gone(): boolean;
  /** The last 30 lines of its log, for error messages. */
  logTail(): string;
  /** SIGKILL unless already gone, then wait for the exit (a benchmark's cleanup). */
  kill(): Promise<void>;
}

export function spawnAgent(configFile: string, logFile: string, nodeFlags: string[] = [], environment: Record<string, string> = {}): BenchAgent {
  const logFd = openSync(logFile, 'w');
  // With the shipped unit's environment (MALLOC_ARENA_MAX...): memory is measured as the service runs.
  const child = spawn(process.execPath, [...nodeFlags, path.resolve('bin/linewatch.js'), 'run', '--config', configFile], {
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, ...unitEnvironment(), ...environment },
  });
  closeSync(logFd);
  let gone = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>((resolve) =>
    child.once('exit', (code, signal) => {
      gone = true;
      resolve({ code, signal, at: Date.now() });
    }),
  );
  return {
    process: child,
    exited,
    gone: () => gone,
    logTail: () => readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n'),
    kill: async () => {
      if (gone) return;
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * The `Environment=` settings of the shipped unit (systemd/linewatch.service): the benchmarks start
 * the agent with them, so that memory and CPU are measured as the service runs.
 */
export function unitEnvironment(unitFile = 'systemd/linewatch.service'): Record<string, string> {
  const environment: Record<string, string> = {};
  for (const line of readFileSync(unitFile, 'utf8').split('\n')) {
    const match = /^Environment=([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(line.trim());
    if (match) environment[match[1]!] = match[2]!.replace(/^"(.*)"$/, '$1');
  }
  return environment;
}
