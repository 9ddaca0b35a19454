import { appendFileSync, closeSync, existsSync, fdatasyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, truncateSync } from 'node:fs';
import { dirname } from 'node:path';
import { systemClock, type Clock, type Timer } from '../clock.js';
import { UsageError } from '../errors.js';
import { isConfigurationError, writeFileAtomic, writeFully } from './disk.js';

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
  /**
   * Most bytes the file takes. Entries are kept within 3/4 of it (beyond, the
   * oldest are dropped and counted); the last quarter holds the acknowledgement
   * and drop lines between two compactions, so a full outbox is not rewritten on every add.
   * A single entry larger than that is still kept, alone.
   */
  maxBytes?: number;
  /** fdatasync after each add, so an event survives a power cut, not only a crash. */
  fsync?: boolean;
  /** Called for each entry dropped to respect the bounds. */
  onDrop?: (entry: OutboxEntry) => void;
  /**
   * Called when the file cannot be written (false, with the reason) and when it
   * can again (true): once per episode, not per failed write. In between the
   * outbox keeps working in memory and retries every `retryMs`.
   */
  onDurabilityChange?: (durable: boolean, reason: string | undefined) => void;
  /** How often a memory-only outbox tries to write its entries to the file again; 0: never by itself, its owner calls persist(). */
  retryMs?: number;
  clock?: Clock;
}

export const OUTBOX_DEFAULTS = { maxEntries: 10_000, maxBytes: 16 * 1024 * 1024, retryMs: 5000 } as const;

// Compact once removals make up most of the file, but not for every few of them.
const COMPACT_MIN_DEAD_LINES = 1000;
const ENTRIES_SHARE_OF_MAX_BYTES = 0.75;

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
 * whenever it drains (the normal, connected case) and compacted (rewritten with
 * the live entries only) when dead lines dominate or the next write would take
 * it past maxBytes. A torn last line (crash mid-write) is skipped on load.
 * Writes are synchronous on purpose: an event is on disk before add()
 * returns, and events are rare (a few per anomaly), not per frame.
 *
 * A full, read-only or failing disk never throws out of here: the outbox goes
 * memory-only (`durable` false), retries on a timer and rewrites every pending
 * entry once it can. Only a misconfigured folder (see isConfigurationError)
 * makes open() throw.
 */
export class DurableOutbox {
  private readonly pending = new Map<number, OutboxEntry & { bytes: number }>();
  private readonly maxEntries: number;
  private readonly maxBytes: number;
  private readonly maxEntryBytes: number;
  private readonly clock: Clock;
  private fd: number | undefined;
  private closed = false;
  private nextSeq = 1;
  private liveBytes = 0;
  /** Bytes in the file as this outbox wrote it (live and dead lines). */
  private fileBytes = 0;
  private deadLines = 0;
  /** Lines appended by add(..., deferSync) and not yet synced. */
  private unsynced = false;
  private droppedCount = 0;
  /** Why the file cannot be written; undefined while durable. */
  private failure: Error | undefined;
  private retryTimer: Timer | undefined;
  /** Entries found in the file at open: messages a previous run never delivered. */
  readonly recovered: number;
  /** Unreadable lines found at open (a torn write). */
  readonly skippedLines: number;

  private constructor(
    private readonly options: OutboxOptions,
    folderError: Error | undefined,
  ) {
    this.maxEntries = Math.max(1, options.maxEntries ?? OUTBOX_DEFAULTS.maxEntries);
    this.maxBytes = Math.max(1, options.maxBytes ?? OUTBOX_DEFAULTS.maxBytes);
    this.maxEntryBytes = Math.max(1, Math.floor(this.maxBytes * ENTRIES_SHARE_OF_MAX_BYTES));
    this.clock = options.clock ?? systemClock;
    const { entries, skipped } = readLog(options.file);
    for (const entry of entries) {
      this.pending.set(entry.seq, { ...entry, bytes: lineBytes(entry) });
      this.liveBytes += lineBytes(entry);
      this.nextSeq = Math.max(this.nextSeq, entry.seq + 1);
    }
    this.recovered = this.pending.size;
    this.skippedLines = skipped;
    for (const entry of this.enforceBounds()) options.onDrop?.(entry);
    if (folderError) {
      this.fail(folderError);
      return;
    }
    try {
      this.rewrite();
    } catch (error) {
      if (isConfigurationError(error)) throw error;
      this.fail(error as Error);
    }
  }

  /**
   * Loads what a previous run left in `file` and opens it for appending. Throws
   * (a UsageError) only when the folder is misconfigured; on a full or
   * read-only disk it opens memory-only.
   */
  static open(options: OutboxOptions): DurableOutbox {
    const unusable = (error: unknown): UsageError =>
      new UsageError(`cannot use the MQTT outbox file ${options.file}: ${(error as Error).message}`, {
        hint: 'set dataDir in the config to a folder linewatch can write to',
        cause: error,
      });
    let folderError: Error | undefined;
    try {
      mkdirSync(dirname(options.file), { recursive: true });
    } catch (error) {
      if (isConfigurationError(error)) throw unusable(error);
      folderError = error as Error;
    }
    try {
      return new DurableOutbox(options, folderError);
    } catch (error) {
      if (error instanceof UsageError) throw error;
      throw unusable(error);
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

  /** False while the file cannot be written and entries live in memory only. */
  get durable(): boolean {
    return this.failure === undefined;
  }

  /** Why the outbox is not durable (the last write error); undefined while it is. */
  get notDurableReason(): string | undefined {
    return this.failure?.message;
  }

  /** Entries oldest first. */
  entries(): IterableIterator<OutboxEntry> {
    return this.pending.values();
  }

  /**
   * Appends the message; with `fsync`, on disk before this returns, unless `deferSync`: then
   * the caller calls sync() after its last add of a burst (one fdatasync for all of them).
   */
  add(topic: string, payload: string, deferSync = false): OutboxEntry {
    const entry = { seq: this.nextSeq++, topic, payload, enqueuedAt: new Date(this.clock.now()).toISOString() };
    const bytes = lineBytes(entry);
    this.pending.set(entry.seq, { ...entry, bytes });
    this.liveBytes += bytes;
    const dropped = this.enforceBounds();
    // A closed outbox appends by path, with nothing open to sync later: it syncs each line itself.
    const sync = this.options.fsync ?? false;
    const defer = sync && deferSync && this.fd !== undefined;
    this.write([entry, ...dropped.map((old) => ({ dropped: old.seq }))], sync && !defer);
    if (defer) this.unsynced = true;
    for (const old of dropped) this.options.onDrop?.(old);
    return entry;
  }

  /** Puts what add(..., deferSync) appended on disk (fdatasync); a failure makes the outbox memory-only. */
  sync(): void {
    if (!this.unsynced) return;
    this.unsynced = false;
    if (this.failure || this.fd === undefined) return;
    try {
      fdatasyncSync(this.fd);
    } catch (error) {
      this.fail(error as Error);
    }
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
    this.deadLines++;
    this.write([{ done: seq }], false);
  }

  /**
   * Tries to write every pending entry to the file again; true once the outbox
   * is durable (again). The retry timer calls this; an owner may call it sooner.
   */
  persist(): boolean {
    if (!this.failure) return true;
    try {
      this.rewrite();
    } catch {
      return false;
    }
    this.failure = undefined;
    this.clock.clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    this.options.onDurabilityChange?.(true, undefined);
    return true;
  }

  /** Closes the file; a later add() still appends to it (an event raised during shutdown is not lost). */
  close(): void {
    this.closed = true;
    this.clock.clearInterval(this.retryTimer);
    this.retryTimer = undefined;
    // The last chance to save what only memory holds, in case space came back since the last retry.
    if (this.failure) this.persist();
    this.closeFile();
  }

  private closeFile(): void {
    if (this.fd === undefined) return;
    const fd = this.fd;
    this.fd = undefined;
    try {
      closeSync(fd);
    } catch {
      // Nothing left to do with a descriptor that cannot even be closed.
    }
  }

  /** Drops the oldest entries beyond the bounds (always keeping the newest) and returns them. */
  private enforceBounds(): OutboxEntry[] {
    const dropped: OutboxEntry[] = [];
    while (this.pending.size > 1 && (this.pending.size > this.maxEntries || this.liveBytes > this.maxEntryBytes)) {
      const oldest = this.pending.values().next().value!;
      this.pending.delete(oldest.seq);
      this.liveBytes -= oldest.bytes;
      this.droppedCount++;
      this.deadLines++;
      const { bytes: _bytes, ...entry } = oldest;
      dropped.push(entry);
    }
    return dropped;
  }

  /** Appends lines, or compacts instead when that is due; memory-only while the disk fails. */
  private write(lines: OutboxLine[], sync: boolean): void {
    if (this.failure) return;
    const text = lines.map((line) => JSON.stringify(line) + '\n').join('');
    const bytes = Buffer.byteLength(text);
    try {
      // The rewrite holds exactly the live entries, so it stands in for the append.
      if (this.fileBytes + bytes > this.maxBytes || (this.deadLines >= COMPACT_MIN_DEAD_LINES && this.deadLines > 2 * this.pending.size)) {
        this.rewrite();
        return;
      }
      if (this.fd !== undefined) {
        writeFully(this.fd, text);
        if (sync) fdatasyncSync(this.fd);
      } else {
        appendFileSync(this.options.file, text, { flush: sync });
      }
      this.fileBytes += bytes;
    } catch (error) {
      this.fail(error as Error);
    }
  }

  private truncate(): void {
    this.deadLines = 0;
    try {
      // O_APPEND writes go to the new end, so the same descriptor stays usable.
      if (this.fd !== undefined) ftruncateSync(this.fd, 0);
      else truncateSync(this.options.file, 0);
      this.fileBytes = 0;
    } catch (error) {
      // Memory-only already: a file that still lists delivered events costs duplicates after a crash, not losses.
      if (!this.failure) this.fail(error as Error);
    }
  }

  /** Replaces the file by the live entries only (write, fsync, rename: never a half-written log). Throws. */
  private rewrite(): void {
    const text = [...this.pending.values()].map(({ bytes: _bytes, ...entry }) => JSON.stringify(entry) + '\n').join('');
    writeFileAtomic(this.options.file, text, true);
    this.closeFile();
    if (!this.closed) this.fd = openSync(this.options.file, 'a');
    this.fileBytes = Buffer.byteLength(text);
    this.deadLines = 0;
  }

  /** Goes memory-only (once per episode) and retries on a timer until the file can be written again. */
  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.closeFile();
    this.options.onDurabilityChange?.(false, error.message);
    const retryMs = this.options.retryMs ?? OUTBOX_DEFAULTS.retryMs;
    if (this.closed || retryMs <= 0) return;
    this.retryTimer = this.clock.setInterval(() => this.persist(), retryMs);
    // A retry alone must not keep the process alive.
    (this.retryTimer as { unref?: () => void }).unref?.();
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
