import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LinewatchError, UsageError } from '../../src/errors.js';
import { BLEND_PIXELS_PER_SLICE, colourMap, originalPathOf, renderSnapshot, SnapshotStore, warmUpSnapshotRendering, type SnapshotInput } from '../../src/publish/snapshot.js';
import { realisticMap, referenceRender } from '../../bench/reference-snapshot.js';
import { anomalyBox, toSourceBox, type Box } from '../../src/scoring/region.js';

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

  it('saves one at a time, and a waiting save of an event is replaced by its newer peak', async () => {
    const root = join(dir, 'queue');
    const store = new SnapshotStore({ dir: root, retain: 10 });
    const save = (eventId: string, level: number, map = flatMap) =>
      store.save({ camera: 'cam1', eventId, image: { ...small, pixels: new Uint8Array(16 * 16).fill(level) }, map, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
    const order: string[] = [];
    const first = save('a', 10).then((path) => order.push(`a ${path}`));
    // Both wait behind a: the newer peak of b replaces the older before either is rendered, so the
    // older one's map, which could not be rendered (wrong size), is never tried.
    const older = save('b', 10, new Float32Array(3)).then((path) => order.push(`b-older ${path}`));
    const newer = save('b', 250).then((path) => order.push(`b-newer ${path}`));
    const other = save('c', 10).then((path) => order.push(`c ${path}`));
    await Promise.all([first, older, newer, other]);
    const b = store.pathFor('cam1', 'b');
    expect(order).toEqual([`a ${store.pathFor('cam1', 'a')}`, `b-older ${b}`, `b-newer ${b}`, `c ${store.pathFor('cam1', 'c')}`]);
    const { readFile } = await import('node:fs/promises');
    expect((await rgbAt(await readFile(originalPathOf(b)), 10, 10))[0]).toBeGreaterThan(240);
    expect(readdirSync(join(root, 'cam1')).sort()).toEqual(['a.jpg', 'a.original.jpg', 'b.jpg', 'b.original.jpg', 'c.jpg', 'c.original.jpg']);
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
    // The crash restarts the agent: a new store lists the folder again.
    await new SnapshotStore({ dir: root, retain: 2 }).save({ camera: 'cam1', eventId: 'b', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
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
    await new SnapshotStore({ dir: root, retain: 5 }).save({ camera: 'cam1', eventId: 'b', image: small, map: flatMap, mapWidth: MAP_SIZE, mapHeight: MAP_SIZE });
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

// ------------------------------------------------------------------ new render vs reference

const DEMO_VIDEO = 'assets/demo/bottle-detection.mp4';

async function decoded(jpeg: Buffer): Promise<{ data: Buffer; width: number; height: number }> {
  const { data, info } = await sharp(jpeg).toColourspace('srgb').raw().toBuffer({ resolveWithObject: true });
  expect(info.channels).toBe(3);
  return { data, width: info.width, height: info.height };
}

interface Difference {
  /** Mean absolute difference per channel over the whole image, in levels. */
  meanPerChannel: [number, number, number];
  /** The same over the overlay rectangle only. */
  overlayMeanPerChannel: [number, number, number];
  /** Mean of (new - reference) over all samples: a bias, not noise. */
  bias: number;
  /** 99.9th percentile of the absolute difference over all samples. */
  p999: number;
}

function difference(a: { data: Buffer; width: number; height: number }, b: { data: Buffer }, overlay: Box): Difference {
  const sums = [0, 0, 0];
  const overlaySums = [0, 0, 0];
  let overlayPixels = 0;
  const histogram = new Array<number>(256).fill(0);
  let signed = 0;
  for (let y = 0; y < a.height; y++) {
    for (let x = 0; x < a.width; x++) {
      const inside = x >= overlay.x && x < overlay.x + overlay.width && y >= overlay.y && y < overlay.y + overlay.height;
      if (inside) overlayPixels++;
      for (let c = 0; c < 3; c++) {
        const i = (y * a.width + x) * 3 + c;
        signed += a.data[i]! - b.data[i]!;
        const d = Math.abs(a.data[i]! - b.data[i]!);
        sums[c]! += d;
        if (inside) overlaySums[c]! += d;
        histogram[d]!++;
      }
    }
  }
  const samples = a.width * a.height * 3;
  let seen = 0;
  let p999 = 0;
  for (; p999 < 256 && (seen += histogram[p999]!) < 0.999 * samples; p999++);
  const pixels = a.width * a.height;
  return {
    meanPerChannel: sums.map((s) => s / pixels) as Difference['meanPerChannel'],
    overlayMeanPerChannel: overlaySums.map((s) => s / overlayPixels) as Difference['overlayMeanPerChannel'],
    bias: signed / samples,
    p999,
  };
}

/**
 * Close enough to be the same picture: both are JPEGs (q85) of slightly different pixels, so a level
 * or so of noise; libvips' resize darkens low-alpha colour a little (about half a level after the
 * blend), which is the bias left. A blend with 10 % too little alpha fails on the bias and the tail.
 */
function expectClose(diff: Difference): void {
  for (const value of [...diff.meanPerChannel, ...diff.overlayMeanPerChannel]) expect(value).toBeLessThan(1.5);
  expect(Math.abs(diff.bias)).toBeLessThan(0.75);
  expect(diff.p999).toBeLessThanOrEqual(8);
}

/** The middle of the outline's stroke on each side of the box (output pixels). */
function strokeMiddles(box: Box, width: number, height: number): Array<[number, number]> {
  const stroke = Math.max(3, Math.round(Math.min(width, height) / 120));
  const left = Math.max(0, box.x);
  const top = Math.max(0, box.y);
  const right = Math.min(width, box.x + box.width);
  const bottom = Math.min(height, box.y + box.height);
  const midX = Math.floor((left + right) / 2);
  const midY = Math.floor((top + bottom) / 2);
  const inset = stroke / 2;
  return [
    [Math.floor(left + inset), midY],
    [Math.floor(right - inset), midY],
    [midX, Math.floor(top + inset)],
    [midX, Math.floor(bottom - inset)],
  ];
}

describe('renderSnapshot against the libvips composite it replaced', () => {
  let frame: Buffer;
  const map = realisticMap();
  const mapSize = { mapWidth: 112, mapHeight: 64 };
  beforeAll(() => {
    frame = execFileSync('ffmpeg', ['-loglevel', 'error', '-ss', '12', '-i', DEMO_VIDEO, '-frames:v', '1', '-f', 'image2pipe', '-c:v', 'mjpeg', '-q:v', '3', 'pipe:1']);
  });

  const cases: Array<{ name: string; input: () => Promise<SnapshotInput>; overlay: Box; box?: { box: Box; scale: number; offset: { x: number; y: number } } }> = [
    {
      name: 'preview, whole frame, no box',
      input: async () => ({ camera: 'c', eventId: 'e', image: { jpeg: frame }, map, ...mapSize }),
      overlay: { x: 0, y: 0, width: 640, height: 360 },
    },
    {
      name: 'preview, whole frame, box',
      input: async () => ({ camera: 'c', eventId: 'e', image: { jpeg: frame }, map, ...mapSize, box: { x: 330, y: 95, width: 150, height: 110 } }),
      overlay: { x: 0, y: 0, width: 640, height: 360 },
      box: { box: { x: 330, y: 95, width: 150, height: 110 }, scale: 1, offset: { x: 0, y: 0 } },
    },
    {
      // A 1920x1080 camera with a 640x360 preview: fractional box edges, the crop on the right.
      name: 'preview of a larger source, crop and box, fixed score level',
      input: async () => ({
        camera: 'c',
        eventId: 'e',
        image: { jpeg: frame },
        map,
        ...mapSize,
        source: { width: 1920, height: 1080 },
        crop: { x: 700, y: 100, width: 1100, height: 900 },
        box: { x: 1301, y: 370, width: 400, height: 251 },
        scoreLevel: { low: 0.1, high: 0.8 },
      }),
      overlay: { x: 233, y: 33, width: 367, height: 300 },
      box: { box: { x: 1301, y: 370, width: 400, height: 251 }, scale: 1 / 3, offset: { x: 0, y: 0 } },
    },
    {
      name: 'preview, box on the image edge',
      input: async () => ({ camera: 'c', eventId: 'e', image: { jpeg: frame }, map, ...mapSize, box: { x: -20, y: 250, width: 200, height: 140 } }),
      overlay: { x: 0, y: 0, width: 640, height: 360 },
      box: { box: { x: -20, y: 250, width: 200, height: 140 }, scale: 1, offset: { x: 0, y: 0 } },
    },
  ];

  it.each(cases)('matches the reference: $name', async ({ input, overlay, box }) => {
    const snapshotInput = await input();
    const [ours, theirs] = await Promise.all([renderSnapshot(snapshotInput).then(decoded), referenceRender(snapshotInput).then(decoded)]);
    expect([ours.width, ours.height]).toEqual([theirs.width, theirs.height]);
    const diff = difference(ours, theirs, overlay);
    console.log(`snapshot vs reference: ${JSON.stringify(diff)}`);
    expectClose(diff);
    if (box) {
      const scaled = { x: (box.box.x - box.offset.x) * box.scale, y: (box.box.y - box.offset.y) * box.scale, width: box.box.width * box.scale, height: box.box.height * box.scale };
      for (const [x, y] of strokeMiddles(scaled, ours.width, ours.height)) {
        const i = (y * ours.width + x) * 3;
        expect(ours.data[i]).toBeGreaterThan(215);
        expect(ours.data[i + 1]).toBeLessThan(80);
        expect(ours.data[i + 2]).toBeLessThan(80);
      }
    }
  });

  it('blends in slices with the event loop free between them, and the same picture as in one go', async () => {
    // The crop case: the overlay covers 367x300 output pixels, so a slice is floor(25000 / 367) rows.
    const input = await cases[2]!.input();
    let pauses = 0;
    const sliced = await renderSnapshot(input, () => {
      pauses++;
      return new Promise((resolve) => setImmediate(resolve));
    });
    const whole = await renderSnapshot(input, async () => {});
    const rowsPerSlice = Math.floor(BLEND_PIXELS_PER_SLICE / 367);
    expect(pauses).toBe(Math.ceil(300 / rowsPerSlice) - 1);
    expect(sliced.equals(whole)).toBe(true);
  });

  it('warms up without touching the disk, and leaves later pictures as they were', async () => {
    const input = await cases[2]!.input();
    const before = await renderSnapshot(input);
    const cwd = mkdtempSync(join(tmpdir(), 'linewatch-warm-up-'));
    const previous = process.cwd();
    process.chdir(cwd);
    try {
      expect(await warmUpSnapshotRendering(2)).toBeGreaterThan(0);
      expect(readdirSync(cwd)).toEqual([]);
    } finally {
      process.chdir(previous);
      rmSync(cwd, { recursive: true, force: true });
    }
    expect((await renderSnapshot(input)).equals(before)).toBe(true);
  });

  it('gives each of two renders running at once (interleaved slices) its own picture', async () => {
    const [first, second] = [await cases[1]!.input(), await cases[2]!.input()];
    const alone = [await renderSnapshot(first), await renderSnapshot(second)];
    const together = await Promise.all([renderSnapshot(first), renderSnapshot(second)]);
    expect(together[0]!.equals(alone[0]!)).toBe(true);
    expect(together[1]!.equals(alone[1]!)).toBe(true);
  });

  it('matches the reference for a model-input frame (no preview), grey and colour, with crop and box', async () => {
    const crop = { x: 400, y: 60, width: 240, height: 280 };
    const source = { width: 640, height: 360 };
    for (const channels of [1, 3] as const) {
      let pipeline = sharp(frame).extract({ left: crop.x, top: crop.y, width: crop.width, height: crop.height }).resize(112, 64, { fit: 'fill' });
      pipeline = channels === 1 ? pipeline.greyscale() : pipeline.removeAlpha();
      const pixels = await pipeline.raw().toBuffer();
      expect(pixels.length).toBe(112 * 64 * channels);
      const box = { x: 470, y: 120, width: 90, height: 130 };
      const input: SnapshotInput = { camera: 'c', eventId: 'e', image: { pixels, width: 112, height: 64, channels }, map, ...mapSize, box, source, crop };
      const [ours, theirs] = await Promise.all([renderSnapshot(input).then(decoded), referenceRender(input).then(decoded)]);
      expect([ours.width, ours.height]).toEqual([549, 640]);
      expect([theirs.width, theirs.height]).toEqual([549, 640]);
      const diff = difference(ours, theirs, { x: 0, y: 0, width: 549, height: 640 });
      console.log(`snapshot vs reference (model frame, ${channels} channel): ${JSON.stringify(diff)}`);
      expectClose(diff);
      const scale = 640 / 280;
      const scaled = { x: (box.x - crop.x) * scale, y: (box.y - crop.y) * scale, width: box.width * scale, height: box.height * scale };
      for (const [x, y] of strokeMiddles(scaled, ours.width, ours.height)) {
        const i = (y * ours.width + x) * 3;
        expect(ours.data[i]).toBeGreaterThan(215);
        expect(ours.data[i + 1]).toBeLessThan(80);
        expect(ours.data[i + 2]).toBeLessThan(80);
      }
    }
  });
});
