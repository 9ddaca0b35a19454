/**
 * Capacity benchmark: how many cameras one box sustains. For each step N of a list it starts
 * `linewatch run` (a fresh process) with N cameras, each the demo video as a file source at
 * native speed (`loop` + `realtime`, staggered so that the cameras do not show the same
 * second of the video at once), analysed at --fps, with a real mosquitto and an mqtt.js
 * subscriber. After a warm-up it measures for --step-s seconds: frames scored and dropped
 * (from /metrics), CPU of the agent process, of its ffmpeg children and of the rest of the
 * machine (from /proc), agent CPU per scored frame, event-start latency (capture of the
 * triggering frame -> the subscriber) and RSS. Then it stops the agent and runs the same
 * ffmpeg command lines alone for --floor-s seconds: the decoding floor.
 *
 * A step is sustained when no frame was dropped in its window, every camera was scored at
 * (nearly) the full rate, and the event latency p99 is within the limit. Stepping stops at
 * the first step that is not (unless --all-steps).
 *
 *   node dist-bench/bench/capacity.js [--steps 4,8,16,24,32,40,48,56,64] [--step-s 60] [--warm-up-s 15]
 *     [--floor-s 15] [--fps 5] [--latency-p99-ms 50] [--all-steps] [--out docs/benchmarks/capacity.json]
 *     [--model models/demo] [--variant int8] [--video assets/demo/bottle-detection.mp4] [--agent bin/linewatch.js]
 *     [--decode-threads N] [--no-snapshots] [--no-delay] [--batch-window-ms MS] [--first-s S]
 *
 * --first-s: loop only the video's first S seconds (re-encoded at the source's size, rate and bit rate). With the
 * demo video, 4.5 is the normal scene the demo model learned: a line with no anomaly, so no events, snapshots or
 * event writes, and the step measures what a frame costs on a quiet line.
 *
 * --no-delay: mosquitto with `set_tcp_nodelay true` and TCP_NODELAY on the subscriber (see
 * bench/agent-load.ts: the stock broker's Nagle delays are the broker's, not the agent's).
 *
 * --batch-window-ms: the agent's `inference.batchWindowMs` (default 0, as shipped).
 *
 * Writes the JSON to --out after every step and a markdown summary next to it (same name, .md).
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { stringify as toYaml } from 'yaml';
import { formatError, UsageError } from '../src/errors.js';
import { LINEWATCH_VERSION } from '../src/version.js';
import { childrenOf, CpuLedger, markdownTable, measureCommandsAlone, mib, parseEventWrites, percentile, readCmdline, readMachineCpu, readProcStat, readRssBytes, round, setClientNoDelay, sleep, slope, startMosquitto, summariseEventWrites, writeReport, type EventWrites } from './measure.js';
import { freePort, unitEnvironment } from './net.js';
import { cameraCounts, modelAndVideo, nonNegativeNumber, positiveNumber } from './options.js';

// ---------------------------------------------------------------- settings

interface Settings {
  steps: number[];
  stepS: number;
  warmUpS: number;
  floorS: number;
  fps: number;
  latencyP99MaxMs: number;
  /** Analysed frames per second may fall this far below N x fps before a step counts as not sustained. */
  minRateShare: number;
  allSteps: boolean;
  out: string;
  model: string;
  variant: 'int8' | 'fp32';
  video: string;
  /** Loop only the video's first this many seconds; undefined: the whole video. */
  firstS: number | undefined;
  agent: string;
  /** ffmpeg decoder threads per camera (`decodeThreads`); undefined: the agent's default (slice threads only). */
  decodeThreads: number | undefined;
  /** The agent's inference.batchWindowMs. */
  batchWindowMs: number;
  snapshots: boolean;
  /** Extra node flags for the agent, e.g. `--cpu-prof --cpu-prof-dir=DIR` to profile each step, or `--trace-gc`. */
  agentNodeFlags: string[];
  /** Keep each step's agent log here (agent-N.log); undefined: only in the temporary work folder. */
  keepLogs: string | undefined;
  /** TCP_NODELAY on the broker (`set_tcp_nodelay true`) and the subscriber. */
  noDelay: boolean;
}

const DEVICE_ID = 'capacity';
const SAMPLE_INTERVAL_MS = 1000;
const METRICS_EVERY_SAMPLES = 5;

function parseSettings(argv: string[]): Settings {
  const { values } = parseArgs({
    args: argv,
    options: {
      steps: { type: 'string', default: '4,8,16,24,32,40,48,56,64' },
      'step-s': { type: 'string', default: '60' },
      'warm-up-s': { type: 'string', default: '15' },
      'floor-s': { type: 'string', default: '15' },
      fps: { type: 'string', default: '5' },
      'latency-p99-ms': { type: 'string', default: '50' },
      'min-rate-share': { type: 'string', default: '0.97' },
      'all-steps': { type: 'boolean', default: false },
      out: { type: 'string', default: 'docs/benchmarks/capacity.json' },
      model: { type: 'string', default: 'models/demo' },
      variant: { type: 'string', default: 'int8' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      agent: { type: 'string', default: 'bin/linewatch.js' },
      'decode-threads': { type: 'string' },
      'batch-window-ms': { type: 'string', default: '0' },
      'first-s': { type: 'string' },
      'no-snapshots': { type: 'boolean', default: false },
      'agent-node-flags': { type: 'string', default: '' },
      'keep-logs': { type: 'string' },
      'no-delay': { type: 'boolean', default: false },
    },
    strict: true,
  });
  const steps = cameraCounts('steps', values.steps!, '8,16,32');
  const { model, variant, video } = modelAndVideo(values);
  const agent = path.resolve(values.agent!);
  if (!existsSync(agent)) throw new UsageError(`agent launcher ${agent} not found`, { hint: 'e.g. --agent bin/linewatch.js' });
  const share = Number(values['min-rate-share']);
  if (!(share > 0 && share <= 1)) throw new UsageError(`--min-rate-share must be in (0, 1], got '${values['min-rate-share']}'`);
  return {
    steps,
    stepS: positiveNumber('step-s', values['step-s']!),
    warmUpS: nonNegativeNumber('warm-up-s', values['warm-up-s']!),
    floorS: positiveNumber('floor-s', values['floor-s']!),
    fps: positiveNumber('fps', values.fps!),
    latencyP99MaxMs: positiveNumber('latency-p99-ms', values['latency-p99-ms']!),
    minRateShare: share,
    allSteps: values['all-steps']!,
    out: path.resolve(values.out!),
    model,
    variant,
    video,
    firstS: values['first-s'] === undefined ? undefined : positiveNumber('first-s', values['first-s']),
    agent,
    decodeThreads: values['decode-threads'] === undefined ? undefined : positiveNumber('decode-threads', values['decode-threads']),
    snapshots: !values['no-snapshots'],
    batchWindowMs: nonNegativeNumber('batch-window-ms', values['batch-window-ms']!),
    agentNodeFlags: values['agent-node-flags']!.split(/\s+/).filter((flag) => flag !== ''),
    keepLogs: values['keep-logs'] === undefined ? undefined : path.resolve(values['keep-logs']),
    noDelay: values['no-delay']!,
  };
}

// ---------------------------------------------------------------- helpers

function videoDurationS(video: string): number {
  try {
    const out = execFileSync('ffprobe', ['-v', 'error', '-show_entries', 'format=duration', '-of', 'csv=p=0', video], { encoding: 'utf8' });
    const seconds = Number(out.trim());
    return Number.isFinite(seconds) && seconds > 0 ? seconds : 0;
  } catch {
    return 0;
  }
}

function firstLine(binary: string, args: string[]): string {
  try {
    return execFileSync(binary, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.replace(/ Copyright.*/, '');
  } catch (error) {
    return String((error as { stdout?: string }).stdout ?? '').split('\n')[0] || 'unknown';
  }
}

function machineFacts() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  return {
    nproc: os.availableParallelism(),
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown',
    memoryGb: round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    ffmpeg: firstLine('ffmpeg', ['-version']),
    mosquitto: firstLine('mosquitto', ['-h']),
    linewatch: LINEWATCH_VERSION,
    loadAverageAtStart: os.loadavg().map((value) => round(value, 2)),
  };
}

// ---------------------------------------------------------------- mosquitto and the subscriber

interface EventRecord {
  type: string;
  topic: string;
  at: string;
  receivedAt: number;
  latencyMs: number;
}

async function subscribe(url: string, noDelay: boolean) {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 500, connectTimeout: 5000 });
  if (noDelay) setClientNoDelay(client);
  const events: EventRecord[] = [];
  client.on('message', (topic, payload) => {
    const receivedAt = Date.now();
    if (!topic.endsWith('/events')) return;
    const event = JSON.parse(payload.toString('utf8')) as { type: string; at: string };
    events.push({ type: event.type, topic, at: event.at, receivedAt, latencyMs: receivedAt - Date.parse(event.at) });
  });
  await client.subscribeAsync(`linewatch/${DEVICE_ID}/+/events`, { qos: 1 });
  return { events, close: () => client.endAsync(true) };
}

// ---------------------------------------------------------------- the agent

interface FrameCounters {
  in: number;
  scored: number;
  dropped: number;
  restarts: number;
}

async function fetchCounters(healthUrl: string): Promise<{ cameras: Record<string, FrameCounters>; eventWrites: EventWrites | undefined } | undefined> {
  const names: Record<string, keyof FrameCounters> = {
    linewatch_frames_in_total: 'in',
    linewatch_frames_scored_total: 'scored',
    linewatch_frames_dropped_total: 'dropped',
    linewatch_ffmpeg_restarts_total: 'restarts',
  };
  try {
    const response = await fetch(`${healthUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
    if (!response.ok) return undefined;
    const cameras: Record<string, FrameCounters> = {};
    const text = await response.text();
    for (const line of text.split('\n')) {
      const match = /^(linewatch_\w+)\{camera="([^"]+)"\}\s+(\S+)/.exec(line);
      const field = match && names[match[1]!];
      if (!match || !field) continue;
      const camera = (cameras[match[2]!] ??= { in: 0, scored: 0, dropped: 0, restarts: 0 });
      camera[field] = Number(match[3]);
    }
    return { cameras, eventWrites: parseEventWrites(text) };
  } catch {
    return undefined;
  }
}

function totals(counters: Record<string, FrameCounters> | undefined): FrameCounters {
  const sum = { in: 0, scored: 0, dropped: 0, restarts: 0 };
  for (const camera of Object.values(counters ?? {})) {
    sum.in += camera.in;
    sum.scored += camera.scored;
    sum.dropped += camera.dropped;
    sum.restarts += camera.restarts;
  }
  return sum;
}

function agentConfig(settings: Settings, cameras: number, mqttUrl: string, healthPort: number, dataDir: string, videos: readonly string[]): object {
  return {
    deviceId: DEVICE_ID,
    dataDir,
    log: { level: 'warn' },
    mqtt: { url: mqttUrl },
    health: { enabled: true, host: '127.0.0.1', port: healthPort },
    inference: { batchWindowMs: settings.batchWindowMs },
    defaults: {
      model: settings.model,
      variant: settings.variant,
      fps: settings.fps,
      loop: true,
      realtime: true,
      snapshots: { enabled: settings.snapshots },
      ...(settings.decodeThreads !== undefined ? { decodeThreads: settings.decodeThreads } : {}),
    },
    // Rotated copies of the video, so that the cameras' events (and the work they cause) do not all come at once.
    cameras: Array.from({ length: cameras }, (_, i) => ({ name: `cam-${i + 1}`, url: videos[i % videos.length]! })),
  };
}

/**
 * The video and copies of it rotated to start at each of its later key frames (stream copy, no re-encoding: the
 * same bitstream, so the same decoding cost). `-ss` on a looped input instead makes ffmpeg's -re burst at the loop.
 */
function rotatedVideos(video: string, dir: string, most = 8): string[] {
  const durationS = videoDurationS(video);
  let keyframes: number[] = [];
  try {
    keyframes = execFileSync('ffprobe', ['-v', 'error', '-select_streams', 'v:0', '-skip_frame', 'nokey', '-show_entries', 'frame=pts_time', '-of', 'csv=p=0', video], {
      encoding: 'utf8',
    })
      .split(/[\s,]+/)
      .map(Number)
      .filter((t) => Number.isFinite(t) && t > 0.5 && t < durationS - 0.5);
  } catch {
    return [video];
  }
  const videos = [video];
  for (const [index, at] of keyframes.slice(0, most - 1).entries()) {
    const tail = path.join(dir, `tail-${index}.mp4`);
    const head = path.join(dir, `head-${index}.mp4`);
    const list = path.join(dir, `list-${index}.txt`);
    const rotated = path.join(dir, `rotated-${index}.mp4`);
    try {
      execFileSync('ffmpeg', ['-v', 'error', '-y', '-ss', String(at), '-i', video, '-c', 'copy', '-an', tail]);
      execFileSync('ffmpeg', ['-v', 'error', '-y', '-i', video, '-t', String(at), '-c', 'copy', '-an', head]);
      writeFileSync(list, `file '${tail}'\nfile '${head}'\n`);
      execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'concat', '-safe', '0', '-i', list, '-c', 'copy', rotated]);
      videos.push(rotated);
    } catch {
      // A video that cannot be cut this way is still measured, with fewer phases.
    }
  }
  return videos;
}

/** The video's first `seconds`, re-encoded with libx264 at the source's bit rate (its size and rate kept): a cut at a non-key frame needs new key frames. */
function firstSeconds(video: string, seconds: number, dir: string): string {
  const clip = path.join(dir, 'first.mp4');
  const probed = execFileSync('ffprobe', ['-v', 'error', '-select_streams', 'v:0', '-show_entries', 'stream=bit_rate', '-of', 'csv=p=0', video], { encoding: 'utf8' }).trim();
  const bitRate = Number(probed) > 0 ? ['-b:v', probed] : [];
  execFileSync('ffmpeg', ['-v', 'error', '-y', '-i', video, '-t', String(seconds), '-an', '-c:v', 'libx264', ...bitRate, '-pix_fmt', 'yuv420p', clip]);
  return clip;
}

function spawnAgent(settings: Settings, configFile: string, logFile: string) {
  const logFd = openSync(logFile, 'w');
  // With the shipped unit's environment (MALLOC_ARENA_MAX...): memory is measured as the service runs.
  const child = spawn(process.execPath, [...settings.agentNodeFlags, settings.agent, 'run', '--config', configFile], { stdio: ['ignore', logFd, logFd], env: { ...process.env, ...unitEnvironment() } });
  closeSync(logFd);
  let gone = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      gone = true;
      resolve({ code, signal });
    }),
  );
  return {
    child,
    exited,
    gone: () => gone,
    logTail: () => readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n'),
  };
}

/** The same ffmpeg command lines without the agent, outputs to /dev/null: what decoding, filtering and preview JPEGs cost. */
async function measureFloor(commands: readonly string[][], seconds: number) {
  if (commands.length === 0) return { processes: 0, seconds: 0, cpuPercentOfOneCore: null, perCameraPercentOfOneCore: null };
  const { processes, wallS, cpuS } = await measureCommandsAlone(commands, seconds, 3000);
  return {
    processes,
    seconds: round(wallS),
    cpuPercentOfOneCore: round((100 * cpuS) / wallS),
    perCameraPercentOfOneCore: round((100 * cpuS) / wallS / processes, 2),
  };
}

// ---------------------------------------------------------------- one step

interface Sample {
  t: number;
  rssMb: number | undefined;
  agentCpuS: number;
  ffmpegCpuS: number;
  machineBusyS: number;
  machineTotalS: number;
  counters: FrameCounters;
  eventWrites: EventWrites | undefined;
}

async function runStep(settings: Settings, cameras: number, videos: readonly string[], workRoot: string) {
  const workDir = mkdtempSync(path.join(workRoot, `step-${cameras}-`));
  const broker = await startMosquitto(workDir, { noDelay: settings.noDelay });
  let subscription: Awaited<ReturnType<typeof subscribe>> | undefined;
  let agent: ReturnType<typeof spawnAgent>;
  let healthUrl: string;
  try {
    subscription = await subscribe(broker.url, settings.noDelay);
    const healthPort = await freePort();
    healthUrl = `http://127.0.0.1:${healthPort}`;
    const configFile = path.join(workDir, 'linewatch.yaml');
    writeFileSync(configFile, toYaml(agentConfig(settings, cameras, broker.url, healthPort, path.join(workDir, 'data'), videos)));
    agent = spawnAgent(settings, configFile, path.join(workDir, 'agent.log'));
  } catch (error) {
    // A step that cannot start (no unit file to read, no free port) must not leave its broker running.
    await subscription?.close().catch(() => undefined);
    broker.child.kill('SIGTERM');
    rmSync(workDir, { recursive: true, force: true });
    throw error;
  }
  const pid = agent.child.pid!;
  const ffmpegLedger = new CpuLedger();
  let commands: string[][] = [];
  try {
    const launchedAt = performance.now();
    for (;;) {
      if (agent.gone()) throw new Error(`the agent exited during start-up:\n${agent.logTail()}`);
      const counters = (await fetchCounters(healthUrl))?.cameras;
      if (counters && Object.keys(counters).length >= cameras && Object.values(counters).every((c) => c.scored > 0)) break;
      if (performance.now() - launchedAt > 180_000) throw new Error(`not every camera was scoring 180 s after start:\n${agent.logTail()}`);
      await sleep(250);
    }
    const startUpS = (performance.now() - launchedAt) / 1000;
    const samples: Sample[] = [];
    const take = async (t: number, fetchNow: boolean): Promise<Sample> => {
      const ffmpegs = childrenOf(pid).filter((child) => child.comm === 'ffmpeg');
      ffmpegLedger.observe(ffmpegs);
      if (commands.length < cameras && ffmpegs.length >= cameras) {
        commands = ffmpegs.map((child) => readCmdline(child.pid)).filter((cmd): cmd is string[] => cmd !== undefined);
      }
      const machine = readMachineCpu();
      // /metrics costs the agent CPU too (prom-client renders every series): read it every few seconds, and at
      // the edges of the window, not every second.
      const fetched = fetchNow ? await fetchCounters(healthUrl) : undefined;
      const counters = fetchNow ? totals(fetched?.cameras) : (samples.at(-1)?.counters ?? totals(undefined));
      const eventWrites = fetchNow ? fetched?.eventWrites : samples.at(-1)?.eventWrites;
      return {
        t,
        rssMb: mib(readRssBytes(pid)),
        agentCpuS: readProcStat(pid)?.cpuS ?? NaN,
        ffmpegCpuS: ffmpegLedger.totalS,
        machineBusyS: machine.busyS,
        machineTotalS: machine.totalS,
        counters,
        eventWrites,
      };
    };
    const origin = performance.now();
    const endS = settings.warmUpS + settings.stepS;
    let warmCounted = false;
    for (let tick = 0; ; tick++) {
      if (agent.gone()) throw new Error(`the agent exited during the step:\n${agent.logTail()}`);
      const t = (performance.now() - origin) / 1000;
      const edge = (!warmCounted && t >= settings.warmUpS) || t >= endS;
      if (t >= settings.warmUpS) warmCounted = true;
      const sample = await take(t, edge || tick % METRICS_EVERY_SAMPLES === 0);
      samples.push(sample);
      if (sample.t >= endS) break;
      await sleep(Math.max(0, origin + (tick + 1) * SAMPLE_INTERVAL_MS - performance.now()));
    }
    const warm = samples.find((sample) => sample.t >= settings.warmUpS) ?? samples[0]!;
    const last = samples.at(-1)!;
    const windowS = last.t - warm.t;
    const windowStartMs = Date.now() - (performance.now() - (origin + warm.t * 1000));
    const windowEndMs = Date.now() - (performance.now() - (origin + last.t * 1000));

    agent.child.kill('SIGTERM');
    const exit = await Promise.race([agent.exited, sleep(20_000).then(() => undefined)]);
    if (!exit) agent.child.kill('SIGKILL');
    const floor = await measureFloor(commands, settings.floorS);

    const agentCpuS = last.agentCpuS - warm.agentCpuS;
    const ffmpegCpuS = last.ffmpegCpuS - warm.ffmpegCpuS;
    const machineBusyS = last.machineBusyS - warm.machineBusyS;
    const machineTotalS = last.machineTotalS - warm.machineTotalS;
    const scored = last.counters.scored - warm.counters.scored;
    const dropped = last.counters.dropped - warm.counters.dropped;
    const expectedRate = cameras * settings.fps;
    const scoredPerS = scored / windowS;
    const starts = subscription.events
      .filter((event) => event.type === 'start' && event.receivedAt >= windowStartMs && event.receivedAt <= windowEndMs)
      .map((event) => event.latencyMs)
      .sort((a, b) => a - b);
    const p99 = percentile(starts, 99);
    const rss = samples.map((s) => s.rssMb).filter((v): v is number => v !== undefined);
    const reasons: string[] = [];
    if (dropped > 0) reasons.push(`${dropped} frames dropped`);
    if (scoredPerS < settings.minRateShare * expectedRate) reasons.push(`scored ${scoredPerS.toFixed(1)}/s of ${expectedRate}/s`);
    if (p99 !== null && p99 > settings.latencyP99MaxMs) reasons.push(`event latency p99 ${p99} ms`);
    if (last.counters.restarts > 0) reasons.push(`${last.counters.restarts} ffmpeg restarts`);
    const percent = (cpuS: number) => round((100 * cpuS) / windowS);
    return {
      cameras,
      sustained: reasons.length === 0,
      reasons,
      startUpS: round(startUpS),
      windowS: round(windowS),
      frames: {
        expectedPerS: expectedRate,
        scoredPerS: round(scoredPerS, 2),
        scored,
        dropped,
        droppedDuringWarmUp: warm.counters.dropped,
        restarts: last.counters.restarts,
      },
      cpuPercentOfOneCore: {
        agent: percent(agentCpuS),
        ffmpeg: percent(ffmpegCpuS),
        rest: percent(machineBusyS - agentCpuS - ffmpegCpuS),
        machineBusy: percent(machineBusyS),
        machineCapacity: percent(machineTotalS),
      },
      agentMsPerScoredFrame: scored > 0 ? round((1000 * agentCpuS) / scored, 2) : null,
      ffmpegAlone: floor,
      latencyMs: {
        what: 'event start: subscriber receive time minus event.at (when the frame that satisfied the debounce rule was read from ffmpeg)',
        starts: starts.length,
        p50: percentile(starts, 50),
        p99,
        max: starts.at(-1) ?? null,
      },
      eventWrites: summariseEventWrites(last.eventWrites, warm.eventWrites),
      memory: {
        rssAfterWarmUpMb: round(warm.rssMb),
        rssPeakMb: round(Math.max(...rss)),
        rssEndMb: round(last.rssMb),
        rssSlopeMbPerMinute: round(slope(samples.filter((s) => s.t >= settings.warmUpS && s.rssMb !== undefined).map((s) => ({ x: s.t / 60, y: s.rssMb! }))), 2),
      },
      agentExit: exit ? (exit.code ?? exit.signal) : 'killed after 20 s',
    };
  } finally {
    if (!agent.gone()) {
      agent.child.kill('SIGKILL');
      await agent.exited;
    }
    await subscription.close().catch(() => undefined);
    broker.child.kill('SIGTERM');
    if (settings.keepLogs) {
      mkdirSync(settings.keepLogs, { recursive: true });
      copyFileSync(path.join(workDir, 'agent.log'), path.join(settings.keepLogs, `agent-${cameras}.log`));
      writeFileSync(path.join(settings.keepLogs, `events-${cameras}.json`), JSON.stringify(subscription.events, null, 1));
    }
    rmSync(workDir, { recursive: true, force: true });
  }
}

type Step = Awaited<ReturnType<typeof runStep>>;

// ---------------------------------------------------------------- report

function summary(settings: Settings, machine: ReturnType<typeof machineFacts>, steps: Step[], complete: boolean) {
  const sustained = steps.filter((step) => step.sustained).map((step) => step.cameras);
  const firstFailure = steps.find((step) => !step.sustained);
  return {
    benchmark: 'capacity',
    measuredAt: new Date().toISOString(),
    complete,
    command:
      `node dist-bench/bench/capacity.js --steps ${settings.steps.join(',')} --step-s ${settings.stepS} --warm-up-s ${settings.warmUpS} --floor-s ${settings.floorS} --fps ${settings.fps}` +
      (settings.decodeThreads !== undefined ? ` --decode-threads ${settings.decodeThreads}` : '') +
      (settings.batchWindowMs > 0 ? ` --batch-window-ms ${settings.batchWindowMs}` : '') +
      (settings.allSteps ? ' --all-steps' : '') +
      (settings.snapshots ? '' : ' --no-snapshots') +
      (settings.noDelay ? ' --no-delay' : '') +
      (settings.video !== path.resolve('assets/demo/bottle-detection.mp4') ? ` --video ${settings.video}` : '') +
      (settings.firstS !== undefined ? ` --first-s ${settings.firstS}` : '') +
      // Another build or bundle (an A/B against an older agent) must show in the command line too.
      (settings.agent !== path.resolve('bin/linewatch.js') ? ` --agent ${settings.agent}` : '') +
      (settings.model !== path.resolve('models/demo') ? ` --model ${settings.model}` : ''),
    machine,
    setup: {
      video: path.relative(process.cwd(), settings.video) || settings.video,
      firstS: settings.firstS ?? null,
      model: path.relative(process.cwd(), settings.model) || settings.model,
      variant: settings.variant,
      fps: settings.fps,
      snapshots: settings.snapshots,
      decodeThreads: settings.decodeThreads ?? null,
      batchWindowMs: settings.batchWindowMs,
      brokerTcpNoDelay: settings.noDelay,
      stepS: settings.stepS,
      warmUpS: settings.warmUpS,
      floorS: settings.floorS,
      sustainedMeans: `no frame dropped in the window, scored >= ${settings.minRateShare * 100} % of cameras x fps, event latency p99 <= ${settings.latencyP99MaxMs} ms, no ffmpeg restart`,
    },
    result: {
      largestSustainedCameras: sustained.length > 0 ? Math.max(...sustained) : null,
      saturatesAt: firstFailure ? { cameras: firstFailure.cameras, reasons: firstFailure.reasons } : null,
    },
    steps,
  };
}

type Summary = ReturnType<typeof summary>;

function markdown(result: Summary, jsonName: string): string {
  const { machine, setup } = result;
  return [
    '# Capacity benchmark',
    '',
    `Measured ${result.measuredAt} with \`${result.command}\`${result.complete ? '' : ' (interrupted: partial)'} (all figures: [${jsonName}](${jsonName})).`,
    '',
    `- Machine: ${machine.nproc} cores, ${machine.cpuModel}, ${machine.memoryGb} GiB, Linux ${machine.kernel}; Node ${machine.node}; ${machine.ffmpeg}; ${machine.mosquitto}. Load average at the start: ${machine.loadAverageAtStart.join(', ')}.`,
    `- Each step: a fresh \`linewatch run\` with N cameras, each ${setup.video}${setup.firstS === null ? '' : ` (only its first ${setup.firstS} s, re-encoded at the source's bit rate)`} (640x360 H.264, 29.97 fps) as a looped file at native speed (the cameras spread over copies of it rotated to start at each key frame, so that their events do not coincide); analysed at ${setup.fps} fps; model ${setup.model} (${setup.variant}); snapshots ${setup.snapshots ? 'on' : 'off'}, health page on; ffmpeg decoder threads: ${setup.decodeThreads ?? "the agent's default (slice threads only)"}; inference batch window: ${setup.batchWindowMs ? `${setup.batchWindowMs} ms` : 'none (the default)'}; mosquitto on loopback (${setup.brokerTcpNoDelay ? '`set_tcp_nodelay true`' : 'stock settings: Nagle on its sockets'}), an mqtt.js subscriber on the events${setup.brokerTcpNoDelay ? ' (TCP_NODELAY)' : ''}; the agent sets TCP_NODELAY on its own connection.`,
    `- ${setup.warmUpS} s warm-up, then a ${setup.stepS} s window; then the same ffmpeg command lines alone for ${setup.floorS} s (the decoding floor).`,
    `- Sustained: ${setup.sustainedMeans}.`,
    '',
    `**Largest N sustained: ${result.result.largestSustainedCameras ?? 'none'}**` +
      (result.result.saturatesAt ? `; not sustained at ${result.result.saturatesAt.cameras} (${result.result.saturatesAt.reasons.join(', ')}).` : '; every step sustained.'),
    '',
    markdownTable(
      ['cameras', 'sustained', 'scored/s (of)', 'dropped', 'agent % core', 'ffmpeg % core', 'rest % core', 'ffmpeg alone % core', 'agent ms/frame', 'latency p50 / p99 (starts)', 'event writes > 10 / > 50 ms (of)', 'RSS peak MB', 'RSS slope MB/min'],
      result.steps.map((step) => [
        step.cameras,
        step.sustained ? 'yes' : `**no**: ${step.reasons.join(', ')}`,
        `${step.frames.scoredPerS} (${step.frames.expectedPerS})`,
        step.frames.dropped,
        step.cpuPercentOfOneCore.agent,
        step.cpuPercentOfOneCore.ffmpeg,
        step.cpuPercentOfOneCore.rest,
        step.ffmpegAlone.cpuPercentOfOneCore,
        step.agentMsPerScoredFrame,
        `${step.latencyMs.p50 ?? '–'} / ${step.latencyMs.p99 ?? '–'} ms (${step.latencyMs.starts})`,
        step.eventWrites ? `${step.eventWrites.slowerThanMs[10] ?? '–'} / ${step.eventWrites.slowerThanMs[50] ?? '–'} (${step.eventWrites.count})` : '–',
        step.memory.rssPeakMb,
        step.memory.rssSlopeMbPerMinute,
      ]),
    ),
    '',
    `CPU in % of one core over each window (the machine has ${machine.nproc * 100} %): agent = the node process (all its threads: inference, scoring, MQTT, health); ffmpeg = its children; rest = everything else busy on the machine (mosquitto, this benchmark, other work). "ffmpeg alone" runs the same command lines without the agent. Event writes: batches of event messages that took longer than 10 or 50 ms to reach the disk (journal and outbox, each synced) in the window; every message of a batch waited that long before it was published.`,
    '',
  ].join('\n');
}

async function write(settings: Settings, result: Summary): Promise<void> {
  await writeReport(settings.out, result, (jsonName) => markdown(result, jsonName));
}

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const machine = machineFacts();
  const workRoot = mkdtempSync(path.join(os.tmpdir(), 'linewatch-capacity-'));
  const steps: Step[] = [];
  try {
    const videos = rotatedVideos(settings.firstS === undefined ? settings.video : firstSeconds(settings.video, settings.firstS, workRoot), workRoot);
    console.log(`${videos.length} phase(s) of the video (rotated at its key frames)`);
    for (const cameras of settings.steps) {
      console.log(`step: ${cameras} camera(s), ${settings.warmUpS} s warm-up + ${settings.stepS} s, then ffmpeg alone ${settings.floorS} s`);
      const step = await runStep(settings, cameras, videos, workRoot);
      steps.push(step);
      console.log(
        `  ${step.sustained ? 'sustained' : `NOT sustained (${step.reasons.join(', ')})`}: scored ${step.frames.scoredPerS}/s of ${step.frames.expectedPerS}, dropped ${step.frames.dropped}; ` +
          `CPU % of one core: agent ${step.cpuPercentOfOneCore.agent}, ffmpeg ${step.cpuPercentOfOneCore.ffmpeg}, rest ${step.cpuPercentOfOneCore.rest}, ffmpeg alone ${step.ffmpegAlone.cpuPercentOfOneCore}; ` +
          `agent ${step.agentMsPerScoredFrame} ms/frame; latency p50 ${step.latencyMs.p50} p99 ${step.latencyMs.p99} ms (${step.latencyMs.starts}); RSS peak ${step.memory.rssPeakMb} MB`,
      );
      await write(settings, summary(settings, machine, steps, false));
      if (!step.sustained && !settings.allSteps) break;
    }
    const result = summary(settings, machine, steps, true);
    await write(settings, result);
    console.log(`largest N sustained: ${result.result.largestSustainedCameras ?? 'none'}; wrote ${path.relative(process.cwd(), settings.out)} and .md`);
  } finally {
    rmSync(workRoot, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(`capacity: ${formatError(error)}`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
