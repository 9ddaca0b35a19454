/**
 * One image as the model sees it: planar channel-first (CHW, like ONNX's NCHW),
 * values in [0, 1]. `channels` is 1 (grey) or 3 (RGB).
 */
export interface ImageTensor {
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;
  readonly data: Float32Array;
}

export function imageTensor(width: number, height: number, channels: 1 | 3, data?: Float32Array): ImageTensor {
  const size = width * height * channels;
  if (data && data.length !== size) {
    throw new RangeError(`image data has ${data.length} values, expected ${width}x${height}x${channels} = ${size}`);
  }
  return { width, height, channels, data: data ?? new Float32Array(size) };
}

/** Interleaved 8-bit pixels (HWC, as ffmpeg and sharp emit them) to a planar [0,1] tensor. */
export function fromInterleavedBytes(bytes: Uint8Array, width: number, height: number, channels: 1 | 3): ImageTensor {
  const plane = width * height;
  if (bytes.length < plane * channels) {
    throw new RangeError(`got ${bytes.length} bytes, expected ${plane * channels} for ${width}x${height}x${channels}`);
  }
  const data = new Float32Array(plane * channels);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < channels; c++) data[c * plane + i] = bytes[i * channels + c]! / 255;
  }
  return { width, height, channels, data };
}

/** Planar [0,1] tensor back to interleaved 8-bit pixels (for JPEG/PNG encoding). */
export function toInterleavedBytes(image: ImageTensor): Uint8Array {
  const plane = image.width * image.height;
  const out = new Uint8Array(plane * image.channels);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < image.channels; c++) {
      const v = image.data[c * plane + i]!;
      out[i * image.channels + c] = Math.max(0, Math.min(255, Math.round(v * 255)));
    }
  }
  return out;
}

/** The image moved by (dx, dy) pixels, edges repeated into the uncovered border. */
export function shiftImage(image: ImageTensor, dx: number, dy: number): ImageTensor {
  const { width, height, channels, data } = image;
  const out = new Float32Array(data.length);
  for (let c = 0; c < channels; c++) {
    const plane = c * width * height;
    for (let y = 0; y < height; y++) {
      const sy = Math.min(height - 1, Math.max(0, y - dy));
      for (let x = 0; x < width; x++) {
        const sx = Math.min(width - 1, Math.max(0, x - dx));
        out[plane + y * width + x] = data[plane + sy * width + sx]!;
      }
    }
  }
  return { width, height, channels, data: out };
}
