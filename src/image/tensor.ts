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
