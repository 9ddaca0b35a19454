import { describe, expect, it } from 'vitest';
import { EventTracker, lowerThreshold, type EndReason, type EventMessage, type EventTrackerOptions } from '../../src/scoring/events.js';

// 10 fps capture clock; frame i is captured at T0 + i * STEP.
const T0 = Date.UTC(2025, 0, 2, 3, 4, 5);
const STEP = 100;
const at = (frame: number) => T0 + frame * STEP;
const iso = (frame: number) => new Date(at(frame)).toISOString();

// Threshold 0.5, lower threshold 0.4 (hysteresis 0.8). Dyadic scores keep sums exact.
const HIGH = 0.75;
const PEAK = 1;
const MID = 0.45; // between the lower threshold and the threshold
const LOW = 0.25;

const BASE_RULES = { k: 3, n: 5, endFrames: 2, hysteresis: 0.8, minDurationMs: 0, cooldownMs: 0, updateIntervalMs: 0 };

function tracker(rules: Partial<EventTrackerOptions> = {}): EventTracker {
  let next = 0;
  return new EventTracker({ camera: 'cam1', threshold: 0.5, ...BASE_RULES, newId: () => `event-${++next}`, ...rules });
}

/** Feeds scores as frames firstFrame, firstFrame+1, ...; returns every message with the frame index that caused it. */
function feed(events: EventTracker, scores: number[], firstFrame = 0): { frame: number; message: EventMessage }[] {
  return scores.flatMap((score, offset) =>
    events.push(score, at(firstFrame + offset)).map((message) => ({ frame: firstFrame + offset, message })),
  );
}

interface Expected {
  type: 'start' | 'update' | 'end';
  id?: string;
  at: number;
  startedAt: number;
  score: number;
  /** Scores of the event's frames so far: peak, mean and count follow from them. */
  eventScores: number[];
  peakAt: number;
  reason?: EndReason;
}

function expected(e: Expected): { frame: number; message: EventMessage } {
  const sum = e.eventScores.reduce((total, score) => total + score, 0);
  const message: EventMessage = {
    type: e.type,
    id: e.id ?? 'event-1',
    camera: 'cam1',
    at: iso(e.at),
    startedAt: iso(e.startedAt),
    ...(e.type === 'end' ? { endedAt: iso(e.at) } : {}),
    score: e.score,
    peakScore: Math.max(...e.eventScores),
    meanScore: sum / e.eventScores.length,
    threshold: 0.5,
    frames: e.eventScores.length,
    durationMs: (e.at - e.startedAt) * STEP,
    ...(e.reason === undefined ? {} : { reason: e.reason }),
    peakAt: iso(e.peakAt),
    box: null,
    snapshot: null,
  };
  return { frame: e.at, message };
}

describe('k of n start', () => {
  it('starts on the frame that makes k of the last n, dated from the first of them', () => {
    //            0     1    2     3    4
    const scores = [HIGH, LOW, HIGH, LOW, PEAK];
    expect(feed(tracker(), scores)).toEqual([
      expected({ type: 'start', at: 4, startedAt: 0, score: PEAK, eventScores: scores, peakAt: 4 }),
    ]);
  });

  it('forgets frames that slid out of the window', () => {
    //                0     1    2    3    4     5     6
    const scores = [HIGH, LOW, LOW, LOW, HIGH, HIGH, HIGH];
    // At frame 5 the window (1..5) holds only two highs; frame 6 makes three, counted from frame 4.
    expect(feed(tracker(), scores)).toEqual([
      expected({ type: 'start', at: 6, startedAt: 4, score: HIGH, eventScores: [HIGH, HIGH, HIGH], peakAt: 4 }),
    ]);
  });

  it('never starts with k - 1 of n, however long it goes on', () => {
    const scores = Array.from({ length: 40 }, (_, i) => (i % 5 < 2 ? PEAK : LOW)); // 2 of every 5
    expect(feed(tracker(), scores)).toEqual([]);
  });

  it('with k = n = 1 starts on the first frame above the threshold', () => {
    expect(feed(tracker({ k: 1, n: 1 }), [LOW, MID, HIGH])).toEqual([
      expected({ type: 'start', at: 2, startedAt: 2, score: HIGH, eventScores: [HIGH], peakAt: 2 }),
    ]);
  });

  it('needs k consecutive frames when k = n', () => {
    const events = tracker({ k: 3, n: 3 });
    expect(feed(events, [HIGH, HIGH, LOW, HIGH, HIGH])).toEqual([]);
    expect(feed(events, [HIGH], 5)).toEqual([
      expected({ type: 'start', at: 5, startedAt: 3, score: HIGH, eventScores: [HIGH, HIGH, HIGH], peakAt: 3 }),
    ]);
  });

  it('counts a score equal to the threshold as not above it', () => {
    expect(feed(tracker({ k: 1, n: 1 }), [0.5, 0.5, 0.5])).toEqual([]);
  });
});

describe('hysteresis end', () => {
  it('ends after endFrames consecutive frames below the lower threshold; frames in between hold the event', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 3 });
    //                0     1    2    3    4    5    6    7
    const scores = [HIGH, MID, MID, LOW, LOW, MID, LOW, LOW];
    expect(feed(events, scores)).toEqual([
      expected({ type: 'start', at: 0, startedAt: 0, score: HIGH, eventScores: [HIGH], peakAt: 0 }),
    ]);
    // Frame 8 is the third low in a row (6, 7, 8); the MID at 5 broke the earlier run.
    expect(feed(events, [LOW], 8)).toEqual([
      expected({ type: 'end', at: 8, startedAt: 0, score: LOW, eventScores: [...scores, LOW], peakAt: 0, reason: 'recovered' }),
    ]);
    expect(events.active).toBe(false);
  });

  it('counts a score equal to the lower threshold as not below it', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 2 });
    const scores = [HIGH, 0.4, 0.4, 0.4, LOW];
    expect(feed(events, scores).map(({ message }) => message.type)).toEqual(['start']);
    expect(feed(events, [LOW], 5).map(({ message }) => message.type)).toEqual(['end']);
  });

  it('keeps the lower threshold below a negative threshold', () => {
    expect(lowerThreshold(0.5, 0.8)).toBeCloseTo(0.4, 12);
    expect(lowerThreshold(-2, 0.75)).toBe(-2.5);
    expect(lowerThreshold(3, 1)).toBe(3);
    const events = new EventTracker({ ...BASE_RULES, camera: 'z', threshold: -2, hysteresis: 0.75, k: 1, n: 1, endFrames: 1 });
    expect(events.lower).toBe(-2.5);
    expect(events.push(-1, at(0)).map((m) => m.type)).toEqual(['start']);
    expect(events.push(-2.25, at(1))).toEqual([]); // between -2.5 and -2
    expect(events.push(-3, at(2)).map((m) => m.type)).toEqual(['end']);
  });
});

describe('minimum duration', () => {
  it('extends a short blip to the minimum duration instead of suppressing it', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 2, minDurationMs: 500 });
    // Recovered by frame 2 (two lows), but the event may not end before frame 5 (500 ms).
    const scores = [HIGH, LOW, LOW, LOW, LOW];
    expect(feed(events, scores)).toEqual([
      expected({ type: 'start', at: 0, startedAt: 0, score: HIGH, eventScores: [HIGH], peakAt: 0 }),
    ]);
    expect(feed(events, [LOW], 5)).toEqual([
      expected({ type: 'end', at: 5, startedAt: 0, score: LOW, eventScores: [...scores, LOW], peakAt: 0, reason: 'recovered' }),
    ]);
  });

  it('after the minimum duration still needs the full low run', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 2, minDurationMs: 300 });
    //                0     1    2    3    4
    const scores = [HIGH, LOW, MID, LOW, LOW];
    const messages = feed(events, scores);
    expect(messages.map(({ frame, message }) => [frame, message.type])).toEqual([
      [0, 'start'],
      [4, 'end'],
    ]);
    expect(messages[1]!.message.durationMs).toBe(400);
  });

  it('starts without waiting for the minimum duration', () => {
    const messages = feed(tracker({ minDurationMs: 60_000 }), [HIGH, HIGH, HIGH]);
    expect(messages.map(({ frame, message }) => [frame, message.type])).toEqual([[2, 'start']]);
  });
});

describe('cooldown', () => {
  it('ignores frames for cooldownMs after a recovery, then needs k of n fresh frames', () => {
    const events = tracker({ k: 2, n: 2, endFrames: 1, cooldownMs: 300 });
    const first = feed(events, [HIGH, HIGH, LOW]); // start at 1, end at 2
    expect(first.map(({ frame, message }) => [frame, message.type, message.id])).toEqual([
      [1, 'start', 'event-1'],
      [2, 'end', 'event-1'],
    ]);
    // Frames 3 and 4 fall in the cooldown (until frame 5): they do not count towards the window.
    expect(feed(events, [PEAK, PEAK], 3)).toEqual([]);
    expect(feed(events, [HIGH], 5)).toEqual([]);
    expect(feed(events, [PEAK], 6)).toEqual([
      expected({ type: 'start', id: 'event-2', at: 6, startedAt: 5, score: PEAK, eventScores: [HIGH, PEAK], peakAt: 6 }),
    ]);
  });

  it('does not apply after a close', () => {
    const events = tracker({ k: 1, n: 1, cooldownMs: 10_000 });
    feed(events, [HIGH]);
    expect(events.close('camera-offline', at(1)).map((m) => m.reason)).toEqual(['camera-offline']);
    expect(feed(events, [HIGH], 2).map(({ message }) => [message.type, message.id])).toEqual([['start', 'event-2']]);
  });
});

describe('updates', () => {
  it('are sent only when the peak rose, at most once per updateIntervalMs, counted from the last message', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 10, updateIntervalMs: 300 });
    //                0     1     2     3     4    5    6    7     8
    const scores = [0.625, 0.75, 0.625, 0.625, 0.5, 0.5, 0.5, 0.875, 1];
    expect(feed(events, scores)).toEqual([
      expected({ type: 'start', at: 0, startedAt: 0, score: 0.625, eventScores: [0.625], peakAt: 0 }),
      // The rise at frame 1 waits for the interval; it goes out at frame 3 although frame 3 itself is lower.
      expected({ type: 'update', at: 3, startedAt: 0, score: 0.625, eventScores: scores.slice(0, 4), peakAt: 1 }),
      // Frames 4-6: no rise, no update. Frame 7 rises after the interval: sent at once.
      expected({ type: 'update', at: 7, startedAt: 0, score: 0.875, eventScores: scores.slice(0, 8), peakAt: 7 }),
      // Frame 8 rises again but only 100 ms after the last update.
    ]);
    expect(events.peak).toEqual({ score: 1, timestampMs: at(8), wallMs: at(8) });
  });

  it('with updateIntervalMs 0 follow every rise of the peak, and only rises', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 10 });
    const messages = feed(events, [0.625, 0.75, 0.75, 0.625, 0.875, 0.75]);
    expect(messages.map(({ frame, message }) => [frame, message.type, message.peakScore])).toEqual([
      [0, 'start', 0.625],
      [1, 'update', 0.75],
      [4, 'update', 0.875],
    ]);
  });
});

describe('close', () => {
  it('ends an open event on shutdown with the last score and no extra frame', () => {
    const events = tracker();
    const scores = [HIGH, HIGH, PEAK, MID];
    feed(events, scores);
    const closedAt = at(3) + 40;
    expect(events.close('shutdown', closedAt)).toEqual([
      {
        ...expected({ type: 'end', at: 3, startedAt: 0, score: MID, eventScores: scores, peakAt: 2, reason: 'shutdown' }).message,
        at: new Date(closedAt).toISOString(),
        endedAt: new Date(closedAt).toISOString(),
        durationMs: 340,
      },
    ]);
    expect(events.active).toBe(false);
    expect(events.peak).toBeUndefined();
  });

  it('returns nothing when no event is open, and forgets the partial window', () => {
    const events = tracker();
    expect(feed(events, [HIGH, HIGH])).toEqual([]);
    expect(events.close('shutdown', at(2))).toEqual([]);
    // Two highs before the close no longer count: three new ones are needed.
    expect(feed(events, [HIGH, HIGH], 3)).toEqual([]);
    expect(feed(events, [HIGH], 5).map(({ message }) => message.startedAt)).toEqual([iso(3)]);
  });
});

describe('maximum duration', () => {
  it('ends a long event with max-duration and starts a new one while the anomaly persists', () => {
    const events = tracker({ k: 2, n: 2, maxDurationMs: 400, cooldownMs: 10_000 });
    const messages = feed(events, Array.from({ length: 12 }, () => HIGH));
    expect(messages).toEqual([
      expected({ type: 'start', at: 1, startedAt: 0, score: HIGH, eventScores: [HIGH, HIGH], peakAt: 0 }),
      expected({ type: 'end', at: 4, startedAt: 0, score: HIGH, eventScores: Array(5).fill(HIGH), peakAt: 0, reason: 'max-duration' }),
      // No cooldown after max-duration: frames 5 and 6 make a new k of n.
      expected({ type: 'start', id: 'event-2', at: 6, startedAt: 5, score: HIGH, eventScores: [HIGH, HIGH], peakAt: 5 }),
      expected({ type: 'end', id: 'event-2', at: 9, startedAt: 5, score: HIGH, eventScores: Array(5).fill(HIGH), peakAt: 5, reason: 'max-duration' }),
      expected({ type: 'start', id: 'event-3', at: 11, startedAt: 10, score: HIGH, eventScores: [HIGH, HIGH], peakAt: 10 }),
    ]);
  });

  it('lets a recovery on the same frame win over max-duration', () => {
    const events = tracker({ k: 1, n: 1, endFrames: 1, maxDurationMs: 100 });
    expect(feed(events, [HIGH, LOW]).map(({ message }) => message.reason ?? message.type)).toEqual(['start', 'recovered']);
  });
});

describe('a whole episode', () => {
  it('gives one start, its updates and one end per anomaly, with consistent figures', () => {
    const events = new EventTracker({ camera: 'line', threshold: 0.5, k: 3, n: 5, endFrames: 4, hysteresis: 0.8, minDurationMs: 1000, cooldownMs: 2000, updateIntervalMs: 500 });
    const scores = [
      ...Array(20).fill(0.1),
      0.6, 0.3, 0.7, 0.8, 0.9, 1.2, 1.1, 0.9, 0.45, 0.2, 0.1, 0.1, 0.1, // anomaly from frame 20
      ...Array(10).fill(0.1),
      0.9, 0.9, 0.9, // within the cooldown: ignored
      ...Array(30).fill(0.1),
    ];
    const messages = scores.flatMap((score, i) => events.push(score, at(i)));
    expect(messages.map((m) => m.type)).toEqual(['start', 'update', 'end']);
    const [start, update, end] = messages as [EventMessage, EventMessage, EventMessage];
    expect(new Set(messages.map((m) => m.id)).size).toBe(1);
    expect(start.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    // Frames 18-22 hold two scores above 0.5; frame 23 makes three of the last five, counted from frame 20.
    expect(start).toMatchObject({ camera: 'line', at: iso(23), startedAt: iso(20), frames: 4, peakScore: 0.8, peakAt: iso(23) });
    // The peak rose at 24 and 25, but the update waits until 500 ms after the start.
    expect(update).toMatchObject({ at: iso(28), peakScore: 1.2, peakAt: iso(25), frames: 9 });
    // Lows from frame 29; the fourth (32) completes the run, at 1200 ms >= the 1000 ms minimum.
    expect(end).toMatchObject({ at: iso(32), endedAt: iso(32), reason: 'recovered', frames: 13, durationMs: 1200, peakScore: 1.2 });
    expect(end.meanScore).toBeCloseTo(scores.slice(20, 33).reduce((a, b) => a + b, 0) / 13, 12);
    expect(end.endedAt).toBeDefined();
    expect(start.endedAt).toBeUndefined();
    expect(start.reason).toBeUndefined();
    // A second tracker gives the same events with new ids.
    const again = new EventTracker({ camera: 'line', threshold: 0.5, k: 3, n: 5, endFrames: 4, hysteresis: 0.8, minDurationMs: 1000, cooldownMs: 2000, updateIntervalMs: 500 });
    const replay = scores.flatMap((score, i) => again.push(score, at(i)));
    expect(replay.map(({ id: _id, ...rest }) => rest)).toEqual(messages.map(({ id: _id, ...rest }) => rest));
    expect(replay[0]!.id).not.toBe(start.id);
  });
});

describe('bad input', () => {
  it('rejects rules that cannot work, naming the setting', () => {
    expect(() => tracker({ k: 6, n: 5 })).toThrow(/debounce\.k \(6\) must not exceed debounce\.n \(5\)/);
    expect(() => tracker({ k: 0 })).toThrow(/debounce\.k must be a whole number >= 1/);
    expect(() => tracker({ hysteresis: 1.5 })).toThrow(/hysteresis/);
    expect(() => tracker({ maxDurationMs: 0 })).toThrow(/maxDurationMs/);
    expect(() => tracker({ threshold: Number.NaN })).toThrow(/threshold/);
  });

  it('rejects non-finite scores and timestamps that go back', () => {
    const events = tracker();
    events.push(0.1, at(5));
    expect(() => events.push(Number.NaN, at(6))).toThrow(/score must be a finite number/);
    expect(() => events.push(0.1, at(4))).toThrow(/timestamps must not go back/);
    expect(() => events.close('shutdown', at(4))).toThrow(/timestamps must not go back/);
    expect(events.push(0.1, at(5))).toEqual([]); // equal timestamps are fine
  });

  it('debounces on the monotonic clock: a wall-clock step back mid-event changes only the payload times', () => {
    const events = tracker({ minDurationMs: 300 });
    const HOUR = 3_600_000;
    // Frames 0-3 on the true wall clock, then NTP steps the wall clock back an hour.
    const time = (frame: number) => ({ monotonicMs: 1000 + frame * STEP, wallMs: at(frame) - (frame >= 4 ? HOUR : 0) });
    const messages = [HIGH, HIGH, HIGH, HIGH, LOW, LOW].flatMap((score, frame) => events.push(score, time(frame)));
    expect(messages.map((message) => message.type)).toEqual(['start', 'end']);
    const end = messages[1]!;
    expect(end.reason).toBe('recovered');
    // Six frames, 500 ms from the first to the last: not negative, not an hour.
    expect(end.durationMs).toBe(500);
    expect(end.startedAt).toBe(iso(0));
    expect(end.at).toBe(new Date(at(5) - HOUR).toISOString());
  });
});
