/**
 * Triggered inspection latency: `linewatch run` as a child process with one camera in
 * `mode: triggered` (the demo video looped at native speed), a real mosquitto, and an
 * mqtt.js client in this process acting as the PLC: it publishes `{"id": ...}` on
 * `<base>/<camera>/inspect` and times the matching reply on `<base>/<camera>/inspections`.
 * One command at a time, each after a random pause shorter than a frame period, so that
 * commands land uniformly across the frame period as parts on a line do.
 *
 * The baseline is the floor no implementation can beat: the reply needs a frame captured
 * after the command, and at N fps the next frame is up to one frame period away (uniform:
 * p50 = period / 2, p99 = 0.99 period). Measured beside it: the wait for the frame as the
 * agent saw it (capturedAt - requestedAt), so the rest (scoring, MQTT, the broker) shows.
 *
 *   node dist-bench/bench/inspection-latency.js [--triggers 300] [--http-triggers 100] [--fps 10] [--warm-up 10]
 *     [--out docs/benchmarks/inspection-latency.json] [--model models/demo] [--video assets/demo/bottle-detection.mp4] [--variant int8]
 *     [--no-delay]   (TCP_NODELAY on the broker, `set_tcp_nodelay true`, and on the PLC client)
 *
 * Writes the JSON to --out and a markdown summary next to it (same name, .md).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { stringify as toYaml } from 'yaml';
import { formatError, UsageError } from '../src/errors.js';
import { setClientNoDelay, startMosquitto, writeReport } from './measure.js';
import { freePort, spawnAgent } from './net.js';

const DEVICE_ID = 'bench';
const CAMERA = 'station-1';
const BASE = `linewatch/${DEVICE_ID}`;
const TARGET_P99_MS = 150;
/** A reply slower than this counts as lost: the agent answers `timeout` itself after 2 periods + 1 s. */
const REPLY_TIMEOUT_MS = 10_000;

interface Settings {
  triggers: number;
  httpTriggers: number;
  fps: number;
  warmUp: number;
  out: string;
  model: string;
  video: string;
  variant: 'int8' | 'fp32';
  /** TCP_NODELAY on the broker (set_tcp_nodelay) and the PLC client: what is left without Nagle's algorithm. */
  noDelay: boolean;
}

function parseSettings(argv: string[]): Settings {
  const { values } = parseArgs({
    args: argv,
    options: {
      triggers: { type: 'string', default: '300' },
      'http-triggers': { type: 'string', default: '100' },
      fps: { type: 'string', default: '10' },
      'warm-up': { type: 'string', default: '10' },
      out: { type: 'string', default: 'docs/benchmarks/inspection-latency.json' },
      model: { type: 'string', default: 'models/demo' },
      video: { type: 'string', default: 'assets/demo/bottle-detection.mp4' },
      variant: { type: 'string', default: 'int8' },
      'no-delay': { type: 'boolean', default: false },
    },
    strict: true,
  });
  const count = (name: string, raw: string, min: number): number => {
    const value = Number(raw);
    if (!Number.isInteger(value) || value < min) throw new UsageError(`--${name} must be an integer >= ${min}, got '${raw}'`);
    return value;
  };
  const fps = Number(values.fps);
  if (!(fps > 0 && fps <= 120)) throw new UsageError(`--fps must be a number in (0, 120], got '${values.fps}'`);
  const variant = values.variant;
  if (variant !== 'int8' && variant !== 'fp32') throw new UsageError(`--variant must be int8 or fp32, got '${variant}'`);
  const model = path.resolve(values.model!);
  const video = path.resolve(values.video!);
  if (!existsSync(path.join(model, 'manifest.json'))) throw new UsageError(`no model bundle at ${model} (manifest.json missing)`, { hint: 'pass --model <bundle folder>' });
  if (!existsSync(video)) throw new UsageError(`video ${video} not found`, { hint: 'pass --video <file>' });
  return {
    triggers: count('triggers', values.triggers!, 1),
    httpTriggers: count('http-triggers', values['http-triggers']!, 0),
    fps,
    warmUp: count('warm-up', values['warm-up']!, 0),
    out: path.resolve(values.out!),
    model,
    video,
    variant,
    noDelay: values['no-delay']!,
  };
}

// ---------------------------------------------------------------- processes


function agentConfig(settings: Settings, mqttUrl: string, healthPort: number, dataDir: string): object {
  return {
    deviceId: DEVICE_ID,
    dataDir,
    mqtt: { url: mqttUrl },
    health: { enabled: true, host: '127.0.0.1', port: healthPort },
    cameras: [{ name: CAMERA, url: settings.video, model: settings.model, variant: settings.variant, fps: settings.fps, loop: true, realtime: true, mode: 'triggered' }],
  };
}

// ---------------------------------------------------------------- the PLC

interface Reply {
  id: string;
  result?: string;
  error?: string;
  latencyMs?: number;
  requestedAt: string;
  capturedAt?: string;
}

/** Replies by id, each resolved once; the subscriber's clock is performance.now() at the 'message' event. */
class ReplyWaiter {
  private readonly waiting = new Map<string, (reply: { at: number; reply: Reply }) => void>();

  constructor(client: MqttClient) {
    client.on('message', (_topic, payload) => {
      const at = performance.now();
      const reply = JSON.parse(payload.toString('utf8')) as Reply;
      const wake = this.waiting.get(reply.id);
      this.waiting.delete(reply.id);
      wake?.({ at, reply });
    });
  }

  next(id: string): Promise<{ at: number; reply: Reply }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`no reply to inspection ${id} within ${REPLY_TIMEOUT_MS} ms`));
      }, REPLY_TIMEOUT_MS);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
    });
  }
}

interface Sample {
  /** Command sent -> reply received at the subscriber (or the HTTP response read), ms. */
  roundTripMs: number;
  /** The agent's own figure: command arrival -> result, monotonic. */
  agentMs: number;
  /** capturedAt - requestedAt: how long the agent waited for a fresh frame (wall clock, 1 ms resolution). */
  frameWaitMs: number;
  result: string;
}

function sampleOf(roundTripMs: number, reply: Reply): Sample {
  if (reply.error !== undefined || reply.latencyMs === undefined || reply.capturedAt === undefined) {
    throw new Error(`inspection ${reply.id} failed: ${JSON.stringify(reply)}`);
  }
  return { roundTripMs, agentMs: reply.latencyMs, frameWaitMs: Date.parse(reply.capturedAt) - Date.parse(reply.requestedAt), result: reply.result! };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function mqttTriggers(client: MqttClient, waiter: ReplyWaiter, count: number, periodMs: number, label: string): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let i = 0; i < count; i++) {
    await sleep(Math.random() * periodMs);
    const id = `${label}-${i}`;
    const reply = waiter.next(id);
    const sentAt = performance.now();
    // QoS 0 from the PLC: the publish goes out at once; the reply is the acknowledgement that matters.
    client.publish(`${BASE}/${CAMERA}/inspect`, JSON.stringify({ id }), { qos: 0 });
    const { at, reply: payload } = await reply;
    samples.push(sampleOf(at - sentAt, payload));
  }
  return samples;
}

async function httpTriggers(healthUrl: string, count: number, periodMs: number): Promise<Sample[]> {
  const samples: Sample[] = [];
  for (let i = 0; i < count; i++) {
    await sleep(Math.random() * periodMs);
    const sentAt = performance.now();
    const response = await fetch(`${healthUrl}/api/cameras/${CAMERA}/inspect`, { method: 'POST', body: JSON.stringify({ id: `http-${i}` }), signal: AbortSignal.timeout(REPLY_TIMEOUT_MS) });
    const reply = (await response.json()) as Reply;
    const at = performance.now();
    if (response.status !== 200) throw new Error(`HTTP inspection answered ${response.status}: ${JSON.stringify(reply)}`);
    samples.push(sampleOf(at - sentAt, reply));
  }
  return samples;
}

// ---------------------------------------------------------------- statistics

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: readonly number[], p: number): number {
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

const round = (value: number, digits = 1): number => Math.round(value * 10 ** digits) / 10 ** digits;

interface Distribution {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

function distribution(values: readonly number[]): Distribution {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p90: round(percentile(sorted, 90)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted.at(-1)!),
    mean: round(sorted.reduce((sum, value) => sum + value, 0) / sorted.length),
  };
}

function describeRun(samples: readonly Sample[]) {
  return {
    roundTripMs: distribution(samples.map((s) => s.roundTripMs)),
    agentMs: distribution(samples.map((s) => s.agentMs)),
    frameWaitMs: distribution(samples.map((s) => s.frameWaitMs)),
    /** What is left once the wait for the frame is taken out: scoring, publishing, the broker, the subscriber. */
    beyondFrameWaitMs: distribution(samples.map((s) => s.roundTripMs - s.frameWaitMs)),
    results: samples.reduce<Record<string, number>>((counts, s) => ({ ...counts, [s.result]: (counts[s.result] ?? 0) + 1 }), {}),
  };
}

function machineFacts() {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  let ffmpeg = 'unknown';
  try {
    ffmpeg = execFileSync('ffmpeg', ['-version'], { encoding: 'utf8' }).split('\n')[0]!.replace(/ Copyright.*/, '');
  } catch {
    // reported as unknown
  }
  return {
    nproc: os.availableParallelism(),
    cpuModel: /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown',
    memoryGb: round(os.totalmem() / 2 ** 30),
    node: process.version,
    ffmpeg,
    // Not src/version.ts: compiled to dist-bench/, it would look for dist-bench/package.json.
    linewatch: (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version,
  };
}

// ---------------------------------------------------------------- the run

async function run(settings: Settings) {
  const workDir = mkdtempSync(path.join(os.tmpdir(), 'linewatch-inspection-bench-'));
  const cleanups: (() => Promise<unknown> | unknown)[] = [() => rmSync(workDir, { recursive: true, force: true })];
  const periodMs = 1000 / settings.fps;
  try {
    const broker = await startMosquitto(workDir, { noDelay: settings.noDelay });
    cleanups.unshift(() => broker.child.kill('SIGTERM'));
    const healthPort = await freePort();
    const healthUrl = `http://127.0.0.1:${healthPort}`;
    const configFile = path.join(workDir, 'linewatch.yaml');
    writeFileSync(configFile, toYaml(agentConfig(settings, broker.url, healthPort, path.join(workDir, 'data'))));

    const client = await mqtt.connectAsync(broker.url, { reconnectPeriod: 500, connectTimeout: 5000 });
    if (settings.noDelay) setClientNoDelay(client);
    cleanups.unshift(() => client.endAsync(true));
    const waiter = new ReplyWaiter(client);
    await client.subscribeAsync(`${BASE}/${CAMERA}/inspections`, { qos: 1 });

    const launched = spawnAgent(configFile, path.join(workDir, 'agent.log'));
    cleanups.unshift(() => launched.kill());
    const agent = launched.process;
    const exited = launched.exited.then(({ code }) => code);
    const logTail = launched.logTail;

    // Streaming: the first inspection that comes back with a result.
    const deadline = Date.now() + 90_000;
    for (let attempt = 0; ; attempt++) {
      if (launched.gone()) throw new Error(`the agent exited during start-up:\n${logTail()}`);
      const id = `ready-${attempt}`;
      const reply = waiter.next(id).catch(() => undefined);
      client.publish(`${BASE}/${CAMERA}/inspect`, JSON.stringify({ id }), { qos: 0 });
      const answer = await Promise.race([reply, sleep(3000).then(() => undefined)]);
      if (answer?.reply.result !== undefined) break;
      if (Date.now() > deadline) throw new Error(`no inspection result 90 s after start:\n${logTail()}`);
      await sleep(500);
    }
    console.log(`agent (pid ${agent.pid}) answering; ${settings.warmUp} warm-up triggers, then ${settings.triggers} over MQTT and ${settings.httpTriggers} over HTTP`);

    const loadBefore = os.loadavg();
    await mqttTriggers(client, waiter, settings.warmUp, periodMs, 'warm-up');
    const mqttSamples = await mqttTriggers(client, waiter, settings.triggers, periodMs, 'mqtt');
    const httpSamples = await httpTriggers(healthUrl, settings.httpTriggers, periodMs);
    const loadAfter = os.loadavg();

    const metricsText = await (await fetch(`${healthUrl}/metrics`)).text();
    const counter = (name: string) => Number(new RegExp(`^${name}\\{camera="${CAMERA}"\\} (\\S+)$`, 'm').exec(metricsText)?.[1] ?? NaN);

    agent.kill('SIGTERM');
    const exitCode = await Promise.race([exited, sleep(20_000).then(() => 'timeout' as const)]);

    const floor = {
      what: `a fresh frame is up to one frame period (${round(periodMs)} ms at ${settings.fps} fps) away: the wait is uniform over the period`,
      periodMs: round(periodMs),
      p50: round(periodMs * 0.5),
      p90: round(periodMs * 0.9),
      p99: round(periodMs * 0.99),
      max: round(periodMs),
    };
    const mqttRun = describeRun(mqttSamples);
    return {
      measuredAt: new Date().toISOString(),
      command: `node dist-bench/bench/inspection-latency.js --triggers ${settings.triggers} --http-triggers ${settings.httpTriggers} --fps ${settings.fps}${settings.noDelay ? ' --no-delay' : ''}`,
      machine: { ...machineFacts(), loadAverage1mBefore: round(loadBefore[0]!, 2), loadAverage1mAfter: round(loadAfter[0]!, 2) },
      setup: {
        camera: `${path.relative(process.cwd(), settings.video)} as a file source, loop + realtime (native speed), analysed at ${settings.fps} fps, mode triggered, snapshots on`,
        model: `${path.relative(process.cwd(), settings.model)} (${settings.variant})`,
        broker:
          `mosquitto on loopback (${settings.noDelay ? 'set_tcp_nodelay true' : 'stock settings: Nagle on'}); the PLC is an mqtt.js client in the benchmark process ` +
          `(${settings.noDelay ? 'TCP_NODELAY, ' : ''}commands QoS 0, replies subscribed at QoS 1); the agent sets TCP_NODELAY on its own connection`,
        pacing: `one command at a time, each after a random pause of 0-${round(periodMs)} ms`,
        warmUpTriggers: settings.warmUp,
      },
      baseline: floor,
      mqtt: mqttRun,
      http: settings.httpTriggers > 0 ? describeRun(httpSamples) : null,
      agent: {
        framesIn: counter('linewatch_frames_in_total'),
        framesScored: counter('linewatch_frames_scored_total'),
        framesDropped: counter('linewatch_frames_dropped_total'),
        exitCode,
      },
      target: { what: `trigger -> result at the subscriber, p99 <= ${TARGET_P99_MS} ms at ${settings.fps} fps`, p99: mqttRun.roundTripMs.p99, met: mqttRun.roundTripMs.p99 <= TARGET_P99_MS },
      samples: { mqtt: mqttSamples.map((s) => [round(s.roundTripMs), s.agentMs, s.frameWaitMs]), http: httpSamples.map((s) => [round(s.roundTripMs), s.agentMs, s.frameWaitMs]), columns: ['roundTripMs', 'agentMs', 'frameWaitMs'] },
    };
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

type Summary = Awaited<ReturnType<typeof run>>;

/** A row of the printed tables; the baseline is computed, not sampled, so it has no count. */
type Row = Omit<Distribution, 'count'> & { count: number | string };

function table(rows: Record<string, Row>): string {
  const header = '| | count | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|---|';
  const lines = Object.entries(rows).map(([name, d]) => `| ${name} | ${d.count} | ${d.p50} | ${d.p90} | ${d.p99} | ${d.max} | ${d.mean} |`);
  return [header, ...lines].join('\n');
}

function rowsOf(summary: Summary): Record<string, Row> {
  const { baseline } = summary;
  const rows: Record<string, Row> = {
    'baseline: wait for a fresh frame (uniform over the period)': { count: '–', p50: baseline.p50, p90: baseline.p90, p99: baseline.p99, max: baseline.max, mean: baseline.p50 },
    'MQTT: trigger -> result at the subscriber': summary.mqtt.roundTripMs,
    'MQTT: command arrival -> result in the agent (latencyMs)': summary.mqtt.agentMs,
    'MQTT: wait for the frame (capturedAt - requestedAt)': summary.mqtt.frameWaitMs,
    'MQTT: the rest (round trip - frame wait)': summary.mqtt.beyondFrameWaitMs,
  };
  if (summary.http) {
    rows['HTTP: POST -> response'] = summary.http.roundTripMs;
    rows['HTTP: wait for the frame'] = summary.http.frameWaitMs;
  }
  return rows;
}

function markdown(summary: Summary, jsonName: string): string {
  const { machine, setup, target, agent } = summary;
  return [
    '# Triggered inspection latency',
    '',
    `Measured ${summary.measuredAt} with \`${summary.command}\` (every sample: [${jsonName}](${jsonName})).`,
    '',
    `- Machine: ${machine.nproc} cores, ${machine.cpuModel}, ${machine.memoryGb} GiB; Node ${machine.node}; ${machine.ffmpeg}; load average ${machine.loadAverage1mBefore} before, ${machine.loadAverage1mAfter} after.`,
    `- Camera: ${setup.camera}. Model: ${setup.model}.`,
    `- ${setup.broker}; ${setup.pacing}; ${setup.warmUpTriggers} warm-up triggers not counted.`,
    '',
    `Target: ${target.what}: measured p99 ${target.p99} ms, ${target.met ? 'met' : '**not met**'}.`,
    '',
    'Milliseconds:',
    '',
    table(rowsOf(summary)),
    '',
    `Results: MQTT ${JSON.stringify(summary.mqtt.results)}${summary.http ? `, HTTP ${JSON.stringify(summary.http.results)}` : ''}. The agent read ${agent.framesIn} frames and scored ${agent.framesScored} (only those asked for), dropped ${agent.framesDropped}; exit code ${agent.exitCode} on SIGTERM.`,
    '',
  ].join('\n');
}

async function main(): Promise<void> {
  const settings = parseSettings(process.argv.slice(2));
  const summary = await run(settings);
  console.log(`\ninspection latency, ms (${summary.machine.nproc} cores, load ${summary.machine.loadAverage1mBefore} -> ${summary.machine.loadAverage1mAfter}):`);
  console.table(rowsOf(summary));
  console.log(`target ${summary.target.what}: p99 ${summary.target.p99} ms, ${summary.target.met ? 'met' : 'NOT met'}`);
  const markdownFile = await writeReport(settings.out, summary, (jsonName) => markdown(summary, jsonName));
  console.log(`wrote ${path.relative(process.cwd(), settings.out)} and ${path.relative(process.cwd(), markdownFile)}`);
}

main().catch((error: unknown) => {
  console.error(`inspection-latency: ${formatError(error)}`);
  process.exit(error instanceof UsageError ? 2 : 1);
});
