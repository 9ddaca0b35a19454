import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { fewerFullCollections, HEAP_GROWING_PERCENT } from '../../src/agent/heap-tuning.js';

/**
 * The growing factor V8 applies after a full collection in a fresh node, as its verbose GC trace
 * prints it ("[HeapController] Limit: old size: ... (2.0)"); with `tuned`, the process first calls
 * fewerFullCollections() (dist build), as `linewatch run` does once node has started.
 */
function growingFactorAfterFullCollection(tuned: boolean): number {
  const entry = new URL('../../dist/agent/heap-tuning.js', import.meta.url).href;
  const script = `
    ${tuned ? `const { fewerFullCollections } = await import(${JSON.stringify(entry)}); fewerFullCollections();` : ''}
    const live = []; for (let i = 0; i < 300000; i++) live.push({ i, text: 'x' + i });
    globalThis.gc();
    globalThis.keep = live;`;
  const result = spawnSync(process.execPath, ['--expose-gc', '--trace-gc-verbose', '--input-type=module', '-e', script], { encoding: 'utf8' });
  expect(result.status, result.stderr).toBe(0);
  const limit = /\[HeapController\] Limit: old size: \d+ KB, new limit: \d+ KB \(([\d.]+)\)/.exec(result.stdout);
  expect(limit, 'no "[HeapController] Limit" line in the GC trace').not.toBeNull();
  return Number(limit![1]);
}

describe('fewerFullCollections', () => {
  it('sets the old generation growing factor of the running node', () => {
    // V8 prints the factor with one decimal.
    const factor = Number((1 + HEAP_GROWING_PERCENT / 100).toFixed(1));
    expect(growingFactorAfterFullCollection(true)).toBe(factor);
    // The control: left to itself, V8 picks another factor here, so the flag is what made the difference.
    expect(growingFactorAfterFullCollection(false)).not.toBe(factor);
  });

  it("leaves a growing factor given on node's command line alone", () => {
    expect(fewerFullCollections(['--heap-growing-percent=30'])).toBe(false);
    expect(fewerFullCollections(['--heap_growing_percent=30'])).toBe(false);
  });
});
