/**
 * Latent novelty: how far a frame's latent mean lies from the latent means of the
 * training images. Brute force over the memory (about 1000 x 64 values per frame)
 * is cheaper than any index at this size.
 */

/** Reused between calls so scoring a frame allocates nothing (k is small). */
let nearestScratch = new Float64Array(8);

/**
 * Mean L2 distance from `mu` (its first `dim` values) to the `k` nearest rows of
 * `memory` (rows of `dim` values). With fewer than `k` rows, all rows are used.
 */
export function latentNovelty(mu: Float32Array, memory: Float32Array, dim: number, k: number): number {
  if (!Number.isInteger(dim) || dim < 1) throw new RangeError(`latent dimension must be a positive integer, got ${dim}`);
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`k must be a positive integer, got ${k}`);
  if (mu.length < dim) throw new RangeError(`latent vector has ${mu.length} values, expected ${dim}`);
  if (memory.length % dim !== 0) throw new RangeError(`latent memory has ${memory.length} values, not a multiple of ${dim}`);
  const rows = memory.length / dim;
  if (rows === 0) throw new RangeError('latent memory is empty: there is nothing to compare with');
  const kept = Math.min(k, rows);
  if (nearestScratch.length < kept) nearestScratch = new Float64Array(kept);
  // The `kept` smallest squared distances so far, ascending.
  const nearest = nearestScratch;
  nearest.fill(Infinity, 0, kept);
  for (let r = 0; r < rows; r++) {
    const offset = r * dim;
    const worst = nearest[kept - 1]!;
    let d2 = 0;
    for (let j = 0; j < dim && d2 < worst; j++) {
      const diff = mu[j]! - memory[offset + j]!;
      d2 += diff * diff;
    }
    if (d2 >= worst) continue;
    let slot = kept - 1;
    while (slot > 0 && nearest[slot - 1]! > d2) {
      nearest[slot] = nearest[slot - 1]!;
      slot--;
    }
    nearest[slot] = d2;
  }
  let sum = 0;
  for (let i = 0; i < kept; i++) sum += Math.sqrt(nearest[i]!);
  return sum / kept;
}
