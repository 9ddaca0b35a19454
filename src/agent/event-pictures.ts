import type { CameraConfig } from '../config/index.js';
import type { Logger } from '../log.js';
import type { LoadedBundle } from '../model/bundle.js';
import type { SnapshotStore } from '../publish/snapshot.js';
import type { EventMessage, ScoredFrame } from '../scoring/events.js';
import { anomalyBox, toSourceBox, type Box } from '../scoring/region.js';
import type { Frame } from '../source/index.js';
import type { FrameSource } from './camera.js';
import { detached, keepInto, type KeptFrame } from './kept-frame.js';

/** Share of the map's maximum above which pixels count as the anomalous region. */
const BOX_LEVEL = 0.5;
/**
 * A rising event rewrites its snapshot at most this often (capture time); its end writes the final
 * peak. Rewriting on every update was most of the snapshot work (48 cameras: about 8 renders per
 * event), for pictures nobody looks at before the next one replaces them.
 */
export const SNAPSHOT_REFRESH_MS = 5000;

/** The open event's peak frame, and which peak its snapshot file shows. */
interface PeakPicture {
  entry: KeptFrame;
  box: Box | null;
  snapshot: string | null;
  /** The peak the snapshot was last written from, and when (capture time). */
  written: KeptFrame | undefined;
  writtenAtMs: number;
}

export interface EventPictureDeps {
  camera: CameraConfig;
  bundle: LoadedBundle;
  source: FrameSource;
  snapshots: SnapshotStore | undefined;
  log: Logger;
  /** Frames kept to find the peak of a starting event: the debouncer's window. */
  keep: number;
}

/**
 * The pictures of a camera's events: keeps the last few scored frames so that the
 * peak of a starting event can be found, and derives the event's box (source
 * pixels) and snapshot from its peak frame.
 */
export class EventPictures {
  private readonly recent: KeptFrame[] = [];
  private peak: PeakPicture | undefined;

  constructor(private readonly deps: EventPictureDeps) {}

  /** The camera's model was swapped (same input size): boxes of later frames are measured on its maps. */
  useBundle(bundle: LoadedBundle): void {
    this.deps.bundle = bundle;
    this.recent.length = 0;
  }

  /** Remember a scored frame; `trackerPeak` is the open event's peak as the debouncer sees it. */
  scored(frame: Frame, map: Float32Array, trackerPeak: Readonly<ScoredFrame> | undefined): void {
    // The window's slots are reused (keepInto says why); the oldest one takes the new frame.
    const entry = keepInto(this.recent.length >= this.deps.keep ? this.recent.shift() : undefined, frame, map);
    this.recent.push(entry);
    if (trackerPeak && (!this.peak || this.peak.entry.frame.monotonicAt !== trackerPeak.timestampMs)) {
      const found = this.recent.find((candidate) => candidate.frame.monotonicAt === trackerPeak.timestampMs) ?? entry;
      // The peak outlives the slot it was found in, and its snapshot may still be rendering from it.
      const peakEntry = detached(found);
      this.peak = { ...(this.peak ?? { snapshot: null, written: undefined, writtenAtMs: -Infinity }), entry: peakEntry, box: this.boxOf(peakEntry) };
    }
  }

  /**
   * Box and snapshot for an event message; writes the snapshot of a new peak without holding the
   * message back: at the start, at the end, and in between at most every SNAPSHOT_REFRESH_MS.
   */
  picture(message: EventMessage): { box: Box | null; snapshot: string | null } {
    const peak = this.peak;
    let snapshot = peak?.snapshot ?? null;
    if (peak && peak.written !== peak.entry && this.deps.snapshots) {
      const now = this.recent.at(-1)?.frame.monotonicAt ?? peak.entry.frame.monotonicAt;
      if (message.type !== 'update' || now - peak.writtenAtMs >= SNAPSHOT_REFRESH_MS) {
        snapshot = this.writeSnapshot(message.id, peak.entry, peak.box);
        Object.assign(peak, { snapshot, written: peak.entry, writtenAtMs: now });
      }
    }
    const picture = { box: peak?.box ?? null, snapshot };
    if (message.type === 'end') this.peak = undefined;
    return picture;
  }

  /** Box and snapshot of one frame on its own (a failed inspection); `name` names the snapshot file. */
  still(frame: Frame, map: Float32Array, name: string): { box: Box | null; snapshot: string | null } {
    const entry: KeptFrame = { frame, map };
    const box = this.boxOf(entry);
    return { box, snapshot: this.deps.snapshots ? this.writeSnapshot(name, entry, box) : null };
  }

  private boxOf(entry: KeptFrame): Box | null {
    const { width, height } = this.deps.bundle.manifest.input;
    let max = 0;
    for (const value of entry.map) if (value > max) max = value;
    if (!(max > 0)) return null;
    const box = anomalyBox(entry.map, width, height, max * BOX_LEVEL);
    const source = this.deps.source.sourceSize ?? { width, height };
    return box && toSourceBox(box, { width, height }, source, this.cropPixels());
  }

  cropPixels(): Box | undefined {
    const crop = this.deps.camera.crop;
    const source = this.deps.source.sourceSize;
    if (!crop || !source) return undefined;
    return { x: crop.x * source.width, y: crop.y * source.height, width: crop.width * source.width, height: crop.height * source.height };
  }

  private writeSnapshot(eventId: string, entry: KeptFrame, box: Box | null): string | null {
    const { snapshots, source, bundle, camera, log } = this.deps;
    const store = snapshots!;
    const { width, height, channels } = bundle.manifest.input;
    const preview = source.previewNear(entry.frame.monotonicAt);
    const target = store.pathFor(camera.name, eventId);
    store
      .save({
        camera: camera.name,
        eventId,
        image: preview ? { jpeg: Buffer.from(preview.jpeg) } : { pixels: entry.frame.data, width, height, channels },
        map: entry.map,
        mapWidth: width,
        mapHeight: height,
        box,
        source: source.sourceSize,
        crop: this.cropPixels(),
      })
      .catch((error: unknown) => log.warn(`camera ${camera.name}: snapshot ${target} not written: ${(error as Error).message}`));
    return target;
  }
}
