import { loadImages, type ImageSize } from '../src/image/load.js';
import { imageMeanStd } from '../src/image/normalise.js';
import type { ImageTensor } from '../src/image/tensor.js';
import { auroc } from '../src/scoring/metrics.js';

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

export interface ScoredImages {
  /** The images that could be read, in input order, and their scores. */
  paths: string[];
  scores: number[];
}

export interface PixelBaseline {
  normal: ScoredImages;
  anomalous: ScoredImages;
  imageAuroc: number;
  /** Scoring time per test image, image decoding excluded. */
  msPerFrame: number;
}

/** The pixel 1-NN baseline on image files, all loaded at `size` (the model's input size, for a fair comparison). */
export async function pixelNearestNeighbourBaseline(
  trainPaths: readonly string[],
  normalPaths: readonly string[],
  anomalousPaths: readonly string[],
  size: ImageSize,
): Promise<PixelBaseline> {
  const [train, normal, anomalous] = await Promise.all([loadImages(trainPaths, size), loadImages(normalPaths, size), loadImages(anomalousPaths, size)]);
  const began = performance.now();
  const normalScores = pixelNearestNeighbourScores(train.images, normal.images);
  const anomalousScores = pixelNearestNeighbourScores(train.images, anomalous.images);
  return {
    normal: { paths: normal.paths, scores: normalScores },
    anomalous: { paths: anomalous.paths, scores: anomalousScores },
    imageAuroc: auroc(normalScores, anomalousScores),
    msPerFrame: (performance.now() - began) / (normalScores.length + anomalousScores.length),
  };
}
