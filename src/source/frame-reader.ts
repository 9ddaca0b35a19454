/** Splitting ffmpeg's pipes into whole frames, whatever the chunk boundaries. */

/**
 * Cuts a byte stream into frames of exactly `frameBytes`. Frames lying wholly inside a chunk are views of
 * that chunk (no copy; pipe chunks are freshly allocated per read, never reused); only frames straddling
 * chunks are assembled by copying into a new buffer.
 */
export class FixedSizeFramer {
  private assembling: Uint8Array | undefined;
  private filled = 0;

  constructor(readonly frameBytes: number) {
    if (!Number.isInteger(frameBytes) || frameBytes <= 0) throw new RangeError(`frameBytes must be a positive integer, got ${frameBytes}`);
  }

  push(chunk: Uint8Array): Uint8Array[] {
    const frames: Uint8Array[] = [];
    let offset = 0;
    if (this.assembling !== undefined) {
      const take = Math.min(this.frameBytes - this.filled, chunk.length);
      this.assembling.set(chunk.subarray(0, take), this.filled);
      this.filled += take;
      offset = take;
      if (this.filled < this.frameBytes) return frames;
      frames.push(this.assembling);
      this.assembling = undefined;
      this.filled = 0;
    }
    while (chunk.length - offset >= this.frameBytes) {
      frames.push(chunk.subarray(offset, offset + this.frameBytes));
      offset += this.frameBytes;
    }
    if (offset < chunk.length) {
      this.assembling = new Uint8Array(this.frameBytes);
      this.assembling.set(chunk.subarray(offset), 0);
      this.filled = chunk.length - offset;
    }
    return frames;
  }

  /** Bytes of an incomplete frame held back. */
  get pendingBytes(): number {
    return this.filled;
  }

  /** Drops a partial frame (a new ffmpeg process starts on a frame boundary). */
  reset(): void {
    this.assembling = undefined;
    this.filled = 0;
  }
}

const SOI_SECOND = 0xd8;
const EOI_SECOND = 0xd9;

/**
 * Splits a concatenation of JPEGs (ffmpeg `-f image2pipe -c:v mjpeg`) on start/end-of-image markers.
 * Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so FF D9 only ends an image
 * (ffmpeg's encoder writes no EXIF thumbnails that could contain one).
 */
export class JpegSplitter {
  private pending: Buffer = Buffer.alloc(0);
  private scanFrom = 0;

  /** @param maxImageBytes garbage without an end marker is dropped past this size, so memory stays bounded. */
  constructor(readonly maxImageBytes: number = 8 * 1024 * 1024) {}

  push(chunk: Uint8Array): Buffer[] {
    this.pending = this.pending.length === 0 ? Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length) : Buffer.concat([this.pending, chunk]);
    const images: Buffer[] = [];
    for (;;) {
      const start = this.findMarker(SOI_SECOND, 0);
      if (start < 0) {
        // Keep a trailing 0xFF: it may be the first half of a start marker.
        this.pending = this.pending.at(-1) === 0xff ? this.pending.subarray(-1) : Buffer.alloc(0);
        this.scanFrom = 0;
        break;
      }
      if (start > 0) {
        this.pending = this.pending.subarray(start);
        this.scanFrom = 0;
      }
      const end = this.findMarker(EOI_SECOND, Math.max(2, this.scanFrom));
      if (end < 0) {
        this.scanFrom = Math.max(2, this.pending.length - 1);
        if (this.pending.length > this.maxImageBytes) {
          this.pending = Buffer.alloc(0);
          this.scanFrom = 0;
        }
        break;
      }
      // Copy out: the image outlives this chunk, and a view would pin the whole concatenated buffer.
      images.push(Buffer.from(this.pending.subarray(0, end + 2)));
      this.pending = this.pending.subarray(end + 2);
      this.scanFrom = 0;
    }
    return images;
  }

  reset(): void {
    this.pending = Buffer.alloc(0);
    this.scanFrom = 0;
  }

  private findMarker(second: number, from: number): number {
    let index = this.pending.indexOf(0xff, from);
    while (index >= 0 && index + 1 < this.pending.length) {
      if (this.pending[index + 1] === second) return index;
      index = this.pending.indexOf(0xff, index + 1);
    }
    return -1;
  }
}
