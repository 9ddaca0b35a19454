import type { AnomalyEventPayload } from '../../src/publish/payloads.js';
import type { TopicPayload } from './payloads.js';

export interface EventLogReport {
  /** Event ids in the order their first message arrived. */
  ids: string[];
  /** Per id, its distinct messages in arrival order. */
  byId: Map<string, AnomalyEventPayload[]>;
  /** Identical redeliveries (allowed: delivery is at least once). */
  duplicates: number;
  /** Everything that breaks the event contract; [] when the log is sound. */
  problems: string[];
}

/**
 * Checks what a subscriber received on `<base>/<camera>/events` against the
 * event contract: per event id a `start`, then updates, then one `end`, with
 * non-decreasing `at`; a message seen twice (same id, type and at: the
 * consumers' dedupe key) must be byte-identical to its first copy.
 * `requireEnds` also demands that every started event has ended.
 */
export function checkEventLog(messages: readonly TopicPayload[], options: { requireEnds?: boolean } = {}): EventLogReport {
  const byId = new Map<string, AnomalyEventPayload[]>();
  const seen = new Map<string, string>();
  const problems: string[] = [];
  let duplicates = 0;
  for (const message of messages) {
    if (!message.topic.endsWith('/events')) continue;
    const event = JSON.parse(message.payload) as AnomalyEventPayload;
    const key = `${event.id} ${event.type} ${event.at}`;
    const first = seen.get(key);
    if (first !== undefined) {
      duplicates++;
      if (first !== message.payload) problems.push(`${key}: a second copy differs from the first:\n  ${first}\n  ${message.payload}`);
      continue;
    }
    seen.set(key, message.payload);
    const list = byId.get(event.id) ?? [];
    list.push(event);
    byId.set(event.id, list);
  }
  for (const [id, events] of byId) {
    const types = events.map((event) => event.type);
    const shape = types.join(',');
    const ended = types.at(-1) === 'end';
    const sound =
      types[0] === 'start' &&
      types.slice(1, ended ? -1 : undefined).every((type) => type === 'update') &&
      types.filter((type) => type === 'end').length <= 1;
    if (!sound) problems.push(`event ${id}: messages out of order: ${shape}`);
    if (options.requireEnds && !ended) problems.push(`event ${id}: never ended (${shape})`);
    for (let index = 1; index < events.length; index++) {
      if (Date.parse(events[index]!.at) < Date.parse(events[index - 1]!.at)) {
        problems.push(`event ${id}: ${events[index]!.type} at ${events[index]!.at} arrived after ${events[index - 1]!.type} at ${events[index - 1]!.at}`);
      }
    }
    const cameras = new Set(events.map((event) => event.camera));
    if (cameras.size > 1) problems.push(`event ${id}: on several cameras (${[...cameras].join(', ')})`);
  }
  return { ids: [...byId.keys()], byId, duplicates, problems };
}
