import {
  appendFileSync,
  closeSync,
  existsSync,
  fdatasyncSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { UsageError } from '../errors.js';

export interface OutboxEntry {
  /** Increases with every add, across restarts: replay order. */
  readonly seq: number;
  readonly topic: string;
  readonly payload: string;
  readonly enqueuedAt: string;
}

export interface OutboxOptions {
  /** The JSONL file; its folder is created if missing. */
  file: string;
  /** Most entries kept; beyond it the oldest are dropped (and counted). */
  maxEntries?: number;
  /** Most bytes of entries kept; beyond it the oldest are dropped (and counted). */
  maxBytes?: number;
  /** fdatasync after each add, so an event survives a power cut, not only a crash. */
  fsync?: boolean;
  /** Called for each entry dropped to respect the bounds. */
  onDrop?: (entry: OutboxEntry) => void;
  /** Called when the file cannot be written; the outbox keeps working in memory. */
  onWriteError?: (error: Error) => void;
}

export const OUTBOX_DEFAULTS = { maxEntries: 10_000, maxBytes: 16 * 1024 * 1024 } as const;

// Compact once removals make up most of the file, but not for every few of them.
const COMPACT_MIN_DEAD_LINES = 1000;

type OutboxLine =
  | { seq: number; topic: string; payload: string; enqueuedAt: string }
  | { done: number }
  | { dropped: number };

/**
 * A durable FIFO of messages waiting for the broker's acknowledgement.
 *
 * The file is an append-only log: an entry line when a message is added, a
 * `done`/`dropped` line when it leaves. Removing a line from the middle would
 * mean rewriting the file on every PUBACK; instead the log is truncated
 * whenever it drains (the normal, connected case) and compacted when dead
 * lines dominate. A torn last line (crash mid-write) is skipped on load.
 * Writes are synchronous on purpose: an event is on disk before add()
 * returns, and events are rare (a few per anomaly), not per frame.
 */
export class DurableOutbox {
  private readonly pending = new Map<number, OutboxEntry & { bytes: number }>();
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  private fd: number | undefined;
  private closed = false;
  private nextSeq = 1;
  private liveBytes = 0;
  private deadLines = 0;
  private droppedCount = 0;
  /** Entries found in the file at open: messages a previous run never delivered. */
  readonly recovered: number;
  /** Unreadable lines found at open (a torn write). */
  readonly skippedLines: number;

  private constructor(private readonly options: OutboxOptions) {
    this.maxEntries = Math.max(1, options.maxEntries ?? OUTBOX_DEFAULTS.maxEntries);
    this.maxBytes = Math.max(1, options.maxBytes ?? OUTBOX_DEFAULTS.maxBytes);
    const { entries, skipped } = readLog(options.file);
    for (const entry of entries) {
      this.pending.set(entry.seq, { ...entry, bytes: lineBytes(entry) });
      this.liveBytes += lineBytes(entry);
      this.nextSeq = Math.max(this.nextSeq, entry.seq + 1);
    }
    this.recovered = this.pending.size;
    this.skippedLines = skipped;
    this.enforceBounds(false);
    this.rewrite();
  }

  /** Loads what a previous run left in `file` and opens it for appending. */
  static open(options: OutboxOptions): DurableOutbox {
    try {
      mkdirSync(dirname(options.file), { recursive: true });
      return new DurableOutbox(options);
    } catch (error) {
      if (error instanceof UsageError) throw error;
      throw new UsageError(`cannot use the MQTT outbox file ${options.file}: ${(error as Error).message}`, {
        hint: 'set dataDir in the config to a folder linewatch can write to',
        cause: error,
      });
    }
  }

  get size(): number {
    return this.pending.size;
  }

  get bytes(): number {
    return this.liveBytes;
  }

  get dropped(): number {
    return this.droppedCount;
  }

  /** Entries oldest first. */
  entries(): IterableIterator<OutboxEntry> {
    return this.pending.values();
  }

  add(topic: string, payload: string): OutboxEntry {
    const entry = { seq: this.nextSeq++, topic, payload, enqueuedAt: new Date().toISOString() };
    const bytes = lineBytes(entry);
    this.pending.set(entry.seq, { ...entry, bytes });
    this.liveBytes += bytes;
    this.append(entry, this.options.fsync ?? false);
    this.enforceBounds(true);
    return entry;
  }

  /** The broker has the message: forget it. Unknown seqs (already dropped) are ignored. */
  remove(seq: number): void {
    const entry = this.pending.get(seq);
    if (!entry) return;
    this.pending.delete(seq);
    this.liveBytes -= entry.bytes;
    if (this.pending.size === 0) {
      this.truncate();
      return;
    }
    // Losing this line in a crash only means one duplicate delivery after restart.
    this.append({ done: seq }, false);
    this.deadLines++;
    if (this.deadLines >= COMPACT_MIN_DEAD_LINES && this.deadLines > 2 * this.pending.size) this.rewrite();
  }

  /** Closes the file; a later add() still appends to it (an event raised during shutdown is not lost). */
  close(): void {
    this.closed = true;
    this.closeFile();
  }

  private closeFile(): void {
    if (this.fd === undefined) return;
    closeSync(this.fd);
    this.fd = undefined;
  }

  private enforceBounds(logDrops: boolean): void {
    while (this.pending.size > 1 && (this.pending.size > this.maxEntries || this.liveBytes > this.maxBytes)) {
      const oldest = this.pending.values().next().value!;
      this.pending.delete(oldest.seq);
      this.liveBytes -= oldest.bytes;
      this.droppedCount++;
      if (logDrops) {
        this.append({ dropped: oldest.seq }, false);
        this.deadLines++;
      }
      this.options.onDrop?.(oldest);
    }
  }

  private append(line: OutboxLine, sync: boolean): void {
    try {
      if (this.fd !== undefined) {
        writeSync(this.fd, JSON.stringify(line) + '\n');
        if (sync) fdatasyncSync(this.fd);
      } else if (this.closed) {
        appendFileSync(this.options.file, JSON.stringify(line) + '\n', { flush: sync });
      }
    } catch (error) {
      this.options.onWriteError?.(error as Error);
    }
  }

  private truncate(): void {
    this.deadLines = 0;
    if (this.fd === undefined) return;
    try {
      // O_APPEND writes go to the new end, so the same descriptor stays usable.
      ftruncateSync(this.fd, 0);
    } catch (error) {
      this.options.onWriteError?.(error as Error);
    }
  }

  /** Replaces the file by the live entries only (write, fsync, rename: never a half-written log). */
  private rewrite(): void {
    const temporary = `${this.options.file}.tmp`;
    const lines = [...this.pending.values()].map(({ bytes: _bytes, ...entry }) => JSON.stringify(entry) + '\n');
    const tmpFd = openSync(temporary, 'w');
    try {
      writeSync(tmpFd, lines.join(''));
      fdatasyncSync(tmpFd);
    } finally {
      closeSync(tmpFd);
    }
    this.closeFile();
    renameSync(temporary, this.options.file);
    this.fd = openSync(this.options.file, 'a');
    this.deadLines = 0;
  }
}

function lineBytes(entry: OutboxEntry): number {
  return Buffer.byteLength(JSON.stringify(entry)) + 1;
}

function readLog(file: string): { entries: OutboxEntry[]; skipped: number } {
  if (!existsSync(file)) return { entries: [], skipped: 0 };
  const live = new Map<number, OutboxEntry>();
  let skipped = 0;
  for (const text of readFileSync(file, 'utf8').split('\n')) {
    if (text.trim() === '') continue;
    const line = parseLine(text);
    if (!line) {
      skipped++;
    } else if ('done' in line) {
      live.delete(line.done);
    } else if ('dropped' in line) {
      live.delete(line.dropped);
    } else {
      live.set(line.seq, line);
    }
  }
  return { entries: [...live.values()].sort((a, b) => a.seq - b.seq), skipped };
}

function parseLine(text: string): OutboxLine | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const record = value as Record<string, unknown>;
  if (Number.isInteger(record.done)) return { done: record.done as number };
  if (Number.isInteger(record.dropped)) return { dropped: record.dropped as number };
  if (
    Number.isInteger(record.seq) &&
    typeof record.topic === 'string' &&
    typeof record.payload === 'string' &&
    typeof record.enqueuedAt === 'string'
  ) {
    return { seq: record.seq as number, topic: record.topic, payload: record.payload, enqueuedAt: record.enqueuedAt };
  }
  return undefined;
}
