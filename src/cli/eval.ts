import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, Option } from 'commander';
import { resolveImageList } from '../image/load.js';
import { loadBundle } from '../model/bundle.js';
import { readManifest, VARIANTS, type Variant } from '../model/manifest.js';
import { DEFAULT_EVAL_BATCH } from '../toolkit/eval/defaults.js';
import { parseInteger } from './options.js';

interface EvalFlags {
  model: string;
  normal: string[];
  anomalous: string[];
  root?: string;
  masks: boolean;
  variant?: Variant;
  json?: string;
  report?: string;
  batch: number;
  threads?: number;
}

export function registerEval(program: Command): void {
  program
    .command('eval')
    .description('score labelled normal and anomalous images with a model bundle: AUROC, threshold TPR/FPR, speed; optional report')
    .requiredOption('--model <bundle>', 'model bundle folder (written by `linewatch train`)')
    .requiredOption('--normal <dir|list...>', 'normal images: folders, or files listing one path per line')
    .requiredOption('--anomalous <dir|list...>', 'anomalous images: folders (e.g. one per defect type), or files listing one path per line')
    .option('--root <dir>', 'folder that relative paths in list files start from (default: each list file\'s folder)')
    .option('--masks', 'read the same-named .png ground-truth mask beside each image and report pixel AUROC', false)
    .addOption(new Option('--variant <name>', 'model variant to evaluate (default: int8 where the bundle has it)').choices([...VARIANTS]))
    .option('--json <file>', 'write the figures and per-image scores as JSON')
    .option('--report <dir>', 'write roc.png, heatmaps.png and index.html to this folder')
    .option('--batch <n>', 'images per model run', parseInteger, DEFAULT_EVAL_BATCH)
    .option('--threads <n>', 'onnxruntime intra-op threads', parseInteger)
    .action(async (flags: EvalFlags) => {
      // The toolkit loads only when the command runs, not with every `linewatch` invocation.
      const { evaluate, formatSummary, summarise } = await import('../toolkit/eval/eval.js');
      const { writeReport } = await import('../toolkit/eval/report.js');
      const resolveAll = async (specs: string[]) => (await Promise.all(specs.map((spec) => resolveImageList(spec, flags.root)))).flat();
      const normalPaths = await resolveAll(flags.normal);
      const anomalousPaths = await resolveAll(flags.anomalous);
      const variant = flags.variant ?? (await defaultVariant(flags.model));
      const bundle = await loadBundle(flags.model, { variant, threads: flags.threads, log: (line) => console.error(line) });
      try {
        const progress = progressLine();
        const result = await evaluate(bundle, normalPaths, anomalousPaths, { masks: flags.masks, batch: flags.batch, onProgress: progress.update });
        progress.done();
        console.log(formatSummary(result));
        if (flags.json) {
          await mkdir(path.dirname(path.resolve(flags.json)), { recursive: true });
          await writeFile(flags.json, `${JSON.stringify(summarise(result), null, 2)}\n`);
          console.log(`wrote ${flags.json}`);
        }
        if (flags.report) {
          const written = await writeReport(flags.report, result);
          console.log(`wrote ${written.index}`);
        }
      } finally {
        await bundle.dispose();
      }
    });
}

/** int8 where the bundle has it (what `run` deploys), else fp32. */
async function defaultVariant(bundleDir: string): Promise<Variant> {
  const manifest = await readManifest(bundleDir);
  return manifest.files.int8 ? 'int8' : 'fp32';
}

/** "scored 120/583" on a terminal, nothing in logs. */
function progressLine() {
  const tty = Boolean(process.stderr.isTTY);
  return {
    update: (done: number, total: number) => {
      if (tty) process.stderr.write(`\rscored ${done}/${total}`);
    },
    done: () => {
      if (tty) process.stderr.write('\r\x1b[K');
    },
  };
}
