/**
 * Real-data quality benchmark on the Magnetic Tile Defect dataset (standard
 * DifferNet split): train (or take --model), evaluate fp32 and int8, and put the
 * figures beside the published image AUROCs and beside a no-learning baseline
 * measured in the same run, so nobody mistakes what the VAE adds.
 *
 *   npm run bench:magnetic-tile -- [--model models/magnetic-tile] [--out out/bench-magnetic-tile]
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { evaluate, type EvalResult } from '../src/toolkit/eval/eval.js';
import { resolveImageList } from '../src/image/load.js';
import { loadBundle } from '../src/model/bundle.js';
import { readManifest, type Variant } from '../src/model/manifest.js';
import { trainBundle } from '../src/toolkit/train/pipeline.js';
import { DEFAULT_COMPARATOR_FILTERS } from '../src/toolkit/train/vae-config.js';
import { pixelNearestNeighbourBaseline } from './baselines.js';

const PUBLISHED = [
  { method: 'GANomaly', imageAuroc: 0.766 },
  { method: '1-NN', imageAuroc: 0.8 },
  { method: 'DifferNet', imageAuroc: 0.977 },
  { method: 'PatchCore-10%', imageAuroc: 0.979 },
];

const { values } = parseArgs({
  options: {
    data: { type: 'string', default: '../shared/data/magnetic-tile' },
    model: { type: 'string' },
    out: { type: 'string', default: 'out/bench-magnetic-tile' },
    epochs: { type: 'string' },
  },
});
const dataRoot = values.data!;
const splits = path.join(dataRoot, 'splits');
const outDir = values.out!;
await mkdir(outDir, { recursive: true });

/** The settings of the shipped Magnetic Tile bundle (`linewatch train` defaults); `epochs: 0` gives the untrained control. */
function trainOnSplit(out: string, epochs: number | undefined) {
  return trainBundle({
    images: path.join(splits, 'differnet_train_good.txt'),
    root: dataRoot,
    width: 64,
    height: 64,
    channels: 1,
    normalisation: 'standardise',
    filters: [16, 32, 64],
    latentDim: 64,
    beta: 0.1,
    epochs,
    seed: 1,
    valFraction: 0.1,
    anomalies: { share: 0.5 },
    ssimWeight: 1,
    comparator: { filters: [...DEFAULT_COMPARATOR_FILTERS] },
    scoring: { scorer: 'hybrid', errorMap: 'comparator', blurSigma: 2, pooling: 'topk' },
    targetFpr: 0.005,
    int8: true,
    out,
    force: true,
    log: (line) => console.error(line),
    onEpoch: (info) => console.error(`epoch ${info.epoch}/${info.epochs} loss ${info.loss.toFixed(3)} ${info.seconds.toFixed(1)} s`),
  });
}

let modelDir = values.model;
let trainingSeconds: number | null = null;
if (!modelDir) {
  modelDir = path.join(outDir, 'model');
  const began = performance.now();
  console.error(`training on ${path.join(splits, 'differnet_train_good.txt')} -> ${modelDir}`);
  await trainOnSplit(modelDir, values.epochs ? Number(values.epochs) : undefined);
  trainingSeconds = (performance.now() - began) / 1000;
}

const manifest = await readManifest(modelDir);
const normal = await resolveImageList(path.join(splits, 'differnet_test_good.txt'), dataRoot);
const anomalous = await resolveImageList(path.join(splits, 'differnet_test_defect.txt'), dataRoot);

const variants: Record<string, ReturnType<typeof summarise>> = {};
for (const variant of ['fp32', 'int8'] as Variant[]) {
  const bundle = await loadBundle(modelDir, { variant, threads: 1 });
  try {
    const result = await evaluate(bundle, normal, anomalous, { masks: true, batch: 1 });
    variants[variant] = summarise(result);
    console.error(`${variant}: image AUROC ${result.imageAuroc.toFixed(4)}, ${result.msPerFrame.toFixed(2)} ms/frame`);
  } finally {
    await bundle.dispose();
  }
}

// Control: the same architecture and scoring with the initial, untrained weights. Whatever the trained
// model scores above this is what training added.
const untrainedDir = await mkdtemp(path.join(tmpdir(), 'linewatch-untrained-'));
await trainOnSplit(untrainedDir, 0);
const untrainedBundle = await loadBundle(untrainedDir, { variant: 'int8', threads: 1 });
const untrained = summarise(await evaluate(untrainedBundle, normal, anomalous, { batch: 16 }));
await untrainedBundle.dispose();
await rm(untrainedDir, { recursive: true, force: true });

// The no-learning baseline, same images, same size, same run.
const size = { width: manifest.input.width, height: manifest.input.height, channels: manifest.input.channels };
const trainPaths = await resolveImageList(path.join(splits, 'differnet_train_good.txt'), dataRoot);
const { imageAuroc: baselineAuroc, msPerFrame: baselineMs } = await pixelNearestNeighbourBaseline(trainPaths, normal, anomalous, size);
const baseline = { method: 'pixel 1-NN, per-image standardised, same run', imageAuroc: baselineAuroc, msPerFrame: baselineMs };

const report = {
  dataset: 'Magnetic Tile Defect, DifferNet split',
  model: modelDir,
  scorer: manifest.scoring.scorer,
  input: manifest.input,
  training: { ...manifest.training, benchmarkSeconds: trainingSeconds },
  counts: { normal: normal.length, anomalous: anomalous.length },
  variants,
  int8MinusFp32ImageAuroc: variants.int8!.imageAuroc - variants.fp32!.imageAuroc,
  baseline,
  untrainedControl: untrained,
  published: PUBLISHED,
};
await writeFile(path.join(outDir, 'results.json'), `${JSON.stringify(report, null, 2)}\n`);
await writeFile(path.join(outDir, 'results.md'), markdown(report));
console.log(markdown(report));
console.error(`wrote ${path.join(outDir, 'results.json')} and results.md`);

function summarise(result: EvalResult) {
  return {
    imageAuroc: result.imageAuroc,
    pixelAuroc: result.pixelAuroc,
    components: {
      recon: result.components.recon.imageAuroc,
      latent: result.components.latent.imageAuroc,
      hybrid: result.components.hybrid.imageAuroc,
    },
    threshold: result.threshold,
    tpr: result.tpr,
    fpr: result.fpr,
    f1: result.f1,
    msPerFrame: result.msPerFrame,
    inferenceMsPerFrame: result.inferenceMsPerFrame,
    scoringMsPerFrame: result.scoringMsPerFrame,
  };
}

function markdown(r: typeof report): string {
  const pct = (v: number | null | undefined) => (v === null || v === undefined ? '–' : (v * 100).toFixed(1));
  const lines = [
    `# Magnetic Tile Defect: image AUROC (%), DifferNet split (${r.counts.normal} normal, ${r.counts.anomalous} defective test images)`,
    '',
    `Model: \`${r.model}\`, ${r.input.width}x${r.input.height}x${r.input.channels}, scorer \`${r.scorer}\`, trained on ${r.training.images} images (${r.training.heldOut} held out), ${r.training.epochs} epochs, ${r.training.durationS} s.`,
    '',
    '| method | image AUROC | pixel AUROC | recon only | latent only | hybrid | TPR / FPR at threshold | ms per frame (1 thread) |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const [name, v] of Object.entries(r.variants)) {
    lines.push(
      `| **linewatch VAE ${name}** | **${pct(v.imageAuroc)}** | ${pct(v.pixelAuroc)} | ${pct(v.components.recon)} | ${pct(v.components.latent)} | ${pct(v.components.hybrid)} | ${pct(v.tpr)} / ${pct(v.fpr)} | ${v.msPerFrame.toFixed(2)} |`,
    );
  }
  const u = r.untrainedControl;
  lines.push(
    `| control: same VAE, untrained (int8) | ${pct(u.imageAuroc)} | ${pct(u.pixelAuroc)} | ${pct(u.components.recon)} | ${pct(u.components.latent)} | ${pct(u.components.hybrid)} | ${pct(u.tpr)} / ${pct(u.fpr)} | ${u.msPerFrame.toFixed(2)} |`,
  );
  lines.push(`| ${r.baseline.method} | ${pct(r.baseline.imageAuroc)} | – | | | | | ${r.baseline.msPerFrame.toFixed(2)} |`);
  for (const p of r.published) lines.push(`| ${p.method} (published) | ${pct(p.imageAuroc)} | | | | | | |`);
  lines.push('', `int8 minus fp32 image AUROC: ${(r.int8MinusFp32ImageAuroc * 100).toFixed(2)} points.`, '');
  return lines.join('\n');
}
