/**
 * Load benchmark of the whole agent: `linewatch run` as a child process with N cameras
 * (the demo video, looped at native speed), a real mosquitto, and an mqtt.js subscriber.
 * Samples the agent's RSS and CPU, its ffmpeg children's CPU and the /metrics frame
 * counters every second; measures how long each event `start` takes from the capture of
 * the frame that triggered it to the subscriber; then stops the agent with SIGTERM and
 * measures the same ffmpeg command lines alone, so decoding and scoring can be told apart.
 *
 *   node dist-bench/bench/agent-load.js [--cameras 4] [--fps 10] [--duration-s 600] [--baseline-s 20]
 *     [--out docs/benchmarks/agent-load.json] [--model models/demo] [--video assets/demo/bottle-detection.mp4]
 *     [--variant int8] [--cpu-prof <dir>] [--no-delay] [--agent-env KEY=VALUE ...]
 *
 * --no-delay: mosquitto with `set_tcp_nodelay true` and TCP_NODELAY on the subscriber. The stock
 * broker keeps Nagle's algorithm on its sockets, which holds a small message back until the
 * previous one is acknowledged: tens of ms at the tail that are the broker's, not the agent's
 * (the agent sets TCP_NODELAY on its own connection).
 *
 * --agent-env: a setting over the shipped unit's environment, for diagnosis (e.g. MALLOC_ARENA_MAX=1);
 * repeatable, and recorded in the JSON.
 *
 * Writes the JSON to --out and a markdown summary next to it (same name, .md).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { stringify as toYaml } from 'yaml';
import { formatError, UsageError } from '../src/errors.js';
import { LINEWATCH_VERSION } from '../src/version.js';
import { childrenOf, CpuLedger, markdownTable, measureCommandsAlone, parseEventWrites, percentile, readCmdline, mib, readMachineCpu, readProcStat, readResidentBytes, round, setClientNoDelay, sleep, slope, SLOW_WRITE_MS, startMosquitto, summariseEventWrites, writeReport, type EventWrites } from './measure.js';
import { freePort, spawnAgent } from './net.js';
import { modelAndVideo } from './options.js';

// ---------------------------------------------------------------- settings

interface BenchSettings {
  cameras: number;
  fps: number;
  durationS: number;
  baselineS: number;
  warmUpS: number;
  out: string;
  model: string;
  video: string;
  variant: 'int8' | 'fp32';
  cpuProfDir: string | undefined;
  noDelay: boolean;
  /** KEY=VALUE settings over the unit's environment, for diagnosis runs (an allocator setting, say). */
  agentEnv: Record<string, string>;
}

const DEVICE_ID = 'bench';
/** RSS growth and CPU are judged after this, so model loading and first allocations do not count as a leak. */
const WARM_UP_S = 30;
const SAMPLE_INTERVAL_MS = 1000;
const TARGETS = { droppedFrames: 0, rssMaxMb: 300, rssSlopeMaxMbPerMin: 1, latencyP99MaxMs: 50 } as const;

function parseSettings(argv: string[]): BenchSettings {
  const { values } = parseArgs({
    args: argv,
    options: {
      cameras: { type: 'string', default: '4' },
      fps: { type: 'string', default: '10' },
      'duration-s': { type: 'string', default: '600' },
      'baseline-s': { type: 'string', default: '20' },
      out: { type: 'string', default: 'docs/benchmarks/agent-load.json' },
      model: { type: 'string', default: 'models/demo' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      variant: { type: 'string', default: 'int8' },
      'cpu-prof': { type: 'string' },
      'no-delay': { type: 'boolean', default: false },
      'agent-env': { type: 'string', multiple: true, default: [] },
    },
    strict: true,
  });
  const positive = (name: string, raw: string, integer: boolean): number => {
    const value = Number(raw);
    if (!Number.isFinite(value) || value <= 0 || (integer && !Number.isInteger(value))) {
      throw new UsageError(`--${name} must be a positive ${integer ? 'integer' : 'number'}, got '${raw}'`, { hint: `e.g. --${name} ${integer ? 4 : 10}` });
    }
    return value;
  };
  const { model, variant, video } = modelAndVideo(values);
  const durationS = positive('duration-s', values['duration-s']!, false);
  return {
    cameras: positive('cameras', values.cameras!, true),
    fps: positive('fps', values.fps!, false),
    durationS,
    baselineS: positive('baseline-s', values['baseline-s']!, false),
    // A short check run still gets a slope over its second half.
    warmUpS: Math.min(WARM_UP_S, durationS / 2),
    out: path.resolve(values.out!),
    model,
    video,
    variant,
    cpuProfDir: values['cpu-prof'] === undefined ? undefined : path.resolve(values['cpu-prof']),
    noDelay: values['no-delay']!,
    agentEnv: Object.fromEntries(
      values['agent-env']!.map((setting) => {
        const match = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(setting);
        if (!match) throw new UsageError(`--agent-env takes KEY=VALUE, got '${setting}'`, { hint: 'e.g. --agent-env MALLOC_ARENA_MAX=1' });
        return [match[1]!, match[2]!];
      }),
    ),
  };
}

// ---------------------------------------------------------------- the agent

interface AgentFrames {
  in: number;
  scored: number;
  dropped: number;
  restarts: number;
}

/** Per-camera counters from the Prometheus text of /metrics. */
function parseFrameCounters(metricsText: string): Record<string, AgentFrames> {
  const names: Record<string, keyof AgentFrames> = {
    linewatch_frames_in_total: 'in',
    linewatch_frames_scored_total: 'scored',
    linewatch_frames_dropped_total: 'dropped',
    linewatch_ffmpeg_restarts_total: 'restarts',
  };
  const cameras: Record<string, AgentFrames> = {};
  for (const line of metricsText.split('\n')) {
    const match = /^(linewatch_\w+)\{camera="([^"]+)"\}\s+(\S+)/.exec(line);
    const field = match && names[match[1]!];
    if (!match || !field) continue;
    const camera = (cameras[match[2]!] ??= { in: 0, scored: 0, dropped: 0, restarts: 0 });
    camera[field] = Number(match[3]);
  }
  return cameras;
}

/** The V8 heap and external (Buffer, native) memory from prom-client's process metrics: where RSS growth lives. */
function parseHeap(metricsText: string): AgentHeap | undefined {
  const value = (name: string) => Number(new RegExp(`^${name}\\s+(\\S+)`, 'm').exec(metricsText)?.[1] ?? NaN) / 2 ** 20;
  const heap = {
    heapUsedMb: value('nodejs_heap_size_used_bytes'),
    // What V8 has committed for its heap (the pages RSS sees), used or not.
    heapTotalMb: value('nodejs_heap_size_total_bytes'),
    externalMb: value('nodejs_external_memory_bytes'),
  };
  return Number.isFinite(heap.heapUsedMb) ? heap : undefined;
}

interface AgentHeap {
  heapUsedMb: number;
  heapTotalMb: number;
  externalMb: number;
}

interface AgentMetricsSample {
  frames: Record<string, AgentFrames>;
  heap: AgentHeap | undefined;
  eventWrites: EventWrites | undefined;
}

async function fetchAgentMetrics(healthUrl: string): Promise<AgentMetricsSample | undefined> {
  try {
    const response = await fetch(`${healthUrl}/metrics`, { signal: AbortSignal.timeout(2000) });
    if (!response.ok) return undefined;
    const text = await response.text();
    return { frames: parseFrameCounters(text), heap: parseHeap(text), eventWrites: parseEventWrites(text) };
  } catch {
    return undefined;
  }
}

function cameraNames(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `cam-${i + 1}`);
}

function agentConfig(settings: BenchSettings, mqttUrl: string, healthPort: number, dataDir: string): object {
  return {
    deviceId: DEVICE_ID,
    dataDir,
    log: { level: 'info' },
    mqtt: { url: mqttUrl },
    health: { enabled: true, host: '127.0.0.1', port: healthPort },
    defaults: {
      model: settings.model,
      variant: settings.variant,
      fps: settings.fps,
      loop: true,
      realtime: true,
      snapshots: { enabled: true },
    },
    cameras: cameraNames(settings.cameras).map((name) => ({ name, url: settings.video })),
  };
}

// ---------------------------------------------------------------- MQTT subscriber

interface EventRecord {
  camera: string;
  type: string;
  reason: string | undefined;
  receivedAt: number;
  /** Wall-clock capture time of the frame that triggered the message (event.at), ms. */
  capturedAt: number;
  /** Receive time minus the capture time of the frame that triggered the message, ms. */
  latencyMs: number;
}

interface Subscription {
  events: EventRecord[];
  messagesByKind: Record<string, number>;
  close(): Promise<void>;
}

async function subscribe(url: string, noDelay: boolean): Promise<Subscription> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 500, connectTimeout: 5000 });
  if (noDelay) setClientNoDelay(client);
  const events: EventRecord[] = [];
  const messagesByKind: Record<string, number> = {};
  client.on('message', (topic, payload) => {
    const receivedAt = Date.now();
    const kind = topic.split('/').slice(2).join('/').replace(/^cam-\d+\//, '<camera>/');
    messagesByKind[kind] = (messagesByKind[kind] ?? 0) + 1;
    if (!topic.endsWith('/events')) return;
    const event = JSON.parse(payload.toString('utf8')) as { type: string; camera: string; at: string; reason?: string };
    const capturedAt = Date.parse(event.at);
    events.push({ camera: event.camera, type: event.type, reason: event.reason, receivedAt, capturedAt, latencyMs: receivedAt - capturedAt });
  });
  await client.subscribeAsync(`linewatch/${DEVICE_ID}/#`, { qos: 1 });
  return { events, messagesByKind, close: () => client.endAsync(true) };
}

// ---------------------------------------------------------------- sampling

interface Sample {
  /** Seconds since the agent started streaming on every camera. */
  t: number;
  rssMb: number | undefined;
  /** RSS's anonymous pages (the agent's own memory) and its file-backed pages (code and data of node and the libraries). */
  rssAnonMb: number | undefined;
  rssFileMb: number | undefined;
  agentCpuS: number;
  ffmpegCpuS: number;
  ffmpegProcesses: number;
  mosquittoCpuS: number;
  benchCpuS: number;
  machineBusyS: number;
  machineTotalS: number;
  frames: Record<string, AgentFrames> | undefined;
  heapUsedMb: number | undefined;
  heapTotalMb: number | undefined;
  externalMb: number | undefined;
  eventWrites: EventWrites | undefined;
}

function benchCpuS(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

// ---------------------------------------------------------------- baseline

interface Baseline {
  seconds: number;
  processes: number;
  cpuPercentOfOneCore: number | null;
  cpuPercentOfMachine: number | null;
  commandLine: string | null;
}

/**
 * The agent's own ffmpeg command lines, run without the agent: their outputs (raw frames
 * on stdout, preview JPEGs on fd 3) go to /dev/null. What this costs is decoding,
 * filtering and preview encoding; the rest of the agent's CPU is scoring and publishing.
 */
async function measureDecodingAlone(commands: readonly string[][], seconds: number): Promise<Baseline> {
  const { processes, wallS, cpuS } = await measureCommandsAlone(commands, seconds);
  return {
    seconds: round(wallS)!,
    processes,
    cpuPercentOfOneCore: round((100 * cpuS) / wallS),
    cpuPercentOfMachine: round((100 * cpuS) / wallS / os.availableParallelism()),
    commandLine: commands[0] ? commands[0].map((arg) => (/[\s'"[\];,]/.test(arg) ? `'${arg}'` : arg)).join(' ') : null,
  };
}

// ---------------------------------------------------------------- machine facts

function machineFacts() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const ffmpegVersion = (() => {
    try {
      return execFileSync('ffmpeg', ['-version'], { encoding: 'utf8' }).split('\n')[0]!.replace(/ Copyright.*/, '');
    } catch {
      return 'unknown';
    }
  })();
  const mosquittoVersion = (() => {
    try {
      return execFileSync('mosquitto', ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!;
    } catch (error) {
      // `mosquitto -h` exits 3 after printing its usage.
      return String((error as { stdout?: string }).stdout ?? '').split('\n')[0] || 'unknown';
    }
  })();
  return {
    nproc: os.availableParallelism(),
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown',
    cpuFlags: ['avx2', 'avx512f', 'avx512_vnni', 'avx_vnni'].filter((flag) => new RegExp(`\\b${flag}\\b`).test(cpuinfo)),
    memoryGb: round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    ffmpeg: ffmpegVersion,
    mosquitto: mosquittoVersion,
    linewatch: LINEWATCH_VERSION,
  };
}

function modelFacts(bundleDir: string) {
  const manifest = JSON.parse(readFileSync(path.join(bundleDir, 'manifest.json'), 'utf8')) as {
    createdAt?: string;
    input: { width: number; height: number; channels: number };
    architecture?: { name?: string };
    scoring?: { scorer?: string; errorMap?: string };
  };
  return {
    dir: path.relative(process.cwd(), bundleDir) || bundleDir,
    createdAt: manifest.createdAt ?? null,
    input: `${manifest.input.width}x${manifest.input.height}x${manifest.input.channels}`,
    architecture: manifest.architecture?.name ?? null,
    scorer: manifest.scoring ? `${manifest.scoring.scorer ?? '?'} (${manifest.scoring.errorMap ?? '?'})` : null,
  };
}

// ---------------------------------------------------------------- the run

async function run(settings: BenchSettings) {
  const workDir = mkdtempSync(path.join(os.tmpdir(), 'linewatch-agent-load-'));
  const cleanups: (() => Promise<void> | void)[] = [() => rmSync(workDir, { recursive: true, force: true })];
  const machine = machineFacts();
  const model = modelFacts(settings.model);
  try {
    const broker = await startMosquitto(workDir, { noDelay: settings.noDelay });
    cleanups.unshift(() => {
      broker.child.kill('SIGTERM');
    });
    const healthPort = await freePort();
    const healthUrl = `http://127.0.0.1:${healthPort}`;
    const configFile = path.join(workDir, 'linewatch.yaml');
    writeFileSync(configFile, toYaml(agentConfig(settings, broker.url, healthPort, path.join(workDir, 'data'))));
    const subscription = await subscribe(broker.url, settings.noDelay);
    cleanups.unshift(() => subscription.close());

    const nodeFlags = settings.cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', settings.cpuProfDir] : [];
    if (settings.cpuProfDir) await mkdir(settings.cpuProfDir, { recursive: true });
    const launchedAt = Date.now();
    const logFile = path.join(workDir, 'agent.log');
    const launched = spawnAgent(configFile, logFile, nodeFlags, settings.agentEnv);
    cleanups.unshift(() => launched.kill());
    const agent = launched.process;
    const agentExit = launched.exited;
    const agentLogTail = launched.logTail;
    const pid = agent.pid!;
    const names = cameraNames(settings.cameras);

    // Streaming on every camera: each has delivered a frame and been scored at least once.
    const startDeadline = Date.now() + 90_000;
    for (;;) {
      if (launched.gone()) throw new Error(`the agent exited during start-up:\n${agentLogTail()}`);
      const frames = (await fetchAgentMetrics(healthUrl))?.frames;
      if (frames && names.every((name) => (frames[name]?.scored ?? 0) > 0)) break;
      if (Date.now() > startDeadline) throw new Error(`not every camera was scoring 90 s after start:\n${agentLogTail()}`);
      await sleep(200);
    }
    const startUpS = (Date.now() - launchedAt) / 1000;
    console.log(`agent (pid ${pid}) streaming on ${names.length} camera(s) after ${startUpS.toFixed(1)} s; measuring for ${settings.durationS} s`);

    const ffmpegLedger = new CpuLedger();
    const samples: Sample[] = [];
    let ffmpegCommands: string[][] = [];
    const origin = performance.now();
    const measuringFrom = Date.now();
    const takeSample = async (): Promise<Sample> => {
      const ffmpegs = childrenOf(pid).filter((child) => child.comm === 'ffmpeg');
      ffmpegLedger.observe(ffmpegs);
      if (ffmpegCommands.length < settings.cameras && ffmpegs.length >= settings.cameras) {
        ffmpegCommands = ffmpegs.map((child) => readCmdline(child.pid)).filter((cmd): cmd is string[] => cmd !== undefined);
      }
      const machineCpu = readMachineCpu();
      const metrics = await fetchAgentMetrics(healthUrl);
      const resident = readResidentBytes(pid);
      const sample: Sample = {
        t: (performance.now() - origin) / 1000,
        rssMb: (resident?.rss ?? NaN) / 2 ** 20,
        rssAnonMb: mib(resident?.anon),
        rssFileMb: mib(resident?.file),
        agentCpuS: readProcStat(pid)?.cpuS ?? NaN,
        ffmpegCpuS: ffmpegLedger.totalS,
        ffmpegProcesses: ffmpegs.length,
        mosquittoCpuS: readProcStat(broker.child.pid!)?.cpuS ?? NaN,
        benchCpuS: benchCpuS(),
        machineBusyS: machineCpu.busyS,
        machineTotalS: machineCpu.totalS,
        frames: metrics?.frames,
        heapUsedMb: metrics?.heap?.heapUsedMb,
        heapTotalMb: metrics?.heap?.heapTotalMb,
        externalMb: metrics?.heap?.externalMb,
        eventWrites: metrics?.eventWrites,
      };
      samples.push(sample);
      return sample;
    };
    let nextReport = 60;
    for (let tick = 0; ; tick++) {
      if (launched.gone()) throw new Error(`the agent exited during the run:\n${agentLogTail()}`);
      const sample = await takeSample();
      if (sample.t >= nextReport) {
        nextReport += 60;
        const dropped = Object.values(sample.frames ?? {}).reduce((sum, camera) => sum + camera.dropped, 0);
        console.log(`  ${sample.t.toFixed(0)} s: RSS ${sample.rssMb?.toFixed(0)} MB, ${subscription.events.filter((e) => e.type === 'start').length} event starts, ${dropped} frames dropped`);
      }
      if (sample.t >= settings.durationS) break;
      await sleep(Math.max(0, origin + (tick + 1) * SAMPLE_INTERVAL_MS - performance.now()));
    }
    const last = samples.at(-1)!;

    // Stop: SIGTERM must end open events (reason shutdown), publish offline and exit 0.
    const eventsBeforeStop = subscription.events.length;
    const stopSentAt = Date.now();
    agent.kill('SIGTERM');
    const exit = await Promise.race([agentExit, sleep(20_000).then(() => undefined)]);
    await sleep(500);
    const orphans = ffmpegLedger.pids.filter((ffmpegPid) => readProcStat(ffmpegPid)?.comm === 'ffmpeg');
    const shutdown = {
      exitCode: exit?.code ?? null,
      signal: exit?.signal ?? null,
      exitedWithinS: exit ? round((exit.at - stopSentAt) / 1000, 2) : null,
      eventEndsOnShutdown: subscription.events.slice(eventsBeforeStop).filter((e) => e.type === 'end' && e.reason === 'shutdown').length,
      ffmpegLeftRunning: orphans.length,
      logTail: exit?.code === 0 ? undefined : agentLogTail(),
    };
    const agentLog = readFileSync(logFile, 'utf8');
    const warnings = agentLog.split('\n').filter((line) => /^\S+ (warn|error)\b/.test(line));
    console.log(`agent stopped: exit ${shutdown.exitCode ?? shutdown.signal ?? 'none (timed out)'} in ${shutdown.exitedWithinS ?? '>20'} s`);

    console.log(`baseline: the same ${ffmpegCommands.length} ffmpeg command line(s) without the agent for ${settings.baselineS} s`);
    const baseline = await measureDecodingAlone(ffmpegCommands, settings.baselineS);

    return summarise({ settings, machine, model, samples, last, events: subscription.events, messagesByKind: subscription.messagesByKind, startUpS, measuringFrom, stopSentAt, shutdown, baseline, warnings });
  } finally {
    for (const cleanup of cleanups) {
      try {
        await cleanup();
      } catch {
        // Best effort: the run's result matters more than a temp folder.
      }
    }
  }
}

// ---------------------------------------------------------------- report

interface SummaryInput {
  settings: BenchSettings;
  machine: ReturnType<typeof machineFacts>;
  model: ReturnType<typeof modelFacts>;
  samples: Sample[];
  last: Sample;
  events: EventRecord[];
  messagesByKind: Record<string, number>;
  startUpS: number;
  /** Wall-clock ms at which the measurement began (every camera scoring) and at which SIGTERM was sent. */
  measuringFrom: number;
  stopSentAt: number;
  shutdown: { exitCode: number | null; signal: string | null; exitedWithinS: number | null; eventEndsOnShutdown: number; ffmpegLeftRunning: number; logTail?: string };
  baseline: Baseline;
  warnings: string[];
}

/** The largest finite value, or undefined when there is none (the agent's /proc entry could not be read). */
function maxOf(values: (number | undefined)[]): number | undefined {
  const finite = values.filter((value): value is number => value !== undefined && Number.isFinite(value));
  return finite.length === 0 ? undefined : Math.max(...finite);
}

function summarise(input: SummaryInput) {
  const { settings, samples, last, events } = input;
  const first = samples[0]!;
  const warm = samples.find((sample) => sample.t >= settings.warmUpS) ?? first;
  const cores = input.machine.nproc;
  const span = last.t - warm.t;
  const percentOfCore = (delta: number) => round((100 * delta) / span);
  const agentCpu = last.agentCpuS - warm.agentCpuS;
  const ffmpegCpu = last.ffmpegCpuS - warm.ffmpegCpuS;
  const mosquittoCpu = last.mosquittoCpuS - warm.mosquittoCpuS;
  const benchCpu = last.benchCpuS - warm.benchCpuS;
  const machineBusy = last.machineBusyS - warm.machineBusyS;
  const machineCapacity = last.machineTotalS - warm.machineTotalS;

  // Per minute, over the samples from `fromS` on: after the warm-up (the target), and over the second half (a settling
  // heap shows a slope early that is gone late; a leak keeps it).
  const slopeOf = (pick: (sample: Sample) => number | undefined, fromS: number) =>
    slope(samples.flatMap((s) => (s.t >= fromS && Number.isFinite(pick(s)) ? [{ x: s.t / 60, y: pick(s)! }] : [])));
  const rssSlope = slopeOf((s) => s.rssMb, settings.warmUpS);
  const secondHalfS = last.t / 2;

  const starts = events.filter((event) => event.type === 'start');
  const latencyOf = (list: EventRecord[]) => {
    const sorted = list.map((event) => event.latencyMs).sort((a, b) => a - b);
    return { count: sorted.length, p50: percentile(sorted, 50), p95: percentile(sorted, 95), p99: percentile(sorted, 99), max: sorted.at(-1) ?? null };
  };
  const frames = Object.fromEntries(
    Object.entries(last.frames ?? {}).map(([camera, counters]) => {
      const atWarm = warm.frames?.[camera];
      return [camera, { ...counters, scoredPerSecondAfterWarmUp: atWarm ? round((counters.scored - atWarm.scored) / span, 2) : null }];
    }),
  );
  const totalDropped = Object.values(frames).reduce((sum, camera) => sum + camera.dropped, 0);
  const eventCounts: Record<string, Record<string, number>> = {};
  for (const event of events) {
    const perCamera = (eventCounts[event.camera] ??= {});
    const key = event.type === 'end' ? `end:${event.reason ?? '?'}` : event.type;
    perCamera[key] = (perCamera[key] ?? 0) + 1;
  }

  const summary = {
    benchmark: 'agent-load',
    measuredAt: new Date().toISOString(),
    machine: input.machine,
    model: input.model,
    setup: {
      cameras: settings.cameras,
      fps: settings.fps,
      video: path.relative(process.cwd(), settings.video) || settings.video,
      variant: settings.variant,
      loop: true,
      realtime: true,
      snapshots: true,
      durationS: round(last.t),
      warmUpS: settings.warmUpS,
      startUpS: round(input.startUpS),
      cpuProfile: settings.cpuProfDir ?? null,
      agentEnvironment: settings.agentEnv,
      brokerTcpNoDelay: settings.noDelay,
    },
    frames,
    cpu: {
      windowS: round(span),
      percentOfOneCore: {
        agent: percentOfCore(agentCpu),
        ffmpeg: percentOfCore(ffmpegCpu),
        mosquitto: percentOfCore(mosquittoCpu),
        benchmarkProcess: percentOfCore(benchCpu),
      },
      percentOfMachine: {
        agent: round((100 * agentCpu) / span / cores),
        ffmpeg: round((100 * ffmpegCpu) / span / cores),
        // Everything else on the machine (other processes): a busy neighbour slows the agent too.
        machineBusy: round((100 * machineBusy) / machineCapacity),
        otherProcesses: round((100 * (machineBusy - agentCpu - ffmpegCpu - mosquittoCpu - benchCpu)) / machineCapacity),
      },
      agentMsPerScoredFrame: (() => {
        const scored = Object.values(frames).reduce((sum, camera) => sum + (camera.scoredPerSecondAfterWarmUp ?? 0), 0) * span;
        return scored > 0 ? round((1000 * agentCpu) / scored, 2) : null;
      })(),
      ffmpegProcesses: last.ffmpegProcesses,
    },
    decodingAlone: input.baseline,
    memory: {
      rssStartMb: round(first.rssMb),
      rssAfterWarmUpMb: round(warm.rssMb),
      rssPeakMb: round(maxOf(samples.map((sample) => sample.rssMb))),
      rssEndMb: round(last.rssMb),
      rssSlopeMbPerMinute: round(rssSlope, 2),
      rssSlopeSecondHalfMbPerMinute: round(slopeOf((s) => s.rssMb, secondHalfS), 2),
      rssAnonAfterWarmUpMb: round(warm.rssAnonMb),
      rssAnonPeakMb: round(maxOf(samples.map((sample) => sample.rssAnonMb))),
      rssAnonEndMb: round(last.rssAnonMb),
      rssAnonSlopeMbPerMinute: round(slopeOf((s) => s.rssAnonMb, settings.warmUpS), 2),
      rssFileAfterWarmUpMb: round(warm.rssFileMb),
      rssFileEndMb: round(last.rssFileMb),
      rssFileSlopeMbPerMinute: round(slopeOf((s) => s.rssFileMb, settings.warmUpS), 2),
      heapUsedSlopeSecondHalfMbPerMinute: round(slopeOf((s) => s.heapUsedMb, secondHalfS), 2),
      heapTotalSlopeSecondHalfMbPerMinute: round(slopeOf((s) => s.heapTotalMb, secondHalfS), 2),
      externalSlopeSecondHalfMbPerMinute: round(slopeOf((s) => s.externalMb, secondHalfS), 2),
      heapUsedEndMb: round(last.heapUsedMb),
      heapTotalEndMb: round(last.heapTotalMb),
      externalEndMb: round(last.externalMb),
      /** The first sample of each minute, so flatness can be seen without the JSON. */
      rssByMinuteMb: samples.filter((s, i) => i === 0 || Math.floor(s.t / 60) > Math.floor(samples[i - 1]!.t / 60)).map((s) => round(s.rssMb)),
    },
    latencyMs: {
      what: 'event start: subscriber receive time minus event.at (capture time of the frame that satisfied the debounce rule)',
      ...latencyOf(starts),
      /**
       * The same, split by when the frame was captured: while every camera was scoring and before the stop
       * (the steady state), during start-up (before the measurement began), and after SIGTERM was sent.
       */
      byPhase: {
        measured: latencyOf(starts.filter((event) => event.capturedAt >= input.measuringFrom && event.capturedAt < input.stopSentAt)),
        startUp: latencyOf(starts.filter((event) => event.capturedAt < input.measuringFrom)),
        stopping: latencyOf(starts.filter((event) => event.capturedAt >= input.stopSentAt)),
      },
      /** The slowest starts, to line up with a CPU profile (--cpu-prof) or the agent's log. */
      slowest: [...starts]
        .sort((a, b) => b.latencyMs - a.latencyMs)
        .slice(0, 5)
        .map((event) => ({ camera: event.camera, receivedAt: new Date(event.receivedAt).toISOString(), latencyMs: event.latencyMs })),
    },
    eventWrites: summariseEventWrites(last.eventWrites),
    events: Object.fromEntries(Object.entries(eventCounts).sort(([a], [b]) => a.localeCompare(b, 'en', { numeric: true }))),
    messages: input.messagesByKind,
    shutdown: input.shutdown,
    agentWarnings: { count: input.warnings.length, first: input.warnings.slice(0, 10) },
    targets: [] as { target: string; measured: string; met: boolean }[],
    samples: samples.map((s) => ({
      t: round(s.t, 2),
      rssMb: round(s.rssMb),
      rssAnonMb: round(s.rssAnonMb),
      rssFileMb: round(s.rssFileMb),
      heapUsedMb: round(s.heapUsedMb),
      heapTotalMb: round(s.heapTotalMb),
      externalMb: round(s.externalMb),
      agentCpuS: round(s.agentCpuS, 2),
      ffmpegCpuS: round(s.ffmpegCpuS, 2),
      machineBusyS: round(s.machineBusyS - first.machineBusyS, 2),
      scored: s.frames ? Object.values(s.frames).reduce((sum, camera) => sum + camera.scored, 0) : null,
      dropped: s.frames ? Object.values(s.frames).reduce((sum, camera) => sum + camera.dropped, 0) : null,
    })),
  };
  const memory = summary.memory;
  summary.targets = [
    { target: 'no dropped frames', measured: `${totalDropped} dropped`, met: totalDropped === TARGETS.droppedFrames },
    { target: `RSS <= ${TARGETS.rssMaxMb} MB`, measured: `peak ${memory.rssPeakMb} MB`, met: (memory.rssPeakMb ?? Infinity) <= TARGETS.rssMaxMb },
    {
      target: `RSS flat (slope within ±${TARGETS.rssSlopeMaxMbPerMin} MB/min after warm-up)`,
      measured: `${memory.rssSlopeMbPerMinute} MB/min`,
      met: Math.abs(memory.rssSlopeMbPerMinute ?? Infinity) <= TARGETS.rssSlopeMaxMbPerMin,
    },
    {
      target: `event start latency p99 <= ${TARGETS.latencyP99MaxMs} ms`,
      measured: `p99 ${summary.latencyMs.p99 ?? '-'} ms over ${summary.latencyMs.count} starts`,
      met: summary.latencyMs.count > 0 && summary.latencyMs.p99! <= TARGETS.latencyP99MaxMs,
    },
    { target: 'SIGTERM: exit 0', measured: `exit ${input.shutdown.exitCode ?? input.shutdown.signal ?? 'timeout'}`, met: input.shutdown.exitCode === 0 },
  ];
  return summary;
}

type Summary = ReturnType<typeof summarise>;

function printSummary(summary: Summary): void {
  const { cpu, memory, latencyMs, decodingAlone } = summary;
  console.log(`\nframes per camera (${summary.setup.durationS} s at ${summary.setup.fps} fps):`);
  console.table(summary.frames);
  console.log(`CPU over ${cpu.windowS} s after a ${summary.setup.warmUpS} s warm-up (% of one core / % of ${summary.machine.nproc} cores):`);
  console.table({
    agent: { 'one core': cpu.percentOfOneCore.agent, machine: cpu.percentOfMachine.agent },
    'ffmpeg children': { 'one core': cpu.percentOfOneCore.ffmpeg, machine: cpu.percentOfMachine.ffmpeg },
    'ffmpeg alone (baseline)': { 'one core': decodingAlone.cpuPercentOfOneCore, machine: decodingAlone.cpuPercentOfMachine },
    mosquitto: { 'one core': cpu.percentOfOneCore.mosquitto, machine: null },
    'other processes': { 'one core': null, machine: cpu.percentOfMachine.otherProcesses },
  });
  console.log(`agent CPU per scored frame: ${cpu.agentMsPerScoredFrame} ms`);
  console.log(`RSS: start ${memory.rssStartMb} MB, after warm-up ${memory.rssAfterWarmUpMb} MB, peak ${memory.rssPeakMb} MB, end ${memory.rssEndMb} MB, slope ${memory.rssSlopeMbPerMinute} MB/min`);
  console.log(`second half: RSS ${memory.rssSlopeSecondHalfMbPerMinute} MB/min, V8 heap used ${memory.heapUsedSlopeSecondHalfMbPerMinute} MB/min, external ${memory.externalSlopeSecondHalfMbPerMinute} MB/min`);
  console.log(`event start latency (${latencyMs.count}): p50 ${latencyMs.p50} ms, p95 ${latencyMs.p95} ms, p99 ${latencyMs.p99} ms, max ${latencyMs.max} ms`);
  for (const [phase, stats] of Object.entries(latencyMs.byPhase)) {
    console.log(`  ${phase} (${stats.count}): p50 ${stats.p50 ?? '-'} ms, p99 ${stats.p99 ?? '-'} ms, max ${stats.max ?? '-'} ms`);
  }
  const writes = summary.eventWrites;
  if (writes) {
    const slow = Object.entries(writes.slowerThanMs).map(([ms, count]) => `> ${ms} ms: ${count ?? '-'}`).join(', ');
    console.log(`event writes before publishing (${writes.count}): mean ${writes.meanMs} ms; ${slow}`);
  }
  console.log('events:');
  console.table(summary.events);
  console.log('targets:');
  console.table(summary.targets);
}

function markdownSummary(summary: Summary, jsonName: string): string {
  const { machine, model, setup, cpu, memory, latencyMs, decodingAlone, shutdown } = summary;
  const eventKinds = [...new Set(Object.values(summary.events).flatMap((counts) => Object.keys(counts)))].sort();
  return [
    '# Agent load benchmark',
    '',
    `Measured ${summary.measuredAt} with \`node dist-bench/bench/agent-load.js --cameras ${setup.cameras} --fps ${setup.fps} --duration-s ${setup.durationS}${setup.brokerTcpNoDelay ? ' --no-delay' : ''}${Object.entries(setup.agentEnvironment)
      .map(([key, value]) => ` --agent-env ${key}=${value}`)
      .join('')}\`` +
      ` (all figures and the per-second samples: [${jsonName}](${jsonName})).`,
    '',
    '## Setup',
    '',
    `- Machine: ${machine.nproc} cores, ${machine.cpuModel} (${machine.cpuFlags.join(', ') || 'no AVX2'}), ${machine.memoryGb} GiB, Linux ${machine.kernel}; Node ${machine.node}; ${machine.ffmpeg}; ${machine.mosquitto}.`,
    `- Agent: linewatch ${machine.linewatch}, \`linewatch run\` as a child process; ${setup.cameras} cameras, each ${setup.video} (640x360, 29.8 fps) as a file source with loop and realtime (native speed), analysed at ${setup.fps} fps, snapshots on, health on.`,
    `- Model: ${model.dir} (${setup.variant}, input ${model.input}, ${model.architecture}, scorer ${model.scorer}, created ${model.createdAt}).`,
    `- Broker: mosquitto on loopback (${setup.brokerTcpNoDelay ? '`set_tcp_nodelay true`' : 'stock settings: Nagle on its sockets'}); subscriber: mqtt.js on \`linewatch/bench/#\` (QoS 1${setup.brokerTcpNoDelay ? ', TCP_NODELAY' : ''}) in the benchmark process; the agent sets TCP_NODELAY on its own connection.`,
    `- Start-up to every camera scoring: ${setup.startUpS} s. CPU and RSS slope are taken after a ${setup.warmUpS} s warm-up.`,
    '',
    '## Targets',
    '',
    markdownTable(['target', 'measured', 'met'], summary.targets.map((t) => [t.target, t.measured, t.met ? 'yes' : '**no**'])),
    '',
    '## Frames',
    '',
    markdownTable(
      ['camera', 'in', 'scored', 'dropped', 'ffmpeg restarts', 'scored/s after warm-up'],
      Object.entries(summary.frames).map(([camera, f]) => [camera, f.in, f.scored, f.dropped, f.restarts, f.scoredPerSecondAfterWarmUp]),
    ),
    '',
    `## CPU (${cpu.windowS} s window)`,
    '',
    markdownTable(
      ['process', '% of one core', `% of the machine (${machine.nproc} cores)`],
      [
        ['agent (node: scoring, MQTT, health)', cpu.percentOfOneCore.agent, cpu.percentOfMachine.agent],
        [`its ${cpu.ffmpegProcesses} ffmpeg children (decode, filter, preview JPEG)`, cpu.percentOfOneCore.ffmpeg, cpu.percentOfMachine.ffmpeg],
        [`baseline: the same ${decodingAlone.processes} ffmpeg command lines alone, ${decodingAlone.seconds} s`, decodingAlone.cpuPercentOfOneCore, decodingAlone.cpuPercentOfMachine],
        ['mosquitto', cpu.percentOfOneCore.mosquitto, null],
        ['this benchmark (subscriber, sampling)', cpu.percentOfOneCore.benchmarkProcess, null],
        ['other processes on the machine', null, cpu.percentOfMachine.otherProcesses],
        ['machine busy in total', null, cpu.percentOfMachine.machineBusy],
      ],
    ),
    '',
    `Agent CPU per scored frame: ${cpu.agentMsPerScoredFrame} ms.`,
    '',
    `Baseline command line (camera 1): \`${decodingAlone.commandLine ?? '–'}\``,
    '',
    '## Memory (agent RSS)',
    '',
    markdownTable(
      ['start', 'after warm-up', 'peak', 'end', 'slope after warm-up'],
      [[`${memory.rssStartMb} MB`, `${memory.rssAfterWarmUpMb} MB`, `${memory.rssPeakMb} MB`, `${memory.rssEndMb} MB`, `${memory.rssSlopeMbPerMinute} MB/min`]],
    ),
    '',
    `RSS at each minute: ${memory.rssByMinuteMb.map((mb) => `${mb}`).join(', ')} MB.`,
    '',
    `Of RSS, anonymous pages (the agent's own memory: heaps, buffers): ${memory.rssAnonAfterWarmUpMb} MB after warm-up, peak ${memory.rssAnonPeakMb} MB, end ${memory.rssAnonEndMb} MB, slope ${memory.rssAnonSlopeMbPerMinute} MB/min after warm-up. ` +
      `File-backed pages (code and read-only data of node, onnxruntime, libvips and the other libraries; shared with any process that maps the same files, and dropped by the kernel under memory pressure without a write): ${memory.rssFileAfterWarmUpMb} MB after warm-up, ${memory.rssFileEndMb} MB at the end, slope ${memory.rssFileSlopeMbPerMinute} MB/min.`,
    '',
    `Second half of the run (from ${round(summary.setup.durationS! / 2, 0)} s): RSS slope ${memory.rssSlopeSecondHalfMbPerMinute} MB/min, V8 heap used ${memory.heapUsedSlopeSecondHalfMbPerMinute} MB/min` +
      ` (${memory.heapUsedEndMb} MB at the end), V8 heap committed ${memory.heapTotalSlopeSecondHalfMbPerMinute} MB/min (${memory.heapTotalEndMb} MB at the end), external memory ${memory.externalSlopeSecondHalfMbPerMinute} MB/min (${memory.externalEndMb} MB at the end).`,
    '',
    '## Event latency',
    '',
    `${latencyMs.what}.`,
    '',
    markdownTable(
      ['frames captured', 'starts', 'p50', 'p95', 'p99', 'max'],
      (
        [
          ['all', latencyMs],
          ['while measuring (every camera scoring, before the stop)', latencyMs.byPhase.measured],
          ['during start-up', latencyMs.byPhase.startUp],
          ['after SIGTERM', latencyMs.byPhase.stopping],
        ] as const
      ).map(([phase, stats]) => [phase, stats.count, ...[stats.p50, stats.p95, stats.p99, stats.max].map((ms) => (ms === null ? '-' : `${ms} ms`))]),
    ),
    '',
    `Slowest starts: ${latencyMs.slowest.map((start) => `${start.camera} ${start.latencyMs} ms (received ${start.receivedAt})`).join('; ')}.`,
    '',
    ...(summary.eventWrites
      ? [
          `Every event message waits until it is on disk: ${summary.eventWrites.what}, over the whole run.`,
          '',
          markdownTable(
            ['writes', 'mean', ...SLOW_WRITE_MS.map((ms) => `> ${ms} ms`)],
            [[summary.eventWrites.count, `${summary.eventWrites.meanMs} ms`, ...SLOW_WRITE_MS.map((ms) => summary.eventWrites!.slowerThanMs[ms] ?? '-')]],
          ),
          '',
        ]
      : []),
    '## Events',
    '',
    markdownTable(['camera', ...eventKinds], Object.entries(summary.events).map(([camera, counts]) => [camera, ...eventKinds.map((kind) => counts[kind] ?? 0)])),
    '',
    `MQTT messages received: ${Object.entries(summary.messages).map(([kind, count]) => `${kind} ${count}`).join(', ')}.`,
    '',
    '## Shutdown',
    '',
    `SIGTERM: exit ${shutdown.exitCode ?? shutdown.signal ?? 'none'} after ${shutdown.exitedWithinS} s; ${shutdown.eventEndsOnShutdown} open event(s) ended with reason \`shutdown\`; ${shutdown.ffmpegLeftRunning} ffmpeg process(es) left running. Agent warnings/errors in its log: ${summary.agentWarnings.count}.`,
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const summary = await run(settings);
  printSummary(summary);
  const markdownFile = await writeReport(settings.out, summary, (jsonName) => markdownSummary(summary, jsonName));
  console.log(`\nwrote ${path.relative(process.cwd(), settings.out)} and ${path.relative(process.cwd(), markdownFile)}`);
}

main().catch((error: unknown) => {
  console.error(`agent-load: ${formatError(error)}`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
