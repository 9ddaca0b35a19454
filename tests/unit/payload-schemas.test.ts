import { describe, expect, it } from 'vitest';
import type { AnomalyEventPayload } from '../../src/publish/payloads.js';
import { payloadValidator } from '../helpers/payloads.js';

const validator = payloadValidator('linewatch/dev1');
const at = '2025-05-01T08:00:01.500Z';

// Scores are z-scores against the calibration set: a frame more normal than the average scores below 0.
function event(overrides: Partial<AnomalyEventPayload> = {}): AnomalyEventPayload {
  return {
    type: 'start',
    id: '3f1c2a4e-8d1b-4c7a-9e2f-0a1b2c3d4e5f',
    camera: 'line1',
    at,
    startedAt: '2025-05-01T08:00:01.000Z',
    score: -0.4,
    peakScore: 1.7,
    meanScore: -0.1,
    threshold: -0.25,
    frames: 5,
    durationMs: 500,
    peakAt: at,
    box: null,
    snapshot: null,
    ...overrides,
  };
}

const problems = (topic: string, value: unknown) => validator.problems({ topic, payload: JSON.stringify(value) });

describe('payload schemas', () => {
  it('accept negative z-scores and thresholds on the score topic', () => {
    expect(problems('linewatch/dev1/line1/score', { at, score: -1.83, threshold: 2.1 })).toEqual([]);
    expect(problems('linewatch/dev1/line1/score', { at, score: -3.2, threshold: -0.5 })).toEqual([]);
  });

  it('accept events whose scores, mean and threshold are negative', () => {
    expect(problems('linewatch/dev1/line1/events', event())).toEqual([]);
  });

  it('accept an end with reason interrupted (an event a crash left open)', () => {
    const end = event({ type: 'end', endedAt: at, reason: 'interrupted' });
    expect(problems('linewatch/dev1/line1/events', end)).toEqual([]);
    expect(problems('linewatch/dev1/line1/events', { ...end, reason: 'crashed' })).not.toEqual([]);
  });

  it('still reject what breaks the contract', () => {
    const topic = 'linewatch/dev1/line1/events';
    expect(problems(topic, event({ frames: 0 }))).not.toEqual([]);
    expect(problems(topic, event({ durationMs: -1 }))).not.toEqual([]);
    expect(problems(topic, { ...event(), score: '1.2' })).not.toEqual([]);
    expect(problems(topic, { ...event(), extra: 1 })).not.toEqual([]);
    expect(problems('linewatch/dev1/line1/score', { at, score: null, threshold: 1 })).not.toEqual([]);
    expect(problems('linewatch/dev1/line1/score', { at: 'yesterday', score: 1, threshold: 1 })).not.toEqual([]);
  });

  it('picks the schema by topic and refuses topics it has none for', () => {
    expect(validator.problems({ topic: 'linewatch/dev1/status', payload: 'online' })).toEqual([]);
    expect(validator.problems({ topic: 'linewatch/dev1/status', payload: 'maybe' })).not.toEqual([]);
    // A camera status is not a score: the same payload fails on the other topic.
    expect(problems('linewatch/dev1/line1/status', { at, score: 1, threshold: 1 })).not.toEqual([]);
    expect(validator.problems({ topic: 'linewatch/dev1/line1/other', payload: '{}' })).toEqual(['no schema for topic linewatch/dev1/line1/other']);
    expect(validator.problems({ topic: 'linewatch/dev1/line1/events', payload: 'not json' })).not.toEqual([]);
  });
});
