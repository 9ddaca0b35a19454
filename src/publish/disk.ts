import { closeSync, fdatasyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';

/**
 * Errors that say the data folder is misconfigured (wrong path, wrong owner):
 * worth refusing to start over. Anything else (a full or read-only disk, an
 * I/O error, too many open files) can pass by itself, so the agent keeps
 * running in memory and retries rather than exiting for good.
 */
const CONFIGURATION_CODES = new Set(['EACCES', 'EPERM', 'EEXIST', 'ENOTDIR', 'EISDIR', 'ENAMETOOLONG', 'ELOOP', 'EINVAL']);

export function isConfigurationError(error: unknown): boolean {
  return CONFIGURATION_CODES.has((error as NodeJS.ErrnoException)?.code ?? '');
}

/** writeSync may write part of the buffer (a disk filling up): loop until all of it is written or a write throws. */
export function writeFully(fd: number, text: string): void {
  const buffer = Buffer.from(text);
  let offset = 0;
  while (offset < buffer.length) offset += writeSync(fd, buffer, offset, buffer.length - offset);
}

/**
 * Replaces `file` by `text` (write a temporary file, fdatasync, rename): a crash
 * leaves the old or the new content, never half of it. A failed write removes
 * the temporary file, so a full disk is not left fuller.
 */
export function writeFileAtomic(file: string, text: string, sync = true): void {
  const temporary = `${file}.tmp`;
  try {
    const fd = openSync(temporary, 'w');
    try {
      writeFully(fd, text);
      if (sync) fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, file);
  } catch (error) {
    try {
      rmSync(temporary, { force: true });
    } catch {
      // A read-only disk cannot have created it either.
    }
    throw error;
  }
}
