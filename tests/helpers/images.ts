import { imageTensor, type ImageTensor } from '../../src/image/tensor.js';
import { seededRandom } from '../../src/toolkit/train/random.js';

/** A smooth textured image (like a tile surface) with a little pixel noise, deterministic. */
export function texture(width: number, height: number, channels: 1 | 3 = 1, seed = 1): ImageTensor {
  const next = seededRandom(seed);
  const phase = next() * 6;
  const image = imageTensor(width, height, channels);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        image.data[c * width * height + y * width + x] = 0.5 + 0.2 * Math.sin(x / 3 + phase + c) * Math.cos(y / 5) + 0.05 * next();
      }
    }
  }
  return image;
}

/** `count` images of `pixels` values uniform in [0, 1), from a seeded linear congruential generator. */
export function uniformNoise(count: number, pixels: number, seed: number): Float32Array[] {
  let state = seed;
  return Array.from({ length: count }, () =>
    Float32Array.from({ length: pixels }, () => {
      state = (state * 1103515245 + 12345) % 2 ** 31;
      return state / 2 ** 31;
    }),
  );
}
