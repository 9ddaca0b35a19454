import { z } from 'zod';

/*
 * How a bundle's frames are scored and what its threshold means. Scoring owns these
 * shapes (the scorer and the threshold logic read them); the model manifest stores them.
 */

const ZScore = z.object({ mean: z.number(), std: z.number().positive() });

export const ScoringSettingsSchema = z
  .object({
    /** recon: structural reconstruction error; latent: kNN distance of mu to the training mus; hybrid: sum of both z-scores. */
    scorer: z.enum(['recon', 'latent', 'hybrid']).default('recon'),
    /**
     * Per-pixel anomaly map: 1 - SSIM or squared error between input and reconstruction, or the
     * learned comparator's defect probability (bundles trained with one).
     */
    errorMap: z.enum(['ssim', 'sq', 'comparator']).default('ssim'),
    ssimWindow: z.number().int().min(3).max(31).default(11),
    /** Gaussian blur of the error map, sigma in model-input pixels (0 = none). */
    blurSigma: z.number().min(0).max(16).default(2),
    pooling: z.enum(['max', 'mean', 'topk']).default('max'),
    /** Fraction of the map averaged by `topk` pooling. */
    topkFraction: z.number().gt(0).max(1).default(0.01),
    /** Pixels ignored at each edge of the error map (reconstructions are worst at borders). */
    border: z.number().int().min(0).default(2),
    /** Neighbours averaged for latent novelty. */
    latentK: z.number().int().min(1).default(1),
    /**
     * Where latent distances are measured: `raw` (Euclidean on mu) or `whitened-cosine` (each
     * dimension scaled by 1 / its spread over the training codes, then the angle between codes:
     * no single dimension or overall code size dominates). Bundles written before the option: raw.
     */
    latentSpace: z.enum(['raw', 'whitened-cosine']).default('raw'),
    /** z-score normalisation of each component, measured on held-out normal images. */
    normalisation: z
      .object({ recon: ZScore, latent: ZScore })
      .partial()
      .default({}),
  })
  .strict();
export type ScoringSettings = z.infer<typeof ScoringSettingsSchema>;

export const CalibrationSchema = z
  .object({
    /** Held-out normal images the scores were measured on (never the training images). */
    heldOut: z.number().int().min(1),
    targetFpr: z.number().gt(0).lt(1),
    threshold: z.number(),
    quantiles: z.object({
      p50: z.number(),
      p90: z.number(),
      p95: z.number(),
      p99: z.number(),
      max: z.number(),
    }),
    mean: z.number(),
    std: z.number().min(0),
    /** Held-out images were also scored moved by this many pixels each way: such shifts stay below the threshold. */
    shiftTolerancePx: z.number().int().min(0).default(0),
    /**
     * Video bundles: the highest score of a training frame. The threshold is raised to it when it
     * lies above, since every frame of the training stretch was declared normal.
     */
    trainingMaxScore: z.number().optional(),
    /*
     * What the threshold can promise. N held-out scores show a false-positive rate directly only
     * down to about 1/N: below that, the empirical quantile is just the held-out maximum, whose
     * real rate averages 1/(N+1) whatever the target. So calibrate() says how it got the threshold
     * and what rate to expect there. Optional: bundles written before these fields still load
     * (their threshold is the empirical quantile, see thresholdForFpr).
     */
    /** `empirical`: an order statistic of the held-out scores; `tail-fit`: extrapolated from an exponential upper tail. */
    method: z.enum(['empirical', 'tail-fit']).optional(),
    /** 1 / (heldOut + 1): the smallest rate the held-out scores show without a model (that of their maximum). */
    minResolvableFpr: z.number().gt(0).lte(0.5).optional(),
    /**
     * The probability that a new normal frame scores above the threshold, as the calibration
     * estimates it (distribution-free for `empirical`, an upper bound when top scores tie; the
     * exponential tail's prediction for `tail-fit`). Above `targetFpr` when the held-out set was
     * too small to reach the target at all, below it when the threshold was raised to a held-out score.
     */
    expectedFprAtThreshold: z.number().min(0).lte(1).optional(),
  })
  .strict();
export type Calibration = z.infer<typeof CalibrationSchema>;
