/**
 * Scene -> MQTT latency over RTSP, and frames dropped at an RTSP connect and reconnect.
 *
 * For each camera count of --cameras it starts a real GStreamer RTSP server (bench/rtsp-scene-server.py, under
 * /usr/bin/python3: live H.264 from x264enc, tune=zerolatency, 640x360 at 30 fps, made of the demo video's normal
 * stretch), a private mosquitto, an mqtt.js subscriber and a fresh `linewatch run` (the unit's environment) with one
 * camera per RTSP mount, analysed at --fps. On a wall-clock schedule each camera's picture turns anomalous (a large
 * grey checkerboard over the scene) for --anomaly-s every --period-s, the cameras staggered over the period. The
 * server logs when the first RTP packet of each episode's first anomalous frame leaves the payloader. The agent's
 * debouncer starts an event on one anomalous frame (k = n = 1), so the triggering frame is the first anomalous frame
 * the agent analyses. Per episode: latency = subscriber receipt of the `start` message - that send time (one host,
 * both Date.now()/time.time()), split into send -> capture (the event's `at`) and capture -> subscriber.
 *
 * Connect and reconnect: the retained camera status gives when each ffmpeg was started and when its first frame
 * came; the server log when it answered PLAY and when the first frame left; /metrics the dropped-frame counters
 * (linewatch_frames_dropped_total) after the first connect, after the window, and after a reconnect forced by
 * killing the RTSP server (SIGKILL, like a camera losing power) and starting it again --down-s later.
 *
 *   node dist-bench/bench/scene-latency.js [--cameras 1,4] [--duration-s 60] [--fps 10] [--warm-up-s 5]
 *     [--period-s 3] [--anomaly-s 1.5] [--down-s 0.5] [--settle-s 5] [--p99-target-ms 250] [--no-snapshots] [--faults]
 *     [--decode-threads N (default: the agent's, slice threads only)]
 *     [--out docs/benchmarks/scene-latency.json] [--model models/demo] [--variant int8]
 *     [--video assets/demo/bottle-detection.mp4] [--python /usr/bin/python3]
 *
 * Writes the JSON to --out after every camera count and a markdown summary next to it (same name, .md).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { stringify as toYaml } from 'yaml';
import { formatError, UsageError } from '../src/errors.js';
import { LINEWATCH_VERSION } from '../src/version.js';
import { markdownTable, percentile, readMachineCpu, round, sleep, startMosquitto, writeReport } from './measure.js';
import { freePort, spawnAgent, type BenchAgent } from './net.js';
import { cameraCounts, modelAndVideo, positiveNumber } from './options.js';

// ---------------------------------------------------------------- settings

interface Settings {
  cameras: number[];
  durationS: number;
  fps: number;
  warmUpS: number;
  periodS: number;
  anomalyS: number;
  downS: number;
  settleS: number;
  p99TargetMs: number;
  snapshots: boolean;
  /** Keep the camera-fault checks on (off by default: see the markdown). */
  faults: boolean;
  /** ffmpeg decoder threads per camera (`decodeThreads`); undefined: the agent's default (slice threads). */
  decodeThreads: number | undefined;
  out: string;
  model: string;
  variant: 'int8' | 'fp32';
  video: string;
  python: string;
}

const DEVICE_ID = 'scene';
const SERVER_SCRIPT = 'bench/rtsp-scene-server.py';
/** The stream the server sends: what the agent decodes. */
const STREAM = { width: 640, height: 360, fps: 30, gop: 30, bitrateKbps: 1500 };
/** The normal scene: the start of the demo video, which the demo model was trained on and scores lowest. */
const NORMAL = { fromS: 0, lengthS: 1.5 };
/** The first anomaly of each period comes this far into it. */
const FIRST_S = 1;
/** ... plus up to this much, varying from episode to episode (the server's Schedule.SPREAD_S), so that episodes do not all fall at the same place in the agent's 1/fps slots. */
const SPREAD_S = 0.2;

function parseSettings(argv: string[]): Settings {
  const { values } = parseArgs({
    args: argv,
    options: {
      cameras: { type: 'string', default: '1,4' },
      'duration-s': { type: 'string', default: '60' },
      fps: { type: 'string', default: '10' },
      'warm-up-s': { type: 'string', default: '5' },
      'period-s': { type: 'string', default: '3' },
      'anomaly-s': { type: 'string', default: '1.5' },
      'down-s': { type: 'string', default: '0.5' },
      'settle-s': { type: 'string', default: '5' },
      'p99-target-ms': { type: 'string', default: '250' },
      'no-snapshots': { type: 'boolean', default: false },
      faults: { type: 'boolean', default: false },
      'decode-threads': { type: 'string' },
      out: { type: 'string', default: 'docs/benchmarks/scene-latency.json' },
      model: { type: 'string', default: 'models/demo' },
      variant: { type: 'string', default: 'int8' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      python: { type: 'string', default: '/usr/bin/python3' },
    },
    strict: true,
  });
  const cameras = cameraCounts('cameras', values.cameras!, '1,4');
  const { model, variant, video } = modelAndVideo(values);
  if (!existsSync(values.python!)) throw new UsageError(`${values.python} not found`, { hint: 'the RTSP server needs a python3 with GStreamer (gi): --python /usr/bin/python3' });
  const periodS = positiveNumber('period-s', values['period-s']!);
  const anomalyS = positiveNumber('anomaly-s', values['anomaly-s']!);
  if (FIRST_S + SPREAD_S + anomalyS >= periodS) throw new UsageError(`--anomaly-s must leave normal frames in each period (${FIRST_S + SPREAD_S} s + anomaly < --period-s ${periodS})`);
  return {
    cameras,
    durationS: positiveNumber('duration-s', values['duration-s']!),
    fps: positiveNumber('fps', values.fps!),
    warmUpS: positiveNumber('warm-up-s', values['warm-up-s']!),
    periodS,
    anomalyS,
    downS: positiveNumber('down-s', values['down-s']!),
    settleS: positiveNumber('settle-s', values['settle-s']!),
    p99TargetMs: positiveNumber('p99-target-ms', values['p99-target-ms']!),
    snapshots: !values['no-snapshots'],
    faults: values.faults!,
    decodeThreads: values['decode-threads'] === undefined ? undefined : positiveNumber('decode-threads', values['decode-threads']),
    out: path.resolve(values.out!),
    model,
    variant,
    video,
    python: values.python!,
  };
}

// ---------------------------------------------------------------- machine

function firstLine(binary: string, args: string[]): string {
  try {
    return execFileSync(binary, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n')[0]!.replace(/ Copyright.*/, '');
  } catch (error) {
    return String((error as { stdout?: string }).stdout ?? '').split('\n')[0] || 'unknown';
  }
}

function machineFacts(settings: Settings) {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  return {
    nproc: os.availableParallelism(),
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown',
    memoryGb: round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    ffmpeg: firstLine('ffmpeg', ['-version']),
    mosquitto: firstLine('mosquitto', ['-h']),
    gstreamer: firstLine(settings.python, ['-c', "import gi; gi.require_version('Gst', '1.0'); from gi.repository import Gst; Gst.init(None); print(Gst.version_string())"]),
    linewatch: LINEWATCH_VERSION,
    loadAverageAtStart: os.loadavg().map((value) => round(value, 2)),
  };
}

// ---------------------------------------------------------------- the RTSP server

interface ServerRecord {
  kind: 'ready' | 'play' | 'first-frame' | 'episode' | 'frames';
  camera?: string;
  at?: number;
  episode?: number;
  scheduledAt?: number;
  pushedAt?: number;
  payFirstAt?: number;
  payLastAt?: number;
  sinkFirstAt?: number;
  sinkLastAt?: number;
  payPackets?: number;
  origin?: number;
}

/** The server log, times converted to ms since the epoch (it writes seconds). */
function readServerLog(file: string): ServerRecord[] {
  if (!existsSync(file)) return [];
  const ms = (s: number | undefined) => (s === undefined ? undefined : s * 1000);
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as ServerRecord)
    .map((r) => ({ ...r, at: ms(r.at), scheduledAt: ms(r.scheduledAt), pushedAt: ms(r.pushedAt), payFirstAt: ms(r.payFirstAt), payLastAt: ms(r.payLastAt), sinkFirstAt: ms(r.sinkFirstAt), sinkLastAt: ms(r.sinkLastAt) }));
}

interface RtspServer {
  child: ChildProcess;
  readyAt: number;
  exited: Promise<void>;
}

/** Starts the server in its own process group; resolves once it listens (it prints "ready"). */
async function startServer(settings: Settings, port: number, cameras: number, logFile: string, origin: number | undefined): Promise<RtspServer> {
  const args = [
    path.resolve(SERVER_SCRIPT), '--file', settings.video, '--port', String(port), '--cameras', String(cameras), '--log', logFile,
    '--normal-from-s', String(NORMAL.fromS), '--normal-s', String(NORMAL.lengthS), '--period-s', String(settings.periodS),
    '--anomaly-s', String(settings.anomalyS), '--first-s', String(FIRST_S), '--fps', String(STREAM.fps), '--width', String(STREAM.width),
    '--height', String(STREAM.height), '--bitrate', String(STREAM.bitrateKbps), '--gop', String(STREAM.gop),
  ];
  if (origin !== undefined) args.push('--origin', String(origin / 1000));
  const child = spawn(settings.python, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  liveGroups.add(child);
  const exited = new Promise<void>((resolve) => child.once('exit', () => {
    liveGroups.delete(child);
    resolve();
  }));
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the RTSP server did not get ready in 30 s: ${stderr.slice(-2000)}`)), 30_000);
    child.stdout!.setEncoding('utf8').on('data', (text: string) => {
      if (text.includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`the RTSP server exited (${code}) at start: ${stderr.slice(-2000)}`));
    });
  });
  child.stdout!.resume();
  return { child, readyAt: Date.now(), exited };
}

async function killGroup(child: ChildProcess, signal: NodeJS.Signals, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid!, signal);
  } catch {
    // already gone
  }
  await Promise.race([exited, sleep(5000)]);
}

/** Everything started by this benchmark that must not outlive it (process groups and plain children). */
const liveGroups = new Set<ChildProcess>();
const liveChildren = new Set<ChildProcess>();
function killEverything(): void {
  for (const child of liveGroups) {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const child of liveChildren) child.kill('SIGKILL');
}

// ---------------------------------------------------------------- the subscriber

interface EventMessage {
  camera: string;
  type: string;
  at: number;
  receivedAt: number;
  score: number;
  threshold: number;
}

interface StatusMessage {
  camera: string;
  state: string;
  reason: string;
  since: number;
  framesDropped: number;
  receivedAt: number;
}

async function subscribe(url: string) {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 500, connectTimeout: 5000 });
  const events: EventMessage[] = [];
  const statuses: StatusMessage[] = [];
  const faults: { camera: string; payload: unknown; receivedAt: number }[] = [];
  client.on('message', (topic, payload) => {
    const receivedAt = Date.now();
    const [, , camera, leaf] = topic.split('/');
    if (camera === undefined) return;
    let body: Record<string, unknown>;
    try {
      body = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
    } catch {
      return;
    }
    if (leaf === 'events') {
      events.push({ camera, type: String(body.type), at: Date.parse(String(body.at)), receivedAt, score: Number(body.score), threshold: Number(body.threshold) });
    } else if (leaf === 'status') {
      statuses.push({ camera, state: String(body.state), reason: String(body.reason), since: Date.parse(String(body.since)), framesDropped: Number(body.framesDropped), receivedAt });
    } else if (leaf === 'faults') {
      faults.push({ camera, payload: body, receivedAt });
    }
  });
  await client.subscribeAsync([`linewatch/${DEVICE_ID}/+/events`, `linewatch/${DEVICE_ID}/+/status`, `linewatch/${DEVICE_ID}/+/faults`], { qos: 1 });
  return { events, statuses, faults, close: () => client.endAsync(true) };
}

// ---------------------------------------------------------------- the agent

interface Counters {
  in: number;
  scored: number;
  dropped: number;
  restarts: number;
}

async function fetchCounters(healthUrl: string): Promise<Record<string, Counters>> {
  const names: Record<string, keyof Counters> = {
    linewatch_frames_in_total: 'in',
    linewatch_frames_scored_total: 'scored',
    linewatch_frames_dropped_total: 'dropped',
    linewatch_ffmpeg_restarts_total: 'restarts',
  };
  const response = await fetch(`${healthUrl}/metrics`, { signal: AbortSignal.timeout(3000) });
  if (!response.ok) throw new Error(`/metrics answered ${response.status}`);
  const cameras: Record<string, Counters> = {};
  for (const line of (await response.text()).split('\n')) {
    const match = /^(linewatch_\w+)\{camera="([^"]+)"\}\s+(\S+)/.exec(line);
    const field = match && names[match[1]!];
    if (!match || !field) continue;
    const camera = (cameras[match[2]!] ??= { in: 0, scored: 0, dropped: 0, restarts: 0 });
    camera[field] = Number(match[3]);
  }
  return cameras;
}

const cameraName = (index: number) => `cam-${index + 1}`;
/** The server's mount of an agent camera: cam-3 <-> cam3. */
const mountOf = (camera: string) => camera.replace('-', '');

function agentConfig(settings: Settings, cameras: number, mqttUrl: string, healthPort: number, dataDir: string, rtspPort: number): object {
  return {
    deviceId: DEVICE_ID,
    dataDir,
    log: { level: 'warn' },
    mqtt: { url: mqttUrl },
    health: { enabled: true, host: '127.0.0.1', port: healthPort },
    defaults: {
      model: settings.model,
      variant: settings.variant,
      fps: settings.fps,
      snapshots: { enabled: settings.snapshots },
      // One frame above the threshold starts an event: the triggering frame is the first anomalous frame analysed.
      debounce: { k: 1, n: 1, minDurationMs: 0, cooldownMs: 0 },
      // The camera-fault checks withhold frames that fail one from the debouncer; the checkerboard fails one (see the markdown).
      ...(settings.faults ? {} : { faults: { enabled: false } }),
      ...(settings.decodeThreads === undefined ? {} : { decodeThreads: settings.decodeThreads }),
    },
    cameras: Array.from({ length: cameras }, (_, i) => ({ name: cameraName(i), url: `rtsp://127.0.0.1:${rtspPort}/${mountOf(cameraName(i))}` })),
  };
}

/** Waits until every camera's retained status says `streaming` with a `since` after `after` (ms since the epoch). */
async function waitStreaming(statuses: readonly StatusMessage[], cameras: number, after: number, agent: BenchAgent, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const streaming = new Set(statuses.filter((s) => s.state === 'streaming' && s.since >= after).map((s) => s.camera));
    if (streaming.size >= cameras) return;
    if (agent.gone()) throw new Error(`the agent exited:\n${agent.logTail()}`);
    if (Date.now() > deadline) throw new Error(`only ${streaming.size} of ${cameras} cameras streaming ${timeoutMs / 1000} s after the (re)connect:\n${agent.logTail()}`);
    await sleep(50);
  }
}

/** Per camera: agent's ffmpeg start (status reconnecting), server PLAY, server first frame, agent first frame (status streaming). */
function connectTimes(statuses: readonly StatusMessage[], server: readonly ServerRecord[], cameras: number, after: number, before: number) {
  return Array.from({ length: cameras }, (_, i) => {
    const camera = cameraName(i);
    const streaming = statuses.find((s) => s.camera === camera && s.state === 'streaming' && s.since >= after && s.since <= before);
    const firstFrameAt = streaming?.since;
    const spawned = statuses.filter((s) => s.camera === camera && s.state === 'reconnecting' && s.since >= after && (firstFrameAt === undefined || s.since <= firstFrameAt)).at(-1);
    const play = server.filter((r) => r.kind === 'play' && r.camera === mountOf(camera) && r.at! >= after && (firstFrameAt === undefined || r.at! <= firstFrameAt)).at(-1);
    const sent = server.filter((r) => r.kind === 'first-frame' && r.camera === mountOf(camera) && r.at! >= after && (firstFrameAt === undefined || r.at! <= firstFrameAt)).at(-1);
    const diff = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined ? null : Math.round(a - b));
    return {
      camera,
      ffmpegStartedToFirstFrameMs: diff(firstFrameAt, spawned?.since),
      playToFirstFrameMs: diff(firstFrameAt, play?.at),
      serverFirstFrameSentToAgentFirstFrameMs: diff(firstFrameAt, sent?.at),
      attempts: statuses.filter((s) => s.camera === camera && s.state === 'reconnecting' && s.since >= after && (firstFrameAt === undefined || s.since <= firstFrameAt)).length,
    };
  });
}

const sum = (counters: Record<string, Counters>, field: keyof Counters) => Object.values(counters).reduce((total, c) => total + c[field], 0);
const perCamera = (counters: Record<string, Counters>, field: keyof Counters) => Object.fromEntries(Object.entries(counters).map(([camera, c]) => [camera, c[field]]));
const delta = (later: Record<string, Counters>, earlier: Record<string, Counters>, field: keyof Counters) =>
  Object.fromEntries(Object.entries(later).map(([camera, c]) => [camera, c[field] - (earlier[camera]?.[field] ?? 0)]));

function stats(values: number[]) {
  const sorted = [...values].sort((a, b) => a - b);
  const r = (value: number | null | undefined) => round(value, 1);
  return { n: sorted.length, p50: r(percentile(sorted, 50)), p99: r(percentile(sorted, 99)), max: r(sorted.at(-1)), min: r(sorted[0]) };
}

// ---------------------------------------------------------------- one run

async function runCameras(settings: Settings, cameras: number, workRoot: string) {
  const workDir = mkdtempSync(path.join(workRoot, `cameras-${cameras}-`));
  const serverLog = path.join(workDir, 'server.jsonl');
  const broker = await startMosquitto(workDir);
  liveChildren.add(broker.child);
  const subscription = await subscribe(broker.url);
  const rtspPort = await freePort();
  const healthPort = await freePort();
  const healthUrl = `http://127.0.0.1:${healthPort}`;
  let server = await startServer(settings, rtspPort, cameras, serverLog, undefined);
  const origin = readServerLog(serverLog).find((r) => r.kind === 'ready')!.origin! * 1000;
  const configFile = path.join(workDir, 'linewatch.yaml');
  writeFileSync(configFile, toYaml(agentConfig(settings, cameras, broker.url, healthPort, path.join(workDir, 'data'), rtspPort)));
  const agentStartedAt = Date.now();
  const agent = spawnAgent(configFile, path.join(workDir, 'agent.log'));
  liveChildren.add(agent.process);
  try {
    // ---- first connect
    await waitStreaming(subscription.statuses, cameras, agentStartedAt, agent, 60_000);
    const allStreamingAt = Date.now();
    await sleep(settings.warmUpS * 1000);
    const afterConnect = await fetchCounters(healthUrl);
    const firstConnect = connectTimes(subscription.statuses, readServerLog(serverLog), cameras, agentStartedAt, Date.now());

    // ---- the measuring window
    const machineBefore = readMachineCpu();
    const windowStart = Date.now();
    console.log(`  ${cameras} camera(s) streaming; measuring ${settings.durationS} s`);
    await sleep(settings.durationS * 1000);
    const windowEnd = Date.now();
    const machineAfter = readMachineCpu();
    const afterWindow = await fetchCounters(healthUrl);
    // Episodes whose events had time to arrive: every start of an episode comes before the next episode's.
    await sleep(Math.min(2000, settings.periodS * 1000));
    const loadAverage = os.loadavg().map((value) => round(value, 2));

    // ---- reconnect: the server dies (SIGKILL) and comes back on the same port, schedule unchanged
    const beforeKill = await fetchCounters(healthUrl);
    const killedAt = Date.now();
    await killGroup(server.child, 'SIGKILL', server.exited);
    await sleep(settings.downS * 1000);
    server = await startServer(settings, rtspPort, cameras, serverLog, origin);
    const restartedAt = server.readyAt;
    await waitStreaming(subscription.statuses, cameras, killedAt, agent, 60_000);
    await sleep(settings.settleS * 1000);
    const afterReconnect = await fetchCounters(healthUrl);
    const reconnect = connectTimes(subscription.statuses, readServerLog(serverLog), cameras, restartedAt, Date.now()).map((c, i) => {
      const camera = cameraName(i);
      const back = subscription.statuses.find((s) => s.camera === camera && s.state === 'streaming' && s.since >= killedAt);
      return { ...c, outageMs: back ? Math.round(back.since - killedAt) : null };
    });

    await agent.kill();
    const log = readServerLog(serverLog);

    // ---- episodes of the window and their start events
    const episodes = log
      .filter((r) => r.kind === 'episode' && r.payFirstAt! >= windowStart && r.payFirstAt! < windowEnd)
      .map((r) => ({ camera: `cam-${r.camera!.slice(3)}`, episode: r.episode!, sentAt: r.payFirstAt!, lastPacketAt: r.payLastAt, sinkFirstAt: r.sinkFirstAt }));
    const starts = subscription.events.filter((e) => e.type === 'start');
    const matched: { camera: string; latencyMs: number; sendToCaptureMs: number; captureToSubscriberMs: number; score: number }[] = [];
    let missed = 0;
    let extra = 0;
    let exactlyOne = 0;
    const missedEpisodes: string[] = [];
    for (const episode of episodes) {
      const until = episode.sentAt + settings.periodS * 1000 - 200;
      const mine = starts.filter((e) => e.camera === episode.camera && e.at >= episode.sentAt && e.at < until);
      if (mine.length === 0) {
        missed += 1;
        missedEpisodes.push(`${episode.camera} #${episode.episode}`);
        continue;
      }
      extra += mine.length - 1;
      if (mine.length === 1) exactlyOne += 1;
      const start = mine[0]!;
      matched.push({
        camera: episode.camera,
        latencyMs: start.receivedAt - episode.sentAt,
        sendToCaptureMs: start.at - episode.sentAt,
        captureToSubscriberMs: start.receivedAt - start.at,
        score: start.score,
      });
    }
    // Starts in the window that belong to no episode: events the normal scene raised.
    // Episodes sent just before the window count too: their starts may fall inside it.
    const allEpisodes = log.filter((r) => r.kind === 'episode').map((r) => ({ camera: `cam-${r.camera!.slice(3)}`, sentAt: r.payFirstAt! }));
    const outside = starts.filter(
      (e) => e.at >= windowStart && e.at < windowEnd && !allEpisodes.some((ep) => ep.camera === e.camera && e.at >= ep.sentAt && e.at < ep.sentAt + settings.periodS * 1000 - 200),
    );
    const spurious = outside.length;
    const payToSink = episodes.filter((e) => e.sinkFirstAt !== undefined).map((e) => e.sinkFirstAt! - e.sentAt);
    const frameSendMs = episodes.filter((e) => e.lastPacketAt !== undefined).map((e) => e.lastPacketAt! - e.sentAt);
    const latency = stats(matched.map((m) => m.latencyMs));
    const windowS = (windowEnd - windowStart) / 1000;
    const threshold = starts[0]?.threshold;
    const connectDrops = sum(afterConnect, 'dropped');
    const reconnectDrops = sum(afterReconnect, 'dropped') - sum(beforeKill, 'dropped');
    return {
      cameras,
      fps: settings.fps,
      windowS: round(windowS),
      machineBusyPercentOfOneCore: round((100 * (machineAfter.busyS - machineBefore.busyS)) / windowS),
      loadAverageAfterWindow: loadAverage,
      episodes: {
        sent: episodes.length,
        withExactlyOneStart: exactlyOne,
        withAStart: matched.length,
        missed,
        missedEpisodes,
        extraStarts: extra,
        startsOutsideEpisodes: spurious,
        startsOutsideEpisodesDetail: outside.map((e) => ({ camera: e.camera, at: new Date(e.at).toISOString(), score: round(e.score, 2) })),
      },
      latencyMs: {
        what: "subscriber receipt of the event's start message - the RTSP server's send time of the episode's first anomalous frame (its first RTP packet leaving the payloader)",
        sceneToSubscriber: latency,
        sceneToCapture: stats(matched.map((m) => m.sendToCaptureMs)),
        captureToSubscriber: stats(matched.map((m) => m.captureToSubscriberMs)),
        firstToLastPacketOfTheFrame: stats(frameSendMs.map((v) => round(v, 2)!)),
        payloaderToNetworkSink: stats(payToSink.map((v) => round(v, 2)!)),
        perCamera: Object.fromEntries(
          Array.from({ length: cameras }, (_, i) => cameraName(i)).map((camera) => [camera, stats(matched.filter((m) => m.camera === camera).map((m) => m.latencyMs))]),
        ),
      },
      scores: { threshold: threshold ?? null, startScoreMin: round(Math.min(...matched.map((m) => m.score)), 2) },
      target: { p99Ms: settings.p99TargetMs, met: latency.p99 !== null && latency.p99 <= settings.p99TargetMs && missed === 0 },
      connect: {
        agentStartToAllStreamingMs: allStreamingAt - agentStartedAt,
        perCamera: firstConnect,
        framesInAfterWarmUp: perCamera(afterConnect, 'in'),
        droppedAfterWarmUp: perCamera(afterConnect, 'dropped'),
        dropped: connectDrops,
      },
      window: { framesIn: delta(afterWindow, afterConnect, 'in'), scored: sum(afterWindow, 'scored') - sum(afterConnect, 'scored'), dropped: sum(afterWindow, 'dropped') - sum(afterConnect, 'dropped') },
      reconnect: {
        how: `RTSP server SIGKILLed, started again ${settings.downS} s later on the same port`,
        serverDownMs: restartedAt - killedAt,
        perCamera: reconnect,
        restarts: delta(afterReconnect, beforeKill, 'restarts'),
        droppedPerCamera: delta(afterReconnect, beforeKill, 'dropped'),
        dropped: reconnectDrops,
      },
      noDropAtConnect: { met: connectDrops === 0 && reconnectDrops === 0 },
      cameraFaults: {
        checks: settings.faults ? 'on' : 'off',
        messages: subscription.faults.length,
        started: subscription.faults
          .map((f) => f.payload as { type?: string; kind?: string })
          .filter((f) => f.type === 'start')
          .reduce<Record<string, number>>((counts, f) => ({ ...counts, [String(f.kind)]: (counts[String(f.kind)] ?? 0) + 1 }), {}),
      },
    };
  } finally {
    await agent.kill();
    liveChildren.delete(agent.process);
    await killGroup(server.child, 'SIGTERM', server.exited);
    await killGroup(server.child, 'SIGKILL', server.exited);
    await subscription.close().catch(() => undefined);
    broker.child.kill('SIGTERM');
    liveChildren.delete(broker.child);
    rmSync(workDir, { recursive: true, force: true });
  }
}


type Run = Awaited<ReturnType<typeof runCameras>>;

// ---------------------------------------------------------------- report

function summary(settings: Settings, machine: ReturnType<typeof machineFacts>, runs: Run[], complete: boolean) {
  return {
    benchmark: 'scene-latency',
    measuredAt: new Date().toISOString(),
    complete,
    command:
      `node dist-bench/bench/scene-latency.js --cameras ${settings.cameras.join(',')} --duration-s ${settings.durationS} --fps ${settings.fps} --warm-up-s ${settings.warmUpS}` +
      ` --period-s ${settings.periodS} --anomaly-s ${settings.anomalyS} --down-s ${settings.downS} --settle-s ${settings.settleS}` +
      (settings.snapshots ? '' : ' --no-snapshots') +
      (settings.faults ? ' --faults' : '') +
      (settings.decodeThreads === undefined ? '' : ` --decode-threads ${settings.decodeThreads}`),
    machine,
    setup: {
      video: path.relative(process.cwd(), settings.video) || settings.video,
      normalScene: `${NORMAL.fromS}-${NORMAL.fromS + NORMAL.lengthS} s of the video, played forwards and backwards`,
      anomaly: 'a grey checkerboard (luma 70/185, 40 px squares) over the middle 60 % x 70 % of the picture',
      stream: `H.264 ${STREAM.width}x${STREAM.height} ${STREAM.fps} fps, x264enc tune=zerolatency speed-preset=ultrafast, ${STREAM.bitrateKbps} kbit/s, IDR every ${STREAM.gop} frames, rtph264pay; RTSP over TCP (the agent's default)`,
      schedule: `each camera anomalous for ${settings.anomalyS} s every ${settings.periodS} s, cameras staggered by ${settings.periodS}/N s, each episode's start moved by 0-${SPREAD_S * 1000} ms (evenly spread) so that episodes fall at every place in the agent's 1/fps slots`,
      model: path.relative(process.cwd(), settings.model) || settings.model,
      variant: settings.variant,
      fps: settings.fps,
      debounce: 'k 1, n 1, minDurationMs 0, cooldownMs 0 (one anomalous frame starts an event)',
      snapshots: settings.snapshots,
      cameraFaultChecks: settings.faults,
      decodeThreads: settings.decodeThreads ?? 'default (slice threads)',
      targets: { sceneToEventP99Ms: settings.p99TargetMs, droppedAtConnect: 0 },
    },
    runs,
  };
}

type Summary = ReturnType<typeof summary>;

function markdown(result: Summary, jsonName: string): string {
  const { machine, setup } = result;
  const ms = (s: { p50: number | null; p99: number | null; max: number | null }) => `${s.p50 ?? '–'} / ${s.p99 ?? '–'} / ${s.max ?? '–'}`;
  return [
    '# Scene -> MQTT latency over RTSP, and drops at an RTSP connect',
    '',
    `Measured ${result.measuredAt} with \`${result.command}\`${result.complete ? '' : ' (interrupted: partial)'} (all figures: [${jsonName}](${jsonName})); \`npm run bench:scene-latency\` runs it with the defaults.`,
    '',
    `- Machine: ${machine.nproc} cores, ${machine.cpuModel}, ${machine.memoryGb} GiB, Linux ${machine.kernel}; Node ${machine.node}; ${machine.ffmpeg}; ${machine.mosquitto}; ${machine.gstreamer}. Load average at the start: ${machine.loadAverageAtStart.join(', ')}.`,
    `- A real GStreamer RTSP server (\`bench/rtsp-scene-server.py\`): one live stream per camera, ${setup.stream}. Normal scene: ${setup.normalScene} (the demo model was trained on 0-5 s and scores this stretch lowest). Anomaly: ${setup.anomaly}; ${setup.schedule}.`,
    `- A fresh \`linewatch run\` (the unit's environment) per camera count, model ${setup.model} (${setup.variant}) at ${setup.fps} fps per camera, debounce ${setup.debounce}, snapshots ${setup.snapshots ? 'on' : 'off'}, camera-fault checks ${setup.cameraFaultChecks ? 'on' : 'off'}; mosquitto on loopback; an mqtt.js subscriber.`,
    setup.cameraFaultChecks
      ? '- Camera-fault checks on (`--faults`): frames that fail a check are withheld from the debouncer, so an episode can be missed for that reason (see `cameraFaults` in the JSON).'
      : '- Camera-fault checks off (`faults: { enabled: false }`): with them on (`--faults`) the checkerboard fails the `moved` check, and frames that fail a check are withheld from the debouncer, so no episode started an event (a short run: 0 of 3 episodes, 4 `moved` faults). A scene change this large looks like a moved camera to those checks; that is a property of the fault guard, not of the latency path measured here.',
    '- **Scene -> subscriber**: the subscriber\'s receipt of the `start` message minus the time the first RTP packet of the episode\'s first anomalous frame left the server\'s payloader (a pad probe; the packets reached the network sink within the "pay -> sink" time below). Both clocks are this host\'s wall clock. Split: scene -> capture (the event\'s `at`: when the agent read the triggering frame from ffmpeg) and capture -> subscriber.',
    `- Scene -> capture includes the wait for an analysed frame: at ${setup.fps} fps out of a ${STREAM.fps} fps stream the agent keeps the first frame of each 1/${setup.fps} s slot, so the first anomalous frame is analysed only when it opens a slot; otherwise the next kept frame comes 1-2 frames (33-67 ms) later.`,
    '- **Connect**: the camera status messages (retained) give when the agent started ffmpeg and when its first frame came; the server log when it answered PLAY. Frames dropped: `linewatch_frames_dropped_total` (frames the agent read but dropped because scoring fell behind) after the first connect plus the warm-up, and over a reconnect forced by SIGKILLing the RTSP server and starting it again; the reconnect includes the agent\'s restart backoff (1 s, jittered, doubling).',
    '',
    markdownTable(
      ['cameras', 'episodes (one start / missed / extra / starts outside)', 'scene -> subscriber p50 / p99 / max ms', 'scene -> capture p50 / p99 / max', 'capture -> subscriber p50 / p99 / max', `p99 <= ${setup.targets.sceneToEventP99Ms} ms`, 'machine busy % of one core'],
      result.runs.map((run) => [
        run.cameras,
        `${run.episodes.sent} (${run.episodes.withExactlyOneStart} / ${run.episodes.missed} / ${run.episodes.extraStarts} / ${run.episodes.startsOutsideEpisodes})`,
        ms(run.latencyMs.sceneToSubscriber),
        ms(run.latencyMs.sceneToCapture),
        ms(run.latencyMs.captureToSubscriber),
        run.target.met ? 'met' : '**not met**',
        run.machineBusyPercentOfOneCore,
      ]),
    ),
    '',
    markdownTable(
      ['cameras', 'first connect: ffmpeg start -> first frame ms', 'PLAY -> first frame ms', 'dropped after connect + warm-up', 'dropped in the window', 'reconnect: kill -> first frame again ms', 'reconnect: PLAY -> first frame ms', 'dropped at reconnect', 'no drop at connect'],
      result.runs.map((run) => [
        run.cameras,
        run.connect.perCamera.map((c) => c.ffmpegStartedToFirstFrameMs).join(', '),
        run.connect.perCamera.map((c) => c.playToFirstFrameMs).join(', '),
        run.connect.dropped,
        run.window.dropped,
        run.reconnect.perCamera.map((c) => c.outageMs).join(', '),
        run.reconnect.perCamera.map((c) => c.playToFirstFrameMs === null ? null : c.playToFirstFrameMs).join(', '),
        run.reconnect.dropped,
        run.noDropAtConnect.met ? 'met' : '**not met**',
      ]),
    ),
    '',
    'Times per camera in the order cam-1, cam-2, ...; "kill -> first frame again" includes the server\'s down time and the agent\'s restart backoff.',
    '',
    '**Where scene -> capture goes** (checked by hand on 2026-12-06 on the same machine, not by this script): the RTP packets reach the server\'s network sink 0.1-0.2 ms after the payloader, and a GStreamer client (rtspsrc latency=0 ! rtph264depay ! openh264dec) on the same stream has the anomalous frame decoded 2 ms after the send. An ffmpeg 5.1 command line like the agent\'s, run alone (frames timed as they come out of its stdout pipe), delivered it 200-300 ms after the send with ffmpeg\'s default frame threads (3 on 2 cores; each extra frame thread holds one frame back), 134-201 ms with one decoder thread, and 67 ms with one thread and no rate filter (every frame kept): two frames of decoder delay at 30 fps, plus up to two more frames waiting for the next 1/fps slot when the first anomalous frame does not open one. The same over RTSP/UDP, with no preview output, and with `-flush_packets 1`, `-flags low_delay`, `-fflags nobuffer`, `-max_delay 0` or `-analyzeduration 0 -probesize 32`. Since then the agent decodes with slice threads only (`-thread_type slice`) unless `decodeThreads` is set; `--decode-threads 3` measures the old default.',
    '',
    'Timing figures from a machine that was not otherwise busy are the ones to quote: the 2-core test machine may have been running other work (see the load average and "machine busy", which counts everything on the machine, this benchmark\'s RTSP server and encoders included).',
    '',
  ].join('\n');
}

async function write(settings: Settings, result: Summary): Promise<void> {
  await writeReport(settings.out, result, (jsonName) => markdown(result, jsonName));
}

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const machine = machineFacts(settings);
  const workRoot = mkdtempSync(path.join(os.tmpdir(), 'linewatch-scene-latency-'));
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killEverything();
      rmSync(workRoot, { recursive: true, force: true });
      process.exit(130);
    });
  }
  process.once('exit', killEverything);
  const runs: Run[] = [];
  try {
    for (const cameras of settings.cameras) {
      console.log(`${cameras} camera(s) at ${settings.fps} fps: connect, ${settings.warmUpS} s warm-up, ${settings.durationS} s window, reconnect`);
      const run = await runCameras(settings, cameras, workRoot);
      runs.push(run);
      const l = run.latencyMs;
      console.log(
        `  episodes ${run.episodes.sent}: ${run.episodes.withExactlyOneStart} with exactly one start, ${run.episodes.missed} missed, ${run.episodes.extraStarts} extra starts, ${run.episodes.startsOutsideEpisodes} starts outside episodes\n` +
          `  scene -> subscriber p50 ${l.sceneToSubscriber.p50} p99 ${l.sceneToSubscriber.p99} max ${l.sceneToSubscriber.max} ms (target p99 <= ${settings.p99TargetMs}: ${run.target.met ? 'met' : 'NOT met'}); ` +
          `scene -> capture p50 ${l.sceneToCapture.p50} p99 ${l.sceneToCapture.p99} max ${l.sceneToCapture.max}; capture -> subscriber p50 ${l.captureToSubscriber.p50} p99 ${l.captureToSubscriber.p99} max ${l.captureToSubscriber.max}\n` +
          `  connect: ffmpeg start -> first frame ${run.connect.perCamera.map((c) => c.ffmpegStartedToFirstFrameMs).join(', ')} ms, PLAY -> first frame ${run.connect.perCamera.map((c) => c.playToFirstFrameMs).join(', ')} ms; dropped after connect ${run.connect.dropped}, in the window ${run.window.dropped}\n` +
          `  reconnect: kill -> first frame ${run.reconnect.perCamera.map((c) => c.outageMs).join(', ')} ms, PLAY -> first frame ${run.reconnect.perCamera.map((c) => c.playToFirstFrameMs).join(', ')} ms; dropped ${run.reconnect.dropped} (no drop at connect: ${run.noDropAtConnect.met ? 'met' : 'NOT met'}); machine busy ${run.machineBusyPercentOfOneCore} % of one core`,
      );
      await write(settings, summary(settings, machine, runs, false));
    }
    await write(settings, summary(settings, machine, runs, true));
    console.log(`wrote ${path.relative(process.cwd(), settings.out)} and .md`);
  } finally {
    killEverything();
    rmSync(workRoot, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(`scene-latency: ${formatError(error)}`);
  killEverything();
  process.exit(error instanceof UsageError ? 2 : 1);
});
