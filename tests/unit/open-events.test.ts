import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { COMPACT_AFTER_BYTES, OpenEventJournal } from '../../src/publish/open-events.js';
import type { AnomalyEventPayload } from '../../src/publish/payloads.js';

const dirs: string[] = [];
function newDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-journal-'));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function message(id: string, type: 'start' | 'update', frames: number): AnomalyEventPayload {
  const at = new Date(Date.UTC(2026, 11, 7, 10, 0, frames)).toISOString();
  return {
    type,
    id,
    camera: 'line1',
    at,
    startedAt: '2026-12-07T10:00:00.000Z',
    score: 0.5,
    peakScore: 0.6,
    meanScore: 0.5,
    threshold: 0.2,
    frames,
    durationMs: frames * 100,
    peakAt: at,
    box: null,
    snapshot: null,
  };
}

/** A journal that saved event `a`, whose folder was then removed: its next write fails until the folder is back. */
function journalWhoseFolderIsGone(): { dir: string; file: string; journal: OpenEventJournal } {
  const dir = join(newDir(), 'data');
  mkdirSync(dir);
  const file = join(dir, 'open.jsonl');
  const journal = new OpenEventJournal(file, false);
  journal.record(message('a', 'start', 1));
  journal.persist();
  rmSync(dir, { recursive: true });
  return { dir, file, journal };
}

describe('OpenEventJournal', () => {
  it("gives the next run each open event's latest message, in the order they started", () => {
    const file = join(newDir(), 'open.jsonl');
    const journal = new OpenEventJournal(file, false);
    journal.record(message('a', 'start', 1));
    journal.record(message('b', 'start', 1));
    journal.persist();
    journal.record(message('a', 'update', 5));
    journal.record(message('c', 'start', 1));
    journal.forget('b');
    journal.persist();

    const next = new OpenEventJournal(file, false);
    expect(next.unreadable).toBeUndefined();
    expect(next.leftovers).toEqual([message('a', 'update', 5), message('c', 'start', 1)]);
  });

  it('appends each change instead of writing the file again', () => {
    const file = join(newDir(), 'open.jsonl');
    const journal = new OpenEventJournal(file, false);
    journal.record(message('a', 'start', 1));
    journal.persist();
    const inode = statSync(file).ino;
    const size = statSync(file).size;
    journal.forget('a');
    journal.persist();
    // The same file (a rewrite renames a new one over it), longer by one line.
    expect(statSync(file).ino).toBe(inode);
    expect(readFileSync(file, 'utf8').slice(size)).toBe('{"closed":"a"}\n');
    // Nothing changed: nothing written.
    journal.persist();
    expect(statSync(file).size).toBe(size + '{"closed":"a"}\n'.length);
  });

  it('rewrites the log with only the open events once it has grown past its bound', () => {
    const file = join(newDir(), 'open.jsonl');
    const journal = new OpenEventJournal(file, false);
    let frames = 0;
    while ((statSync(file, { throwIfNoEntry: false })?.size ?? 0) < COMPACT_AFTER_BYTES / 2) {
      journal.record(message('long', 'update', ++frames));
      journal.record(message(`short-${frames}`, 'start', 1));
      journal.forget(`short-${frames}`);
      journal.persist();
      if (frames > 10_000) throw new Error('the log does not grow');
    }
    const inode = statSync(file).ino;
    while (statSync(file).ino === inode) {
      journal.record(message('long', 'update', ++frames));
      journal.persist();
      if (frames > 20_000) throw new Error('the log was never rewritten');
    }
    expect(statSync(file).size).toBeLessThan(COMPACT_AFTER_BYTES / 100);
    expect(new OpenEventJournal(file, false).leftovers).toEqual([message('long', 'update', frames)]);
  });

  it('leaves out a last line cut short by a crash, quietly, and reports any other broken line', () => {
    const dir = newDir();
    const file = join(dir, 'open.jsonl');
    const journal = new OpenEventJournal(file, false);
    journal.record(message('a', 'start', 1));
    journal.persist();
    appendFileSync(file, '{"open":{"type":"start","id":"b"');
    const afterCrash = new OpenEventJournal(file, false);
    expect(afterCrash.unreadable).toBeUndefined();
    expect(afterCrash.leftovers.map((event) => event.id)).toEqual(['a']);

    // The cut line is rewritten away before anything is appended after it.
    afterCrash.record(message('c', 'start', 1));
    afterCrash.persist();
    expect(new OpenEventJournal(file, false).leftovers.map((event) => event.id)).toEqual(['a', 'c']);

    writeFileSync(file, `not json\n${readFileSync(file, 'utf8')}{"what":1}\n`);
    const damaged = new OpenEventJournal(file, false);
    expect(damaged.unreadable).toBe('2 line(s) are not journal entries');
    expect(damaged.leftovers.map((event) => event.id)).toEqual(['a', 'c']);
    damaged.persist();
    expect(new OpenEventJournal(file, false).unreadable).toBeUndefined();
  });

  it('keeps the changes a failed write could not save, and saves them with the next one', () => {
    const { dir, file, journal } = journalWhoseFolderIsGone();
    journal.record(message('b', 'start', 1));
    expect(() => journal.persist()).toThrow(/ENOENT/);
    mkdirSync(dir);
    journal.persist();
    expect(new OpenEventJournal(file, false).leftovers.map((event) => event.id)).toEqual(['a', 'b']);
  });

  it('holds a bounded number of changes while the disk keeps failing, and then writes the open events whole', () => {
    const { dir, file, journal } = journalWhoseFolderIsGone();
    for (let i = 0; i < 5000; i++) {
      journal.record(message(`short-${i}`, 'start', 1));
      journal.forget(`short-${i}`);
      if (i % 100 === 0) expect(() => journal.persist()).toThrow(/ENOENT/);
    }
    journal.record(message('b', 'start', 1));
    expect((journal as unknown as { pending: string[] }).pending.length).toBeLessThanOrEqual(1000);
    mkdirSync(dir);
    journal.persist();
    expect(new OpenEventJournal(file, false).leftovers.map((event) => event.id)).toEqual(['a', 'b']);
  });

  it("reads the whole-array file of earlier versions and removes it once its own log is written", () => {
    const dir = newDir();
    const legacy = join(dir, 'open.json');
    writeFileSync(legacy, JSON.stringify([message('old', 'update', 3)]) + '\n');
    const file = join(dir, 'open.jsonl');
    const journal = new OpenEventJournal(file, false, legacy);
    expect(journal.leftovers).toEqual([message('old', 'update', 3)]);
    journal.persist();
    expect(existsSync(legacy)).toBe(false);
    expect(new OpenEventJournal(file, false, legacy).leftovers).toEqual([message('old', 'update', 3)]);
  });
});
