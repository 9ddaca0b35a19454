import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A real, small tmpfs: a disk that fills up and can be made read-only, for the fault tests (needs root). */
export interface Tmpfs {
  readonly dir: string;
  /** Writes a filler file until the file system is full (ENOSPC); returns its size. */
  fill(): number;
  /** Deletes the filler: space is back. */
  free(): void;
  /** Remounts read-only (true) or read-write (false). */
  readOnly(on: boolean): void;
  unmount(): void;
}

const mounted = new Set<string>();
process.once('exit', () => {
  for (const dir of mounted) spawnSync('umount', ['-l', dir]);
});

/** Why a tmpfs cannot be mounted here (not root, no mount), or undefined when it can. */
export function tmpfsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'mounting a tmpfs needs root';
  const probe = mkdtempSync(join(tmpdir(), 'linewatch-tmpfs-probe-'));
  try {
    const result = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { encoding: 'utf8' });
    if (result.status !== 0) return `cannot mount a tmpfs: ${(result.stderr || result.error?.message || '').trim()}`;
    spawnSync('umount', [probe]);
    return undefined;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}

export function mountTmpfs(size: string): Tmpfs {
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-tmpfs-'));
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir]);
  mounted.add(dir);
  const filler = join(dir, 'filler');
  return {
    dir,
    fill() {
      const fd = openSync(filler, 'a');
      const chunk = Buffer.alloc(4096, 0x2e);
      let written = 0;
      try {
        for (;;) written += writeSync(fd, chunk);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      } finally {
        closeSync(fd);
      }
      return written;
    },
    free() {
      rmSync(filler, { force: true });
    },
    readOnly(on) {
      execFileSync('mount', ['-o', `remount,${on ? 'ro' : 'rw'}`, dir]);
    },
    unmount() {
      if (!mounted.delete(dir)) return;
      execFileSync('umount', [dir]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
