import { createHash } from 'node:crypto';
import path from 'node:path';
import { UsageError } from '../../errors.js';
import { detectChannels, loadImages, resolveImageList, resolveImageLists } from '../../image/load.js';
import { normaliseInput, type InputNormalisation } from '../../image/normalise.js';
import { shiftImage, toInterleavedBytes, type ImageTensor } from '../../image/tensor.js';
import { writeBundle, assertBundleTarget } from '../../model/bundle.js';
import { exportOnnx } from '../export.js';
import { inferImages, packRows, type ImageOutputs } from '../../model/infer.js';
import {
  MANIFEST_FORMAT,
  MANIFEST_FORMAT_VERSION,
  ScoringSettingsSchema,
  type Calibration,
  type Manifest,
  type ScoringSettings,
} from '../../model/manifest.js';
import { OnnxModel } from '../../model/onnx.js';
import { foldUpsampleModel, quantizeInt8, type Int8Scheme } from '../quantize.js';
import { learnQualityProfile, referencePng, REFERENCE_FILE } from '../quality-profile.js';
import { combineComponents, componentStats, FrameScorer } from '../../scoring/frame.js';
import { calibrate, describeCalibration } from '../../scoring/metrics.js';
import { decodeVideoFrames } from '../../source/decode.js';
import { LINEWATCH_VERSION } from '../../version.js';
import { seededRandom, shuffled } from './random.js';
import { SyntheticAnomalies, type AnomalyKind } from './synthetic.js';
import { trainVae, type EpochInfo, type VaeConfig } from './vae.js';

export interface TrainBundleOptions {
  /**
   * Folders of images or list files (with `root` for relative paths), used together: the
   * original normal set plus the pictures an operator marked as normal, for instance.
   */
  images?: string | readonly string[];
  root?: string;
  /** A video file or stream URL to take normal frames from. */
  video?: string;
  start?: number;
  duration?: number;
  fps?: number;
  width: number;
  height: number;
  /** `auto`: 3 when the images are in colour, else 1 (see detectChannels). */
  channels: 1 | 3 | 'auto';
  normalisation: InputNormalisation;
  filters: number[];
  latentDim: number;
  beta: number;
  /** Absent: enough passes for ~6000 image presentations, at least 25. */
  epochs?: number;
  batchSize?: number;
  seed: number;
  valFraction: number;
  augmentShift?: number;
  /**
   * Synthetic defects while training (DRAEM-style): the VAE learns to restore the clean image and
   * the comparator to find the defect. Absent: trained on clean images only.
   */
  anomalies?: { share?: number; strength?: [number, number]; kinds?: AnomalyKind[]; texturesDir?: string };
  /** Weight of the (1 - SSIM) loss next to the squared error; default 0. */
  ssimWeight?: number;
  /** The learned comparator (needs `anomalies`); absent: none. `epochs` default: the VAE's. */
  comparator?: { filters: number[]; epochs?: number };
  scoring?: Partial<ScoringSettings>;
  targetFpr: number;
  /** Also calibrate on held-out images moved by this many pixels (scenes where objects are put back slightly off). */
  calibrationShift?: number;
  int8: boolean;
  /** Activation quantization of the int8 model (see quantize.ts); default 'uint8-asymmetric'. */
  int8Scheme?: Int8Scheme;
  out: string;
  force: boolean;
  ffmpegPath?: string;
  log?: (line: string) => void;
  onEpoch?: (info: EpochInfo) => void;
  signal?: AbortSignal;
}

export interface TrainBundleResult {
  manifest: Manifest;
  dir: string;
}

/** Largest number of training images used to calibrate int8 activation ranges. */
const INT8_CALIBRATION_IMAGES = 128;

/** Images -> VAE -> fp32 ONNX -> int8 ONNX -> latent memories -> calibration -> bundle, written atomically. */
export async function trainBundle(options: TrainBundleOptions): Promise<TrainBundleResult> {
  const log = options.log ?? (() => {});
  const began = performance.now();
  validateShape(options);
  await assertBundleTarget(options.out, options.force);

  const gathered = await gatherImages(options);
  const { skipped, source, channels } = gathered;
  // Before normalisation: the camera-fault checks measure the 8-bit frames the camera delivers.
  const quality = learnQualityProfile(gathered.images.map((image) => toInterleavedBytes(image)), options.width, options.height, channels);
  const images = gathered.images.map((image) => normaliseInput(image, options.normalisation));
  log(`data: ${images.length} ${channels === 1 ? 'grey' : 'colour'} images from ${source}${skipped ? ` (${skipped} unreadable, skipped)` : ''}`);
  const heldOutCount = Math.max(1, Math.round(images.length * options.valFraction));
  // Video frames next to each other are near-duplicates: a random split would calibrate the threshold on frames
  // the model has all but seen. Holding out the last stretch of the video in time gives an honest margin.
  const order = options.video ? [...images.slice(-heldOutCount), ...images.slice(0, -heldOutCount)] : shuffled(images, seededRandom(options.seed));
  if (order.length - heldOutCount < 2) {
    throw new UsageError(`only ${order.length} usable images: need at least ${heldOutCount + 2} (training plus held-out)`, {
      hint: 'give more normal images (a few hundred is typical), or a longer --duration of video',
    });
  }
  const heldOut = order.slice(0, heldOutCount);
  const training = order.slice(heldOutCount);
  const epochs = options.epochs ?? Math.max(25, Math.ceil(6000 / training.length));

  const config: VaeConfig = {
    width: options.width,
    height: options.height,
    channels,
    filters: options.filters,
    latentDim: options.latentDim,
    beta: options.beta,
    comparator: options.comparator ? { filters: options.comparator.filters.slice() } : undefined,
  };
  if (options.scoring?.errorMap === 'comparator' && !options.comparator) {
    throw new UsageError('error map "comparator" needs a comparator to be trained', { hint: 'drop --no-comparator, or choose --error-map ssim' });
  }
  if (options.comparator && !options.anomalies) {
    throw new UsageError('the comparator learns from synthetic anomalies', { hint: 'keep synthetic anomalies on (drop --no-anomalies), or train with --no-comparator' });
  }
  const anomalies = options.anomalies
    ? new SyntheticAnomalies(
        training,
        {
          share: options.anomalies.share,
          strength: options.anomalies.strength,
          kinds: options.anomalies.kinds,
          textures: options.anomalies.texturesDir ? await loadTextures(options.anomalies.texturesDir, config, options.normalisation) : undefined,
        },
        options.seed + 4,
      )
    : undefined;
  const comparatorEpochs = options.comparator ? (options.comparator.epochs ?? epochs) : 0;
  log(
    `training: ${training.length} images, ${heldOut.length} held out, ${epochs} epochs` +
      `${comparatorEpochs ? ` + ${comparatorEpochs} comparator epochs` : ''}${anomalies ? `, synthetic defects on ${Math.round(anomalies.share * 100)} %` : ''}, seed ${options.seed}`,
  );
  const { weights, finalLoss } = await trainVae(training, config, {
    epochs,
    comparatorEpochs,
    batchSize: options.batchSize,
    seed: options.seed,
    augmentShift: options.augmentShift,
    anomalies,
    ssimWeight: options.ssimWeight,
    onEpoch: options.onEpoch,
    signal: options.signal,
  });

  const fp32Bytes = foldUpsampleModel(exportOnnx(weights));
  const baseScoring = ScoringSettingsSchema.parse({ latentSpace: 'whitened-cosine', ...options.scoring, normalisation: {} });
  const files: Record<string, Uint8Array> = { 'model.onnx': fp32Bytes, [REFERENCE_FILE]: await referencePng(quality, options.width, options.height) };

  const calibrationShift = options.calibrationShift ?? 0;
  // Video: a stretch of time the user called normal, so no frame of it may score above the threshold.
  const floorAtTrainingMax = Boolean(options.video);
  const fp32 = await scoreVariant(fp32Bytes, training, heldOut, calibrationShift, baseScoring, config.latentDim, options.targetFpr, undefined, floorAtTrainingMax);
  files['memory.fp32.f32'] = new Uint8Array(fp32.memory.buffer);
  const scoring = fp32.scoring;
  const calibration: Manifest['calibration'] = { fp32: fp32.calibration };
  log(`calibrated fp32: ${describeCalibration(fp32.calibration)}`);

  if (options.int8) {
    options.signal?.throwIfAborted();
    // Activation ranges also from defective-looking images: calibrated on normal ones alone, the layers
    // that respond to defects would clip exactly where the comparator must tell a defect's size.
    const calibrationImages = training.slice(0, INT8_CALIBRATION_IMAGES);
    const calibrationInputs = anomalies
      ? calibrationImages.map((image, i) => (i % 2 === 1 ? anomalies.corrupt(image).image : image).data)
      : calibrationImages.map((image) => image.data);
    const int8Bytes = await quantizeInt8(fp32Bytes, calibrationInputs, { scheme: options.int8Scheme });
    const int8 = await scoreVariant(int8Bytes, training, heldOut, calibrationShift, scoring, config.latentDim, options.targetFpr, scoring, floorAtTrainingMax);
    files['model.int8.onnx'] = int8Bytes;
    files['memory.int8.f32'] = new Uint8Array(int8.memory.buffer);
    calibration.int8 = int8.calibration;
    log(`calibrated int8: ${describeCalibration(int8.calibration)}`);
  }

  const manifest: Manifest = {
    format: MANIFEST_FORMAT,
    formatVersion: MANIFEST_FORMAT_VERSION,
    linewatchVersion: LINEWATCH_VERSION,
    createdAt: new Date().toISOString(),
    input: { width: config.width, height: config.height, channels: config.channels, normalisation: options.normalisation, resize: 'stretch' },
    architecture: {
      name: 'vae-conv-upsample',
      latentDim: config.latentDim,
      filters: config.filters,
      beta: config.beta,
      ...(config.comparator ? { comparator: { filters: config.comparator.filters } } : {}),
    },
    files: {
      fp32: 'model.onnx',
      int8: options.int8 ? 'model.int8.onnx' : undefined,
      memory: { fp32: 'memory.fp32.f32', int8: options.int8 ? 'memory.int8.f32' : undefined },
      memoryCount: training.length,
    },
    scoring,
    calibration,
    quality: { ...quality.profile, reference: REFERENCE_FILE },
    training: {
      source,
      images: training.length,
      heldOut: heldOut.length,
      skipped,
      epochs,
      seed: options.seed,
      dataHash: hashImages(images),
      durationS: Math.round((performance.now() - began) / 100) / 10,
      finalLoss: Number.isFinite(finalLoss) ? finalLoss : undefined,
      augmentShift: options.augmentShift ?? 0,
      comparatorEpochs,
      ssimWeight: options.ssimWeight ?? 0,
      anomalies: anomalies
        ? {
            share: anomalies.share,
            strength: [anomalies.strength[0], anomalies.strength[1]],
            kinds: [...anomalies.kinds],
            textures: options.anomalies?.texturesDir ? path.basename(options.anomalies.texturesDir) : undefined,
          }
        : undefined,
    },
  };
  options.signal?.throwIfAborted();
  await writeBundle(options.out, { manifest, files }, { force: options.force });
  return { manifest, dir: options.out };
}

interface VariantScores {
  memory: Float32Array;
  scoring: ScoringSettings;
  calibration: Calibration;
}

/**
 * Score the held-out normal images with one model variant. Without `fixedScoring`
 * the component normalisation is measured here (fp32); int8 reuses fp32's so both
 * variants' scores live on one scale, and only its threshold is its own.
 */
async function scoreVariant(
  modelBytes: Uint8Array,
  training: ImageTensor[],
  heldOut: ImageTensor[],
  calibrationShift: number,
  scoring: ScoringSettings,
  latentDim: number,
  targetFpr: number,
  fixedScoring: ScoringSettings | undefined,
  floorAtTrainingMax: boolean,
): Promise<VariantScores> {
  const model = await OnnxModel.fromBytes(modelBytes, { threads: 2 });
  try {
    const trainingOutputs = await inferImages(model, training);
    const memory = packRows(trainingOutputs.mu);
    // The raw components do not depend on the normalisation, so each image is scored once.
    const scorer = new FrameScorer(fixedScoring ?? scoring, memory, latentDim);
    const componentsOf = (images: ImageTensor[], outputs: ImageOutputs) =>
      images.map((image, i) => scorer.score(image, outputs.recon[i]!, outputs.mu[i]!, undefined, outputs.map?.[i]));
    const heldOutComponents = componentsOf(heldOut, await inferImages(model, heldOut));
    const shifted = shiftedCopies(heldOut, calibrationShift);
    const shiftedComponents = componentsOf(shifted, await inferImages(model, shifted));
    const settings: ScoringSettings = fixedScoring ?? {
      ...scoring,
      normalisation: {
        recon: componentStats(heldOutComponents.map((c) => c.recon)),
        latent: componentStats(heldOutComponents.map((c) => c.latent)),
      },
    };
    const scores = [...heldOutComponents, ...shiftedComponents].map((c) => combineComponents(settings, c.recon, c.latent));
    const calibration = calibrate(scores, targetFpr, calibrationShift);
    if (floorAtTrainingMax) {
      // Every frame of the training stretch was declared normal: none of them may alarm. A camera
      // bumped for a moment inside that stretch otherwise sets off the first event of the day.
      const trainingMax = Math.max(...componentsOf(training, trainingOutputs).map((c) => combineComponents(settings, c.recon, c.latent)));
      calibration.trainingMaxScore = trainingMax;
      if (trainingMax > calibration.threshold) calibration.threshold = trainingMax;
    }
    return { memory, scoring: settings, calibration };
  } finally {
    await model.dispose();
  }
}

async function gatherImages(options: TrainBundleOptions): Promise<{ images: ImageTensor[]; skipped: number; source: string; channels: 1 | 3 }> {
  const specs = typeof options.images === 'string' ? [options.images] : (options.images ?? []);
  if ((specs.length > 0) === Boolean(options.video)) {
    throw new UsageError('give either --images (one or more) or --video', {
      hint: 'e.g. --images ./normal/ --images /var/lib/linewatch/feedback/line1, or --video line1.mp4 --start 0 --duration 60',
    });
  }
  const size = { width: options.width, height: options.height };
  if (specs.length > 0) {
    // Each picture once: named twice it would weigh double and could sit in both halves of the split.
    const paths = await resolveImageLists(specs, options.root);
    const channels = options.channels === 'auto' ? await detectChannels(paths) : options.channels;
    const loaded = await loadImages(paths, { ...size, channels });
    const source = `images:${specs.map((spec) => path.basename(spec.replace(/\/+$/, ''))).join('+')}`;
    return { images: loaded.images, skipped: loaded.skipped.length, source, channels };
  }
  // Video frames come from ffmpeg in the format asked for; colour must be asked for explicitly.
  const channels = options.channels === 'auto' ? 1 : options.channels;
  const shape = { ...size, channels };
  const video = options.video!;
  const frames = await decodeVideoFrames(video, {
    ...shape,
    start: options.start,
    duration: options.duration,
    fps: options.fps ?? 10,
    ffmpegPath: options.ffmpegPath,
    signal: options.signal,
  });
  const span = `${options.start ?? 0}s+${options.duration ?? 'all'}s@${options.fps ?? 10}fps`;
  return { images: frames, skipped: 0, source: `video:${path.basename(video.replace(/[?#].*$/, ''))}:${span}`, channels };
}

/** User texture images for the 'texture' filling, at the model's size, channels and input normalisation. */
async function loadTextures(dir: string, config: VaeConfig, normalisation: InputNormalisation): Promise<ImageTensor[]> {
  const paths = await resolveImageList(dir);
  const loaded = await loadImages(paths, { width: config.width, height: config.height, channels: config.channels });
  if (loaded.images.length === 0) {
    throw new UsageError(`--anomaly-textures ${dir}: none of its ${paths.length} files could be read as an image`, { hint: 'give a folder of JPEG or PNG texture images' });
  }
  return loaded.images.map((image) => normaliseInput(image, normalisation));
}

function validateShape(options: TrainBundleOptions): void {
  const problems: string[] = [];
  const step = 2 ** options.filters.length;
  for (const [name, value] of [['width', options.width], ['height', options.height]] as const) {
    if (!Number.isInteger(value) || value < step || value % step !== 0) {
      problems.push(`--size: ${name} ${value} must be a multiple of ${step} (2 per encoder level)`);
    }
  }
  if (!(options.valFraction > 0 && options.valFraction < 0.9)) problems.push(`--val-fraction ${options.valFraction} must be in (0, 0.9)`);
  if (!(options.targetFpr > 0 && options.targetFpr < 1)) problems.push(`--target-fpr ${options.targetFpr} must be in (0, 1)`);
  if (options.epochs !== undefined && !(Number.isInteger(options.epochs) && options.epochs >= 0)) problems.push(`--epochs must be a whole number >= 0 (0: untrained, a control)`);
  if (problems.length) throw new UsageError(problems.join('\n'));
}

/** Each image moved by `shift` pixels left, right, up and down (none for shift 0). */
function shiftedCopies(images: ImageTensor[], shift: number): ImageTensor[] {
  if (shift <= 0) return [];
  const moves = [
    [shift, 0],
    [-shift, 0],
    [0, shift],
    [0, -shift],
  ] as const;
  return images.flatMap((image) => moves.map(([dx, dy]) => shiftImage(image, dx, dy)));
}

function hashImages(images: readonly ImageTensor[]): string {
  const hash = createHash('sha256');
  for (const image of images) hash.update(new Uint8Array(image.data.buffer, image.data.byteOffset, image.data.byteLength));
  return `sha256:${hash.digest('hex').slice(0, 32)}`;
}
