import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/errors.js';
import { SnapshotStore } from '../../src/publish/snapshot.js';

/**
 * Retention of event snapshots: per camera, at most `retain` snapshots and at most
 * `maxBytes` on disk, a snapshot counted together with its `.original.jpg`, the oldest
 * deleted first. Files are written by hand with exact sizes and modification times, so
 * the budget arithmetic is checked to the byte.
 */

const MAP_SIZE = 16;

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'linewatch-retention-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** One "now" for every file, in whole seconds: equal ages must give equal modification times, however long the writes take. */
const NOW_S = Math.floor(Date.now() / 1000);

/** A snapshot and its original of the given sizes, `ageS` seconds old (both files). */
function pair(cameraDir: string, name: string, snapshotBytes: number, originalBytes: number, ageS: number): void {
  mkdirSync(cameraDir, { recursive: true });
  const when = NOW_S - ageS;
  for (const [file, bytes] of [
    [`${name}.jpg`, snapshotBytes],
    [`${name}.original.jpg`, originalBytes],
  ] as const) {
    writeFileSync(join(cameraDir, file), Buffer.alloc(bytes, 1));
    utimesSync(join(cameraDir, file), when, when);
  }
}

const files = (cameraDir: string) => readdirSync(cameraDir).sort();

describe('SnapshotStore retention by count and disk budget', () => {
  it('counts a snapshot and its original together against the budget and deletes both, oldest first', async () => {
    const root = join(dir, 'budget');
    const cam = join(root, 'cam1');
    // Five events of 300 + 200 bytes; e4 is the newest.
    for (let i = 0; i < 5; i++) pair(cam, `e${i}`, 300, 200, 100 - i);
    const store = new SnapshotStore({ dir: root, retain: 100, maxBytes: 1600 });
    await store.prune('cam1');
    // 3 x 500 = 1500 fits in 1600, a fourth would not: counting the snapshots alone (3 x 300 = 900 + 300) would have kept 5.
    expect(files(cam)).toEqual(['e2.jpg', 'e2.original.jpg', 'e3.jpg', 'e3.original.jpg', 'e4.jpg', 'e4.original.jpg']);
    const used = readdirSync(cam).reduce((sum, name) => sum + statSync(join(cam, name)).size, 0);
    expect(used).toBeLessThanOrEqual(1600);
  });

  it('breaks a tie of equal modification times by the name, code unit by code unit, whatever the locale', async () => {
    const root = join(dir, 'tie');
    const cam = join(root, 'cam1');
    // Equal times: "B..." sorts before "a..." by code unit (older, deleted first); a locale collation puts "a" first.
    pair(cam, 'a-event', 100, 100, 50);
    pair(cam, 'B-event', 100, 100, 50);
    await new SnapshotStore({ dir: root, retain: 1 }).prune('cam1');
    expect(files(cam)).toEqual(['a-event.jpg', 'a-event.original.jpg']);
  });

  it('applies whichever of retain and the budget is stricter', async () => {
    const root = join(dir, 'both');
    for (let i = 0; i < 6; i++) pair(join(root, 'by-count'), `e${i}`, 100, 100, 100 - i);
    for (let i = 0; i < 6; i++) pair(join(root, 'by-bytes'), `e${i}`, 100, 100, 100 - i);
    await new SnapshotStore({ dir: root, retain: 2, maxBytes: 10_000 }).prune('by-count');
    await new SnapshotStore({ dir: root, retain: 5, maxBytes: 400 }).prune('by-bytes');
    expect(files(join(root, 'by-count'))).toEqual(['e4.jpg', 'e4.original.jpg', 'e5.jpg', 'e5.original.jpg']);
    expect(files(join(root, 'by-bytes'))).toEqual(['e4.jpg', 'e4.original.jpg', 'e5.jpg', 'e5.original.jpg']);
  });

  it('never keeps an older snapshot in place of a newer one, even a smaller one that would fit', async () => {
    const root = join(dir, 'order');
    const cam = join(root, 'cam1');
    pair(cam, 'oldest-small', 50, 50, 30);
    pair(cam, 'middle-large', 600, 400, 20);
    pair(cam, 'newest', 300, 200, 10);
    await new SnapshotStore({ dir: root, retain: 10, maxBytes: 700 }).prune('cam1');
    // newest (500) fits; middle-large (1000) does not; oldest-small (100) would, but it is older than one that went.
    expect(files(cam)).toEqual(['newest.jpg', 'newest.original.jpg']);
  });

  it('keeps the newest snapshot even when it alone is over the budget (its event names it)', async () => {
    const root = join(dir, 'huge');
    const cam = join(root, 'cam1');
    pair(cam, 'old', 10, 10, 20);
    pair(cam, 'huge', 5000, 5000, 10);
    await new SnapshotStore({ dir: root, retain: 10, maxBytes: 1000 }).prune('cam1');
    expect(files(cam)).toEqual(['huge.jpg', 'huge.original.jpg']);
  });

  it('counts a snapshot whose original is missing by its own size, and leaves other cameras and other files alone', async () => {
    const root = join(dir, 'mixed');
    const cam = join(root, 'cam1');
    pair(cam, 'a', 400, 400, 30);
    // An event from before originals were written: a snapshot without one.
    writeFileSync(join(cam, 'legacy.jpg'), Buffer.alloc(400, 1));
    utimesSync(join(cam, 'legacy.jpg'), NOW_S - 20, NOW_S - 20);
    pair(cam, 'b', 400, 400, 10);
    writeFileSync(join(cam, 'notes.txt'), Buffer.alloc(10_000, 1));
    pair(join(root, 'cam2'), 'x', 4000, 4000, 40);
    await new SnapshotStore({ dir: root, retain: 10, maxBytes: 1300 }).prune('cam1');
    // b (800) + legacy (400) = 1200 fit; a (800) does not. notes.txt is no snapshot and does not count.
    expect(files(cam)).toEqual(['b.jpg', 'b.original.jpg', 'legacy.jpg', 'notes.txt']);
    expect(files(join(root, 'cam2'))).toEqual(['x.jpg', 'x.original.jpg']);
  });

  it('applies the budget on every save', async () => {
    const root = join(dir, 'on-save');
    const frame = { pixels: new Uint8Array(MAP_SIZE * MAP_SIZE).fill(90), width: MAP_SIZE, height: MAP_SIZE, channels: 1 as const };
    const map = new Float32Array(MAP_SIZE * MAP_SIZE).map((_, i) => (i % 7) / 7);
    const probe = new SnapshotStore({ dir: join(root, 'probe'), retain: 10 });
    const first = await probe.save({ camera: 'cam1', eventId: 'p', image: frame, map, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    const cameraDir = join(root, 'probe', 'cam1');
    const perEvent = readdirSync(cameraDir).reduce((sum, name) => sum + statSync(join(cameraDir, name)).size, 0);
    expect(first).toBe(join(cameraDir, 'p.jpg'));

    // Room for two events and a half: the third save must take the oldest away.
    const store = new SnapshotStore({ dir: root, retain: 10, maxBytes: Math.floor(perEvent * 2.5) });
    const base = Date.now() / 1000 - 100;
    for (let i = 0; i < 4; i++) {
      const path = await store.save({ camera: 'cam2', eventId: `e${i}`, image: frame, map, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
      // Increasing, settled modification times (the clock's resolution must not decide the order).
      for (const file of [path, path.replace(/\.jpg$/, '.original.jpg')]) utimesSync(file, base + i, base + i);
    }
    await store.save({ camera: 'cam2', eventId: 'e4', image: frame, map, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    expect(files(join(root, 'cam2'))).toEqual(['e3.jpg', 'e3.original.jpg', 'e4.jpg', 'e4.original.jpg']);
  });

  it('prunes a camera that has no snapshot folder yet without complaint, and refuses a budget of 0 or less', async () => {
    const store = new SnapshotStore({ dir: join(dir, 'empty'), retain: 3, maxBytes: 1000 });
    await expect(store.prune('cam1')).resolves.toBeUndefined();
    await expect(store.prune('../etc')).rejects.toThrow(RangeError);
    expect(() => new SnapshotStore({ dir, retain: 3, maxBytes: 0 })).toThrow(UsageError);
    expect(() => new SnapshotStore({ dir, retain: 3, maxBytes: -5 })).toThrow(/snapshots.maxMegabytes/);
    expect(new SnapshotStore({ dir, retain: 3 }).maxBytes).toBe(Number.POSITIVE_INFINITY);
  });
});
