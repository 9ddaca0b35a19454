/**
 * The convolutional VAE, trained with TensorFlow.js.
 *
 * Written as plain functions over `tf.variable`s rather than tf.layers: the
 * `wasm` backend has no Conv2DBackpropFilter kernel and the `cpu` one is ~60x
 * slower than the rest of a step, so every convolution carries a custom
 * gradient that computes the filter gradient as image patches times one matMul.
 *
 * Architecture (L = filters.length levels):
 *   encoder: L x (conv 3x3 stride 2 'same' + ReLU), flatten, dense -> mu, dense -> logVar
 *   sample:  z = mu + exp(logVar / 2) * eps
 *   decoder: dense + ReLU, reshape to (H/2^L, W/2^L, filters[L-1]), then per level
 *            nearest-neighbour upsample x2 + conv 3x3 stride 1 'same' + ReLU
 *            (the last level convolves to `channels` and ends in a sigmoid)
 * Upsample + stride-1 conv instead of conv-transpose: faster to train on wasm, and
 * onnxruntime's int8 path quantizes it fully (ConvTranspose stays float there).
 *
 * Loss per image: sum of squared pixel errors + beta * KL(q(z|x) || N(0, I)).
 * The summed squared error is the negative log-likelihood of a Gaussian decoder
 * with variance 1/2; `beta` is relative to that scale (0.1 by default, the value
 * measured on Magnetic Tile). Squared error rather than BCE because grey-level
 * targets are not binary: BCE has a non-zero floor that hides progress.
 *
 * Weights are kept in TensorFlow's layouts (see `weightShapes`); export.ts
 * converts them to ONNX's.
 */
import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';
import path from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { UsageError } from '../../errors.js';
import { defaultLogger } from '../../log.js';
import { shiftImage, type ImageTensor } from '../../image/tensor.js';
import { normalSampler, randomInt, seededRandom, shuffled, type Random } from './random.js';
import { validateVaeConfig, weightShapes, type VaeConfig, type VaeWeights, type WeightTensor } from './vae-config.js';

export { DEFAULT_COMPARATOR_FILTERS, DEFAULT_VAE_CONFIG, validateVaeConfig, weightShapes, type VaeConfig, type VaeWeights, type WeightTensor } from './vae-config.js';

export interface EpochInfo {
  /** `vae`: the reconstruction network; `comparator`: the segmentation head, trained after it with the VAE frozen. */
  phase: 'vae' | 'comparator';
  /** Counted across both phases, so that a progress bar runs once from 1 to `epochs`. */
  epoch: number;
  epochs: number;
  /** Mean per image over the epoch: reconLoss + beta * kl (vae); the focal loss per pixel (comparator). */
  loss: number;
  /** Mean summed squared pixel error per image. */
  reconLoss: number;
  /** Mean KL divergence per image. */
  kl: number;
  /** Wall-clock seconds this epoch took. */
  seconds: number;
}

export interface TrainOptions {
  epochs: number;
  /** Images per step; default 32. */
  batchSize?: number;
  /** Adam learning rate; default 1e-3. */
  learningRate?: number;
  /** Seeds the weight init, shuffling, augmentation and sampling noise. */
  seed: number;
  /** Random translation of each training image by up to +-N pixels, edges repeated; default 0. */
  augmentShift?: number;
  /**
   * Synthetic defects (see synthetic.ts): the VAE is fed the corrupted image and learns to
   * restore the clean one, so real defects stay in its error map; the comparator learns the masks.
   */
  anomalies?: { corrupt(image: ImageTensor): { image: ImageTensor; mask: Float32Array } };
  /** Weight of the summed (1 - SSIM) map next to the summed squared error; default 0. */
  ssimWeight?: number;
  /** Comparator passes over the images, after the VAE's; default: `epochs`. Needs `config.comparator` and `anomalies`. */
  comparatorEpochs?: number;
  onEpoch?: (info: EpochInfo) => void;
  /** Checked between steps; training then throws an error named 'AbortError'. */
  signal?: AbortSignal;
}

const DEFAULT_BATCH_SIZE = 32;
const DEFAULT_LEARNING_RATE = 1e-3;
/** Images per forward pass in `forwardVae`: bounds memory, large enough to amortise per-op overhead. */
const FORWARD_CHUNK = 64;

// ---------------------------------------------------------------------------
// Backend

let backendReady: Promise<string> | undefined;

/** Sets up the TF.js backend once (wasm, else cpu with a warning) and returns its name. */
export function initTf(): Promise<string> {
  backendReady ??= selectBackend();
  return backendReady;
}

async function selectBackend(): Promise<string> {
  let failure = 'the backend did not initialise';
  try {
    // The package's Node entry lives in dist/, next to the .wasm binaries.
    const entry = createRequire(import.meta.url).resolve('@tensorflow/tfjs-backend-wasm');
    setWasmPaths(path.dirname(entry) + path.sep);
    if (await tf.setBackend('wasm')) {
      await tf.ready();
      return tf.getBackend();
    }
  } catch (error) {
    failure = (error as Error).message;
  }
  defaultLogger().warn(`TF.js wasm backend unavailable (${failure}); training on the cpu backend, about 5x slower`);
  await tf.setBackend('cpu');
  await tf.ready();
  return tf.getBackend();
}

function assertBackendReady(): void {
  if (backendReady === undefined) throw new Error('TF.js is not set up: await initTf() before using the VAE');
}

// ---------------------------------------------------------------------------
// Weight initialisation

/** He-uniform for layers followed by ReLU, Glorot-uniform for the rest; zero biases. */
function initialWeights(config: VaeConfig, random: Random): Record<string, WeightTensor> {
  const tensors: Record<string, WeightTensor> = {};
  for (const [name, shape] of weightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    if (name.endsWith('.kernel')) {
      const receptive = shape.length === 4 ? shape[0]! * shape[1]! : 1;
      const fanIn = receptive * shape[shape.length - 2]!;
      const fanOut = receptive * shape[shape.length - 1]!;
      const feedsRelu =
        !name.startsWith('encoder.mu') && !name.startsWith('encoder.logVar') && name !== lastDecoderKernel(config) && name !== 'comparator.head.kernel';
      const limit = feedsRelu ? Math.sqrt(6 / fanIn) : Math.sqrt(6 / (fanIn + fanOut));
      for (let i = 0; i < data.length; i++) data[i] = (2 * random() - 1) * limit;
    } else if (name === 'comparator.head.bias') {
      // Start the comparator saying "normal, p = 1%" everywhere (RetinaNet's prior): most pixels are,
      // and the focal loss would otherwise spend its first epochs learning that.
      data.fill(-Math.log(99));
    }
    tensors[name] = { shape, data };
  }
  return tensors;
}

function lastDecoderKernel(config: VaeConfig): string {
  return `decoder.conv${config.filters.length - 1}.kernel`;
}

// ---------------------------------------------------------------------------
// The network

type Params = Record<string, tf.Tensor>;

function param(params: Params, name: string): tf.Tensor {
  const tensor = params[name];
  if (!tensor) throw new Error(`VAE weight ${name} is missing`);
  return tensor;
}

/**
 * One-hot depthwise filters that copy each 3x3 neighbourhood into channels:
 * output channel c * 9 + k holds input channel c at kernel offset k = kh * 3 + kw.
 */
function patchFilter(inChannels: number): tf.Tensor4D {
  const data = new Float32Array(9 * inChannels * 9);
  for (let k = 0; k < 9; k++) {
    for (let c = 0; c < inChannels; c++) data[(k * inChannels + c) * 9 + k] = 1;
  }
  return tf.tensor4d(data, [3, 3, inChannels, 9]);
}

/** dL/dW of a 3x3 'same' convolution: patches(x)^T x dy, reshaped to [3, 3, in, out]. */
function filterGradient(x: tf.Tensor4D, dy: tf.Tensor4D, stride: 1 | 2): tf.Tensor4D {
  const inChannels = x.shape[3];
  const outChannels = dy.shape[3];
  const patches = tf.depthwiseConv2d(x, patchFilter(inChannels), stride, 'same');
  const rows = patches.shape[0] * patches.shape[1] * patches.shape[2];
  const patches2d = patches.reshape([rows, inChannels * 9]);
  const dy2d = dy.reshape([rows, outChannels]);
  // An explicit transpose beats matMul's transposeA flag on wasm, except for very narrow outputs.
  const gradient = outChannels <= 4 ? tf.matMul(patches2d, dy2d, true, false) : tf.matMul(patches2d.transpose(), dy2d);
  // Rows are ordered (c, k); the kernel layout wants (kh, kw, c).
  return gradient.reshape([inChannels, 3, 3, outChannels]).transpose([1, 2, 0, 3]);
}

type ConvFn = (x: tf.Tensor4D, kernel: tf.Tensor, bias: tf.Tensor) => tf.Tensor4D;

/** A 3x3 'same' convolution plus bias with a wasm-friendly gradient. */
function makeConv(stride: 1 | 2, inputGradient: boolean): ConvFn {
  const conv = tf.customGrad((...args: unknown[]) => {
    const [x, kernel, bias, save] = args as [tf.Tensor4D, tf.Tensor4D, tf.Tensor1D, tf.GradSaveFunc];
    save([x, kernel]);
    const value = tf.fused.conv2d({ x, filter: kernel, bias, strides: stride, pad: 'same' });
    return {
      value,
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [input, filter] = saved as [tf.Tensor4D, tf.Tensor4D];
        const dy4 = dy as tf.Tensor4D;
        let dx: tf.Tensor;
        if (!inputGradient) {
          // The first layer's input is data: nothing upstream needs its gradient.
          dx = tf.zerosLike(input);
        } else if (stride === 1) {
          // For a stride-1 'same' 3x3 conv the input gradient is a forward conv with the flipped filter.
          dx = tf.conv2d(dy4, filter.reverse([0, 1]).transpose([0, 1, 3, 2]) as tf.Tensor4D, 1, 'same');
        } else {
          dx = tf.conv2dTranspose(dy4, filter, input.shape, stride, 'same');
        }
        return [dx, filterGradient(input, dy4, stride), dy4.sum([0, 1, 2])];
      },
    };
  });
  return (x, kernel, bias) => conv(x, kernel, bias) as tf.Tensor4D;
}

const convDownFirst = makeConv(2, false);
const convDown = makeConv(2, true);
const convSame = makeConv(1, true);

/** The training convolution (3x3 'same' plus bias, custom gradient); exported so tests can check its gradient against TF's. */
export function conv3x3(x: tf.Tensor4D, kernel: tf.Tensor, bias: tf.Tensor, stride: 1 | 2): tf.Tensor4D {
  return (stride === 1 ? convSame : convDown)(x, kernel, bias);
}

function dense(x: tf.Tensor2D, params: Params, name: string): tf.Tensor2D {
  return tf.add(tf.matMul(x, param(params, `${name}.kernel`)), param(params, `${name}.bias`));
}

function encode(params: Params, x: tf.Tensor4D, config: VaeConfig): { mu: tf.Tensor2D; logVar: tf.Tensor2D } {
  let h = x;
  config.filters.forEach((_, i) => {
    const conv = i === 0 ? convDownFirst : convDown;
    h = tf.relu(conv(h, param(params, `encoder.conv${i}.kernel`), param(params, `encoder.conv${i}.bias`)));
  });
  const flat = h.reshape([h.shape[0], -1]) as tf.Tensor2D;
  return { mu: dense(flat, params, 'encoder.mu'), logVar: dense(flat, params, 'encoder.logVar') };
}

function decode(params: Params, z: tf.Tensor2D, config: VaeConfig): tf.Tensor4D {
  const levels = config.filters.length;
  let height = config.height / 2 ** levels;
  let width = config.width / 2 ** levels;
  let h = tf.relu(dense(z, params, 'decoder.dense')).reshape([z.shape[0], height, width, config.filters[levels - 1]!]) as tf.Tensor4D;
  for (let j = 0; j < levels; j++) {
    height *= 2;
    width *= 2;
    const up = tf.image.resizeNearestNeighbor(h, [height, width]);
    const out = convSame(up, param(params, `decoder.conv${j}.kernel`), param(params, `decoder.conv${j}.bias`));
    h = j === levels - 1 ? tf.sigmoid(out) : tf.relu(out);
  }
  return h;
}

/**
 * The comparator's anomaly map, as logits [N, H/2, W/2, 1], from the (possibly corrupted) input and
 * its reconstruction: a U-Net (see comparatorWeightShapes) that learns what a real difference
 * looks like, where a fixed error map also flags every blurred edge. Its first convolution halves
 * the resolution: at full resolution the comparator cost 2-3x the VAE's training time, and a
 * 2-pixel cell is finer than the defects a 64-pixel model can tell apart anyway.
 */
function compare(params: Params, x: tf.Tensor4D, recon: tf.Tensor4D, config: VaeConfig): tf.Tensor4D {
  const filters = config.comparator!.filters;
  const conv = (name: string, input: tf.Tensor4D, stride: 1 | 2, first = false) =>
    tf.relu((first ? convDownFirst : stride === 1 ? convSame : convDown)(input, param(params, `${name}.kernel`), param(params, `${name}.bias`)));
  const skips: tf.Tensor4D[] = [];
  // The difference as a third input: a network this small otherwise spends its first layer learning
  // to subtract (measured on synthetic defects: pixel AUROC 0.76 without it, below |x - recon| alone).
  let h = tf.concat([x, recon, tf.sub(x, recon) as tf.Tensor4D], 3);
  filters.forEach((_, i) => {
    h = i === 0 ? conv('comparator.enc0.a', h, 2, true) : conv(`comparator.enc${i}.a`, h, 2);
    h = conv(`comparator.enc${i}.b`, h, 1);
    skips.push(h);
  });
  for (let i = filters.length - 2; i >= 0; i--) {
    const skip = skips[i]!;
    const up = tf.image.resizeNearestNeighbor(h, [skip.shape[1], skip.shape[2]]);
    h = conv(`comparator.dec${i}.merge`, tf.concat([conv(`comparator.dec${i}.up`, up, 1), skip], 3), 1);
  }
  return convSame(h, param(params, 'comparator.head.kernel'), param(params, 'comparator.head.bias'));
}

/**
 * Per-cell focal loss (Lin et al. 2017, gamma 2) of logits against the defect share t of each
 * cell, averaged: most cells are plainly normal, and their easy, confident answers should not
 * drown the few defect cells. With p = sigmoid(z), -log p = softplus(-z), -log(1 - p) = softplus(z):
 *   t (1 - p)^2 softplus(-z) + (1 - t) p^2 softplus(z)
 */
function focalLoss(logits: tf.Tensor, target: tf.Tensor): tf.Scalar {
  const p = tf.sigmoid(logits);
  const positive = tf.mul(tf.mul(target, tf.square(tf.sub(1, p))), tf.softplus(tf.neg(logits)));
  const negative = tf.mul(tf.mul(tf.sub(1, target), tf.square(p)), tf.softplus(logits));
  return tf.mean(tf.add(positive, negative)) as tf.Scalar;
}

/** Box window of the SSIM loss: 7 pixels sees the local structure at 64 px without smearing small defects. */
const SSIM_LOSS_WINDOW = 7;
const SSIM_C1 = 0.01 ** 2;
const SSIM_C2 = 0.03 ** 2;

/** Per-image sum of (1 - SSIM) over pixels and channels, with box-window statistics. */
function ssimLoss(a: tf.Tensor4D, b: tf.Tensor4D): tf.Tensor1D {
  const mean = (t: tf.Tensor) => tf.avgPool(t as tf.Tensor4D, SSIM_LOSS_WINDOW, 1, 'same');
  const ma = mean(a);
  const mb = mean(b);
  const va = tf.sub(mean(tf.square(a)), tf.square(ma));
  const vb = tf.sub(mean(tf.square(b)), tf.square(mb));
  const cov = tf.sub(mean(tf.mul(a, b)), tf.mul(ma, mb));
  const numerator = tf.mul(tf.add(tf.mul(2, tf.mul(ma, mb)), SSIM_C1), tf.add(tf.mul(2, cov), SSIM_C2));
  const denominator = tf.mul(tf.add(tf.add(tf.square(ma), tf.square(mb)), SSIM_C1), tf.add(tf.add(va, vb), SSIM_C2));
  return tf.sum(tf.sub(1, tf.div(numerator, denominator)), [1, 2, 3]) as tf.Tensor1D;
}

// ---------------------------------------------------------------------------
// Image packing (ImageTensor is planar CHW, TF.js is NHWC)

function assertImagesFit(images: readonly ImageTensor[], config: VaeConfig): void {
  images.forEach((image, index) => {
    if (image.width !== config.width || image.height !== config.height || image.channels !== config.channels) {
      throw new UsageError(
        `image ${index} is ${image.width}x${image.height}x${image.channels}, the VAE expects ${config.width}x${config.height}x${config.channels}`,
        { hint: 'load images at the model input size and channel count (the loader resizes them)' },
      );
    }
  });
}

/** Packs images NHWC. */
function packNhwc(images: readonly ImageTensor[]): Float32Array {
  const { width, height, channels } = images[0]!;
  const plane = width * height;
  const out = new Float32Array(images.length * plane * channels);
  images.forEach((image, n) => {
    const base = n * plane * channels;
    if (channels === 1) {
      out.set(image.data, base);
      return;
    }
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < channels; c++) out[base + i * channels + c] = image.data[c * plane + i]!;
    }
  });
  return out;
}

/** NHWC tensor data to packed NCHW. */
function nhwcToNchw(data: Float32Array, count: number, height: number, width: number, channels: number): Float32Array {
  if (channels === 1) return data;
  const plane = height * width;
  const out = new Float32Array(data.length);
  for (let n = 0; n < count; n++) {
    const base = n * plane * channels;
    for (let i = 0; i < plane; i++) {
      for (let c = 0; c < channels; c++) out[base + c * plane + i] = data[base + i * channels + c]!;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------
// Training and inference

function abortError(signal: AbortSignal): Error {
  const error = new Error('VAE training was aborted', { cause: signal.reason });
  error.name = 'AbortError';
  return error;
}

/** Trains a VAE on `images` (all of the config's size), then its comparator if the config has one, and returns the weights. */
export async function trainVae(
  images: ImageTensor[],
  config: VaeConfig,
  options: TrainOptions,
): Promise<{ weights: VaeWeights; finalLoss: number; comparatorLoss?: number }> {
  validateVaeConfig(config);
  if (images.length === 0) throw new UsageError('no training images', { hint: 'give a folder or list of normal images' });
  assertImagesFit(images, config);
  const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
  const learningRate = options.learningRate ?? DEFAULT_LEARNING_RATE;
  const augmentShift = options.augmentShift ?? 0;
  const ssimWeight = options.ssimWeight ?? 0;
  const comparatorEpochs = config.comparator ? (options.comparatorEpochs ?? options.epochs) : 0;
  // 0 epochs returns the initial weights: the untrained control that benchmarks compare against.
  if (!Number.isInteger(options.epochs) || options.epochs < 0) {
    throw new UsageError(`epochs must be a whole number >= 0, got ${options.epochs}`);
  }
  if (!Number.isInteger(comparatorEpochs) || comparatorEpochs < 0) {
    throw new UsageError(`comparator epochs must be a whole number >= 0, got ${comparatorEpochs}`);
  }
  if (comparatorEpochs > 0 && !options.anomalies) {
    throw new UsageError('the comparator learns from synthetic anomalies: training it needs them', { hint: 'enable synthetic anomalies, or train without a comparator' });
  }
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new UsageError(`batch size must be a positive integer, got ${batchSize}`);
  if (!(learningRate > 0)) throw new UsageError(`learning rate must be > 0, got ${learningRate}`);
  if (!(ssimWeight >= 0 && Number.isFinite(ssimWeight))) throw new UsageError(`SSIM loss weight must be a finite number >= 0, got ${ssimWeight}`);
  if (!Number.isInteger(augmentShift) || augmentShift < 0) {
    throw new UsageError(`augmentShift must be a whole number of pixels >= 0, got ${augmentShift}`);
  }
  await initTf();

  // Independent streams, so that e.g. turning augmentation on does not change the init.
  const initRandom = seededRandom(options.seed);
  const orderRandom = seededRandom(options.seed + 1);
  const shiftRandom = seededRandom(options.seed + 2);
  const noise = normalSampler(seededRandom(options.seed + 3));

  const initial = initialWeights(config, initRandom);
  const variables: Record<string, tf.Variable> = {};
  const optimizer = tf.train.adam(learningRate);
  const comparatorOptimizer = tf.train.adam(learningRate);
  try {
    for (const [name, { shape, data }] of Object.entries(initial)) {
      variables[name] = tf.tidy(() => tf.variable(tf.tensor(data, shape), true));
    }
    const isComparator = (name: string) => name.startsWith('comparator.');
    const vaeVariables = Object.entries(variables).filter(([name]) => !isComparator(name)).map(([, v]) => v);
    const comparatorVariables = Object.entries(variables).filter(([name]) => isComparator(name)).map(([, v]) => v);
    const indices = images.map((_, i) => i);
    const { width, height, channels, latentDim, beta } = config;
    const totalEpochs = options.epochs + comparatorEpochs;
    let finalLoss = Number.NaN;
    let comparatorLoss: number | undefined;

    /** A batch as the networks see it: the (shifted, maybe corrupted) input, the clean target and the defect mask. */
    const prepare = (batch: ImageTensor[]) => {
      const clean = augmentShift > 0
        ? batch.map((image) => shiftImage(image, randomInt(shiftRandom, -augmentShift, augmentShift), randomInt(shiftRandom, -augmentShift, augmentShift)))
        : batch;
      const corrupted = options.anomalies ? clean.map((image) => options.anomalies!.corrupt(image)) : undefined;
      const masks = new Float32Array(batch.length * width * height);
      corrupted?.forEach((c, i) => masks.set(c.mask, i * width * height));
      return {
        input: corrupted ? packNhwc(corrupted.map((c) => c.image)) : packNhwc(clean),
        target: corrupted ? packNhwc(clean) : undefined,
        masks,
      };
    };

    /** One epoch's batches in a fresh random order, for either network. */
    async function* epochBatches(): AsyncGenerator<ImageTensor[]> {
      const order = shuffled(indices, orderRandom);
      for (let start = 0; start < order.length; start += batchSize) {
        // Let abort signals and other callbacks in: a training step blocks the thread.
        await yieldToEventLoop();
        if (options.signal?.aborted) throw abortError(options.signal);
        yield order.slice(start, start + batchSize).map((i) => images[i]!);
      }
    }

    for (let epoch = 1; epoch <= options.epochs; epoch++) {
      const began = performance.now();
      let lossSum = 0;
      let reconSum = 0;
      let klSum = 0;
      for await (const batch of epochBatches()) {
        const prepared = prepare(batch);
        const eps = new Float32Array(batch.length * latentDim);
        for (let i = 0; i < eps.length; i++) eps[i] = noise();
        const terms = tf.tidy(() => {
          const shape: [number, number, number, number] = [batch.length, height, width, channels];
          const x = tf.tensor4d(prepared.input, shape);
          const target = prepared.target ? tf.tensor4d(prepared.target, shape) : x;
          const epsilon = tf.tensor2d(eps, [batch.length, latentDim]);
          let parts: tf.Tensor1D | undefined;
          const { value, grads } = tf.variableGrads(() => {
            const { mu, logVar } = encode(variables, x, config);
            const z = tf.add(mu, tf.mul(tf.exp(tf.mul(logVar, 0.5)), epsilon)) as tf.Tensor2D;
            const recon = decode(variables, z, config);
            let perImage: tf.Tensor = tf.sum(tf.squaredDifference(recon, target), [1, 2, 3]);
            if (ssimWeight > 0) perImage = tf.add(perImage, tf.mul(ssimWeight, ssimLoss(recon, target as tf.Tensor4D)));
            const reconLoss = tf.mean(perImage);
            const kl = tf.mean(tf.mul(-0.5, tf.sum(tf.sub(tf.add(1, logVar), tf.add(tf.square(mu), tf.exp(logVar))), 1)));
            parts = tf.keep(tf.stack([reconLoss, kl]) as tf.Tensor1D);
            return tf.add(reconLoss, tf.mul(beta, kl)) as tf.Scalar;
          }, vaeVariables);
          optimizer.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
          const all = tf.concat([value.reshape([1]), parts!]);
          parts!.dispose(); // kept out of the gradient tape's tidy, so this one is ours to free
          return all;
        });
        const [loss, reconLoss, kl] = terms.dataSync();
        terms.dispose();
        lossSum += loss! * batch.length;
        reconSum += reconLoss! * batch.length;
        klSum += kl! * batch.length;
      }
      finalLoss = lossSum / images.length;
      options.onEpoch?.({
        phase: 'vae',
        epoch,
        epochs: totalEpochs,
        loss: finalLoss,
        reconLoss: reconSum / images.length,
        kl: klSum / images.length,
        seconds: (performance.now() - began) / 1000,
      });
    }

    // The comparator learns on the trained VAE's reconstructions (frozen: computed outside the gradient tape).
    for (let epoch = 1; epoch <= comparatorEpochs; epoch++) {
      const began = performance.now();
      let lossSum = 0;
      for await (const batch of epochBatches()) {
        const prepared = prepare(batch);
        const loss = tf.tidy(() => {
          const x = tf.tensor4d(prepared.input, [batch.length, height, width, channels]);
          // The comparator answers per 2x2 cell: the share of each cell that is defect.
          const mask = tf.avgPool(tf.tensor4d(prepared.masks, [batch.length, height, width, 1]), 2, 2, 'valid');
          const recon = decode(variables, encode(variables, x, config).mu, config);
          const { value, grads } = tf.variableGrads(() => focalLoss(compare(variables, x, recon, config), mask), comparatorVariables);
          comparatorOptimizer.applyGradients(Object.entries(grads).map(([name, tensor]) => ({ name, tensor })));
          return value;
        });
        lossSum += loss.dataSync()[0]! * batch.length;
        loss.dispose();
      }
      comparatorLoss = lossSum / images.length;
      options.onEpoch?.({
        phase: 'comparator',
        epoch: options.epochs + epoch,
        epochs: totalEpochs,
        loss: comparatorLoss,
        reconLoss: Number.NaN,
        kl: Number.NaN,
        seconds: (performance.now() - began) / 1000,
      });
    }

    const tensors: Record<string, WeightTensor> = {};
    for (const [name, variable] of Object.entries(variables)) {
      tensors[name] = { shape: variable.shape.slice(), data: new Float32Array(variable.dataSync()) };
    }
    const savedConfig: VaeConfig = { ...config, filters: config.filters.slice() };
    if (config.comparator) savedConfig.comparator = { filters: config.comparator.filters.slice() };
    return { weights: { config: savedConfig, tensors }, finalLoss, comparatorLoss };
  } finally {
    optimizer.dispose();
    comparatorOptimizer.dispose();
    for (const variable of Object.values(variables)) variable.dispose();
  }
}

/**
 * The deterministic forward pass (decoder fed with mu, no sampling), the
 * reference the ONNX export is checked against. Returns reconstructions packed
 * NCHW (count x C x H x W), latent means (count x latentDim) and, with a comparator, its
 * anomaly-map logits (count x H x W). Needs `await initTf()` first.
 */
export function forwardVae(weights: VaeWeights, images: ImageTensor[]): { recon: Float32Array; mu: Float32Array; map?: Float32Array } {
  assertBackendReady();
  const { config } = weights;
  validateVaeConfig(config);
  assertImagesFit(images, config);
  const { width, height, channels, latentDim } = config;
  const pixels = width * height * channels;
  const recon = new Float32Array(images.length * pixels);
  const mu = new Float32Array(images.length * latentDim);
  const map = config.comparator ? new Float32Array(images.length * width * height) : undefined;
  const params: Params = {};
  try {
    for (const [name, expected] of weightShapes(config)) {
      const weight = weights.tensors[name];
      if (!weight || weight.shape.join('x') !== expected.join('x')) {
        throw new Error(`VAE weight ${name} is ${weight ? `[${weight.shape.join(', ')}]` : 'missing'}, expected [${expected.join(', ')}]`);
      }
      params[name] = tf.tensor(weight.data, weight.shape);
    }
    for (let start = 0; start < images.length; start += FORWARD_CHUNK) {
      const chunk = images.slice(start, start + FORWARD_CHUNK);
      const outputs = tf.tidy(() => {
        const x = tf.tensor4d(packNhwc(chunk), [chunk.length, height, width, channels]);
        const encoded = encode(params, x, config);
        const reconstructed = decode(params, encoded.mu, config);
        const map = config.comparator ? tf.image.resizeNearestNeighbor(compare(params, x, reconstructed, config), [height, width]) : undefined;
        return { recon: reconstructed, mu: encoded.mu, map };
      });
      try {
        recon.set(nhwcToNchw(outputs.recon.dataSync() as Float32Array, chunk.length, height, width, channels), start * pixels);
        mu.set(outputs.mu.dataSync(), start * latentDim);
        if (map && outputs.map) map.set(outputs.map.dataSync(), start * width * height);
      } finally {
        outputs.recon.dispose();
        outputs.mu.dispose();
        outputs.map?.dispose();
      }
    }
  } finally {
    for (const tensor of Object.values(params)) tensor.dispose();
  }
  return map ? { recon, mu, map } : { recon, mu };
}
