import { describe, expect, it } from 'vitest';
import { ScoreHistory } from '../../src/agent/camera-view.js';
import { EVENT_UPDATES_KEPT, EventHistory } from '../../src/agent/event-history.js';
import type { AnomalyEventPayload } from '../../src/publish/payloads.js';

describe('ScoreHistory', () => {
  it('keeps the newest points up to its capacity, oldest first, and windows them by monotonic time', () => {
    const history = new ScoreHistory(5);
    for (let i = 0; i < 8; i++) history.push(1_000_000 + i * 100, i * 100, i / 10);
    expect(history.length).toBe(5);
    expect(history.since(0).map((point) => point.score)).toEqual([0.3, 0.4, 0.5, 0.6, 0.7]);
    expect(history.since(550)).toEqual([
      { at: 1_000_600, score: 0.6 },
      { at: 1_000_700, score: 0.7 },
    ]);
    expect(history.since(10_000)).toEqual([]);
  });

  it("answers an event's span by wall time, and says whether it still reaches back to its start", () => {
    const history = new ScoreHistory(4);
    expect(history.between(0, Infinity)).toEqual({ points: [], complete: false });
    for (let i = 0; i < 3; i++) history.push(1000 + i * 100, i, i);
    expect(history.between(1000, 1100)).toEqual({ points: [{ at: 1000, score: 0 }, { at: 1100, score: 1 }], complete: true });
    for (let i = 3; i < 6; i++) history.push(1000 + i * 100, i, i);
    // 1000 and 1100 were overwritten: the span from 1000 is no longer whole.
    expect(history.between(1000, Infinity)).toEqual({ points: [1200, 1300, 1400, 1500].map((at, i) => ({ at, score: i + 2 })), complete: false });
    expect(history.between(1300, 1400).complete).toBe(true);
  });

  it('refuses a capacity that is not a whole number >= 1', () => {
    expect(() => new ScoreHistory(0)).toThrow(RangeError);
    expect(() => new ScoreHistory(2.5)).toThrow(RangeError);
  });
});

function message(id: string, type: AnomalyEventPayload['type'], extra: Partial<AnomalyEventPayload> = {}): AnomalyEventPayload {
  return {
    type,
    id,
    camera: 'cam',
    at: '2025-05-01T08:00:00.000Z',
    startedAt: '2025-05-01T08:00:00.000Z',
    score: 1,
    peakScore: 1,
    meanScore: 1,
    threshold: 0.5,
    frames: 1,
    durationMs: 0,
    peakAt: '2025-05-01T08:00:00.000Z',
    box: null,
    snapshot: null,
    ...extra,
  };
}

describe('EventHistory', () => {
  it('keeps the newest events, lists them newest first, by camera and up to a limit', () => {
    const history = new EventHistory(3);
    for (const [id, camera] of [['a', 'one'], ['b', 'two'], ['c', 'one'], ['d', 'one']] as const) history.event(message(id, 'start', { camera }));
    history.event(message('b', 'end', { camera: 'two' }));
    expect(history.get('a')).toBeUndefined();
    expect(history.list({ limit: 10 }).map((record) => record.id)).toEqual(['d', 'c', 'b']);
    expect(history.list({ camera: 'one', limit: 10 }).map((record) => record.id)).toEqual(['d', 'c']);
    expect(history.list({ limit: 1 }).map((record) => record.id)).toEqual(['d']);
    expect(history.get('b')!.messages.map((m) => m.type)).toEqual(['start', 'end']);
  });

  it("keeps an event's start, end and newest updates, and counts the updates it let go", () => {
    const history = new EventHistory();
    history.event(message('e', 'start'));
    for (let i = 1; i <= EVENT_UPDATES_KEPT + 5; i++) history.event(message('e', 'update', { frames: i }));
    history.event(message('e', 'end'));
    const record = history.get('e')!;
    expect(record.messages).toHaveLength(EVENT_UPDATES_KEPT + 2);
    expect(record.messages[0]!.type).toBe('start');
    expect(record.messages[1]!.frames).toBe(6);
    expect(record.messages.at(-1)!.type).toBe('end');
    expect(record.updatesDropped).toBe(5);
  });
});
