/**
 * What the agent benchmarks (agent-load, capacity) measure with: CPU time and memory of processes
 * from /proc, a private mosquitto, percentiles and slopes.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { UsageError } from '../src/errors.js';
import { freePort, waitForListener } from './net.js';

// ---------------------------------------------------------------- /proc

export const CLOCK_TICKS_PER_S = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

export interface ProcStat {
  pid: number;
  comm: string;
  ppid: number;
  /** utime + stime of all threads, seconds. */
  cpuS: number;
}

/** /proc/<pid>/stat, or undefined once the process is gone. The command name may hold spaces and parentheses. */
export function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  // Fields after the command, counted from 3 (state): ppid is field 4, utime 14, stime 15.
  const fields = text.slice(close + 2).split(' ');
  return { pid, comm, ppid: Number(fields[1]), cpuS: (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_S };
}

/** Fields of /proc/<pid>/status given in kB, as bytes, from one read; undefined when the process is gone. */
function statusBytes(pid: number, names: readonly string[]): (number | undefined)[] | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  return names.map((name) => {
    const match = new RegExp(`^${name}:\\s+(\\d+)\\s+kB`, 'm').exec(status);
    return match ? Number(match[1]) * 1024 : undefined;
  });
}

export function readRssBytes(pid: number): number | undefined {
  return statusBytes(pid, ['VmRSS'])?.[0];
}

/**
 * Resident memory and its split as the kernel counts it (/proc/<pid>/status), from one read: anonymous
 * pages (the heaps, the process's own data) and file-backed pages (the code and read-only data of node
 * and the native libraries, shared with other processes that map the same files and dropped by the
 * kernel under memory pressure without writing anything). RSS is their sum plus shared memory.
 */
export function readResidentBytes(pid: number): { rss: number | undefined; anon: number | undefined; file: number | undefined } | undefined {
  const fields = statusBytes(pid, ['VmRSS', 'RssAnon', 'RssFile']);
  return fields && { rss: fields[0], anon: fields[1], file: fields[2] };
}

export function childrenOf(ppid: number): ProcStat[] {
  const children: ProcStat[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readProcStat(Number(entry));
    if (stat?.ppid === ppid) children.push(stat);
  }
  return children;
}

export function readCmdline(pid: number): string[] | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').slice(0, -1);
  } catch {
    return undefined;
  }
}

/** Whole-machine CPU time from /proc/stat, seconds summed over all cores. */
export function readMachineCpu(): { busyS: number; totalS: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0]!;
  const ticks = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const total = ticks.reduce((sum, value) => sum + value, 0);
  const idle = ticks[3]! + ticks[4]!;
  return { busyS: (total - idle) / CLOCK_TICKS_PER_S, totalS: total / CLOCK_TICKS_PER_S };
}

/**
 * Sums the CPU time of a changing set of processes: a process that exits keeps the
 * time last seen for it, so a restarted ffmpeg does not make the total fall.
 */
export class CpuLedger {
  private readonly lastSeen = new Map<number, number>();
  observe(processes: readonly ProcStat[]): void {
    for (const process of processes) this.lastSeen.set(process.pid, process.cpuS);
  }
  get totalS(): number {
    let sum = 0;
    for (const value of this.lastSeen.values()) sum += value;
    return sum;
  }
  get pids(): number[] {
    return [...this.lastSeen.keys()];
  }
}

// ---------------------------------------------------------------- mosquitto

/** Turns off Nagle's algorithm on a subscriber's connection, as `set_tcp_nodelay true` does on the broker's side. */
export function setClientNoDelay(client: { stream: unknown }): void {
  (client.stream as { setNoDelay?: (noDelay: boolean) => void } | undefined)?.setNoDelay?.(true);
}

/** A private mosquitto on a free loopback port; `noDelay` sets TCP_NODELAY on its sockets. */
export async function startMosquitto(dir: string, options: { noDelay?: boolean } = {}): Promise<{ child: ChildProcess; url: string }> {
  const port = await freePort();
  const configFile = path.join(dir, 'mosquitto.conf');
  // Started as root, mosquitto would switch to the `mosquitto` user, who cannot read this private folder.
  const lines = [`user ${os.userInfo().username}`, `listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'log_dest stderr', 'log_type error', 'log_type warning'];
  if (options.noDelay) lines.push('set_tcp_nodelay true');
  writeFileSync(configFile, lines.join('\n') + '\n');
  let child: ChildProcess;
  try {
    child = spawn('mosquitto', ['-c', configFile], { stdio: ['ignore', 'ignore', 'ignore'] });
  } catch (error) {
    throw new UsageError(`mosquitto could not be started: ${(error as Error).message}`, { hint: 'install it (apt-get install mosquitto)' });
  }
  const failed = new Promise<never>((_, reject) => {
    child.once('error', (error) => reject(new UsageError(`mosquitto could not be started: ${error.message}`, { hint: 'install it (apt-get install mosquitto)' })));
    child.once('exit', (code) => reject(new Error(`mosquitto exited (${code}) at start`)));
  });
  failed.catch(() => undefined);
  await Promise.race([waitForListener(port, 5000, 'mosquitto'), failed]);
  return { child, url: `mqtt://127.0.0.1:${port}` };
}

/**
 * The agent's own ffmpeg command lines run without the agent, their outputs (raw frames on stdout,
 * preview JPEGs on fd 3) to /dev/null: what decoding, filtering and preview encoding cost. The
 * first quarter (at most `settleMs`) is start-up and not counted.
 */
export async function measureCommandsAlone(commands: readonly string[][], seconds: number, settleMs = 2000): Promise<{ processes: number; wallS: number; cpuS: number }> {
  const devNull = openSync('/dev/null', 'w');
  const children = commands.map(([binary, ...args]) => spawn(binary!, args, { stdio: ['ignore', devNull, devNull, devNull] }));
  const pids = children.map((child) => child.pid).filter((pid): pid is number => pid !== undefined);
  const ledger = new CpuLedger();
  const read = () => ledger.observe(pids.map(readProcStat).filter((stat): stat is ProcStat => stat !== undefined));
  const settle = Math.min(settleMs, (seconds * 1000) / 4);
  await sleep(settle);
  read();
  const startCpu = ledger.totalS;
  const startedAt = performance.now();
  await sleep(seconds * 1000 - settle);
  read();
  const wallS = (performance.now() - startedAt) / 1000;
  const cpuS = ledger.totalS - startCpu;
  const exits = children.map((child) => new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve()))));
  for (const child of children) child.kill('SIGTERM');
  await Promise.all(exits);
  closeSync(devNull);
  return { processes: pids.length, wallS, cpuS };
}

// ---------------------------------------------------------------- statistics

/** Nearest-rank percentile of sorted values. */
export function percentile(sorted: readonly number[], p: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Least-squares slope of y over x. */
export function slope(points: readonly { x: number; y: number }[]): number | null {
  if (points.length < 2) return null;
  const meanX = points.reduce((sum, p) => sum + p.x, 0) / points.length;
  const meanY = points.reduce((sum, p) => sum + p.y, 0) / points.length;
  let covariance = 0;
  let variance = 0;
  for (const p of points) {
    covariance += (p.x - meanX) * (p.y - meanY);
    variance += (p.x - meanX) ** 2;
  }
  return variance === 0 ? null : covariance / variance;
}

export const mean = (values: readonly number[]): number => values.reduce((sum, value) => sum + value, 0) / values.length;

/** The middle value (the upper one of an even count). */
export const median = (values: readonly number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

/** Bytes as MiB; undefined stays undefined. */
export const mib = (bytes: number | undefined): number | undefined => (bytes === undefined ? undefined : bytes / 2 ** 20);

export const round = (value: number | null | undefined, digits = 1): number | null =>
  value === null || value === undefined || !Number.isFinite(value) ? null : Math.round(value * 10 ** digits) / 10 ** digits;

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A markdown table; empty cells (null, undefined) show as a dash. */
export function markdownTable(header: string[], rows: (string | number | null | undefined)[][]): string {
  const cell = (value: string | number | null | undefined) => (value === null || value === undefined ? '–' : String(value));
  return [`| ${header.join(' | ')} |`, `|${header.map(() => '---').join('|')}|`, ...rows.map((row) => `| ${row.map(cell).join(' | ')} |`)].join('\n');
}

/**
 * Writes a benchmark's result as JSON to `out` and its markdown summary beside it (same name,
 * .md); `markdown` gets the JSON file's name to link to. Returns the markdown file's path.
 */
export async function writeReport(out: string, result: unknown, markdown: (jsonName: string) => string): Promise<string> {
  await mkdir(path.dirname(out), { recursive: true });
  await writeFile(out, `${JSON.stringify(result, null, 2)}\n`);
  const markdownFile = out.replace(/\.json$/i, '') + '.md';
  await writeFile(markdownFile, markdown(path.basename(out)));
  return markdownFile;
}

// ---------------------------------------------------------------- event writes (/metrics)

/** linewatch_event_write_seconds: how long batches of event messages took to reach the disk before publishing. */
export interface EventWrites {
  count: number;
  sumS: number;
  /** Cumulative counts: writes that took at most `leS` seconds. */
  buckets: { leS: number; count: number }[];
}

export function parseEventWrites(metricsText: string): EventWrites | undefined {
  const count = /^linewatch_event_write_seconds_count\s+(\S+)/m.exec(metricsText);
  const sum = /^linewatch_event_write_seconds_sum\s+(\S+)/m.exec(metricsText);
  if (!count || !sum) return undefined;
  const buckets = [...metricsText.matchAll(/^linewatch_event_write_seconds_bucket\{le="([^"]+)"\}\s+(\S+)/gm)]
    .filter((match) => match[1] !== '+Inf')
    .map((match) => ({ leS: Number(match[1]), count: Number(match[2]) }));
  return { count: Number(count[1]), sumS: Number(sum[1]), buckets };
}

/** Event writes slower than each of these (ms), from the histogram's buckets. */
export const SLOW_WRITE_MS = [10, 20, 50, 100] as const;

/** Count, mean and slow writes between two readings of the histogram (`since` absent: from the agent's start). */
export function summariseEventWrites(writes: EventWrites | undefined, since?: EventWrites) {
  if (writes === undefined) return null;
  const atMost = (reading: EventWrites | undefined, ms: number) => reading?.buckets.find((bucket) => Math.abs(bucket.leS * 1000 - ms) < 1e-6)?.count;
  const count = writes.count - (since?.count ?? 0);
  const sumS = writes.sumS - (since?.sumS ?? 0);
  return {
    what: 'batches of event messages written to disk (journal and outbox, each fdatasync-ed) before publishing (linewatch_event_write_seconds)',
    count,
    meanMs: count > 0 ? round((sumS / count) * 1000, 2) : null,
    slowerThanMs: Object.fromEntries(
      SLOW_WRITE_MS.map((ms) => {
        const fast = atMost(writes, ms);
        return [ms, fast === undefined ? null : count - (fast - (atMost(since, ms) ?? 0))];
      }),
    ) as Record<(typeof SLOW_WRITE_MS)[number], number | null>,
  };
}
