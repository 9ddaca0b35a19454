import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import YAML from 'yaml';
import { isMosquittoInstalled } from './mosquitto.js';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
const CLI = path.join(REPO, 'bin', 'linewatch.js');

/** The shipped demo: a recording with real anomalies and the model trained on its first seconds. */
export const DEMO_VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
export const DEMO_MODEL = path.join(REPO, 'models/demo');

/**
 * What an agent test on the demo against a real mosquitto lacks here, warned once as
 * `<suite> skipped: ...` (under CI=true a skipped test fails the run).
 */
export function demoAgentMissing(suite: string): string[] {
  const missing = [
    isMosquittoInstalled() ? undefined : 'mosquitto is not installed (run scripts/setup.sh)',
    existsSync(path.join(DEMO_MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
    existsSync(DEMO_VIDEO) ? undefined : 'the demo video is missing',
  ].filter((reason): reason is string => reason !== undefined);
  if (missing.length) console.warn(`${suite} skipped: ${missing.join('; ')}`);
  return missing;
}

/** `linewatch run` as a real child process, with its output kept for assertions and failure messages. */
export interface AgentProcess {
  readonly child: ChildProcess;
  readonly pid: number;
  output(): string;
  /** Resolves when a line of output matches. */
  waitForOutput(pattern: RegExp, timeoutMs?: number): Promise<string>;
  /** Resolves with the exit code once the process ended. */
  exited(): Promise<number | null>;
}

const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export function writeConfig(file: string, config: unknown): string {
  writeFileSync(file, YAML.stringify(config));
  return file;
}

export function startAgent(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): AgentProcess {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? REPO,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  const listeners = new Set<() => void>();
  const onData = (chunk: Buffer) => {
    output += chunk.toString('utf8');
    for (const listener of listeners) listener();
  };
  child.stdout!.on('data', onData);
  child.stderr!.on('data', onData);
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  void exit.then(() => running.delete(child));
  return {
    child,
    pid: child.pid!,
    output: () => output,
    exited: () => exit,
    waitForOutput: (pattern, timeoutMs = 20_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const match = pattern.exec(output);
          if (!match) return;
          listeners.delete(check);
          clearTimeout(timer);
          resolve(match[0]);
        };
        const timer = setTimeout(() => {
          listeners.delete(check);
          reject(new Error(`no output matching ${pattern} within ${timeoutMs} ms; output:\n${output.slice(-3000)}`));
        }, timeoutMs);
        listeners.add(check);
        check();
      }),
  };
}

/** Runs the CLI to completion (for commands that exit by themselves). */
export function runCli(args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}) {
  const result = spawnSync(process.execPath, [CLI, ...args], {
    cwd: options.cwd ?? REPO,
    env: { ...process.env, ...options.env },
    encoding: 'utf8',
    timeout: options.timeoutMs ?? 60_000,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr, output: result.stdout + result.stderr };
}

/** PIDs of live processes whose parent is `parentPid` and whose command line contains `needle`. */
export function childProcesses(parentPid: number, needle = 'ffmpeg'): number[] {
  const ps = spawnSync('ps', ['-eo', 'pid=,ppid=,args='], { encoding: 'utf8' });
  return ps.stdout
    .split('\n')
    .map((line) => line.trim().match(/^(\d+)\s+(\d+)\s+(.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null && Number(m[2]) === parentPid && m[3]!.includes(needle))
    .map((m) => Number(m[1]));
}

/** PIDs of live processes whose command line contains `needle`, whatever their parent. */
export function processesMatching(needle: string): number[] {
  const ps = spawnSync('ps', ['-eo', 'pid=,stat=,args='], { encoding: 'utf8' });
  return ps.stdout
    .split('\n')
    .map((line) => line.trim().match(/^(\d+)\s+(\S+)\s+(.*)$/))
    .filter((m): m is RegExpMatchArray => m !== null && !m[2]!.startsWith('Z') && m[3]!.includes(needle) && !m[3]!.includes('ps -eo'))
    .map((m) => Number(m[1]));
}
