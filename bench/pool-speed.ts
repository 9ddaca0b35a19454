/**
 * Top-k pooling, the scorer's last step on every frame: pool() against the quickselect it replaced
 * (bench/reference-pool.ts), on the maps the agent pools (the bundle's blurred anomaly maps of the demo
 * video's frames, with the bundle's border and top-k fraction). Both run on the same maps, alternating
 * in rounds; CPU time is process.cpuUsage() around each pass. Also checks that both give the same score
 * on every map.
 *
 *   node dist-bench/bench/pool-speed.js [--rounds 5] [--passes 20] [--model models/demo] [--variant int8]
 *     [--video assets/demo/bottle-detection.mp4] [--out docs/benchmarks/pool-speed.json]
 */
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { tensorOf } from '../src/agent/scheduler.js';
import { formatError, UsageError } from '../src/errors.js';
import { loadBundle } from '../src/model/bundle.js';
import { ignoredPixels, pool, poolPixels } from '../src/scoring/maps.js';
import type { Frame } from '../src/source/index.js';
import { markdownTable, median, round, writeReport } from './measure.js';
import { modelAndVideo, positiveNumber } from './options.js';
import { referenceTopk } from './reference-pool.js';
import { videoFrames } from './video-frames.js';

const IMPLEMENTATIONS = ['min-heap (pool, current)', 'quickselect (before)'] as const;
type Implementation = (typeof IMPLEMENTATIONS)[number];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      rounds: { type: 'string', default: '5' },
      passes: { type: 'string', default: '20' },
      model: { type: 'string', default: 'models/demo' },
      variant: { type: 'string', default: 'int8' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      out: { type: 'string', default: 'docs/benchmarks/pool-speed.json' },
    },
  });
  const rounds = Math.round(positiveNumber('rounds', values.rounds!));
  const passes = Math.round(positiveNumber('passes', values.passes!));
  const { model, variant, video } = modelAndVideo(values);
  const bundle = await loadBundle(model, { variant, threads: 1 });
  let maps: Float32Array[];
  try {
    const frames = videoFrames(video, bundle);
    maps = [];
    for (const data of frames) {
      const out = await bundle.model.run(tensorOf(bundle, { data } as Frame).data, 1);
      const map = out.blurredMap ?? out.map;
      if (!map) throw new UsageError(`the model ${model} has no anomaly map output`, { hint: 'use a bundle with a comparator, such as models/demo' });
      maps.push(map.slice());
    }
  } finally {
    await bundle.dispose();
  }
  const { width, height } = bundle.manifest.input;
  const { border, topkFraction } = bundle.scorer.settings;
  const ignored = ignoredPixels(width, height, border);
  // As FrameScorer pools: the kept pixels found once per mask.
  const pixels = poolPixels(ignored);
  const scratch = new Float32Array(width * height);
  const run: Record<Implementation, (map: Float32Array) => number> = {
    'min-heap (pool, current)': (map) => pool(map, 'topk', topkFraction, pixels, scratch),
    'quickselect (before)': (map) => referenceTopk(map, topkFraction, ignored, scratch),
  };

  let differing = 0;
  let largestDifference = 0;
  for (const map of maps) {
    const difference = Math.abs(run['min-heap (pool, current)'](map) - run['quickselect (before)'](map));
    if (difference !== 0) differing++;
    largestDifference = Math.max(largestDifference, difference);
  }

  const microseconds = new Map<Implementation, number[]>(IMPLEMENTATIONS.map((name) => [name, []]));
  let sink = 0;
  for (const name of IMPLEMENTATIONS) for (const map of maps) sink += run[name](map);
  for (let r = 0; r < rounds; r++) {
    for (const name of IMPLEMENTATIONS) {
      const before = process.cpuUsage();
      for (let p = 0; p < passes; p++) for (const map of maps) sink += run[name](map);
      const used = process.cpuUsage(before);
      microseconds.get(name)!.push((used.user + used.system) / (passes * maps.length));
    }
  }
  const rows = IMPLEMENTATIONS.map((name) => ({ implementation: name, usPerMapMedian: round(median(microseconds.get(name)!), 2), usPerMapByRound: microseconds.get(name)!.map((us) => round(us, 2)) }));
  const ratio = round(median(microseconds.get('quickselect (before)')!) / median(microseconds.get('min-heap (pool, current)')!), 2);
  const result = {
    benchmark: 'pool-speed',
    measuredAt: new Date().toISOString(),
    command: `node dist-bench/bench/pool-speed.js --rounds ${rounds} --passes ${passes}`,
    machine: { nproc: os.availableParallelism(), cpuModel: os.cpus()[0]?.model ?? 'unknown', node: process.version, loadAverageAtStart: os.loadavg().map((value) => round(value, 2)) },
    setup: { model: path.relative(process.cwd(), model), variant, video: path.relative(process.cwd(), video), maps: maps.length, width, height, border, topkFraction, keptPixels: pixels.kept.length },
    sameScore: { mapsDiffering: differing, largestDifference },
    rows,
    quickselectOverHeap: ratio,
    // Keeps the timed calls from being optimised away.
    checksum: sink,
  };
  for (const row of rows) console.log(`${row.implementation}: ${row.usPerMapMedian} µs per map (median of ${rounds} rounds)`);
  console.log(`quickselect / min-heap: ${ratio}x; scores differing on ${differing} of ${maps.length} maps (largest difference ${largestDifference})`);
  await writeReport(values.out!, result, (jsonName) =>
    [
      '# Top-k pooling speed',
      '',
      `Measured ${result.measuredAt} with \`${result.command}\` (all figures: [${jsonName}](${jsonName})); ${result.machine.nproc} cores, ${result.machine.cpuModel}, Node ${result.machine.node}.`,
      '',
      `${maps.length} blurred anomaly maps (${width}x${height}) of ${result.setup.video}'s frames at 5 fps from ${result.setup.model} (${variant}); border ${border} (${result.setup.keptPixels} pixels kept), top ${topkFraction * 100} %. CPU µs per map, median of ${rounds} alternating rounds of ${passes} passes over every map:`,
      '',
      markdownTable(['implementation', 'µs per map', 'by round'], rows.map((row) => [row.implementation, row.usPerMapMedian, row.usPerMapByRound.join(', ')])),
      '',
      `Quickselect takes **${ratio}x** the min-heap's time. Scores differ on ${differing} of ${maps.length} maps (largest difference ${largestDifference}).`,
      '',
    ].join('\n'),
  );
}

main().catch((error: unknown) => {
  console.error(`pool-speed: ${formatError(error)}`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
