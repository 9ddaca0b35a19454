/**
 * `linewatch replay`: a recording scored through the agent's own camera pipeline
 * (real ffmpeg, the shipped demo model on onnxruntime), ignore masks included.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO, runCli, writeConfig } from '../helpers/agent.js';
import { payloadValidator } from '../helpers/payloads.js';

const VIDEO = path.join(REPO, 'assets/demo/bottle-detection.mp4');
const MODEL = path.join(REPO, 'models/demo');

interface ReplayJson {
  threshold: number;
  fps: number;
  frames: { t: number; score: number }[];
  events: { type: string; box: { x: number; y: number; width: number; height: number } | null; peakScore: number; reason?: string }[];
}

describe('linewatch replay', () => {
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(path.join(tmpdir(), 'linewatch-replay-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  function replay(args: string[]): ReplayJson {
    const json = path.join(dir, `${Math.random().toString(36).slice(2)}.json`);
    const result = runCli(['replay', ...args, '--json', json, '--no-timeline']);
    expect(result.code, result.output).toBe(0);
    return JSON.parse(readFileSync(json, 'utf8')) as ReplayJson;
  }

  it('scores every frame of the demo recording and raises schema-valid events that all end', () => {
    const result = replay([VIDEO, '--model', MODEL]);
    expect(result.fps).toBe(10);
    expect(result.frames.length).toBeGreaterThan(390); // 40 s at 10 fps
    expect(result.frames[10]!.t).toBeCloseTo(1, 5);
    const starts = result.events.filter((event) => event.type === 'start');
    const ends = result.events.filter((event) => event.type === 'end');
    expect(starts.length).toBeGreaterThanOrEqual(1);
    expect(ends.length).toBe(starts.length);
    payloadValidator().expectAllValid(result.events.map((event) => ({ topic: 'linewatch/dev/demo/events', payload: JSON.stringify(event) })));
  });

  it('applies the camera\'s ignore mask exactly as the agent does: no event box and less score from the masked part', () => {
    const unmasked = replay([VIDEO, '--model', MODEL]);
    const config = writeConfig(path.join(dir, 'masked.yaml'), {
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      defaults: { model: MODEL, fps: 10 },
      // The top 70 % of the frame, where the hands and bottles are.
      cameras: [{ name: 'demo', url: VIDEO, ignore: [[[0, 0], [1, 0], [1, 0.7], [0, 0.7]]] }],
    });
    const masked = replay(['-c', config]);
    const boxes = masked.events.map((event) => event.box).filter((box) => box !== null);
    expect(boxes.length).toBeGreaterThan(0);
    // Boxes are in source pixels; the model sees 112x64, so the mask ends at row 0.7 * 64.
    for (const box of boxes) expect(box!.y).toBeGreaterThanOrEqual(Math.floor(0.7 * 64));
    const peak = (result: ReplayJson) => Math.max(...result.frames.map((frame) => frame.score));
    expect(peak(masked)).toBeLessThan(peak(unmasked) * 0.8);
  });

  it('refuses a live camera without a recording, and no recording at all, with exit 2', () => {
    const config = writeConfig(path.join(dir, 'live.yaml'), {
      mqtt: { url: 'mqtt://127.0.0.1:1' },
      defaults: { model: MODEL },
      cameras: [{ name: 'line1', url: 'rtsp://127.0.0.1:1/stream' }],
    });
    const live = runCli(['replay', '-c', config]);
    expect(live.code, live.output).toBe(2);
    expect(live.stderr).toMatch(/camera line1 is a live stream: name the recording to replay/);
    const none = runCli(['replay']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/name the recording to replay/);
  });
});
