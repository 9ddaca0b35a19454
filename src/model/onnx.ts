/**
 * The only module that talks to onnxruntime. Everything else sees an
 * `InferenceModel`, so a different runtime would replace this one file.
 */
import { readFile } from 'node:fs/promises';
import ort from 'onnxruntime-node';
import onnxProto from 'onnx-proto';
import { ModelError } from '../errors.js';
import { defaultLogger } from '../log.js';
import { MODEL_IO } from './manifest.js';
import { resolveProviders } from './providers.js';
import { buildExecutionProviders, tensorrtOptionsIgnoredNote, type ProviderSettings } from './provider-options.js';
import type { InferenceModel, ModelOutputs } from './types.js';

const { onnx } = onnxProto;

// The provider table is in providers.ts (the config schema reads it without loading onnxruntime); callers keep importing it from here.
export { PROVIDERS, PROVIDER_NAMES, resolveProviders } from './providers.js';

export interface OnnxModelOptions {
  /** Tried in order; the CPU is always the last resort. Default ['cpu']. */
  providers?: readonly string[];
  /** Threads for one operator (intra-op). Default: onnxruntime's choice (one per physical core). */
  threads?: number;
  /** Threads across independent operators (inter-op); only matters for parallel graphs. */
  interOpThreads?: number;
  /** Where provider fallbacks are reported. Default: the process logger's warnings. */
  log?: (message: string) => void;
  /** Write the graph as onnxruntime optimised it (to see which nodes stay float). */
  optimizedModelPath?: string;
  /** Name used in error messages for models loaded from memory. */
  name?: string;
  /** Per-provider settings (CUDA device, TensorRT switches): see provider-options.ts. */
  providerOptions?: ProviderSettings;
  /**
   * Add the comparator map's post-processing to the graph (withMapBlur), so that `run` also returns
   * `blurredMap`. Ignored for a model without an anomaly map.
   */
  mapBlur?: MapBlur;
}

/** The comparator map's post-processing: sigmoid, then a separable blur with replicated edges. */
export interface MapBlur {
  readonly width: number;
  readonly height: number;
  /** The normalised 1-D kernel (odd length), e.g. gaussianKernel(sigma, ceil(3 sigma)). */
  readonly kernel: Float64Array;
}

export interface InputShape {
  readonly channels: number;
  readonly height: number;
  readonly width: number;
}

/** Providers this onnxruntime-node build can even try on this platform. */
function providersBuiltIn(): Set<string> {
  return new Set(ort.listSupportedBackends().map((backend) => backend.name));
}

export interface AvailableProvider {
  /** onnxruntime's name (cpu, cuda, tensorrt, webgpu, ...). */
  readonly name: string;
  /** False when onnxruntime-node knows the provider but its shared libraries (e.g. CUDA, cuDNN) must be installed apart. */
  readonly bundled: boolean;
}

/** What this onnxruntime-node build can try here, for `linewatch probe`; trying is still the only proof one starts. */
export function availableProviders(): AvailableProvider[] {
  return ort.listSupportedBackends().map((backend) => ({ name: backend.name, bundled: backend.bundled }));
}

/** The onnxruntime-node version, for reports. */
export function onnxRuntimeVersion(): string {
  return ort.env.versions.node ?? ort.env.versions.common ?? 'unknown';
}

function describeBytes(bytes: Uint8Array): string | undefined {
  const starts = (...magic: number[]) => magic.every((b, i) => bytes[i] === b);
  if (bytes.length === 0) return 'the file is empty';
  if (starts(0xff, 0xd8, 0xff)) return 'it is a JPEG image';
  if (starts(0x89, 0x50, 0x4e, 0x47)) return 'it is a PNG image';
  if (starts(0x1f, 0x8b)) return 'it is gzip-compressed';
  if (starts(0x50, 0x4b, 0x03, 0x04)) return 'it is a zip archive';
  if (starts(0x7b) || starts(0x3c)) return 'it is a text (JSON/XML/HTML) file';
  return undefined;
}

/** Why onnxruntime could not read these bytes, in words a user can act on. */
function diagnoseUnreadable(bytes: Uint8Array): string {
  const known = describeBytes(bytes);
  if (known) return `${known}, not an ONNX model`;
  try {
    const model = onnx.ModelProto.decode(bytes);
    if (!model.graph?.node?.length) return 'it holds no ONNX graph';
    return 'onnxruntime rejected the graph';
  } catch (cause) {
    const message = (cause as Error).message;
    // protobufjs reports a read past the end as "index out of range".
    if (/index out of range/i.test(message)) return 'it is truncated (the protobuf ends in the middle of a field)';
    return `it is not an ONNX protobuf (${message})`;
  }
}

async function readModelFile(file: string): Promise<Uint8Array> {
  try {
    return await readFile(file);
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    throw new ModelError(`cannot read model file ${file}: ${code === 'ENOENT' ? 'it does not exist' : (code ?? String(cause))}`, {
      file,
      hint: 'check the path; `linewatch train` writes model.onnx (and model.int8.onnx) into the bundle folder',
      cause,
    });
  }
}

interface OpenedSession {
  session: ort.InferenceSession;
  providers: string[];
}

/**
 * Create a session with the requested providers; a provider that cannot start
 * is dropped (and the drop logged) until the session starts, at worst on the CPU.
 */
async function openSession(bytes: Uint8Array, label: string, options: OnnxModelOptions): Promise<OpenedSession> {
  const log = options.log ?? ((message: string) => defaultLogger().warn(message));
  const builtIn = providersBuiltIn();
  let providers = resolveProviders(options.providers).filter((provider) => {
    if (builtIn.has(provider)) return true;
    log(`execution provider "${provider}" is not available in this onnxruntime-node build; skipping it`);
    return false;
  });
  if (!providers.includes('cpu')) providers.push('cpu');
  const trtNote = tensorrtOptionsIgnoredNote(buildExecutionProviders(providers, options.providerOptions));
  if (trtNote !== undefined) log(trtNote);

  for (;;) {
    const sessionOptions: ort.InferenceSession.SessionOptions = {
      executionProviders: buildExecutionProviders(providers, options.providerOptions),
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      logSeverityLevel: 3,
      ...(options.threads !== undefined ? { intraOpNumThreads: options.threads } : {}),
      ...(options.interOpThreads !== undefined ? { interOpNumThreads: options.interOpThreads } : {}),
      ...(options.optimizedModelPath !== undefined ? { optimizedModelFilePath: options.optimizedModelPath } : {}),
    };
    try {
      const session = await ort.InferenceSession.create(bytes, sessionOptions);
      return { session, providers };
    } catch (cause) {
      const message = (cause as Error).message ?? String(cause);
      const accelerators = providers.filter((p) => p !== 'cpu');
      if (accelerators.length === 0) {
        throw new ModelError(`cannot load ONNX model ${label}: ${diagnoseUnreadable(bytes)}`, {
          file: label,
          hint: 'use the model.onnx or model.int8.onnx of a bundle written by `linewatch train`; re-copy it if it was cut short',
          cause,
        });
      }
      const failing = accelerators.find((p) => message.toLowerCase().includes(p)) ?? accelerators[0]!;
      log(`execution provider "${failing}" failed to start (${message.split('\n')[0]}); falling back to ${providers.filter((p) => p !== failing).join(', ')}`);
      providers = providers.filter((p) => p !== failing);
    }
  }
}

function positiveDim(dim: number | string | undefined): number | undefined {
  return typeof dim === 'number' && dim > 0 ? dim : undefined;
}

/** The VAE contract: one float input `image` [batch,C,H,W] with fixed C/H/W, float outputs `recon` and `mu` [batch,latent]. */
function checkInterface(session: ort.InferenceSession, label: string): { inputShape: InputShape; latentDim: number } {
  const hint = 'the model must be a linewatch VAE export: input "image" [batch,C,H,W], outputs "recon" and "mu"';
  const inputs = session.inputNames;
  const outputs = session.outputNames;
  const missingOutputs = [MODEL_IO.recon, MODEL_IO.mu].filter((name) => !outputs.includes(name));
  if (inputs.length !== 1 || inputs[0] !== MODEL_IO.input || missingOutputs.length > 0) {
    throw new ModelError(
      `ONNX model ${label} has inputs [${inputs.join(', ')}] and outputs [${outputs.join(', ')}]; expected input [${MODEL_IO.input}] and outputs [${MODEL_IO.recon}, ${MODEL_IO.mu}]`,
      { file: label, hint },
    );
  }
  const metadata = (list: readonly ort.InferenceSession.ValueMetadata[], name: string) => {
    const entry = list.find((m) => m.name === name);
    if (!entry || !entry.isTensor || entry.type !== 'float32') {
      throw new ModelError(`ONNX model ${label}: "${name}" must be a float32 tensor`, { file: label, hint });
    }
    return entry.shape;
  };
  const inputDims = metadata(session.inputMetadata, MODEL_IO.input);
  const [channels, height, width] = inputDims.slice(1).map(positiveDim);
  if (inputDims.length !== 4 || !channels || !height || !width) {
    throw new ModelError(`ONNX model ${label}: input "${MODEL_IO.input}" has shape [${inputDims.join(', ')}]; expected [batch, C, H, W] with fixed C, H, W`, {
      file: label,
      hint,
    });
  }
  const muDims = metadata(session.outputMetadata, MODEL_IO.mu);
  const latentDim = positiveDim(muDims[1]);
  if (muDims.length !== 2 || !latentDim) {
    throw new ModelError(`ONNX model ${label}: output "${MODEL_IO.mu}" has shape [${muDims.join(', ')}]; expected [batch, latent] with a fixed latent size`, {
      file: label,
      hint,
    });
  }
  metadata(session.outputMetadata, MODEL_IO.recon);
  return { inputShape: { channels, height, width }, latentDim };
}

function checkBatch(input: Float32Array, count: number, inputShape: InputShape): void {
  const perImage = inputShape.channels * inputShape.height * inputShape.width;
  if (!Number.isInteger(count) || count < 1) throw new RangeError(`image count must be a positive integer, got ${count}`);
  if (input.length !== count * perImage) {
    throw new RangeError(
      `input has ${input.length} values; ${count} image(s) of ${inputShape.channels}x${inputShape.height}x${inputShape.width} need ${count * perImage}`,
    );
  }
}

function floatOutput(result: ort.InferenceSession.ReturnType, name: string): Float32Array {
  const tensor = result[name];
  if (!tensor || !(tensor.data instanceof Float32Array)) throw new Error(`onnxruntime returned no float32 "${name}"`);
  return tensor.data;
}

export class OnnxModel implements InferenceModel {
  private session: ort.InferenceSession | undefined;

  private constructor(
    opened: OpenedSession,
    readonly inputShape: InputShape,
    readonly latentDim: number,
    readonly label: string,
  ) {
    this.session = opened.session;
    this.providers = Object.freeze([...opened.providers]);
    this.hasMap = opened.session.outputNames.includes(MODEL_IO.map);
    this.hasBlurredMap = opened.session.outputNames.includes(BLURRED_MAP);
  }

  /** Whether the model has a learned comparator, whose anomaly map `run` then returns. */
  readonly hasMap: boolean;

  /** Whether the graph also turns that map into blurred probabilities (OnnxModelOptions.mapBlur), which `run` then returns. */
  readonly hasBlurredMap: boolean;

  /** Execution providers the session was created with, in priority order (onnxruntime may still place single nodes on the CPU). */
  readonly providers: readonly string[];

  static async load(file: string, options: OnnxModelOptions = {}): Promise<OnnxModel> {
    return OnnxModel.fromBytes(await readModelFile(file), { name: file, ...options });
  }

  static async fromBytes(bytes: Uint8Array, options: OnnxModelOptions = {}): Promise<OnnxModel> {
    const label = options.name ?? '<in-memory model>';
    const opened = await openSession(options.mapBlur === undefined ? bytes : withMapBlur(bytes, options.mapBlur), label, options);
    try {
      const { inputShape, latentDim } = checkInterface(opened.session, label);
      return new OnnxModel(opened, inputShape, latentDim, label);
    } catch (error) {
      await opened.session.release();
      throw error;
    }
  }

  private get live(): ort.InferenceSession {
    if (!this.session) throw new Error(`ONNX model ${this.label} was disposed`);
    return this.session;
  }

  async run(input: Float32Array, count: number): Promise<ModelOutputs> {
    checkBatch(input, count, this.inputShape);
    const { channels, height, width } = this.inputShape;
    const feeds = { [MODEL_IO.input]: new ort.Tensor('float32', input, [count, channels, height, width]) };
    const fetches: string[] = [MODEL_IO.recon, MODEL_IO.mu];
    if (this.hasMap) fetches.push(MODEL_IO.map);
    if (this.hasBlurredMap) fetches.push(BLURRED_MAP);
    const result = await this.live.run(feeds, fetches);
    const outputs: { -readonly [K in keyof ModelOutputs]: ModelOutputs[K] } = { recon: floatOutput(result, MODEL_IO.recon), mu: floatOutput(result, MODEL_IO.mu) };
    if (this.hasMap) outputs.map = floatOutput(result, MODEL_IO.map);
    if (this.hasBlurredMap) outputs.blurredMap = floatOutput(result, BLURRED_MAP);
    return outputs;
  }

  /** One run on a black image so the first real frame does not pay for lazy allocations; returns its duration in ms. */
  async warmUp(): Promise<number> {
    const { channels, height, width } = this.inputShape;
    const started = performance.now();
    await this.run(new Float32Array(channels * height * width), 1);
    return performance.now() - started;
  }

  async dispose(): Promise<void> {
    const session = this.session;
    this.session = undefined;
    await session?.release();
  }
}

/** The graph output withMapBlur adds. */
const BLURRED_MAP = 'linewatch_blurred_map';

/**
 * The model with the comparator map's post-processing appended to its graph: sigmoid, then a separable blur
 * with replicated edges, as the extra output BLURRED_MAP ([batch, 1, height, width]). What FrameScorer does in
 * JS for error map "comparator" (probabilities, then gaussianBlur), in float32: the same within float32
 * rounding, at a fraction of the CPU (tests/unit/scoring-fast.test.ts). In the model's own graph rather than a
 * session of its own, so a round is one onnxruntime run, and `linewatch eval` scores with the same blurred map as
 * the agent. A model without an anomaly map, or bytes that are no model, are returned as they are.
 */
export function withMapBlur(modelBytes: Uint8Array, blur: MapBlur): Uint8Array {
  const { width, height, kernel } = blur;
  if (kernel.length % 2 !== 1) throw new RangeError(`the blur kernel needs an odd number of taps, got ${kernel.length}`);
  let model: ReturnType<typeof onnx.ModelProto.decode>;
  try {
    model = onnx.ModelProto.decode(modelBytes);
  } catch {
    return modelBytes; // not a model: opening the session says what it is instead (diagnoseUnreadable)
  }
  const graph = model.graph;
  if (!graph?.output?.some((output) => output.name === MODEL_IO.map)) return modelBytes;
  const floatTensor = (name: string, dims: number[], values: ArrayLike<number>) => {
    const bytes = new Uint8Array(values.length * 4);
    const view = new DataView(bytes.buffer);
    for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i]!, true);
    return onnx.TensorProto.create({ name, dims, dataType: onnx.TensorProto.DataType.FLOAT, rawData: bytes });
  };
  const blurName = (part: string) => `linewatch_blur/${part}`;
  // Each pass as a matrix product, the replicated edge folded in: blurred = V . P . H, where H[x'][x] (and V[y][y'])
  // sums the weights of the taps of output x that land on input x' once clamped into the image.
  graph.initializer = [
    ...(graph.initializer ?? []),
    floatTensor(blurName('horizontal'), [width, width], blurMatrix(width, kernel, false)),
    floatTensor(blurName('vertical'), [height, height], blurMatrix(height, kernel, true)),
  ];
  graph.node = [
    ...(graph.node ?? []),
    onnx.NodeProto.create({ opType: 'Sigmoid', name: blurName('probabilities'), input: [MODEL_IO.map], output: [blurName('probabilities')] }),
    onnx.NodeProto.create({ opType: 'MatMul', name: blurName('rows'), input: [blurName('probabilities'), blurName('horizontal')], output: [blurName('rows')] }),
    onnx.NodeProto.create({ opType: 'MatMul', name: blurName('columns'), input: [blurName('vertical'), blurName('rows')], output: [BLURRED_MAP] }),
  ];
  const dims = [{ dimParam: 'batch' }, { dimValue: 1 }, { dimValue: height }, { dimValue: width }];
  graph.output.push(onnx.ValueInfoProto.create({ name: BLURRED_MAP, type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT, shape: { dim: dims } } } }));
  return onnx.ModelProto.encode(model).finish();
}

/**
 * One pass of a clamped-edge 1-D convolution as an n x n matrix: for the row pass (transposed = false)
 * M[input][output], to multiply rows from the right; for the column pass (transposed) M[output][input], from the left.
 */
function blurMatrix(n: number, kernel: Float64Array, transposed: boolean): Float64Array {
  const r = (kernel.length - 1) >> 1;
  const matrix = new Float64Array(n * n);
  for (let out = 0; out < n; out++) {
    for (let k = -r; k <= r; k++) {
      const input = Math.min(n - 1, Math.max(0, out + k));
      matrix[transposed ? out * n + input : input * n + out]! += kernel[k + r]!;
    }
  }
  return matrix;
}

export interface ImageBatch {
  /** `count` images packed NCHW. */
  readonly input: Float32Array;
  readonly count: number;
}

export interface NamedTensor {
  readonly data: Float32Array;
  readonly dims: readonly number[];
}

/** The same model with intermediate tensors also exposed as graph outputs (float32, shape left to onnxruntime). */
export function exposeTensors(modelBytes: Uint8Array, names: readonly string[]): Uint8Array {
  const model = onnx.ModelProto.decode(modelBytes);
  const graph = model.graph;
  if (!graph) throw new ModelError('cannot expose tensors: the model has no graph');
  const outputs = (graph.output ??= []);
  const present = new Set(outputs.map((o) => o.name));
  for (const name of names) {
    if (present.has(name)) continue;
    outputs.push(onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: onnx.TensorProto.DataType.FLOAT } } }));
    present.add(name);
  }
  return onnx.ModelProto.encode(model).finish();
}

/**
 * Run a model on each batch and hand the named tensors (graph outputs or
 * intermediate activations) to `visit`, batch by batch, from one CPU session.
 * The quantizer uses this to calibrate activation ranges.
 */
export async function runWithExtraOutputs(
  modelBytes: Uint8Array,
  batches: readonly ImageBatch[],
  names: readonly string[],
  visit: (outputs: ReadonlyMap<string, NamedTensor>, batchIndex: number) => void,
  options: { threads?: number } = {},
): Promise<void> {
  const label = '<model with exposed activations>';
  const { session } = await openSession(exposeTensors(modelBytes, names), label, { providers: ['cpu'], threads: options.threads });
  try {
    const dims = session.inputMetadata.find((m) => m.name === MODEL_IO.input);
    if (!dims || !dims.isTensor) throw new ModelError(`the model has no "${MODEL_IO.input}" tensor input`);
    const [, c, h, w] = dims.shape.map(positiveDim);
    if (!c || !h || !w) throw new ModelError(`input "${MODEL_IO.input}" has no fixed C, H, W: [${dims.shape.join(', ')}]`);
    for (const [index, batch] of batches.entries()) {
      checkBatch(batch.input, batch.count, { channels: c, height: h, width: w });
      const feeds = { [MODEL_IO.input]: new ort.Tensor('float32', batch.input, [batch.count, c, h, w]) };
      const result = await session.run(feeds, [...names]);
      const outputs = new Map<string, NamedTensor>();
      for (const name of names) outputs.set(name, { data: floatOutput(result, name), dims: result[name]!.dims });
      visit(outputs, index);
    }
  } finally {
    await session.release();
  }
}
