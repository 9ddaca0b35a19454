import v8 from 'node:v8';

/**
 * After a full mark-compact, V8 lets the old generation grow to this much more than what
 * survived before it starts the next one (V8's own factor settled near 1.5 here).
 */
export const HEAP_GROWING_PERCENT = 100;

/**
 * Fewer full garbage collections for the long-running agent.
 *
 * Why: the agent's live heap is small (about 20 MB) and steady, but every frame allocates
 * arrays whose bytes V8 counts as external memory, and what of it outlives two young-generation
 * collections (a snapshot being rendered, the frames an event's picture is chosen from) counts
 * towards the old generation's limit until a full collection frees it. With V8's factor of about
 * 1.5 that limit was 10 MB away: at 16 cameras x 5 fps a full mark-compact started about every
 * second, and its concurrent marking, on the helper threads that ffmpeg needs, was most of the
 * 15 % of the agent's CPU that perf counted in the garbage collector. With the old generation
 * allowed to double, a full collection comes every 8-10 s. Measured with bench/capacity.ts, this
 * agent (with kept-frame.ts's copies) against the one before, run alternately: 16 cameras, agent
 * CPU per frame 2.94 -> 2.48 ms (means of four 40 s runs each) and, counted with
 * --agent-node-flags=--trace-gc, 40-46 full collections in 55 s -> 3-5; 48 cameras (one run
 * each), 159 -> 21 full collections, 2.41 -> 2.18 ms per frame, event latency p99 150 -> 74 ms. V8's own factor is chosen to keep the main thread's share of time in
 * GC low and does not count the helper threads. The cost: up to one more live heap's worth of
 * garbage between collections (README "Memory limits").
 *
 * A V8 flag, set at run time because NODE_OPTIONS does not accept it; V8 reads it each time it
 * sets the limit after a collection. A value given on node's command line is left alone.
 */
export function fewerFullCollections(execArgv: readonly string[] = process.execArgv): boolean {
  if (execArgv.some((flag) => /^--heap[-_]growing[-_]percent\b/.test(flag))) return false;
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}
