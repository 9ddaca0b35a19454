import { describe, expect, it } from 'vitest';
import { CameraView } from '../../src/agent/camera-view.js';
import type { FrameSource } from '../../src/agent/camera.js';
import { detached, keepInto } from '../../src/agent/kept-frame.js';
import { systemClock } from '../../src/clock.js';
import type { Frame } from '../../src/source/index.js';

const WIDTH = 32;
const HEIGHT = 16;

function frame(seq: number, grey: number): Frame {
  return { cameraId: 'cam1', seq, capturedAt: 1_700_000_000_000 + seq * 200, monotonicAt: seq * 200, width: WIDTH, height: HEIGHT, channels: 1, data: new Uint8Array(WIDTH * HEIGHT).fill(grey) };
}

function hotMap(x: number): Float32Array {
  const map = new Float32Array(WIDTH * HEIGHT);
  map[5 * WIDTH + x] = 1;
  return map;
}

describe('keepInto', () => {
  it('copies the frame and map into the slot it is given, keeping none of the caller\'s arrays', () => {
    const first = keepInto(undefined, frame(1, 10), hotMap(3));
    const slotData = first.frame.data;
    const slotMap = first.map;
    const second = frame(2, 20);
    const secondMap = hotMap(7);
    const kept = keepInto(first, second, secondMap);
    expect(kept).toBe(first);
    expect(kept.frame.data).toBe(slotData);
    expect(kept.map).toBe(slotMap);
    expect(kept.frame.seq).toBe(2);
    expect(kept.frame.data[0]).toBe(20);
    expect(kept.map[5 * WIDTH + 7]).toBe(1);
    expect(kept.map[5 * WIDTH + 3]).toBe(0);
    second.data.fill(99);
    secondMap.fill(5);
    expect(kept.frame.data[0]).toBe(20);
    expect(kept.map[0]).toBe(0);
  });

  it('takes new arrays when the slot\'s do not fit (another model size)', () => {
    const slot = keepInto(undefined, frame(1, 10), hotMap(3));
    const bigger = { ...frame(2, 30), width: WIDTH * 2, data: new Uint8Array(WIDTH * 2 * HEIGHT).fill(30) };
    const kept = keepInto(slot, bigger, new Float32Array(WIDTH * 2 * HEIGHT));
    expect(kept).not.toBe(slot);
    expect(kept.frame.data.length).toBe(WIDTH * 2 * HEIGHT);
  });

  it('detached() copies are untouched by the slot\'s next reuse', () => {
    const slot = keepInto(undefined, frame(1, 10), hotMap(3));
    const copy = detached(slot);
    keepInto(slot, frame(2, 20), hotMap(7));
    expect(copy.frame.seq).toBe(1);
    expect(copy.frame.data[0]).toBe(10);
    expect(copy.map[5 * WIDTH + 3]).toBe(1);
  });
});

describe('CameraView', () => {
  const source = { sourceSize: { width: WIDTH * 10, height: HEIGHT * 10 }, previewNear: () => undefined, on: () => undefined } as unknown as FrameSource;
  const view = () => new CameraView({ source, clock: systemClock, fps: 5, previews: false, crop: () => undefined });

  /** What `picture` gives for frame 1 alone, and for frame 1 when frame 2 is scored before it resolves. */
  async function aloneAndInterrupted(picture: (view: CameraView) => Promise<Buffer | undefined>): Promise<[Buffer, Buffer]> {
    const alone = view();
    alone.scored(frame(1, 40), hotMap(3), 0.5);
    const expected = await picture(alone);
    const busy = view();
    busy.scored(frame(1, 40), hotMap(3), 0.5);
    const pending = picture(busy);
    busy.scored(frame(2, 200), hotMap(20), 0.9); // reuses the latest's arrays
    return [expected!, (await pending)!];
  }

  it('draws the heat map of the frame it was asked for, even when later frames are scored while it renders', async () => {
    const [expected, drawn] = await aloneAndInterrupted((camera) => camera.heatmapJpeg());
    expect(drawn.equals(expected)).toBe(true);
  });

  it('encodes the frame it was asked for, even when later frames are scored while sharp encodes it', async () => {
    const [expected, encoded] = await aloneAndInterrupted((camera) => camera.frameJpeg());
    expect(encoded.equals(expected)).toBe(true);
  });
});
