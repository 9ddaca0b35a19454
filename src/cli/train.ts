import path from 'node:path';
import cliProgress from 'cli-progress';
import { Command, Option } from 'commander';
import { LinewatchError } from '../errors.js';
import { INPUT_NORMALISATIONS, type InputNormalisation } from '../image/normalise.js';
import { probeVideoSize } from '../source/decode.js';
import { describeCalibration } from '../scoring/metrics.js';
import { INT8_SCHEMES, type Int8Scheme } from '../toolkit/quantize.js';
import { ANOMALY_KINDS, type AnomalyKind } from '../toolkit/train/synthetic.js';
import type { EpochInfo } from '../toolkit/train/vae.js';
import { DEFAULT_COMPARATOR_FILTERS } from '../toolkit/train/vae-config.js';
import { parseChannels, parseInteger, parseIntegerList, parseNumber, parseRange, parseSize } from './options.js';

interface TrainFlags {
  images?: string[];
  root?: string;
  video?: string;
  start?: number;
  duration?: number;
  fps: number;
  size?: { width: number; height: number };
  channels?: 1 | 3;
  normalise: InputNormalisation;
  epochs?: number;
  seed: number;
  valFraction?: number;
  out?: string;
  force: boolean;
  scorer?: 'recon' | 'latent' | 'hybrid';
  blur?: number;
  pooling?: 'max' | 'mean' | 'topk';
  targetFpr: number;
  latent: number;
  filters: number[];
  beta: number;
  batchSize: number;
  augmentShift?: number;
  calibrationShift?: number;
  anomalies: boolean;
  anomalyShare: number;
  anomalyStrength: [number, number];
  anomalyKinds?: string;
  anomalyTextures?: string;
  ssimWeight: number;
  comparator: boolean;
  comparatorFilters: number[];
  comparatorEpochs?: number;
  errorMap?: 'ssim' | 'sq' | 'comparator';
  int8: boolean;
  int8Scheme: Int8Scheme;
  ffmpeg: string;
}

export function registerTrain(program: Command): void {
  program
    .command('train')
    .description('train a VAE on normal images or video frames and write a model bundle (fp32 + int8 ONNX, calibration)')
    .option(
      '--images <dir|list...>',
      'normal images: folders (their .jpg/.png files; other files such as .json are ignored) or files listing one path per line; ' +
        'give several to train on all of them, e.g. the original set plus <dataDir>/feedback/<camera> (pictures marked as normal on the status page or the REST API)',
    )
    .option('--root <dir>', 'folder that relative paths in a list file start from')
    .option('--video <file|url>', 'video file or stream (rtsp://...) showing the normal scene')
    .option('--start <s>', 'video: seconds to skip', parseNumber)
    .option('--duration <s>', 'video: seconds to learn from', parseNumber)
    .option('--fps <n>', 'video: frames per second to sample', parseNumber, 10)
    .option('--size <N|WxH>', 'model input size, multiples of 8 (default: 64x64 for --images; for --video 64 high, as wide as the video\'s aspect ratio)', parseSize)
    .option('--channels <1|3>', '1 = grey, 3 = RGB (default: for --images 3 if the images are in colour, else 1; for --video 1)', parseChannels)
    .addOption(
      new Option('--normalise <how>', 'model input: standardise (each image to zero mean, unit spread; robust to lighting) or unit (pixels / 255)')
        .choices(INPUT_NORMALISATIONS)
        .default('standardise'),
    )
    .option('--epochs <n>', 'passes over the training images (default: enough for ~6000 images, at least 25)', parseInteger)
    .option('--seed <n>', 'random seed: the same seed and data give the same model', parseInteger, 1)
    .option('--val-fraction <f>', 'share held out to calibrate the threshold (default 0.1 of images; for --video 0.2, the last stretch in time)', parseNumber)
    .option('--out <dir>', 'bundle folder to write (default: models/<name of the images folder, list or video>)')
    .option('--force', 'replace an existing bundle folder', false)
    .addOption(
      new Option('--scorer <name>', 'frame score: recon (the anomaly map, pooled), latent (novelty of the latent code), hybrid (both). Default: hybrid for --images, recon for --video').choices([
        'recon',
        'latent',
        'hybrid',
      ]),
    )
    .option('--blur <sigma>', 'Gaussian blur of the error map in model pixels (default: 4 for --video, 2 for --images); more tolerates small shifts', parseNumber)
    .addOption(new Option('--pooling <how>', 'anomaly map to score: max, mean or topk (mean of the top 1%) (default: topk)').choices(['max', 'mean', 'topk']))
    .option('--calibration-shift <px>', 'also calibrate on held-out images moved by this many pixels, so such shifts do not alarm (default: the --augment-shift for --video, 0 for --images)', parseInteger)
    .option('--target-fpr <f>', 'false-positive rate on held-out normal images that sets the threshold', parseNumber, 0.005)
    .option('--latent <n>', 'latent size', parseInteger, 64)
    .option('--filters <list>', 'encoder channels per level', parseIntegerList, [16, 32, 64])
    .option('--beta <f>', 'weight of the KL term', parseNumber, 0.1)
    .option('--batch-size <n>', 'images per training step', parseInteger, 32)
    .option('--augment-shift <px>', 'random +-px shifts while training (default: 3 for --video, 0 for --images)', parseInteger)
    .option('--no-anomalies', 'train on clean images only (no synthetic defects; implies --no-comparator)')
    .option('--anomaly-share <f>', 'share of training images given a synthetic defect', parseNumber, 0.5)
    .option('--anomaly-strength <min,max>', 'blend factor range of a synthetic defect over the image (0-1)', parseRange, [0.2, 1] as [number, number])
    .option('--anomaly-kinds <list>', `synthetic defect fillings, from ${ANOMALY_KINDS.join(', ')} (default: all but texture, plus texture with --anomaly-textures)`)
    .option('--anomaly-textures <dir>', 'folder of texture images to paint synthetic defects with (e.g. the Describable Textures Dataset)')
    .option('--ssim-weight <f>', 'weight of the (1 - SSIM) reconstruction loss next to the squared error', parseNumber, 1)
    .option('--no-comparator', 'no learned comparator: score by the fixed reconstruction error map')
    .option('--comparator-filters <list>', 'comparator channels per level', parseIntegerList, [...DEFAULT_COMPARATOR_FILTERS])
    .option('--comparator-epochs <n>', 'comparator passes over the images after the VAE (default: as many as the VAE)', parseInteger)
    .addOption(new Option('--error-map <how>', 'anomaly map: comparator (learned), ssim or sq (fixed, input vs reconstruction). Default: comparator when trained, else ssim').choices(['comparator', 'ssim', 'sq']))
    .option('--no-int8', 'skip the int8 model')
    .addOption(
      new Option('--int8-scheme <scheme>', 'int8 activations: uint8-asymmetric (fastest on onnxruntime CPU) or int8-symmetric (zero point 0, for TensorRT)')
        .choices([...INT8_SCHEMES])
        .default('uint8-asymmetric'),
    )
    .option('--ffmpeg <path>', 'ffmpeg binary', 'ffmpeg')
    .action(async (flags: TrainFlags) => {
      const fromVideo = Boolean(flags.video);
      const controller = new AbortController();
      const onSignal = () => {
        process.stderr.write('\nlinewatch train: interrupted, nothing was written\n');
        controller.abort();
      };
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      const progress = epochProgress();
      // Loaded here, not at start-up: TensorFlow.js costs ~60 MB that `linewatch run` should not carry.
      const { trainBundle } = await import('../toolkit/train/pipeline.js');
      try {
        const size = flags.size ?? (flags.video ? await aspectPreservingSize(flags.video, flags.ffmpeg) : { width: 64, height: 64 });
        const { manifest, dir } = await trainBundle({
          images: flags.images,
          root: flags.root,
          video: flags.video,
          start: flags.start,
          duration: flags.duration,
          fps: flags.fps,
          width: size.width,
          height: size.height,
          channels: flags.channels ?? (flags.images ? 'auto' : 1),
          normalisation: flags.normalise,
          filters: flags.filters,
          latentDim: flags.latent,
          beta: flags.beta,
          epochs: flags.epochs,
          batchSize: flags.batchSize,
          seed: flags.seed,
          valFraction: flags.valFraction ?? (fromVideo ? 0.2 : 0.1),
          augmentShift: flags.augmentShift ?? (fromVideo ? 3 : 0),
          anomalies: flags.anomalies
            ? {
                share: flags.anomalyShare,
                strength: flags.anomalyStrength,
                kinds: flags.anomalyKinds?.split(',').map((kind) => kind.trim() as AnomalyKind),
                texturesDir: flags.anomalyTextures,
              }
            : undefined,
          ssimWeight: flags.ssimWeight,
          comparator: flags.anomalies && flags.comparator ? { filters: flags.comparatorFilters, epochs: flags.comparatorEpochs } : undefined,
          calibrationShift: flags.calibrationShift ?? (fromVideo ? (flags.augmentShift ?? 3) : 0),
          // Measured across Magnetic Tile, ELPV and the demo video (docs/benchmarks/quality): on image sets the
          // comparator's map plus latent novelty beats either alone and the pixel 1-NN baseline; on a stream the
          // latent code stays novel after a scene is restored, so events would not end: the map alone.
          // Scenes shift a little when objects are put back: a wider blur keeps such frames normal. Top-k pooling
          // keeps int8 scores closer to fp32 than max pooling.
          scoring: {
            scorer: flags.scorer ?? (fromVideo ? 'recon' : 'hybrid'),
            errorMap: flags.errorMap ?? (flags.anomalies && flags.comparator ? 'comparator' : 'ssim'),
            blurSigma: flags.blur ?? (fromVideo ? 4 : 2),
            pooling: flags.pooling ?? 'topk',
          },
          targetFpr: flags.targetFpr,
          int8: flags.int8,
          int8Scheme: flags.int8Scheme,
          out: flags.out ?? defaultBundleDir(flags.images?.[0] ?? flags.video ?? 'model'),
          force: flags.force,
          ffmpegPath: flags.ffmpeg,
          log: (line) => progress.log(line),
          onEpoch: (info) => progress.epoch(info),
          signal: controller.signal,
        });
        progress.stop();
        const { calibration, training } = manifest;
        console.log(`wrote ${dir}: ${training.images} training images, ${training.epochs} epochs in ${training.durationS} s`);
        for (const variant of ['fp32', 'int8'] as const) {
          const c = calibration[variant];
          if (c) {
            console.log(
              `  ${variant}: ${describeCalibration(c)}` +
                ` (held-out normal scores: median ${c.quantiles.p50.toFixed(4)}, p99 ${c.quantiles.p99.toFixed(4)}, max ${c.quantiles.max.toFixed(4)})`,
            );
          }
        }
      } catch (error) {
        progress.stop();
        if (controller.signal.aborted) throw new LinewatchError('training interrupted; no bundle was written', { exitCode: 130 });
        throw error;
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });
}

/** models/<input name>: `--video line1.mp4` trains models/line1. */
function defaultBundleDir(input: string): string {
  const name = path.basename(input.replace(/[?#].*$/, '').replace(/\/+$/, '')).replace(/\.[^.]+$/, '');
  return path.join('models', name.replace(/[^A-Za-z0-9_-]+/g, '-') || 'model');
}

/**
 * Video frames keep their shape: 64 pixels high and as wide as the aspect ratio
 * allows in steps of 8 (a 16:9 camera gives 112x64), so objects are not squeezed.
 */
async function aspectPreservingSize(video: string, ffmpegPath: string): Promise<{ width: number; height: number }> {
  const source = await probeVideoSize(video, ffmpegPath);
  const height = 64;
  const width = Math.min(256, Math.max(32, Math.round((height * source.width) / source.height / 8) * 8));
  return { width, height };
}

/** A progress bar on a terminal, one plain line per epoch otherwise (logs, CI). */
function epochProgress() {
  const tty = Boolean(process.stderr.isTTY);
  let bar: cliProgress.SingleBar | undefined;
  return {
    log(line: string) {
      this.stop();
      console.error(line);
    },
    epoch(info: EpochInfo) {
      const eta = Math.round(info.seconds * (info.epochs - info.epoch));
      if (!tty) {
        const terms = info.phase === 'vae' ? ` (recon ${info.reconLoss.toFixed(5)}, kl ${info.kl.toFixed(5)})` : '';
        console.error(`epoch ${info.epoch}/${info.epochs} ${info.phase} loss ${info.loss.toFixed(5)}${terms} ${info.seconds.toFixed(1)} s, ETA ${eta} s`);
        return;
      }
      if (!bar) {
        bar = new cliProgress.SingleBar(
          { format: 'epoch {value}/{total} [{bar}] {phase} loss {loss} | {seconds} s/epoch | ETA {etaText}', stream: process.stderr, hideCursor: true },
          cliProgress.Presets.shades_classic,
        );
        bar.start(info.epochs, 0, { phase: info.phase, loss: '-', seconds: '-', etaText: '-' });
      }
      bar.update(info.epoch, { phase: info.phase, loss: info.loss.toFixed(5), seconds: info.seconds.toFixed(1), etaText: `${eta} s` });
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}
