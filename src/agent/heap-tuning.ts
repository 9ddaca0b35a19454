import v8 from 'node:v8';

/**
 * After a full mark-compact, V8 lets the old generation grow to (1 + this / 100) times what
 * survived before it starts the next one (V8's own factor settled near 1.5 here).
 */
export const HEAP_GROWING_PERCENT = 75;

/**
 * Fewer full garbage collections for the long-running agent.
 *
 * Why: the agent's live heap is small (about 20 MB) and steady, but every frame allocates
 * arrays whose bytes V8 counts as external memory, and what of it outlives two young-generation
 * collections (a snapshot being rendered, above all) counts towards the old generation's limit
 * until a full collection frees it. With V8's factor of about 1.5 that limit was 10 MB away: at
 * 16 cameras x 5 fps a full mark-compact started about every second, and its concurrent marking,
 * on the helper threads that ffmpeg needs, was most of the 15 % of the agent's CPU that perf
 * counted in the garbage collector. V8 chooses its factor to keep the main thread's share of GC
 * time low and does not count the helper threads.
 *
 * Measured with bench/capacity.ts at 16 cameras (--agent-node-flags=--trace-gc, 55 s): 40-46
 * full collections with V8's factor, 23 with 50, 7 with 75, 3-5 with 100. Against the previous
 * agent, run alternately, 100 took agent CPU per frame from 3.04 and 3.02 to 2.35 and 2.62 ms
 * (48 cameras: 2.41 and 2.36 -> 2.04 and 2.08); one run with 75 gave 2.35. 100 also held one
 * more live heap's worth of garbage for longer (4 cameras x 10 fps over 10 minutes: resident
 * peak 163 MB, rising 1 MB/min) so 75 keeps most of the CPU for half of that memory.
 *
 * A V8 flag, set at run time because NODE_OPTIONS does not accept it; V8 reads it each time it
 * sets the limit after a collection. A value given on node's command line is left alone.
 */
export function fewerFullCollections(execArgv: readonly string[] = process.execArgv): boolean {
  if (execArgv.some((flag) => /^--heap[-_]growing[-_]percent\b/.test(flag))) return false;
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
  return true;
}
