import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { DurableOutbox, type OutboxEntry } from '../../src/publish/outbox.js';
import { mountTmpfs, tmpfsUnavailable } from '../helpers/tmpfs.js';

let dir: string;
let file: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'linewatch-outbox-'));
  file = join(dir, 'sub', 'outbox.jsonl');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const payloads = (outbox: DurableOutbox): string[] => [...outbox.entries()].map((entry) => entry.payload);

describe('DurableOutbox', () => {
  it('keeps entries in order, forgets acknowledged ones and survives a reopen', () => {
    const first = DurableOutbox.open({ file, fsync: true });
    const a = first.add('t/a', 'A');
    first.add('t/b', 'B');
    const c = first.add('t/c', 'C');
    first.remove(a.seq);
    first.add('t/d', 'D');
    expect(payloads(first)).toEqual(['B', 'C', 'D']);
    first.close();

    const second = DurableOutbox.open({ file });
    expect(second.recovered).toBe(3);
    expect([...second.entries()].map((entry) => [entry.topic, entry.payload])).toEqual([
      ['t/b', 'B'],
      ['t/c', 'C'],
      ['t/d', 'D'],
    ]);
    // Sequence numbers continue after a restart, so replay order stays total.
    expect(second.add('t/e', 'E').seq).toBeGreaterThan(c.seq + 1);
    second.close();
  });

  it('truncates the file when it drains', () => {
    const outbox = DurableOutbox.open({ file });
    const entries = ['1', '2', '3'].map((payload) => outbox.add('t', payload));
    expect(statSync(file).size).toBeGreaterThan(0);
    for (const entry of entries) outbox.remove(entry.seq);
    expect(outbox.size).toBe(0);
    expect(statSync(file).size).toBe(0);
    outbox.add('t', '4');
    outbox.close();
    expect(payloads(DurableOutbox.open({ file }))).toEqual(['4']);
  });

  it('still persists an entry added after close (an event raised during shutdown)', () => {
    const outbox = DurableOutbox.open({ file, fsync: true });
    outbox.add('t', 'before');
    outbox.close();
    outbox.add('t', 'after');
    expect(payloads(DurableOutbox.open({ file }))).toEqual(['before', 'after']);
  });

  it('skips a torn last line left by a crash mid-write', () => {
    const outbox = DurableOutbox.open({ file });
    outbox.add('t', 'kept');
    outbox.close();
    appendFileSync(file, '{"seq":99,"topic":"t","payl');
    const reopened = DurableOutbox.open({ file });
    expect(reopened.skippedLines).toBe(1);
    expect(payloads(reopened)).toEqual(['kept']);
    // The reopen rewrote the log, so the torn line is gone for good.
    expect(readFileSync(file, 'utf8')).not.toContain('"seq":99');
    reopened.close();
  });

  it('drops the oldest entries beyond maxEntries and counts them', () => {
    const dropped: OutboxEntry[] = [];
    const outbox = DurableOutbox.open({ file, maxEntries: 3, onDrop: (entry) => dropped.push(entry) });
    for (const payload of ['1', '2', '3', '4', '5']) outbox.add('t', payload);
    expect(payloads(outbox)).toEqual(['3', '4', '5']);
    expect(outbox.dropped).toBe(2);
    expect(dropped.map((entry) => entry.payload)).toEqual(['1', '2']);
    outbox.close();
    expect(payloads(DurableOutbox.open({ file, maxEntries: 3 }))).toEqual(['3', '4', '5']);
  });

  it('drops the oldest entries beyond maxBytes but always keeps the newest', () => {
    const outbox = DurableOutbox.open({ file, maxBytes: 300 });
    for (let index = 0; index < 10; index++) outbox.add('t', String(index).repeat(50));
    expect(outbox.bytes).toBeLessThanOrEqual(300);
    expect(outbox.size).toBeGreaterThan(0);
    expect(outbox.size + outbox.dropped).toBe(10);
    expect(payloads(outbox).at(-1)).toBe('9'.repeat(50));
    outbox.add('t', 'x'.repeat(1000));
    expect(payloads(outbox)).toEqual(['x'.repeat(1000)]);
    outbox.close();
  });

  it('applies lowered bounds to what a previous run left', () => {
    const outbox = DurableOutbox.open({ file });
    for (const payload of ['1', '2', '3', '4']) outbox.add('t', payload);
    outbox.close();
    const reopened = DurableOutbox.open({ file, maxEntries: 2 });
    expect(payloads(reopened)).toEqual(['3', '4']);
    expect(reopened.dropped).toBe(2);
    reopened.close();
  });

  it('compacts the log when acknowledgements dominate it', () => {
    const outbox = DurableOutbox.open({ file });
    outbox.add('t', 'head'); // never acknowledged, so the log never drains
    for (let index = 0; index < 1500; index++) outbox.remove(outbox.add('t', `m${index}`).seq);
    expect(outbox.size).toBe(1);
    const lines = readFileSync(file, 'utf8').trim().split('\n');
    expect(lines.length).toBeLessThan(1500);
    outbox.close();
    expect(payloads(DurableOutbox.open({ file }))).toEqual(['head']);
  });

  it('keeps the file within maxBytes while nothing is acknowledged, when maxEntries is what binds', () => {
    // The broker is down: entries only arrive and the oldest are dropped. The
    // live entries stay far below maxBytes, so only their dead lines can grow the file.
    const maxBytes = 8 * 1024;
    const outbox = DurableOutbox.open({ file, maxEntries: 10, maxBytes });
    let largest = 0;
    for (let index = 0; index < 3000; index++) {
      outbox.add('linewatch/dev/line1/events', JSON.stringify({ index, pad: 'x'.repeat(index % 50) }));
      largest = Math.max(largest, statSync(file).size);
    }
    expect(largest).toBeLessThanOrEqual(maxBytes);
    expect(outbox.size).toBe(10);
    expect(outbox.dropped).toBe(2990);
    outbox.close();
    const reopened = DurableOutbox.open({ file, maxEntries: 10, maxBytes });
    expect(payloads(reopened).map((payload) => JSON.parse(payload).index)).toEqual(Array.from({ length: 10 }, (_, i) => 2990 + i));
    reopened.close();
  });

  it('keeps the file within maxBytes while nothing is acknowledged, when maxBytes is what binds', () => {
    const maxBytes = 4096;
    const outbox = DurableOutbox.open({ file, maxBytes });
    let largest = 0;
    for (let index = 0; index < 3000; index++) {
      outbox.add('linewatch/dev/line1/events', JSON.stringify({ index, pad: 'y'.repeat(index % 80) }));
      largest = Math.max(largest, statSync(file).size);
      expect(outbox.bytes).toBeLessThanOrEqual(maxBytes);
    }
    // No slack needed: a compaction replaces the append that would cross the bound.
    expect(largest).toBeLessThanOrEqual(maxBytes);
    const newest = payloads(outbox).at(-1);
    outbox.close();
    const reopened = DurableOutbox.open({ file, maxBytes });
    expect(payloads(reopened).at(-1)).toBe(newest);
    expect(reopened.size).toBeGreaterThan(10);
    reopened.close();
  });

  it('lets one entry larger than maxBytes through alone: the file is then that one line', () => {
    const maxBytes = 1024;
    const outbox = DurableOutbox.open({ file, maxBytes });
    for (let index = 0; index < 20; index++) outbox.add('t', `small ${index}`);
    const big = outbox.add('t', 'z'.repeat(3000));
    expect(payloads(outbox)).toEqual(['z'.repeat(3000)]);
    expect(statSync(file).size).toBe(Buffer.byteLength(JSON.stringify(big)) + 1);
    outbox.close();
  });

  it('says which file cannot be used and how to fix it', () => {
    // A regular file where the folder should be: fails for root too, unlike permissions.
    const notAFolder = join(dir, 'not-a-folder');
    appendFileSync(notAFolder, '');
    const target = join(notAFolder, 'outbox.jsonl');
    expect(() => DurableOutbox.open({ file: target })).toThrow(UsageError);
    try {
      DurableOutbox.open({ file: target });
    } catch (error) {
      expect((error as UsageError).message).toContain(target);
      expect((error as UsageError).hint).toContain('dataDir');
    }
  });
});

const noTmpfs = tmpfsUnavailable();
if (noTmpfs) console.warn(`outbox disk-retry test skipped: ${noTmpfs}`);

describe.skipIf(noTmpfs !== undefined)('DurableOutbox on a full disk, driven by fake timers', () => {
  beforeEach(() => vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval', 'setTimeout', 'clearTimeout', 'Date'] }));
  afterEach(() => vi.useRealTimers());

  it('keeps events in memory, retries every retryMs without a warning per try, and writes them back once space returns', () => {
    const disk = mountTmpfs('64k');
    try {
      const file = join(disk.dir, 'outbox.jsonl');
      disk.fill();
      const changes: string[] = [];
      const outbox = DurableOutbox.open({
        file,
        retryMs: 5000,
        onDurabilityChange: (durable, reason) => changes.push(durable ? 'durable' : `not durable: ${reason}`),
      });
      for (let i = 0; i < 3; i++) outbox.add('t/events', JSON.stringify({ i }));
      expect(outbox.durable).toBe(false);
      expect(outbox.size).toBe(3);
      vi.advanceTimersByTime(60_000); // twelve retries on a disk that is still full
      expect(changes).toHaveLength(1);
      expect(changes[0]).toMatch(/^not durable: .*ENOSPC/);
      disk.free();
      vi.advanceTimersByTime(4999);
      expect(outbox.durable).toBe(false);
      vi.advanceTimersByTime(1);
      expect(outbox.durable).toBe(true);
      expect(changes).toEqual([changes[0], 'durable']);
      outbox.close();
      const reopened = DurableOutbox.open({ file, retryMs: 0 });
      expect([...reopened.entries()].map((entry) => JSON.parse(entry.payload).i)).toEqual([0, 1, 2]);
      reopened.close();
    } finally {
      disk.unmount();
    }
  });
});
