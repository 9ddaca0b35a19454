import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinewatchError, UsageError } from '../../src/errors.js';
import { colourMap, originalPathOf, SnapshotStore } from '../../src/publish/snapshot.js';
import { anomalyBox, toSourceBox } from '../../src/scoring/region.js';

const VIDEO = '../shared/data/videos/bottle-detection.mp4';
const TILE = '../shared/data/magnetic-tile/MT_Blowhole/Imgs/exp1_num_108719.jpg';
const haveData = existsSync(VIDEO) && existsSync(TILE);
if (!haveData) console.warn(`skipping the real-image snapshot tests: ${VIDEO} or ${TILE} not found (see /work/shared/data/README.md)`);

const MAP_SIZE = 64;

/** A Gaussian blob on a faint background, like a blurred SSIM error map around a defect. */
function blobMap(centreX: number, centreY: number, sigma = 5): Float32Array {
  const map = new Float32Array(MAP_SIZE * MAP_SIZE);
  for (let y = 0; y < MAP_SIZE; y++) {
    for (let x = 0; x < MAP_SIZE; x++) map[y * MAP_SIZE + x] = 0.02 + Math.exp(-((x - centreX) ** 2 + (y - centreY) ** 2) / (2 * sigma ** 2));
  }
  return map;
}

async function rgbAt(image: Buffer, x: number, y: number): Promise<[number, number, number]> {
  const { data, info } = await sharp(image).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  const offset = (y * info.width + x) * info.channels;
  return [data[offset]!, data[offset + 1]!, data[offset + 2]!];
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'linewatch-snapshots-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!haveData)('SnapshotStore on real images', () => {
  let frame: Buffer;
  beforeAll(() => {
    // A 640x360 frame of the demo video, as the preview output of ffmpeg would deliver it.
    frame = execFileSync('ffmpeg', ['-loglevel', 'error', '-ss', '20', '-i', VIDEO, '-frames:v', '1', '-f', 'image2pipe', '-c:v', 'mjpeg', 'pipe:1']);
  });

  it('overlays the map and the box on the preview JPEG at full resolution', async () => {
    const store = new SnapshotStore({ dir: join(dir, 'preview'), retain: 5 });
    const map = blobMap(40, 30);
    const mapBox = anomalyBox(map, MAP_SIZE, MAP_SIZE, 0.5)!;
    const source = { width: 640, height: 360 };
    const box = toSourceBox(mapBox, { width: MAP_SIZE, height: MAP_SIZE }, source);
    const path = await store.save({ camera: 'line1', eventId: 'event-a', image: { jpeg: frame }, map, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE, box, source });
    expect(path).toBe(join(dir, 'preview', 'line1', 'event-a.jpg'));

    const { readFile } = await import('node:fs/promises');
    const written = await readFile(path);
    const meta = await sharp(written).metadata();
    expect(meta).toMatchObject({ format: 'jpeg', width: 640, height: 360, channels: 3 });

    // The blob's centre (map 40,30 -> source 405,171) turned red; a far corner kept the frame's own colour.
    const [r, g, b] = await rgbAt(written, 405, 171);
    const [r0, , b0] = await rgbAt(frame, 405, 171);
    expect(r - b).toBeGreaterThan(r0 - b0 + 60);
    expect(r).toBeGreaterThan(g);
    const corner = await rgbAt(written, 60, 330);
    const cornerBefore = await rgbAt(frame, 60, 330);
    corner.forEach((value, channel) => expect(Math.abs(value - cornerBefore[channel]!)).toBeLessThan(16));
    // The box outline is drawn in red on its left edge, outside the hot centre.
    const edge = await rgbAt(written, box.x + 1, box.y + Math.floor(box.height / 2));
    expect(edge[0]).toBeGreaterThan(180);
    expect(edge[1]).toBeLessThan(110);
    // Beside it, the preview as captured: the same bytes, no overlay, no re-encoding.
    expect((await readFile(originalPathOf(path))).equals(frame)).toBe(true);
  });

  it('enlarges the model-input frame to the aspect ratio of the crop it came from', async () => {
    const store = new SnapshotStore({ dir: join(dir, 'pixels'), retain: 5 });
    const crop = { x: 400, y: 60, width: 240, height: 280 };
    const pixels = await sharp(frame).extract({ left: crop.x, top: crop.y, width: crop.width, height: crop.height }).resize(MAP_SIZE, MAP_SIZE, { fit: 'fill' }).greyscale().raw().toBuffer();
    expect(pixels.length).toBe(MAP_SIZE * MAP_SIZE);
    const map = blobMap(32, 32);
    const source = { width: 640, height: 360 };
    const box = toSourceBox(anomalyBox(map, MAP_SIZE, MAP_SIZE, 0.5)!, { width: MAP_SIZE, height: MAP_SIZE }, source, crop);
    const path = await store.save({
      camera: 'line1',
      eventId: 'event-b',
      image: { pixels, width: MAP_SIZE, height: MAP_SIZE, channels: 1 },
      map,
      mapWidth: MAP_SIZE,
      mapHeight: MAP_SIZE,
      box,
      source,
      crop,
    });
    const { readFile } = await import('node:fs/promises');
    const written = await readFile(path);
    // 240x280 scaled so the long side is 640.
    expect(await sharp(written).metadata()).toMatchObject({ format: 'jpeg', width: 549, height: 640 });
    const [r, , b] = await rgbAt(written, 274, 320);
    expect(r - b).toBeGreaterThan(60);
  });

  it('handles a single-channel JPEG (Magnetic Tile) without a source size', async () => {
    const store = new SnapshotStore({ dir: join(dir, 'tile'), retain: 5 });
    const { readFile } = await import('node:fs/promises');
    const tile = await readFile(TILE);
    const { width, height, channels } = await sharp(tile).metadata();
    expect(channels).toBe(1);
    const path = await store.save({ camera: 'tiles', eventId: 'blowhole', image: { jpeg: tile }, map: blobMap(20, 20), mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    expect(await sharp(await readFile(path)).metadata()).toMatchObject({ format: 'jpeg', width, height, channels: 3 });
  });
});

describe('SnapshotStore files', () => {
  const small = { pixels: new Uint8Array(16 * 16).fill(128), width: 16, height: 16, channels: 1 as const };
  const flatMap = new Float32Array(MAP_SIZE * MAP_SIZE);

  it('keeps only the newest `retain` snapshots per camera', async () => {
    const root = join(dir, 'retention');
    const store = new SnapshotStore({ dir: root, retain: 3 });
    const base = Date.now() / 1000 - 100;
    for (let i = 0; i < 5; i++) {
      const path = await store.save({ camera: 'cam1', eventId: `e${i}`, image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
      // Explicit, increasing modification times: the test must not depend on the clock's resolution.
      utimesSync(path, base + i, base + i);
    }
    await store.save({ camera: 'cam2', eventId: 'other', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    // The fifth save pruned before its own mtime was rewound; one more save prunes with all times settled.
    const last = await store.save({ camera: 'cam1', eventId: 'e5', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    // An original goes with its snapshot: `retain` counts events, not files.
    expect(readdirSync(join(root, 'cam1')).sort()).toEqual(['e3.jpg', 'e3.original.jpg', 'e4.jpg', 'e4.original.jpg', 'e5.jpg', 'e5.original.jpg']);
    expect(readdirSync(join(root, 'cam2')).sort()).toEqual(['other.jpg', 'other.original.jpg']);
    expect(last).toBe(join(root, 'cam1', 'e5.jpg'));
  });

  it('replaces the snapshot of the same event and leaves no temp files', async () => {
    const root = join(dir, 'replace');
    const store = new SnapshotStore({ dir: root, retain: 2 });
    const first = await store.save({ camera: 'cam1', eventId: 'same', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    const bright = { ...small, pixels: new Uint8Array(16 * 16).fill(250) };
    const second = await store.save({ camera: 'cam1', eventId: 'same', image: bright, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    expect(second).toBe(first);
    expect(readdirSync(join(root, 'cam1')).sort()).toEqual(['same.jpg', 'same.original.jpg']);
    const { readFile } = await import('node:fs/promises');
    expect((await rgbAt(await readFile(second), 10, 10))[0]).toBeGreaterThan(240);
    // The original of the new peak replaced the old one too, at the model-input frame's own size and grey as it was.
    const original = await readFile(originalPathOf(second));
    expect(await sharp(original).metadata()).toMatchObject({ format: 'jpeg', width: 16, height: 16, channels: 1 });
    expect((await rgbAt(original, 10, 10))[0]).toBeGreaterThan(240);
  });

  it('cleans up temp files a crash left behind, but not fresh ones', async () => {
    const root = join(dir, 'stale');
    const store = new SnapshotStore({ dir: root, retain: 2 });
    await store.save({ camera: 'cam1', eventId: 'a', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    const stale = join(root, 'cam1', '.old.jpg.1.0.tmp');
    const fresh = join(root, 'cam1', '.new.jpg.1.1.tmp');
    writeFileSync(stale, 'x');
    writeFileSync(fresh, 'x');
    const hourAgo = Date.now() / 1000 - 3600;
    utimesSync(stale, hourAgo, hourAgo);
    await store.save({ camera: 'cam1', eventId: 'b', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    expect(readdirSync(join(root, 'cam1')).sort()).toEqual(['.new.jpg.1.1.tmp', 'a.jpg', 'a.original.jpg', 'b.jpg', 'b.original.jpg']);
  });

  it('deletes an original left without its snapshot once it is old, but not one being saved', async () => {
    const root = join(dir, 'orphans');
    const store = new SnapshotStore({ dir: root, retain: 5 });
    await store.save({ camera: 'cam1', eventId: 'a', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    const old = join(root, 'cam1', 'gone.original.jpg');
    const fresh = join(root, 'cam1', 'saving.original.jpg');
    writeFileSync(old, 'x');
    writeFileSync(fresh, 'x');
    const hourAgo = Date.now() / 1000 - 3600;
    utimesSync(old, hourAgo, hourAgo);
    await store.save({ camera: 'cam1', eventId: 'b', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    expect(readdirSync(join(root, 'cam1')).sort()).toEqual(['a.jpg', 'a.original.jpg', 'b.jpg', 'b.original.jpg', 'saving.original.jpg']);
  });

  it('says clearly when it cannot write', async () => {
    const blocker = join(dir, 'not-a-directory');
    writeFileSync(blocker, 'a file where the snapshot directory should be');
    const store = new SnapshotStore({ dir: blocker, retain: 2 });
    const attempt = store.save({ camera: 'cam1', eventId: 'x', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    await expect(attempt).rejects.toBeInstanceOf(LinewatchError);
    await expect(attempt).rejects.toThrow(/cannot write snapshot .*not-a-directory\/cam1\/x\.jpg/);
    await expect(attempt).rejects.toMatchObject({ hint: expect.stringMatching(/writable directory/) });
  });

  it('says clearly when the image is corrupt', async () => {
    const store = new SnapshotStore({ dir: join(dir, 'corrupt'), retain: 2 });
    const attempt = store.save({ camera: 'cam1', eventId: 'x', image: { jpeg: Buffer.from('not a jpeg at all') }, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    await expect(attempt).rejects.toThrow(/cannot render the snapshot of event x \(cam1\)/);
    expect(existsSync(join(dir, 'corrupt', 'cam1', 'x.jpg'))).toBe(false);
    expect(existsSync(join(dir, 'corrupt', 'cam1', 'x.original.jpg'))).toBe(false);
  });

  it('refuses names that would escape the snapshot directory and a retain below 1', () => {
    const store = new SnapshotStore({ dir, retain: 1 });
    expect(() => store.pathFor('../etc', 'x')).toThrow(RangeError);
    expect(() => store.pathFor('cam1', '../../x')).toThrow(RangeError);
    expect(() => store.pathFor('cam1', '..')).toThrow(RangeError);
    expect(store.pathFor('cam1', '3f2a-11')).toBe(join(dir, 'cam1', '3f2a-11.jpg'));
    expect(() => new SnapshotStore({ dir, retain: 0 })).toThrow(UsageError);
  });
});

describe('colourMap', () => {
  it('is clear below the low level and opaque-ish and red at the high level', () => {
    const rgba = colourMap(new Float32Array([0, 0.5, 1, 2]), 4, 1, { low: 0.5, high: 1 });
    expect(rgba[3]).toBe(0);
    expect(rgba[7]).toBe(0);
    expect(rgba[11]).toBe(166);
    expect(rgba[15]).toBe(166);
    // Turbo's top end is dark red.
    expect(rgba[8]!).toBeGreaterThan(100);
    expect(rgba[10]!).toBeLessThan(20);
  });

  it('shows nothing for a flat map', () => {
    const rgba = colourMap(new Float32Array(9).fill(0.3), 3, 3);
    for (let i = 3; i < rgba.length; i += 4) expect(rgba[i]).toBe(0);
  });
});
