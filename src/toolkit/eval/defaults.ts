/**
 * Eval's defaults in a module of their own, so that `linewatch eval --help` can show
 * them without loading the evaluation code (and its image decoding) at every start.
 */

/** Images per model run. */
export const DEFAULT_EVAL_BATCH = 16;
