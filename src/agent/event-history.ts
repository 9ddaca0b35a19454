import type { AnomalyEventPayload } from '../publish/payloads.js';
import type { EventSink } from './event-sink.js';

/** Events kept, over all cameras; the oldest go first. */
export const EVENT_HISTORY_KEPT = 100;
/**
 * Update messages kept per event: the newest ones (start and end are always kept). A long
 * event sends one update per updateIntervalMs, and its latest figures are the ones that matter.
 */
export const EVENT_UPDATES_KEPT = 20;

export interface EventRecord {
  id: string;
  camera: string;
  /** The event's messages in the order they were sent: start, the newest updates, end. */
  messages: AnomalyEventPayload[];
  /** Updates that were sent but are no longer kept. */
  updatesDropped: number;
}

/**
 * The recent anomaly events with their messages, for the REST API: an event sink like
 * MQTT's, fed the same messages. Bounded in events and in messages per event.
 */
export class EventHistory implements Partial<EventSink> {
  /** Insertion order is the order events started (or were first heard of). */
  private readonly events = new Map<string, EventRecord>();

  constructor(private readonly kept = EVENT_HISTORY_KEPT) {}

  event(payload: AnomalyEventPayload): void {
    let record = this.events.get(payload.id);
    if (!record) {
      record = { id: payload.id, camera: payload.camera, messages: [], updatesDropped: 0 };
      this.events.set(payload.id, record);
      for (const id of this.events.keys()) {
        if (this.events.size <= this.kept) break;
        this.events.delete(id);
      }
    }
    record.messages.push(payload);
    const updates = record.messages.filter((message) => message.type === 'update').length;
    if (updates > EVENT_UPDATES_KEPT) {
      record.messages.splice(record.messages.findIndex((message) => message.type === 'update'), 1);
      record.updatesDropped++;
    }
  }

  /** Newest first, optionally one camera's only. */
  list(options: { camera?: string; limit: number }): EventRecord[] {
    const records: EventRecord[] = [];
    for (const record of [...this.events.values()].reverse()) {
      if (records.length >= options.limit) break;
      if (options.camera === undefined || record.camera === options.camera) records.push(record);
    }
    return records;
  }

  get(id: string): EventRecord | undefined {
    return this.events.get(id);
  }
}
