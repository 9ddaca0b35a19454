import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EventPictures, SNAPSHOT_REFRESH_MS, type EventPictureDeps } from '../../src/agent/event-pictures.js';
import { SnapshotStore, type SnapshotInput } from '../../src/publish/snapshot.js';
import type { EventMessage } from '../../src/scoring/events.js';
import type { Frame } from '../../src/source/index.js';

const SIZE = 16;
const dir = mkdtempSync(join(tmpdir(), 'linewatch-pictures-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A real store that also notes which peak (by its frame's time) each save drew. */
class CountingStore extends SnapshotStore {
  readonly saved: number[] = [];
  override save(input: SnapshotInput): Promise<string> {
    this.saved.push((input.image as { pixels: Uint8Array }).pixels[0]!);
    return super.save(input);
  }
}

function frameAt(seconds: number): Frame {
  // The first pixel carries the frame's time in seconds, so a snapshot tells which frame it drew.
  const data = new Uint8Array(SIZE * SIZE).fill(100);
  data[0] = seconds;
  return { cameraId: 'cam1', seq: seconds, capturedAt: 1_700_000_000_000 + seconds * 1000, monotonicAt: seconds * 1000, width: SIZE, height: SIZE, channels: 1, data };
}

function hotMap(): Float32Array {
  const map = new Float32Array(SIZE * SIZE);
  map[5 * SIZE + 5] = 1;
  return map;
}

function pictures(store: SnapshotStore, keep = 8): EventPictures {
  const deps = {
    camera: { name: 'cam1' },
    bundle: { manifest: { input: { width: SIZE, height: SIZE, channels: 1 } } },
    source: { sourceSize: { width: SIZE, height: SIZE }, previewNear: () => undefined },
    snapshots: store,
    log: { warn: () => {} },
    keep,
  } as unknown as EventPictureDeps;
  return new EventPictures(deps);
}

const message = (type: EventMessage['type']) => ({ type, id: 'event-1' }) as EventMessage;

describe('EventPictures snapshots', () => {
  it('writes at the start, at most every SNAPSHOT_REFRESH_MS while the peak rises, and the final peak at the end', async () => {
    const store = new CountingStore({ dir, retain: 10 });
    const event = pictures(store);
    const step = (seconds: number, peakSeconds: number, type: EventMessage['type'] | undefined) => {
      const frame = frameAt(seconds);
      event.scored(frame, hotMap(), { score: seconds, timestampMs: peakSeconds * 1000, wallMs: frame.capturedAt });
      return type ? event.picture(message(type)) : undefined;
    };
    expect(SNAPSHOT_REFRESH_MS).toBe(5000);
    const start = step(0, 0, 'start');
    expect(start?.snapshot).toBe(store.pathFor('cam1', 'event-1'));
    step(1, 1, 'update'); // a higher peak 1 s later: not yet
    step(4, 4, 'update'); // 4 s: not yet
    step(5, 5, 'update'); // 5 s after the last write: the peak of second 5
    step(6, 6, 'update'); // 1 s after that: not yet
    step(7, 6, undefined); // no new peak
    const end = step(8, 6, 'end'); // the end writes the final peak, second 6
    expect(end?.snapshot).toBe(start?.snapshot);
    expect(store.saved).toEqual([0, 5, 6]);
  });

  it('an end whose peak was already written writes nothing more', () => {
    const store = new CountingStore({ dir, retain: 10 });
    const event = pictures(store);
    event.scored(frameAt(0), hotMap(), { score: 1, timestampMs: 0, wallMs: 0 });
    event.picture(message('start'));
    event.scored(frameAt(2), hotMap(), { score: 1, timestampMs: 0, wallMs: 0 });
    event.picture(message('end'));
    expect(store.saved).toEqual([0]);
  });

  it("draws the peak's own frame after the window slot it was found in took later frames", () => {
    const store = new CountingStore({ dir, retain: 10 });
    const event = pictures(store, 2);
    event.scored(frameAt(0), hotMap(), { score: 5, timestampMs: 0, wallMs: 0 });
    event.picture(message('start'));
    event.scored(frameAt(1), hotMap(), { score: 9, timestampMs: 1000, wallMs: 0 });
    event.picture(message('update')); // within SNAPSHOT_REFRESH_MS: not written yet
    for (const seconds of [2, 3, 4]) event.scored(frameAt(seconds), hotMap(), { score: 9, timestampMs: 1000, wallMs: 0 });
    event.picture(message('end'));
    expect(store.saved).toEqual([0, 1]);
  });

  it("keeps none of the caller's arrays: a frame changed after scored() leaves its picture as it was", () => {
    const store = new CountingStore({ dir, retain: 10 });
    const event = pictures(store, 2);
    const frame = frameAt(7);
    event.scored(frame, hotMap(), { score: 5, timestampMs: 7000, wallMs: 0 });
    frame.data[0] = 42;
    event.picture(message('start'));
    expect(store.saved).toEqual([7]);
  });
});
