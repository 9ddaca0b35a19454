/**
 * What a full queue does with a new frame:
 * - `drop-oldest` (live cameras): evict the oldest queued frame, so memory never grows with load and the
 *   consumer always sees recent frames;
 * - `pause` (offline runs over files): the caller stops reading ffmpeg's pipe, so ffmpeg blocks and no
 *   frame is lost; the queue may then overshoot its capacity by the frames of one pipe chunk.
 */
export type OverflowPolicy = 'drop-oldest' | 'pause';

/** FIFO over a circular array. */
export class FrameQueue<T> {
  private slots: (T | undefined)[];
  private head = 0;
  private size = 0;

  constructor(
    readonly capacity: number,
    readonly policy: OverflowPolicy = 'drop-oldest',
  ) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`queue capacity must be a positive integer, got ${capacity}`);
    this.slots = new Array<T | undefined>(capacity);
  }

  get length(): number {
    return this.size;
  }

  get isFull(): boolean {
    return this.size >= this.capacity;
  }

  /** Appends; returns the evicted oldest item when the queue was full under `drop-oldest`. */
  push(item: T): T | undefined {
    let evicted: T | undefined;
    if (this.size === this.slots.length) {
      if (this.policy === 'drop-oldest') evicted = this.shift();
      else this.grow();
    }
    this.slots[(this.head + this.size) % this.slots.length] = item;
    this.size += 1;
    return evicted;
  }

  shift(): T | undefined {
    if (this.size === 0) return undefined;
    const item = this.slots[this.head];
    this.slots[this.head] = undefined;
    this.head = (this.head + 1) % this.slots.length;
    this.size -= 1;
    return item;
  }

  /** Removes everything; returns the newest item and how many older ones were discarded with it. */
  takeLatest(): { item: T | undefined; skipped: number } {
    if (this.size === 0) return { item: undefined, skipped: 0 };
    const skipped = this.size - 1;
    const item = this.slots[(this.head + this.size - 1) % this.slots.length];
    this.clear();
    return { item, skipped };
  }

  clear(): void {
    this.slots.fill(undefined);
    this.head = 0;
    this.size = 0;
  }

  private grow(): void {
    const larger = new Array<T | undefined>(this.slots.length * 2);
    for (let index = 0; index < this.size; index += 1) larger[index] = this.slots[(this.head + index) % this.slots.length];
    this.slots = larger;
    this.head = 0;
  }
}
