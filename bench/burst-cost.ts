/**
 * What one frame's work costs on this machine when it comes alone, as the agent meets it. Work run
 * back to back finds what it needs still warm (caches, predictors: not told apart here); in the agent,
 * frames of many cameras come one by one, every 12.5 ms at 16 cameras x 5 fps. This times the
 * same work (the bundle's onnxruntime run, the scorer, and the camera-fault meter, on a frame of the
 * demo video) back to back (the baseline), once every --gap-ms with the core asleep in between
 * (setTimeout), and once every --gap-ms with the core spinning in between (so not idle states
 * either). CPU time is process.cpuUsage() (user + system) around each piece of work, so the gaps do
 * not count. Conditions alternate in rounds so that load from other processes hits all alike.
 *
 * The agent's CPU per analysed frame (bench:capacity, bench:agent) is paid at the spaced rate; the
 * ratio says how much of it this machine charges for work that comes alone, which batches of frames
 * would not pay (and another machine may not).
 *
 * Beside it, what this machine charges for entering the kernel, which work that comes alone meets
 * more often (a wake-up, a read, a fresh page): one fstat() from JS, and the first touch of a page of
 * freshly mapped memory (a page fault). A virtual machine can charge many times what bare metal does.
 *
 *   node dist-bench/bench/burst-cost.js [--gap-ms 12.5] [--frames 300] [--rounds 4]
 *     [--model models/demo] [--variant int8] [--video assets/demo/bottle-detection.mp4] [--out docs/benchmarks/burst-cost.json]
 */
import { execFileSync } from 'node:child_process';
import { closeSync, fstatSync, openSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tensorOf } from '../src/agent/scheduler.js';
import { formatError, UsageError } from '../src/errors.js';
import { loadBundle, type LoadedBundle } from '../src/model/bundle.js';
import { QualityMeter } from '../src/scoring/quality.js';
import type { Frame } from '../src/source/index.js';
import { markdownTable, mean, median, round, sleep, writeReport } from './measure.js';
import { modelAndVideo, positiveNumber } from './options.js';
import { videoFrames } from './video-frames.js';

interface Settings {
  gapMs: number;
  frames: number;
  rounds: number;
  model: string;
  variant: 'int8' | 'fp32';
  video: string;
  out: string;
}

function parseSettings(argv: string[]): Settings {
  const { values } = parseArgs({
    args: argv,
    options: {
      'gap-ms': { type: 'string', default: '12.5' },
      frames: { type: 'string', default: '300' },
      rounds: { type: 'string', default: '4' },
      model: { type: 'string', default: 'models/demo' },
      variant: { type: 'string', default: 'int8' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      out: { type: 'string', default: 'docs/benchmarks/burst-cost.json' },
    },
  });
  return {
    gapMs: positiveNumber('gap-ms', values['gap-ms']!),
    frames: Math.round(positiveNumber('frames', values.frames!)),
    rounds: Math.round(positiveNumber('rounds', values.rounds!)),
    ...modelAndVideo(values),
    out: values.out!,
  };
}

/** Median of three samples each: one fstat() from JS, and the first write to each 4 KiB page of a fresh 64 MiB buffer. */
function kernelEntryCosts(): { fstatUs: number; pageFaultUs: number } {
  const fd = openSync('/dev/null', 'r');
  try {
    const fstats: number[] = [];
    const faults: number[] = [];
    for (let sample = 0; sample < 3; sample++) {
      const calls = 20_000;
      let began = performance.now();
      for (let i = 0; i < calls; i++) fstatSync(fd);
      fstats.push(((performance.now() - began) * 1000) / calls);
      // Far above glibc's mmap threshold: the buffer comes straight from mmap, untouched, so each first write faults.
      const bytes = 64 * 2 ** 20;
      const pages = new Uint8Array(new ArrayBuffer(bytes));
      began = performance.now();
      for (let i = 0; i < bytes; i += 4096) pages[i] = 1;
      faults.push(((performance.now() - began) * 1000) / (bytes / 4096));
    }
    return { fstatUs: round(median(fstats), 2)!, pageFaultUs: round(median(faults), 2)! };
  } finally {
    closeSync(fd);
  }
}

/** Batch sizes of the model-alone sweep: one frame per round, as the agent runs most rounds at 16 cameras, up to a round of every camera. */
const BATCH_SIZES = [1, 2, 4, 8, 16] as const;

/**
 * The model alone, back to back, at each batch size: CPU ms per frame. The floor under the agent's per-frame
 * figure that only a cheaper model lowers, and what rounds of several frames (inference.batchWindowMs) could
 * save at most. Batch sizes alternate in rounds, like the conditions.
 */
async function batchSweep(bundle: LoadedBundle, images: Float32Array[], frames: number, rounds: number): Promise<{ batch: number; msPerFrame: number }[]> {
  const perImage = images[0]!.length;
  const inputs = new Map(BATCH_SIZES.map((batch) => {
    const input = new Float32Array(perImage * batch);
    for (let i = 0; i < batch; i++) input.set(images[i % images.length]!, i * perImage);
    return [batch, input] as const;
  }));
  const cpuMs = new Map<number, number[]>();
  for (const batch of BATCH_SIZES) for (let i = 0; i < 20; i++) await bundle.model.run(inputs.get(batch)!, batch);
  for (let r = 0; r < rounds; r++) {
    for (const batch of BATCH_SIZES) {
      const runs = Math.max(10, Math.round(frames / batch));
      const before = process.cpuUsage();
      for (let i = 0; i < runs; i++) await bundle.model.run(inputs.get(batch)!, batch);
      const used = process.cpuUsage(before);
      const list = cpuMs.get(batch) ?? [];
      list.push((used.user + used.system) / 1000 / (runs * batch));
      cpuMs.set(batch, list);
    }
  }
  return BATCH_SIZES.map((batch) => ({ batch, msPerFrame: round(mean(cpuMs.get(batch)!), 3)! }));
}

/**
 * What kind of machine this is, where the kernel says: the hypervisor (a virtual machine charges for
 * page faults, wake-ups and switches between processes what bare metal does not), from the boot log
 * when it is readable, else systemd-detect-virt.
 */
function virtualisation(): string {
  const tryRun = (command: string, args: string[]) => {
    try {
      return execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 });
    } catch {
      return '';
    }
  };
  const hypervisor = /Hypervisor detected: (.+)/.exec(tryRun('dmesg', []))?.[1]?.trim();
  if (hypervisor) return `virtual machine (boot log: hypervisor ${hypervisor})`;
  const detected = tryRun('systemd-detect-virt', []).trim();
  if (detected && detected !== 'none') return `virtualised (systemd-detect-virt: ${detected})`;
  return detected === 'none' ? 'bare metal (systemd-detect-virt: none)' : 'unknown';
}

const WORKS = ['inference', 'scoring', 'both'] as const;
type Work = (typeof WORKS)[number];
const CONDITIONS = ['back to back', 'spaced, asleep between', 'spaced, spinning between'] as const;
type Condition = (typeof CONDITIONS)[number];

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const bundle = await loadBundle(settings.model, { variant: settings.variant, threads: 1 });
  try {
    const frames = videoFrames(settings.video, bundle);
    const { width, height } = bundle.manifest.input;
    const meter = new QualityMeter(width, height, 1, bundle.sceneReference);
    const images = frames.map((data) => tensorOf(bundle, { data } as Frame));
    const outputs = await Promise.all(images.map((image) => bundle.model.run(image.data.slice(), 1)));
    // One piece of work: the model on frame i, or the agent's per-frame JS on the model's outputs for it.
    const work: Record<Work, (i: number) => Promise<void> | void> = {
      inference: async (i) => {
        await bundle.model.run(images[i % images.length]!.data, 1);
      },
      scoring: (i) => {
        const k = i % images.length;
        const out = outputs[k]!;
        bundle.scorer.score(images[k]!, out.recon, out.mu, undefined, out.map, out.blurredMap);
        meter.measure(frames[k]!);
      },
      both: async (i) => {
        const k = i % images.length;
        const out = await bundle.model.run(images[k]!.data, 1);
        bundle.scorer.score(images[k]!, out.recon, out.mu, undefined, out.map, out.blurredMap);
        meter.measure(frames[k]!);
      },
    };
    const spin = (ms: number) => {
      const until = performance.now() + ms;
      while (performance.now() < until);
    };
    const pause: Record<Condition, () => Promise<void> | void> = {
      'back to back': () => {},
      'spaced, asleep between': () => sleep(settings.gapMs),
      'spaced, spinning between': () => spin(settings.gapMs),
    };
    for (const kind of WORKS) for (let i = 0; i < 200; i++) await work[kind](i);
    const kernelEntries = kernelEntryCosts();
    console.log(`kernel entries: fstat() ${kernelEntries.fstatUs} us, a page fault ${kernelEntries.pageFaultUs} us`);
    const byBatch = await batchSweep(bundle, images.map((image) => image.data), settings.frames, settings.rounds);
    console.log(`the model alone, back to back, CPU ms per frame by batch size: ${byBatch.map((row) => `${row.batch}: ${row.msPerFrame}`).join(', ')}`);

    const cpuMs: Record<string, number[]> = {};
    for (let r = 0; r < settings.rounds; r++) {
      for (const kind of WORKS) {
        for (const condition of CONDITIONS) {
          let micros = 0;
          for (let i = 0; i < settings.frames; i++) {
            await pause[condition]();
            const before = process.cpuUsage();
            await work[kind](i);
            const used = process.cpuUsage(before);
            micros += used.user + used.system;
          }
          (cpuMs[`${kind}|${condition}`] ??= []).push(micros / 1000 / settings.frames);
        }
      }
      console.log(`round ${r + 1} of ${settings.rounds} done`);
    }
    const rows = WORKS.map((kind) => {
      const of = (condition: Condition) => mean(cpuMs[`${kind}|${condition}`]!);
      const base = of('back to back');
      return {
        work: kind,
        backToBackMs: round(base, 3),
        spacedAsleepMs: round(of('spaced, asleep between'), 3),
        spacedSpinningMs: round(of('spaced, spinning between'), 3),
        spacedAsleepRatio: round(of('spaced, asleep between') / base, 2),
        spacedSpinningRatio: round(of('spaced, spinning between') / base, 2),
        perRoundMs: Object.fromEntries(CONDITIONS.map((condition) => [condition, cpuMs[`${kind}|${condition}`]!.map((v) => round(v, 3))])),
      };
    });
    const result = {
      benchmark: 'burst-cost',
      measuredAt: new Date().toISOString(),
      command: `node dist-bench/bench/burst-cost.js ${process.argv.slice(2).join(' ')}`.trim(),
      machine: { nproc: os.availableParallelism(), cpuModel: os.cpus()[0]?.model ?? 'unknown', kernel: os.release(), virtualisation: virtualisation(), node: process.version, loadAverageAtStart: os.loadavg().map((v) => round(v, 2)) },
      setup: { ...settings, videoFrames: frames.length, modelInput: `${width}x${height}`, onnxThreads: 1 },
      results: rows,
      kernelEntries,
      modelAloneByBatch: byBatch,
    };
    console.log(
      markdownTable(
        ['work', 'back to back ms', `every ${settings.gapMs} ms, asleep between`, `every ${settings.gapMs} ms, spinning between`],
        rows.map((row) => [row.work, row.backToBackMs, `${row.spacedAsleepMs} (${row.spacedAsleepRatio}x)`, `${row.spacedSpinningMs} (${row.spacedSpinningRatio}x)`]),
      ),
    );
    const markdownFile = await writeReport(settings.out, result, (jsonName) => markdown(result, rows, jsonName, settings));
    console.log(`wrote ${path.relative(process.cwd(), settings.out)} and ${path.relative(process.cwd(), markdownFile)}`);
  } finally {
    await bundle.dispose();
  }
}

type Figure = number | null;

interface Report {
  measuredAt: string;
  command: string;
  machine: { nproc: number; cpuModel: string; kernel: string; virtualisation: string; node: string; loadAverageAtStart: Figure[] };
  kernelEntries: { fstatUs: number; pageFaultUs: number };
  modelAloneByBatch: { batch: number; msPerFrame: number }[];
}

interface Row {
  work: Work;
  backToBackMs: Figure;
  spacedAsleepMs: Figure;
  spacedSpinningMs: Figure;
  spacedAsleepRatio: Figure;
  spacedSpinningRatio: Figure;
}

function markdown(result: Report, rows: Row[], jsonName: string, settings: Settings): string {
  const { machine } = result;
  return [
    "# One frame's work, back to back and alone",
    '',
    `Measured ${result.measuredAt} with \`${result.command}\` (all figures, per round: [${jsonName}](${jsonName})).`,
    '',
    `- Machine: ${machine.nproc} cores, ${machine.cpuModel}, Linux ${machine.kernel}, ${machine.virtualisation}; Node ${machine.node}. Load average at the start: ${machine.loadAverageAtStart.join(', ')}.`,
    `- Work, on frames of ${path.relative(process.cwd(), settings.video)} at the model's size (grey, 5 fps), model ${path.relative(process.cwd(), settings.model)} (${settings.variant}, one onnxruntime thread): **inference** = one onnxruntime run (the graph includes the map's blur); **scoring** = the agent's per-frame JS on its outputs (FrameScorer.score and the camera-fault meter); **both** = one after the other, as a round of one frame in the agent.`,
    `- Conditions, alternating in ${settings.rounds} rounds of ${settings.frames} frames each: back to back; one every ${settings.gapMs} ms (16 cameras at 5 fps) with the thread asleep in between (a timer); the same with the thread spinning in between, so the core never idles.`,
    '- CPU ms per frame: process.cpuUsage() around each piece of work only.',
    '',
    markdownTable(
      ['work', 'back to back', `one every ${settings.gapMs} ms, asleep between`, `one every ${settings.gapMs} ms, spinning between`],
      rows.map((row) => [row.work, `${row.backToBackMs} ms`, `${row.spacedAsleepMs} ms (${row.spacedAsleepRatio}x)`, `${row.spacedSpinningMs} ms (${row.spacedSpinningRatio}x)`]),
    ),
    '',
    `What this machine charges for entering the kernel (median of three samples): one \`fstat()\` from JS ${result.kernelEntries.fstatUs} µs; the first write to a page of freshly mapped memory (a page fault, 4 KiB) ${result.kernelEntries.pageFaultUs} µs. Work that comes alone meets more of these (the wake-up, the reads, fresh pages) and finds caches and TLB cold after them; on bare metal both are commonly about a microsecond or less (not measured here).`,
    '',
    `The model alone, back to back, at each batch size (CPU ms per frame; batch sizes alternate in ${settings.rounds} rounds of about ${settings.frames} frames each):`,
    '',
    markdownTable(
      result.modelAloneByBatch.map((row) => `batch ${row.batch}`),
      [result.modelAloneByBatch.map((row) => `${row.msPerFrame} ms`)],
    ),
    '',
    "Batch 1 back to back is the least this model costs a frame that is scored alone; larger batches show what rounds of several frames (`inference.batchWindowMs`) save at most.",
    '',
    "The agent's CPU per analysed frame ([capacity.md](capacity.md), [agent-load.md](agent-load.md)) is paid at the spaced rate, plus the reading of frames, events and publishing. The same work in batches (several frames per round) costs nearer the back-to-back figure; whether another machine charges as much for work that comes alone, this benchmark run there says.",
    '',
  ].join('\n');
}

main().catch((error: unknown) => {
  console.error(`burst-cost: ${formatError(error)}`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
