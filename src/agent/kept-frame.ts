import type { Frame } from '../source/index.js';

/** A scored frame with its anomaly map, held past the round that scored it. */
export interface KeptFrame {
  frame: Frame;
  map: Float32Array;
}

/**
 * Copies `frame` and `map` into `slot`'s arrays when they fit (else into new ones) and returns the slot.
 *
 * Why copy what could be referenced: a frame's pixels and map are fresh arrays per frame, and
 * V8 counts their bytes as external memory. One kept for a few hundred ms outlives two
 * young-generation collections and is promoted; promoted bytes count towards the old
 * generation's limit until a full mark-compact frees them. Holding the fresh arrays (the
 * debouncer's window of frames for event pictures, the latest frame for the API) brought a full
 * mark-compact about every second at 16 cameras. Copied into long-lived arrays, the fresh ones
 * die young, where collecting them costs nothing.
 */
export function keepInto(slot: KeptFrame | undefined, frame: Frame, map: Float32Array): KeptFrame {
  const fits = slot !== undefined && slot.frame.data.length === frame.data.length && slot.map.length === map.length;
  const kept = fits ? slot : { frame: { ...frame, data: new Uint8Array(frame.data.length) }, map: new Float32Array(map.length) };
  const { data } = kept.frame;
  Object.assign(kept.frame, frame, { data });
  data.set(frame.data);
  kept.map.set(map);
  return kept;
}

/** A copy of `kept` in arrays of its own: for work that outlives the slot's next reuse (a snapshot rendered asynchronously). */
export function detached(kept: KeptFrame): KeptFrame {
  return { frame: { ...kept.frame, data: kept.frame.data.slice() }, map: kept.map.slice() };
}
