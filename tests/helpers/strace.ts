import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const hasStrace = (() => {
  try {
    execFileSync('strace', ['-V'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/**
 * The system calls in `calls` that this process makes (every thread) while `work` runs, as
 * strace prints them: what reaches the kernel, not what the code says it does. `rename` is
 * always traced: a marker rename tells that strace is attached.
 */
export async function syscallsDuring(calls: readonly string[], work: () => unknown): Promise<string[]> {
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-strace-'));
  try {
    const trace = join(dir, 'strace.txt');
    const traced = [...new Set([...calls, 'rename'])].join(',');
    const tracer = spawn('strace', ['-f', '-qq', '-e', `trace=${traced}`, '-o', trace, '-p', String(process.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    tracer.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const marker = join(dir, 'attached');
    const deadline = Date.now() + 5000;
    for (;;) {
      const temporary = `${marker}.${Date.now()}.tmp`;
      writeFileSync(temporary, 'x');
      renameSync(temporary, marker);
      if (existsSync(trace) && readFileSync(trace, 'utf8').includes(marker)) break;
      if (Date.now() > deadline) throw new Error(`timed out waiting for strace to attach (${stderr.trim()})`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const before = readFileSync(trace, 'utf8').split('\n').length;
    await work();
    const exited = new Promise((resolve) => tracer.once('exit', resolve));
    tracer.kill('SIGINT');
    await exited;
    return readFileSync(trace, 'utf8').split('\n').slice(before - 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** How many of `lines` (strace output) are calls of `call`. */
export function countCalls(lines: readonly string[], call: string): number {
  return lines.filter((line) => new RegExp(`^(\\[pid +\\d+\\] )?(\\d+ +)?${call}\\(`).test(line)).length;
}
