import { imageMeanStd } from '../image/normalise.js';
import type { ImageTensor } from '../image/tensor.js';

/** Each image to zero mean and unit standard deviation: removes global brightness and contrast. */
export function standardise(image: ImageTensor): Float32Array {
  const { data } = image;
  const { mean, std: spread } = imageMeanStd(data);
  const std = spread || 1;
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = (data[i]! - mean) / std;
  return out;
}

/**
 * The no-learning baseline the VAE must beat: score = L2 distance from the
 * standardised test image to its nearest standardised training image.
 */
export function pixelNearestNeighbourScores(training: readonly ImageTensor[], test: readonly ImageTensor[]): number[] {
  const bank = training.map(standardise);
  return test.map((image) => {
    const query = standardise(image);
    let best = Infinity;
    for (const row of bank) {
      let distance = 0;
      for (let i = 0; i < row.length && distance < best; i++) distance += (row[i]! - query[i]!) ** 2;
      if (distance < best) best = distance;
    }
    return Math.sqrt(best);
  });
}
