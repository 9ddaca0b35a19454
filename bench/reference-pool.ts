/**
 * pool(..., 'topk', ...) as it was before the min-heap (src/scoring/maps.ts): the kept pixels copied into a
 * scratch array, then quickselect. The baseline bench/pool-speed.ts times the current pool against.
 */
export function referenceTopk(map: Float32Array, topkFraction: number, ignored: Uint8Array, scratch: Float32Array): number {
  let count = 0;
  for (let i = 0; i < map.length; i++) if (!ignored[i]) scratch[count++] = map[i]!;
  if (count === 0) return 0;
  const values = scratch.subarray(0, count);
  const k = Math.max(1, Math.ceil(topkFraction * values.length));
  selectKthSmallest(values, values.length - k);
  let sum = 0;
  for (let i = values.length - k; i < values.length; i++) sum += values[i]!;
  return sum / k;
}

/** Quickselect: reorders `a` so a[k] is the k-th smallest, smaller before it, larger after. */
function selectKthSmallest(a: Float32Array, k: number): void {
  let lo = 0;
  let hi = a.length - 1;
  while (hi > lo) {
    const pivot = medianOfThree(a[lo]!, a[(lo + hi) >> 1]!, a[hi]!);
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

const medianOfThree = (a: number, b: number, c: number) => Math.max(Math.min(a, b), Math.min(Math.max(a, b), c));
