/**
 * CPU cost of one event snapshot render: renderSnapshot (overlay and box drawn in JS, sharp only
 * for the JPEG decode and encode) against the libvips path it replaced (sharp resizes the colour
 * map, composites it and an SVG box outline), copied here as the baseline. Both in the same
 * process, with leanImageMemory() as `linewatch run` applies it (no libvips cache, one libvips
 * thread), runs interleaved in rounds so that load from other processes hits both alike, warm-up
 * excluded. CPU time is process.cpuUsage() (user + system, all threads: libvips' included) over
 * each round, divided by its renders. Then, apart (it spins the loop), the longest time the event
 * loop stood still during a render, with the blend in slices as the agent runs it and in one go.
 * Prints a table and writes JSON.
 *
 *   node dist-bench/bench/snapshot-render.js [out.json] [--runs 200] [--video assets/demo/bottle-detection.mp4]
 *
 * The picture: a 640x360 frame of the demo video as a preview JPEG (as ffmpeg's preview output
 * delivers it), a 112x64 anomaly map (two blurred hot spots on speckle) and a box; and the
 * no-preview case (the 112x64 grey model-input frame of a crop, enlarged to 549x640).
 */
import { execFileSync } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { leanImageMemory, renderSnapshot, type SnapshotInput } from '../src/publish/snapshot.js';
import { realisticMap, referenceRender } from './reference-snapshot.js';

const WARM_UP_RUNS = 10;
/** Renders of one variant per round; rounds alternate the variants. */
const ROUND = 10;

// ------------------------------------------------------------------ timing

type Render = (input: SnapshotInput) => Promise<Buffer>;

interface Timing {
  cpuMsPerRender: number;
  wallMsPerRender: number;
}

/** Interleaved rounds of both renders; CPU and wall time per render of each. */
async function compare(input: SnapshotInput, runs: number): Promise<{ old: Timing; new: Timing }> {
  const variants: Record<'old' | 'new', Render> = { old: referenceRender, new: renderSnapshot };
  for (const render of Object.values(variants)) for (let i = 0; i < WARM_UP_RUNS; i++) await render(input);
  const cpuUs = { old: 0, new: 0 };
  const wallMs = { old: 0, new: 0 };
  for (let done = 0; done < runs; done += ROUND) {
    for (const name of ['old', 'new'] as const) {
      const started = performance.now();
      const cpu = process.cpuUsage();
      for (let i = 0; i < ROUND; i++) await variants[name](input);
      const used = process.cpuUsage(cpu);
      wallMs[name] += performance.now() - started;
      cpuUs[name] += used.user + used.system;
    }
  }
  const rounds = Math.ceil(runs / ROUND) * ROUND;
  const timing = (name: 'old' | 'new'): Timing => ({ cpuMsPerRender: cpuUs[name] / 1000 / rounds, wallMsPerRender: wallMs[name] / rounds });
  return { old: timing('old'), new: timing('new') };
}

/**
 * The longest time the event loop could not turn during one render (ms), per render: a chained
 * setImmediate notes the gaps between its turns. Its own spinning costs CPU, so this runs apart
 * from the CPU timing. Sliced is renderSnapshot as the agent calls it; in one go gives it a pause
 * that does not yield.
 */
async function loopStalls(input: SnapshotInput, runs: number): Promise<{ slicedMs: Stall; inOneGoMs: Stall }> {
  const longest = async (pause?: () => Promise<void>): Promise<Stall> => {
    const perRender: number[] = [];
    for (let i = 0; i < WARM_UP_RUNS + runs; i++) {
      let worst = 0;
      let last = performance.now();
      let rendering = true;
      const turn = () => {
        const now = performance.now();
        worst = Math.max(worst, now - last);
        last = now;
        if (rendering) setImmediate(turn);
      };
      setImmediate(turn);
      await renderSnapshot(input, pause);
      rendering = false;
      worst = Math.max(worst, performance.now() - last);
      if (i >= WARM_UP_RUNS) perRender.push(worst);
    }
    perRender.sort((a, b) => a - b);
    return { median: perRender[Math.floor(perRender.length / 2)]!, max: perRender.at(-1)! };
  };
  const inOneGoMs = await longest(async () => {});
  const slicedMs = await longest();
  return { slicedMs, inOneGoMs };
}

interface Stall {
  median: number;
  max: number;
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { runs: { type: 'string', default: '200' }, video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' } },
  });
  const outFile = positionals[0] ?? 'docs/benchmarks/snapshot-render.json';
  const runs = Number(values.runs);
  leanImageMemory();

  const frame = execFileSync('ffmpeg', ['-loglevel', 'error', '-ss', '12', '-i', values.video!, '-frames:v', '1', '-f', 'image2pipe', '-c:v', 'mjpeg', '-q:v', '3', 'pipe:1']);
  const map = realisticMap();
  const crop = { x: 400, y: 60, width: 240, height: 280 };
  const modelFrame = await sharp(frame).extract({ left: crop.x, top: crop.y, width: crop.width, height: crop.height }).resize(112, 64, { fit: 'fill' }).greyscale().raw().toBuffer();
  const cases: Record<string, SnapshotInput> = {
    'preview 640x360 + box': { camera: 'c', eventId: 'e', image: { jpeg: frame }, map, mapWidth: 112, mapHeight: 64, box: { x: 330, y: 95, width: 150, height: 110 } },
    'model frame 112x64 grey -> 549x640 + crop + box': {
      camera: 'c',
      eventId: 'e',
      image: { pixels: modelFrame, width: 112, height: 64, channels: 1 },
      map,
      mapWidth: 112,
      mapHeight: 64,
      source: { width: 640, height: 360 },
      crop,
      box: { x: 470, y: 120, width: 90, height: 130 },
    },
  };

  const results: Record<string, { old: Timing; new: Timing; cpuRatio: number; longestLoopStall?: { slicedMs: Stall; inOneGoMs: Stall } }> = {};
  console.log(`snapshot render, ${runs} runs each (interleaved, ${WARM_UP_RUNS} warm-up), leanImageMemory(), CPU ${os.cpus()[0]?.model ?? 'unknown'} x${os.cpus().length}, load ${os.loadavg()[0]!.toFixed(2)}`);
  console.log(`${'case'.padEnd(50)}${'old CPU ms'.padStart(12)}${'new CPU ms'.padStart(12)}${'ratio'.padStart(8)}${'old wall'.padStart(10)}${'new wall'.padStart(10)}`);
  for (const [name, input] of Object.entries(cases)) {
    const timing = await compare(input, runs);
    const cpuRatio = timing.old.cpuMsPerRender / timing.new.cpuMsPerRender;
    results[name] = { ...timing, cpuRatio };
    console.log(
      `${name.padEnd(50)}${timing.old.cpuMsPerRender.toFixed(2).padStart(12)}${timing.new.cpuMsPerRender.toFixed(2).padStart(12)}${`${cpuRatio.toFixed(2)}x`.padStart(8)}` +
        `${timing.old.wallMsPerRender.toFixed(2).padStart(10)}${timing.new.wallMsPerRender.toFixed(2).padStart(10)}`,
    );
  }
  console.log(`\nlongest event-loop stall per render of the new path, ms (median / max of ${runs}): blend in slices (as the agent runs it) against in one go`);
  for (const [name, input] of Object.entries(cases)) {
    const stalls = await loopStalls(input, runs);
    results[name]!.longestLoopStall = stalls;
    console.log(`${name.padEnd(50)} sliced ${stalls.slicedMs.median.toFixed(2)} / ${stalls.slicedMs.max.toFixed(2)}   in one go ${stalls.inOneGoMs.median.toFixed(2)} / ${stalls.inOneGoMs.max.toFixed(2)}`);
  }
  const result = {
    benchmark: 'snapshot-render',
    date: new Date().toISOString(),
    what: 'CPU ms (user + system, all threads) per renderSnapshot: new = overlay and box in JS, sharp for decode and encode; old = sharp resize + composite + SVG box (the code it replaced)',
    picture: `${values.video} at 12 s (640x360 preview JPEG), 112x64 anomaly map, JPEG q85 4:4:4`,
    runs,
    warmUpRuns: WARM_UP_RUNS,
    libvips: { cache: false, concurrency: sharp.concurrency(), version: sharp.versions.vips },
    node: process.version,
    cpu: `${os.cpus()[0]?.model ?? 'unknown'} x${os.cpus().length}`,
    loadAverage1m: os.loadavg()[0],
    cases: results,
  };
  await mkdir(path.dirname(path.resolve(outFile)), { recursive: true });
  await writeFile(outFile, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`wrote ${outFile}`);
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
