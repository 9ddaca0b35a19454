/**
 * `linewatch probe`: what this box offers for decoding and inference, and whether the
 * configured models start on the providers their cameras ask for. Read-only: it opens
 * no stream and no MQTT connection.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { CameraConfig } from '../config/resolve.js';
import { formatError } from '../errors.js';
import { loadBundle } from '../model/bundle.js';
import { normaliseInput } from '../image/normalise.js';
import { availableProviders, onnxRuntimeVersion } from '../model/onnx.js';
import { resolveProviders } from '../model/providers.js';
import { choiceOf } from './models.js';

/** The shape of `linewatch probe --json` (also documented in the README). */
export interface ProbeReport {
  platform: { os: string; arch: string; kernel: string };
  cpu: {
    model: string;
    /** Logical CPUs. */
    cores: number;
    /** Instruction-set flags from /proc/cpuinfo that inference kernels use (avx2, avx512*, fma, asimd, asimddp, ...); empty off Linux. */
    features: string[];
  };
  memory: { totalBytes: number; freeBytes: number };
  node: string;
  ffmpeg: {
    /** The executable asked for (config `ffmpeg.path`, default `ffmpeg`). */
    path: string;
    /** First line of `ffmpeg -version`; null when ffmpeg could not be run. */
    version: string | null;
    /** `ffmpeg -hwaccels`. */
    hwaccels: string[];
    /** Hardware decoders from `ffmpeg -decoders` (cuvid, nvv4l2, nvmpi, v4l2m2m, vaapi, qsv, rkmpp). */
    hwDecoders: string[];
    error?: string;
  };
  onnxruntime: {
    version: string;
    /** Execution providers this onnxruntime-node build can try here (always includes 'cpu'). */
    providers: string[];
    /** Of those, the ones whose libraries are installed apart (CUDA, TensorRT): listed, but may not start. */
    external: string[];
  };
  /** The config the models came from; null when none was read. */
  config: string | null;
  /** One entry per distinct model bundle, variant, threads and provider list of the configured cameras. */
  models: ProbeModel[];
  /** What stops a configured camera from running as configured; non-empty means exit status 2. */
  problems: string[];
}

export interface ProbeModel {
  cameras: string[];
  model: string;
  variant: string;
  threads: number;
  /** The camera's providers as configured. */
  providers: string[];
  /** False when the list does not end with cpu: a provider that cannot start is then an error, not a slower camera. */
  fallback: boolean;
  /** One load + warm-up + timed inference per configured provider, that provider alone (CPU as the last resort). */
  runs: ProbeRun[];
}

export interface ProbeRun {
  /** The provider asked for. */
  provider: string;
  /** The provider the session actually ran on; null when the bundle did not load. */
  ranOn: string | null;
  loadMs: number;
  warmUpMs: number;
  /** One inference of a frame after the warm-up, ms. */
  inferenceMs: number;
  /** Why the provider was skipped or dropped (onnxruntime's own message), or why the bundle did not load. */
  notes: string[];
  error?: string;
}

export interface ProbeOptions {
  ffmpegPath: string;
  configFile: string | null;
  cameras: readonly CameraConfig[];
}

const INFERENCE_FLAGS = /^(sse4_[12]|avx|avx2|avx512\w*|avx_vnni|amx\w*|fma|f16c|neon|asimd\w*|i8mm|sve\w*|bf16|dotprod|svei8mm|sm4|vfpv4)$/;
const HW_DECODERS = /(cuvid|nvv4l2|nvmpi|v4l2m2m|vaapi|qsv|rkmpp)/;

export async function probe(options: ProbeOptions): Promise<ProbeReport> {
  const providers = availableProviders();
  const report: ProbeReport = {
    platform: { os: os.platform(), arch: os.arch(), kernel: `${os.release()} ${os.version()}`.trim() },
    cpu: cpuInfo(),
    memory: { totalBytes: os.totalmem(), freeBytes: os.freemem() },
    node: process.version,
    ffmpeg: ffmpegInfo(options.ffmpegPath),
    onnxruntime: {
      version: onnxRuntimeVersion(),
      providers: providers.map((p) => p.name),
      external: providers.filter((p) => !p.bundled).map((p) => p.name),
    },
    config: options.configFile,
    models: [],
    problems: [],
  };
  for (const group of groupCameras(options.cameras)) {
    report.models.push(await probeModel(group, report.onnxruntime.providers, report.problems));
  }
  return report;
}

function cpuInfo(): ProbeReport['cpu'] {
  const cpus = os.cpus();
  let model = cpus[0]?.model?.trim() ?? '';
  let features: string[] = [];
  try {
    const text = readFileSync('/proc/cpuinfo', 'utf8');
    const field = (name: RegExp) => text.split('\n').find((line) => name.test(line))?.split(':').slice(1).join(':').trim();
    // x86 says "flags", arm64 "Features"; arm64 has no "model name", but often "Hardware" or "Model".
    const flags = field(/^(flags|Features)\s*:/) ?? '';
    features = [...new Set(flags.split(/\s+/).filter((flag) => INFERENCE_FLAGS.test(flag)))].sort();
    model ||= field(/^(model name|Model|Hardware)\s*:/) ?? '';
  } catch {
    // Not Linux: os.cpus() is all there is.
  }
  return { model: model || 'unknown', cores: cpus.length, features };
}

function ffmpegInfo(path: string): ProbeReport['ffmpeg'] {
  const run = (args: string[]) => spawnSync(path, ['-hide_banner', ...args], { encoding: 'utf8', timeout: 15_000 });
  const version = run(['-version']);
  if (version.error || version.status !== 0) {
    const why = version.error ? ((version.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : version.error.message) : `exit status ${version.status}`;
    return { path, version: null, hwaccels: [], hwDecoders: [], error: `cannot run ${path} (${why}): install ffmpeg (scripts/setup.sh) or set ffmpeg.path` };
  }
  const hwaccels = run(['-hwaccels'])
    .stdout.split('\n')
    .map((line) => line.trim())
    .filter((line) => line && !/:$/.test(line));
  // Decoder lines look like " V....D h264_cuvid           Nvidia CUVID H264 decoder".
  const hwDecoders = run(['-decoders'])
    .stdout.split('\n')
    .map((line) => /^\s*[VAS][.A-Z]{5}\s+(\S+)/.exec(line)?.[1])
    .filter((name): name is string => name !== undefined && HW_DECODERS.test(name));
  return { path, version: version.stdout.split('\n')[0]!.replace(/\s+Copyright.*$/, '').trim(), hwaccels, hwDecoders };
}

interface CameraGroup {
  cameras: string[];
  camera: CameraConfig;
}

/** Cameras sharing a model, variant, threads and providers load the same session: probe it once. */
function groupCameras(cameras: readonly CameraConfig[]): CameraGroup[] {
  const groups = new Map<string, CameraGroup>();
  for (const camera of cameras) {
    // The agent's own notion of "the same model", so the probe loads what `run` would.
    const key = JSON.stringify(choiceOf(camera));
    const group = groups.get(key);
    if (group) group.cameras.push(camera.name);
    else groups.set(key, { cameras: [camera.name], camera });
  }
  return [...groups.values()];
}

async function probeModel(group: CameraGroup, available: readonly string[], problems: string[]): Promise<ProbeModel> {
  const { camera } = group;
  const providers = [...camera.providers];
  // The loader always keeps the CPU as a last resort; a list without it means the operator wants to know, not to limp on.
  const fallback = providers[providers.length - 1] === 'cpu';
  const runs: ProbeRun[] = [];
  for (const provider of providers) {
    const run = await timedRun(camera, provider, available);
    runs.push(run);
    const wanted = resolveProviders([provider])[0]!;
    if (run.error) {
      problems.push(`camera ${group.cameras.join(', ')}: model ${camera.model} (${camera.variant}) does not load: ${run.error}`);
    } else if (run.ranOn !== wanted && !fallback) {
      const why = available.includes(wanted) ? 'failed to start' : 'is not available in this onnxruntime-node build';
      problems.push(
        `camera ${group.cameras.join(', ')}: execution provider "${provider}" ${why} and the camera's providers [${providers.join(', ')}] do not end with cpu (no fallback)` +
          `\n  hint: ${providerHint(wanted)}; or add cpu at the end of the camera's providers to run on the CPU instead`,
      );
    }
  }
  return { cameras: group.cameras, model: camera.model, variant: camera.variant, threads: camera.threads, providers, fallback, runs };
}

function providerHint(provider: string): string {
  switch (provider) {
    case 'cuda':
    case 'tensorrt':
      // onnxruntime-node downloads its CUDA provider libraries at install time only when asked to.
      return `reinstall onnxruntime-node with its CUDA provider (ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node) and install the NVIDIA driver, CUDA 12 and cuDNN 9 runtime libraries (and TensorRT for tensorrt) where it finds them (ldconfig or LD_LIBRARY_PATH)`;
    case 'coreml':
      return 'coreml runs on macOS only';
    case 'dml':
      return 'DirectML runs on Windows only';
    default:
      return `this onnxruntime-node build does not ship "${provider}": use a provider \`linewatch probe\` lists`;
  }
}

async function timedRun(camera: CameraConfig, provider: string, available: readonly string[]): Promise<ProbeRun> {
  const notes: string[] = [];
  const started = performance.now();
  let bundle;
  try {
    // Every setting of the camera's model choice (variant, threads, provider options) but the provider list.
    const { model, providers: _all, ...settings } = choiceOf(camera);
    bundle = await loadBundle(model, { ...settings, providers: [provider], log: (line) => notes.push(line) });
  } catch (error) {
    return { provider, ranOn: null, loadMs: 0, warmUpMs: 0, inferenceMs: 0, notes, error: formatError(error) };
  }
  try {
    const loadMs = performance.now() - started;
    const { input } = bundle.manifest;
    // A mid-grey frame: the timing, not the score, is what is measured.
    const frame = new Float32Array(input.channels * input.height * input.width).fill(0.5);
    const image = normaliseInput({ width: input.width, height: input.height, channels: input.channels, data: frame }, input.normalisation);
    const t0 = performance.now();
    await bundle.model.run(image.data, 1);
    const inferenceMs = performance.now() - t0;
    const ranOn = bundle.model.providers[0] ?? 'cpu';
    if (!available.includes(resolveProviders([provider])[0]!) && notes.length === 0) notes.push(`"${provider}" is not in this onnxruntime-node build`);
    return { provider, ranOn, loadMs, warmUpMs: bundle.warmUpMs, inferenceMs, notes };
  } finally {
    await bundle.dispose();
  }
}

/** The report as the lines `linewatch probe` prints. */
export function formatProbe(report: ProbeReport): string[] {
  const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;
  const { platform, cpu, ffmpeg, onnxruntime } = report;
  const lines = [
    `platform: ${platform.os} ${platform.arch}, kernel ${platform.kernel}`,
    `cpu: ${cpu.model}, ${cpu.cores} logical CPU(s)`,
    `  features: ${cpu.features.length > 0 ? cpu.features.join(' ') : '(none of the inference-relevant flags found)'}`,
    `memory: ${gib(report.memory.totalBytes)} total, ${gib(report.memory.freeBytes)} free`,
    `node: ${report.node}`,
    `ffmpeg: ${ffmpeg.version !== null ? `${ffmpeg.version} (${ffmpeg.path})` : ffmpeg.error}`,
  ];
  if (ffmpeg.version !== null) {
    lines.push(`  hwaccels: ${ffmpeg.hwaccels.length > 0 ? ffmpeg.hwaccels.join(' ') : 'none'}`);
    lines.push(`  hardware decoders: ${ffmpeg.hwDecoders.length > 0 ? ffmpeg.hwDecoders.join(' ') : 'none'}`);
  }
  const external = new Set(onnxruntime.external);
  lines.push(
    `onnxruntime ${onnxruntime.version} providers: ${onnxruntime.providers.map((p) => (external.has(p) ? `${p} (needs its libraries installed)` : p)).join(', ')}`,
  );
  if (report.config === null) {
    lines.push('models: no config read (pass -c <file>)');
  } else {
    lines.push(`models (${report.config}):`);
    for (const model of report.models) {
      lines.push(`  ${model.cameras.join(', ')}: ${model.model} ${model.variant}, ${model.threads} thread(s), providers ${model.providers.join(' > ')}${model.fallback ? '' : ' (no cpu fallback)'}`);
      for (const run of model.runs) {
        if (run.error) {
          lines.push(`    ${run.provider}: failed: ${run.error.split('\n')[0]}`);
          continue;
        }
        const fell = run.ranOn === resolveProviders([run.provider])[0] ? '' : ` (fell back: ${run.notes[0] ?? 'provider did not start'})`;
        lines.push(
          `    ${run.provider}: ran on ${run.ranOn}${fell}; load ${run.loadMs.toFixed(0)} ms, warm-up ${run.warmUpMs.toFixed(2)} ms, inference ${run.inferenceMs.toFixed(2)} ms`,
        );
      }
    }
  }
  for (const problem of report.problems) lines.push(`problem: ${problem}`);
  return lines;
}
