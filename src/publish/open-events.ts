import { existsSync, readFileSync } from 'node:fs';
import type { FaultMessage } from '../scoring/faults.js';
import type { AnomalyEventPayload } from './payloads.js';
import { writeFileAtomic } from './disk.js';

/**
 * The last start/update payload of every event (and start of every camera fault)
 * that has not ended yet, kept in
 * a small JSON file next to the outbox. A run that dies with an event open
 * (kill -9, OOM, power cut) leaves it here, and the next run ends it with
 * reason `interrupted`: without that, subscribers would hold a `start` with no
 * `end` forever. Written whole (temporary file and rename) on every change:
 * events are a few messages per anomaly, and the file holds one line per camera at most.
 */
/** What the journal keeps: an anomaly event's latest message, or a camera fault's start. */
export type OpenMessage = AnomalyEventPayload | FaultMessage;

export function isFaultMessage(message: OpenMessage): message is FaultMessage {
  return 'kind' in message;
}

export class OpenEventJournal {
  private readonly open = new Map<string, OpenMessage>();
  private dirty = false;
  /** Open events a previous run left, in the order they started. */
  readonly leftovers: readonly OpenMessage[];
  /** Why the file a previous run left could not be used (then it is ignored), or undefined. */
  readonly unreadable: string | undefined;

  constructor(
    readonly file: string,
    private readonly fsync = true,
  ) {
    const { events, problem } = readJournal(file);
    for (const event of events) this.open.set(event.id, event);
    this.leftovers = events;
    this.unreadable = problem;
  }

  /** The event's latest start or update. */
  record(event: OpenMessage): void {
    this.open.set(event.id, event);
    this.dirty = true;
  }

  /** The event's end is safe (on disk in the outbox, or acknowledged by the broker). */
  forget(id: string): void {
    if (this.open.delete(id)) this.dirty = true;
  }

  has(id: string): boolean {
    return this.open.has(id);
  }

  /** Writes the journal if it changed; throws what the disk says, and stays dirty then. */
  persist(): void {
    if (!this.dirty) return;
    writeFileAtomic(this.file, JSON.stringify([...this.open.values()]) + '\n', this.fsync);
    this.dirty = false;
  }
}

/**
 * The end of an event a crashed run left open: the figures of its last known
 * message, ended at that message's time (nothing is known about it after that).
 */
export function interruptedEnd(last: AnomalyEventPayload): AnomalyEventPayload;
export function interruptedEnd(last: OpenMessage): OpenMessage;
export function interruptedEnd(last: OpenMessage): OpenMessage {
  if (isFaultMessage(last)) {
    return { ...last, type: 'end', durationMs: Math.max(0, Date.parse(last.at) - Date.parse(last.since)), reason: 'interrupted' };
  }
  return { ...last, type: 'end', endedAt: last.at, reason: 'interrupted' };
}

function readJournal(file: string): { events: OpenMessage[]; problem?: string } {
  if (!existsSync(file)) return { events: [] };
  let value: unknown;
  try {
    const text = readFileSync(file, 'utf8');
    if (text.trim() === '') return { events: [] };
    value = JSON.parse(text);
  } catch (error) {
    return { events: [], problem: (error as Error).message };
  }
  if (!Array.isArray(value)) return { events: [], problem: 'not a JSON array' };
  const events = value.filter(isOpenEvent);
  const problem = events.length < value.length ? `${value.length - events.length} entr(y/ies) are not event messages` : undefined;
  return { events, problem };
}

function isOpenEvent(value: unknown): value is OpenMessage {
  if (typeof value !== 'object' || value === null) return false;
  const event = value as Record<string, unknown>;
  if ('kind' in event) {
    return event.type === 'start' && typeof event.id === 'string' && typeof event.camera === 'string' && typeof event.kind === 'string' && typeof event.at === 'string' && typeof event.since === 'string';
  }
  return (
    (event.type === 'start' || event.type === 'update') &&
    typeof event.id === 'string' &&
    typeof event.camera === 'string' &&
    typeof event.at === 'string' &&
    typeof event.startedAt === 'string' &&
    typeof event.durationMs === 'number' &&
    typeof event.frames === 'number'
  );
}
