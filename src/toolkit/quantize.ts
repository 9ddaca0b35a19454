/**
 * Static int8 quantization in the QDQ format, done on the ONNX protobuf in JS:
 * every activation that an int8 kernel can consume gets a QuantizeLinear ->
 * DequantizeLinear pair (uint8, asymmetric, range calibrated on normal images),
 * weights become int8 initializers behind a DequantizeLinear (symmetric), biases
 * int32 (scale = input scale x weight scale). onnxruntime then fuses
 * DQ -> Conv -> Q into QLinearConv, DQ -> Gemm -> Q into QGemm, Sigmoid into
 * QLinearSigmoid, and moves uint8 through Reshape, Flatten and DepthToSpace
 * (each nearest-upsample + conv of the decoder is first rewritten as an
 * equivalent conv + DepthToSpace, and each DepthToSpace at the end as channels-last reshapes and
 * transposes: depth-to-space.ts). The graph keeps its float32 input and outputs.
 * The `int8-symmetric` scheme writes int8 activations with zero point 0 instead (what TensorRT's
 * explicit quantization accepts); onnxruntime's CPU provider then cannot fold ReLUs into its int8
 * kernels and runs it slower than fp32 (docs/benchmarks/int8-schemes.md).
 */
import onnxProto from 'onnx-proto';
import { ModelError, UsageError } from '../errors.js';
import { runWithExtraOutputs, type ImageBatch } from '../model/onnx.js';
import { MODEL_IO } from '../model/manifest.js';
import { depthToSpaceInChannelsLast } from './depth-to-space.js';
import { consumersOf, floatAttribute, imageSize, intAttribute, intsAttribute, producersOf, stringAttribute } from './onnx-graph.js';

const { onnx } = onnxProto;
type INode = onnxProto.onnx.INodeProto;
type ITensor = onnxProto.onnx.ITensorProto;
const DataType = onnx.TensorProto.DataType;

/**
 * How activations are quantized.
 * - `uint8-asymmetric` (default): uint8 with a zero point fitted to each range, the full 8 bits for
 *   one-sided tensors such as ReLU outputs.
 * - `int8-symmetric`: int8 with zero point 0 on every QuantizeLinear/DequantizeLinear, weights per
 *   output channel (7 bits, see `perChannel`): the explicit-quantization form TensorRT accepts.
 *   One-sided tensors then use 7 of the 8 bits.
 */
export const INT8_SCHEMES = ['uint8-asymmetric', 'int8-symmetric'] as const;
export type Int8Scheme = (typeof INT8_SCHEMES)[number];

export interface QuantizeOptions {
  /** Activation quantization scheme. Default 'uint8-asymmetric'. */
  scheme?: Int8Scheme;
  /**
   * One weight scale per output channel. Such weights are kept to 7 bits: with
   * full 8-bit per-channel weights, the u8 x s8 products of AVX2 kernels
   * (vpmaddubsw) saturate int16 and scores drift. Default false (per-tensor, 8 bits);
   * true for the 'int8-symmetric' scheme.
   */
  perChannel?: boolean;
  /**
   * How an activation's range is taken from the calibration images: the full
   * min/max, or the given lower/upper percentile (clips rare outliers). Default 'minmax'.
   */
  range?: 'minmax' | { percentile: number };
  /**
   * Rewrite nearest x2 Resize + 3x3 Conv as Conv + DepthToSpace (same function) before
   * quantizing; onnxruntime's uint8 Resize is slow. Default true.
   */
  foldUpsample?: boolean;
  /**
   * Leave biases float instead of int32 behind a DequantizeLinear. TensorRT quantizes only int8
   * Q/DQ and folds float biases itself; onnxruntime's CPU provider fuses Conv with either. Default false.
   */
  floatBias?: boolean;
  /**
   * Rewrite each quantized DepthToSpace as channels-last Reshape/Transpose (bit-identical outputs, see
   * depth-to-space.ts): onnxruntime's CPU provider then keeps the int8 convolutions in NHWC. Default true
   * for 'uint8-asymmetric', the CPU provider's scheme; false for 'int8-symmetric', which TensorRT fuses itself.
   */
  channelsLastDepthToSpace?: boolean;
  /** Calibration images per onnxruntime run. Default 16. */
  batchSize?: number;
  log?: (message: string) => void;
}

interface QuantParams {
  scale: number;
  zeroPoint: number;
}

/** Ops whose float outputs get Q/DQ pairs: those onnxruntime has int8 kernels for, or moves uint8 through. */
const QUANTIZED_OUTPUT_OPS = new Set([
  'Conv',
  'Gemm',
  'MatMul',
  'Relu',
  'Resize',
  'Flatten',
  'Reshape',
  'Sigmoid',
  'MaxPool',
  'DepthToSpace',
  'SpaceToDepth',
  'Transpose',
  'Add',
  'Concat',
]);
/** Ops with int8 weights (input 1) and an optional int32 bias (input 2). */
const WEIGHTED_OPS = new Set(['Conv', 'Gemm', 'MatMul']);
/** Ops that only move values: their output reuses the input's quantization, so the uint8 data passes through unchanged. */
const DATA_MOVEMENT_OPS = new Set(['Resize', 'Flatten', 'Reshape', 'MaxPool', 'DepthToSpace', 'SpaceToDepth', 'Transpose']);
/** Outputs known to lie in [0,1]: quantized with scale 1/255, as exact as the 8-bit pixels they describe. */
const UNIT_RANGE_OPS = new Set(['Sigmoid']);

/**
 * Graph outputs left float: the anomaly map's logits are calibrated on normal images only, and a
 * uint8 range fitted to those would clip every defect to the same value.
 */
const FLOAT_OUTPUTS: ReadonlySet<string> = new Set([MODEL_IO.map]);

const UINT8_MAX = 255;
const INT8_MAX = 127;
const INT7_MAX = 63;
const HISTOGRAM_BINS = 4096;

/** uint8 asymmetric parameters covering [min, max] and always 0 (so zero padding and ReLU are exact). */
export function activationParams(min: number, max: number): QuantParams {
  const lo = Math.min(0, min);
  const hi = Math.max(0, max);
  if (!(hi > lo)) return { scale: 1, zeroPoint: 0 };
  const scale = (hi - lo) / UINT8_MAX;
  const zeroPoint = Math.min(UINT8_MAX, Math.max(0, Math.round(-lo / scale)));
  return { scale, zeroPoint };
}

/** int8 symmetric parameters (zero point 0) covering [min, max]. */
export function symmetricActivationParams(min: number, max: number): QuantParams {
  const maxAbs = Math.max(Math.abs(min), Math.abs(max));
  if (!(maxAbs > 0) || !Number.isFinite(maxAbs)) return { scale: 1, zeroPoint: 0 };
  return { scale: maxAbs / INT8_MAX, zeroPoint: 0 };
}

function scalarFloat(name: string, value: number): ITensor {
  return { name, dims: [], dataType: DataType.FLOAT, floatData: [value] };
}

function floatVector(name: string, values: number[]): ITensor {
  return { name, dims: [values.length], dataType: DataType.FLOAT, floatData: values };
}

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer.slice(view.byteOffset, view.byteOffset + view.byteLength));
}

/** Float values of an initializer, whichever of raw_data / float_data holds them. */
function floatValues(tensor: ITensor): Float32Array {
  if (tensor.dataType !== DataType.FLOAT) throw new ModelError(`initializer ${tensor.name} is not float32; cannot quantize it`);
  if (tensor.rawData && tensor.rawData.length > 0) {
    const raw = tensor.rawData;
    return new Float32Array(bytesOf(raw).buffer);
  }
  return Float32Array.from(tensor.floatData ?? []);
}

function dimsOf(tensor: ITensor): number[] {
  return (tensor.dims ?? []).map(Number);
}

/**
 * Axis of `weight` that indexes output channels: 0 for Conv [M,C,kh,kw] and for
 * Gemm with transB (B is [N,K]); 1 for Gemm without transB and MatMul (B is [K,N]).
 */
function outputChannelAxis(node: INode): number {
  if (node.opType === 'Conv') return 0;
  if (node.opType === 'Gemm') return intAttribute(node, 'transB', 0) === 1 ? 0 : 1;
  return 1;
}

interface QuantizedWeight {
  values: Int8Array;
  scales: number[];
  axis: number | undefined;
}

/** Symmetric int8 (zero point 0): per tensor with 8 bits, or per output channel with 7 bits. */
export function quantizeWeight(values: Float32Array, dims: number[], axis: number | undefined): QuantizedWeight {
  const quantized = new Int8Array(values.length);
  if (axis === undefined) {
    let maxAbs = 0;
    for (const v of values) maxAbs = Math.max(maxAbs, Math.abs(v));
    const scale = maxAbs > 0 ? maxAbs / INT8_MAX : 1;
    for (let i = 0; i < values.length; i++) quantized[i] = Math.round(values[i]! / scale);
    return { values: quantized, scales: [scale], axis };
  }
  const channels = dims[axis]!;
  const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const channelOf = (i: number) => Math.floor(i / inner) % channels;
  const maxAbs = new Array<number>(channels).fill(0);
  for (let i = 0; i < values.length; i++) maxAbs[channelOf(i)] = Math.max(maxAbs[channelOf(i)]!, Math.abs(values[i]!));
  const scales = maxAbs.map((m) => (m > 0 ? m / INT7_MAX : 1));
  for (let i = 0; i < values.length; i++) quantized[i] = Math.round(values[i]! / scales[channelOf(i)]!);
  return { values: quantized, scales, axis };
}

/** Running min/max and, for percentile ranges, a histogram over the min/max found in a first pass. */
class RangeObserver {
  min = Infinity;
  max = -Infinity;
  private histogram: Float64Array | undefined;

  observe(data: Float32Array): void {
    for (const v of data) {
      if (v < this.min) this.min = v;
      if (v > this.max) this.max = v;
    }
  }

  observeHistogram(data: Float32Array): void {
    this.histogram ??= new Float64Array(HISTOGRAM_BINS);
    const width = (this.max - this.min) / HISTOGRAM_BINS;
    if (!(width > 0)) return;
    for (const v of data) this.histogram[Math.min(HISTOGRAM_BINS - 1, Math.max(0, Math.floor((v - this.min) / width)))]! += 1;
  }

  /** [lower, upper] bounds holding all but (100 - percentile)% of the values at each end. */
  percentileRange(percentile: number): [number, number] {
    const histogram = this.histogram;
    const width = (this.max - this.min) / HISTOGRAM_BINS;
    if (!histogram || !(width > 0)) return [this.min, this.max];
    const total = histogram.reduce((a, b) => a + b, 0);
    const tail = (total * (100 - percentile)) / 100;
    let lowBin = 0;
    for (let seen = 0; lowBin < HISTOGRAM_BINS; lowBin++) {
      seen += histogram[lowBin]!;
      if (seen > tail) break;
    }
    let highBin = HISTOGRAM_BINS - 1;
    for (let seen = 0; highBin >= 0; highBin--) {
      seen += histogram[highBin]!;
      if (seen > tail) break;
    }
    return [this.min + lowBin * width, this.min + (highBin + 1) * width];
  }
}

function batchesOf(images: readonly Float32Array[], batchSize: number): ImageBatch[] {
  const batches: ImageBatch[] = [];
  for (let start = 0; start < images.length; start += batchSize) {
    const chunk = images.slice(start, start + batchSize);
    const input = new Float32Array(chunk.reduce((n, image) => n + image.length, 0));
    let offset = 0;
    for (const image of chunk) {
      input.set(image, offset);
      offset += image.length;
    }
    batches.push({ input, count: chunk.length });
  }
  return batches;
}

function decodeModel(bytes: Uint8Array): onnxProto.onnx.ModelProto {
  try {
    const model = onnx.ModelProto.decode(bytes);
    if (!model.graph?.node?.length) throw new Error('it holds no graph');
    return model;
  } catch (cause) {
    throw new ModelError(`cannot quantize: the fp32 model is not a readable ONNX model (${(cause as Error).message})`, { cause });
  }
}

/** Resize modes that repeat every pixel 2x2 when upscaling by exactly 2. */
const PIXEL_REPEATING_RESIZE = new Set(['asymmetric/floor', 'asymmetric/round_prefer_floor', 'half_pixel/round_prefer_floor']);

/**
 * Rewrite each nearest x2 Resize followed by a 3x3 stride-1 Conv (pads 1) as one
 * Conv on the small image with 4x the output channels, then DepthToSpace: the
 * same function (exact up to float summation order), the same multiply-adds.
 * Why: onnxruntime's Resize on uint8 NHWC data is a slow generic loop (in the
 * 64x64 VAE the two last upsamples took longer than the convolutions after them),
 * while DepthToSpace moves uint8 blocks, and the final 1-channel conv, a poor fit
 * for the int8 GEMM, becomes a 4-channel one.
 *
 * Output pixel (2h+i, 2w+j) of conv(upsample(v)) reads v at rows h + floor((i + dy) / 2)
 * for kernel row dy in {-1, 0, 1}: for i = 0 rows h-1, h, h; for i = 1 rows h, h, h+1.
 * So phase (i, j) is a 3x3 conv on v whose taps are the original taps summed by
 * where they land; zero padding lines up because row -1 (or 2H) of the upsampled
 * image is exactly row -1 (or H) of v.
 */
export function foldNearestUpsampleIntoConv(graph: onnxProto.onnx.IGraphProto): number {
  const nodes = graph.node ?? [];
  const initializers = new Map((graph.initializer ?? []).map((t) => [t.name ?? '', t]));
  const consumers = consumersOf(nodes);
  const graphOutputs = new Set((graph.output ?? []).map((o) => o.name ?? ''));
  const replaced = new Map<INode, INode[]>();
  for (const resize of nodes) {
    if (resize.opType !== 'Resize') continue;
    const mode = `${stringAttribute(resize, 'coordinate_transformation_mode', 'half_pixel')}/${stringAttribute(resize, 'nearest_mode', 'round_prefer_floor')}`;
    const scales = resize.input?.[2] ? initializers.get(resize.input[2]) : undefined;
    const upsampled = resize.output?.[0] ?? '';
    const users = consumers.get(upsampled) ?? [];
    const conv = users[0];
    if (
      stringAttribute(resize, 'mode', 'nearest') !== 'nearest' ||
      !PIXEL_REPEATING_RESIZE.has(mode) ||
      !scales ||
      (resize.input?.length ?? 0) > 3 ||
      floatValues(scales).join() !== '1,1,2,2' ||
      users.length !== 1 ||
      graphOutputs.has(upsampled) ||
      conv?.opType !== 'Conv' ||
      conv.input?.[0] !== upsampled
    ) {
      continue;
    }
    const weight = initializers.get(conv.input[1] ?? '');
    const bias = conv.input[2] ? initializers.get(conv.input[2]) : undefined;
    const dims = weight ? dimsOf(weight) : [];
    const ones = (name: string) => (intsAttribute(conv, name) ?? [1, 1]).every((v) => v === 1);
    if (
      !weight ||
      weight.dataType !== DataType.FLOAT ||
      dims.length !== 4 ||
      dims[2] !== 3 ||
      dims[3] !== 3 ||
      !ones('strides') ||
      !ones('dilations') ||
      intAttribute(conv, 'group', 1) !== 1 ||
      (intsAttribute(conv, 'pads') ?? []).join() !== '1,1,1,1' ||
      (conv.input[2] && (!bias || bias.dataType !== DataType.FLOAT))
    ) {
      continue;
    }
    const [outChannels, inChannels] = dims as [number, number, number, number];
    const kernel = floatValues(weight);
    // For phase i, kernel row dy (0..2) lands on low-resolution tap row ROW_TAP[i][dy] (0..2).
    const ROW_TAP = [
      [0, 1, 1],
      [1, 1, 2],
    ] as const;
    const folded = new Float32Array(4 * outChannels * inChannels * 9);
    for (let i = 0; i < 2; i++) {
      for (let j = 0; j < 2; j++) {
        const phase = i * 2 + j; // DepthToSpace DCR: the block position is the outer part of the channel index
        for (let o = 0; o < outChannels; o++) {
          for (let c = 0; c < inChannels; c++) {
            const from = (o * inChannels + c) * 9;
            const to = ((phase * outChannels + o) * inChannels + c) * 9;
            for (let dy = 0; dy < 3; dy++) {
              for (let dx = 0; dx < 3; dx++) folded[to + ROW_TAP[i]![dy]! * 3 + ROW_TAP[j]![dx]!] += kernel[from + dy * 3 + dx]!;
            }
          }
        }
      }
    }
    const base = conv.name || conv.output?.[0] || 'conv';
    const foldedName = `${base}_subpixel`;
    graph.initializer!.push({ name: `${foldedName}.weight`, dims: [4 * outChannels, inChannels, 3, 3], dataType: DataType.FLOAT, rawData: bytesOf(folded) });
    const inputs = [resize.input![0]!, `${foldedName}.weight`];
    if (bias) {
      const b = floatValues(bias);
      const tiled = new Float32Array(4 * outChannels);
      for (let phase = 0; phase < 4; phase++) tiled.set(b, phase * outChannels);
      graph.initializer!.push({ name: `${foldedName}.bias`, dims: [4 * outChannels], dataType: DataType.FLOAT, rawData: bytesOf(tiled) });
      inputs.push(`${foldedName}.bias`);
    }
    const intType = onnx.AttributeProto.AttributeType.INT;
    replaced.set(resize, []);
    replaced.set(conv, [
      {
        opType: 'Conv',
        name: foldedName,
        input: inputs,
        output: [`${foldedName}_output`],
        attribute: [
          { name: 'kernel_shape', type: onnx.AttributeProto.AttributeType.INTS, ints: [3, 3] },
          { name: 'pads', type: onnx.AttributeProto.AttributeType.INTS, ints: [1, 1, 1, 1] },
        ],
      },
      {
        opType: 'DepthToSpace',
        name: `${base}_depth_to_space`,
        input: [`${foldedName}_output`],
        output: [...conv.output!],
        attribute: [
          { name: 'blocksize', type: intType, i: 2 },
          { name: 'mode', type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode('DCR') },
        ],
      },
    ]);
  }
  if (replaced.size === 0) return 0;
  graph.node = nodes.flatMap((node) => replaced.get(node) ?? [node]);
  const stillUsed = new Set(graph.node.flatMap((n) => n.input ?? []));
  graph.initializer = graph.initializer!.filter((t) => stillUsed.has(t.name ?? ''));
  return replaced.size / 2;
}

/** The output of the Relu that `tensor` alone feeds, directly or through single-consumer data-movement ops. */
function reluReachedThroughDataMovement(tensor: string, consumers: ReadonlyMap<string, INode[]>): string | undefined {
  let current = tensor;
  for (;;) {
    const users = consumers.get(current) ?? [];
    if (users.length !== 1) return undefined;
    const user = users[0]!;
    if (user.opType === 'Relu') return user.output?.[0];
    if (!DATA_MOVEMENT_OPS.has(user.opType ?? '') || user.input?.[0] !== current) return undefined;
    current = user.output?.[0] ?? '';
  }
}

/**
 * Which float tensors get a Q/DQ pair. A Conv/Gemm whose only consumer is a Relu
 * is left float: the Relu output is quantized instead (zero point 0), and
 * onnxruntime folds the Relu into the int8 kernel.
 */
/** FLOAT_OUTPUTS and every tensor that reaches one only through data movement (e.g. logits before an upsample). */
function floatKeptTensors(nodes: readonly INode[], consumers: Map<string, INode[]>): Set<string> {
  const kept = new Set<string>(FLOAT_OUTPUTS);
  for (let changed = true; changed; ) {
    changed = false;
    for (const node of nodes) {
      const input = node.input?.[0];
      if (!input || kept.has(input) || !DATA_MOVEMENT_OPS.has(node.opType ?? '')) continue;
      const users = consumers.get(input) ?? [];
      if (users.length > 0 && users.every((user) => DATA_MOVEMENT_OPS.has(user.opType ?? '') && kept.has(user.output?.[0] ?? ''))) {
        kept.add(input);
        changed = true;
      }
    }
  }
  return kept;
}

function tensorsToQuantize(
  nodes: readonly INode[],
  graphInputs: readonly string[],
  graphOutputs: ReadonlySet<string>,
  initializers: ReadonlySet<string>,
): string[] {
  const consumers = consumersOf(nodes);
  const keptFloat = floatKeptTensors(nodes, consumers);
  const chosen: string[] = graphInputs.filter((name) => (consumers.get(name) ?? []).some((n) => QUANTIZED_OUTPUT_OPS.has(n.opType ?? '')));
  for (const node of nodes) {
    if (!QUANTIZED_OUTPUT_OPS.has(node.opType ?? '')) continue;
    const output = node.output?.[0];
    if (!output || initializers.has(output) || keptFloat.has(output)) continue;
    const users = consumers.get(output) ?? [];
    if (WEIGHTED_OPS.has(node.opType ?? '') && users.length === 1 && users[0]!.opType === 'Relu' && !graphOutputs.has(output)) continue;
    chosen.push(output);
  }
  return chosen;
}

/** Quantize a float32 VAE to static int8 QDQ, calibrated on `calibration` (each one NCHW image in [0,1]). */
export async function quantizeInt8(fp32: Uint8Array, calibration: Float32Array[], options: QuantizeOptions = {}): Promise<Uint8Array> {
  const log = options.log ?? (() => {});
  const scheme = options.scheme ?? 'uint8-asymmetric';
  if (!INT8_SCHEMES.includes(scheme)) {
    throw new UsageError(`unknown int8 scheme "${scheme}"`, { hint: `use one of: ${INT8_SCHEMES.join(', ')}` });
  }
  const symmetric = scheme === 'int8-symmetric';
  const perChannel = options.perChannel ?? symmetric;
  const range = options.range ?? 'minmax';
  const batchSize = options.batchSize ?? 16;
  const model = decodeModel(fp32);
  const graph = model.graph!;
  const opset = Number(model.opsetImport?.find((o) => !o.domain)?.version ?? 0);
  if (opset < 13) {
    throw new ModelError(`cannot quantize: the model uses ONNX opset ${opset}; QDQ with per-axis scales needs opset 13 or later`, {
      hint: 'export the model with opset 13+',
    });
  }
  if (calibration.length === 0) {
    throw new UsageError('int8 quantization needs calibration images', { hint: 'pass a few dozen normal images (e.g. the training images)' });
  }
  const perImage = imageSize(model, 'quantize');
  const wrongSize = calibration.findIndex((image) => image.length !== perImage);
  if (wrongSize >= 0) {
    throw new UsageError(`calibration image ${wrongSize} has ${calibration[wrongSize]!.length} values; the model takes ${perImage} per image`, {
      hint: 'resize calibration images to the model input size and channel count',
    });
  }
  if (typeof range === 'object' && !(range.percentile > 50 && range.percentile <= 100)) {
    throw new UsageError(`calibration percentile must be in (50, 100], got ${range.percentile}`);
  }

  const folded = options.foldUpsample === false ? 0 : foldNearestUpsampleIntoConv(graph);
  if (folded > 0) log(`rewrote ${folded} nearest-upsample + conv pair(s) as conv + DepthToSpace`);
  const calibrationModel = folded > 0 ? onnx.ModelProto.encode(model).finish() : fp32;

  const nodes = [...(graph.node ?? [])];
  const initializers = new Map((graph.initializer ?? []).map((t) => [t.name ?? '', t]));
  const graphInputs = (graph.input ?? []).map((i) => i.name ?? '').filter((name) => !initializers.has(name));
  const graphOutputs = new Set((graph.output ?? []).map((o) => o.name ?? ''));
  const producers = producersOf(nodes);
  const consumers = consumersOf(nodes);

  // --- choose and calibrate activations -------------------------------------
  const chosen = tensorsToQuantize(nodes, graphInputs, graphOutputs, new Set(initializers.keys()));
  // The image input is pixels / 255 by contract: scale 1/255 represents every 8-bit pixel exactly.
  const fixedUnitRange = (name: string) => graphInputs.includes(name) || UNIT_RANGE_OPS.has(producers.get(name)?.opType ?? '');
  const sharedWith = new Map<string, string>();
  for (const name of chosen) {
    const relu = reluReachedThroughDataMovement(name, consumers);
    const producer = producers.get(name);
    const source = producer?.input?.[0];
    // Quantizing with the Relu's range (zero point 0) applies the Relu early, which is exact because data movement
    // commutes with it; onnxruntime then drops the Q/DQ pairs around Reshape and the Relu itself.
    if (relu !== undefined && chosen.includes(relu)) sharedWith.set(name, relu);
    // A data-movement op's output keeps its input's parameters, so it can run on the uint8 data directly.
    else if (producer && DATA_MOVEMENT_OPS.has(producer.opType ?? '') && source && chosen.includes(source)) sharedWith.set(name, source);
  }
  const calibrated = chosen.filter((name) => !fixedUnitRange(name) && !sharedWith.has(name));
  const observers = new Map(calibrated.map((name) => [name, new RangeObserver()]));
  const batches = batchesOf(calibration, batchSize);
  await runWithExtraOutputs(calibrationModel, batches, calibrated, (outputs) => {
    for (const [name, tensor] of outputs) observers.get(name)!.observe(tensor.data);
  });
  if (typeof range === 'object') {
    await runWithExtraOutputs(calibrationModel, batches, calibrated, (outputs) => {
      for (const [name, tensor] of outputs) observers.get(name)!.observeHistogram(tensor.data);
    });
  }
  const params = new Map<string, QuantParams>();
  const unit = { scale: 1 / (symmetric ? INT8_MAX : UINT8_MAX), zeroPoint: 0 };
  const resolve = (name: string): QuantParams => {
    const known = params.get(name);
    if (known) return known;
    let result: QuantParams;
    if (fixedUnitRange(name)) result = unit;
    else if (sharedWith.has(name)) result = resolve(sharedWith.get(name)!);
    else {
      const observer = observers.get(name)!;
      const [lo, hi] = typeof range === 'object' ? observer.percentileRange(range.percentile) : [observer.min, observer.max];
      result = symmetric ? symmetricActivationParams(lo, hi) : activationParams(lo, hi);
    }
    params.set(name, result);
    return result;
  };
  for (const name of chosen) resolve(name);

  // --- rewrite the graph ------------------------------------------------------
  const newInitializers: ITensor[] = [];
  const headNodes: INode[] = [];
  const dequantized = (name: string) => `${name}_DequantizeLinear_Output`;
  const qdqPair = (tensor: string, source: string, output: string): INode[] => {
    const p = params.get(tensor)!;
    newInitializers.push(scalarFloat(`${tensor}_scale`, p.scale));
    newInitializers.push({ name: `${tensor}_zero_point`, dims: [], dataType: symmetric ? DataType.INT8 : DataType.UINT8, int32Data: [p.zeroPoint] });
    return [
      { opType: 'QuantizeLinear', name: `${tensor}_QuantizeLinear`, input: [source, `${tensor}_scale`, `${tensor}_zero_point`], output: [`${tensor}_quantized`] },
      { opType: 'DequantizeLinear', name: `${tensor}_DequantizeLinear`, input: [`${tensor}_quantized`, `${tensor}_scale`, `${tensor}_zero_point`], output: [output] },
    ];
  };
  // Quantized graph outputs (recon, mu) are served through their DequantizeLinear: onnxruntime fuses an
  // int8 kernel only when its output goes to a QuantizeLinear, and would otherwise dequantize the
  // weights on every run. mu then carries 8-bit rounding (~0.2% of its range), far below what the
  // int8 weights already change.
  const servedDequantized = new Set(chosen.filter((name) => graphOutputs.has(name)));
  const renamedOutput = (name: string) => `${name}_float`;
  const afterNode = new Map<INode, INode[]>();
  for (const name of chosen) {
    const producer = producers.get(name);
    let pair: INode[];
    if (servedDequantized.has(name)) {
      producer!.output = producer!.output!.map((o) => (o === name ? renamedOutput(name) : o));
      pair = qdqPair(name, renamedOutput(name), name);
    } else {
      pair = qdqPair(name, name, dequantized(name));
    }
    if (producer) afterNode.set(producer, [...(afterNode.get(producer) ?? []), ...pair]);
    else headNodes.push(...pair);
  }
  const chosenSet = new Set(chosen);
  const sourceOfDequantized = new Map(chosen.map((name) => [servedDequantized.has(name) ? name : dequantized(name), name]));
  for (const node of nodes) {
    node.input = (node.input ?? []).map((input) => (chosenSet.has(input) && !servedDequantized.has(input) ? dequantized(input) : input));
  }

  // Weights and biases: int8 / int32 initializers behind a DequantizeLinear named like the float tensor they replace.
  const replacedWeights = new Set<string>();
  const replacedBiases = new Set<string>();
  const weightScales = new Map<string, number[]>();
  let weightCount = 0;
  for (const node of nodes) {
    if (!WEIGHTED_OPS.has(node.opType ?? '')) continue;
    const [activation, weightName, biasName] = node.input ?? [];
    const weight = weightName ? initializers.get(weightName) : undefined;
    if (!activation || !weight || weight.dataType !== DataType.FLOAT) continue;
    const source = sourceOfDequantized.get(activation);
    const inputParams = source === undefined ? undefined : params.get(source);
    if (!inputParams) continue;
    if (node.opType === 'Gemm' && (intAttribute(node, 'transA', 0) !== 0 || floatAttribute(node, 'alpha', 1) !== 1 || floatAttribute(node, 'beta', 1) !== 1)) {
      log(`leaving ${node.name ?? node.opType} float: only Gemm with alpha = beta = 1 and no transA is quantized`);
      continue;
    }
    const dims = dimsOf(weight);
    const axis = perChannel ? outputChannelAxis(node) : undefined;
    let scales = weightScales.get(weightName!);
    if (!scales) {
      const q = quantizeWeight(floatValues(weight), dims, axis);
      scales = q.scales;
      weightScales.set(weightName!, scales);
      const qName = `${weightName}_quantized`;
      newInitializers.push({ name: qName, dims, dataType: DataType.INT8, rawData: bytesOf(q.values) });
      newInitializers.push(scales.length === 1 ? scalarFloat(`${weightName}_scale`, scales[0]!) : floatVector(`${weightName}_scale`, scales));
      const zeroPoint: ITensor = scales.length === 1
        ? { name: `${weightName}_zero_point`, dims: [], dataType: DataType.INT8, int32Data: [0] }
        : { name: `${weightName}_zero_point`, dims: [scales.length], dataType: DataType.INT8, rawData: new Uint8Array(scales.length) };
      newInitializers.push(zeroPoint);
      headNodes.push({
        opType: 'DequantizeLinear',
        name: `${weightName}_DequantizeLinear`,
        input: [qName, `${weightName}_scale`, `${weightName}_zero_point`],
        output: [weightName!],
        attribute: scales.length === 1 ? [] : [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: axis }],
      });
      replacedWeights.add(weightName!);
      weightCount++;
    }
    const bias = biasName ? initializers.get(biasName) : undefined;
    if (bias && bias.dataType === DataType.FLOAT && !options.floatBias) {
      const values = floatValues(bias);
      const biasScales = Array.from(values, (_, i) => inputParams.scale * scales![scales!.length === 1 ? 0 : i]!);
      const quantized = Int32Array.from(values, (v, i) => Math.round(v / biasScales[i]!));
      const qName = `${node.name ?? biasName}_bias_quantized`;
      const scaleName = `${node.name ?? biasName}_bias_scale`;
      const dequantizedBias = `${node.name ?? biasName}_bias_DequantizeLinear_Output`;
      newInitializers.push({ name: qName, dims: dimsOf(bias), dataType: DataType.INT32, rawData: bytesOf(quantized) });
      const perTensorBias = scales.length === 1;
      newInitializers.push(perTensorBias ? scalarFloat(scaleName, biasScales[0]!) : floatVector(scaleName, biasScales));
      headNodes.push({
        opType: 'DequantizeLinear',
        name: `${node.name ?? biasName}_bias_DequantizeLinear`,
        input: [qName, scaleName],
        output: [dequantizedBias],
        attribute: perTensorBias ? [] : [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 0 }],
      });
      node.input![2] = dequantizedBias;
      replacedBiases.add(biasName!);
    }
  }

  const stillUsed = new Set(nodes.flatMap((n) => n.input ?? []));
  const dropped = (name: string) => replacedWeights.has(name) || (replacedBiases.has(name) && !stillUsed.has(name));
  graph.initializer = [...(graph.initializer ?? []).filter((t) => !dropped(t.name ?? '')), ...newInitializers];
  graph.node = [...headNodes, ...nodes.flatMap((node) => [node, ...(afterNode.get(node) ?? [])])];
  // Shapes recorded for the float graph may name tensors that were renamed; onnxruntime re-infers them.
  graph.valueInfo = [];
  model.metadataProps = [
    ...(model.metadataProps ?? []).filter((p) => p.key !== 'linewatch.quantization'),
    {
      key: 'linewatch.quantization',
      value: JSON.stringify({
        format: 'qdq-static',
        scheme,
        activations: symmetric ? 'int8 symmetric' : 'uint8 asymmetric',
        biases: options.floatBias ? 'float32' : 'int32',
        weights: perChannel ? 'int8 symmetric per-channel (7-bit)' : 'int8 symmetric per-tensor',
        range: typeof range === 'object' ? `percentile ${range.percentile}` : 'minmax',
        calibrationImages: calibration.length,
      }),
    },
  ];
  log(`quantized ${weightCount} weight tensors and ${chosen.length} activations on ${calibration.length} calibration images`);
  const quantized = onnx.ModelProto.encode(model).finish();
  if (!(options.channelsLastDepthToSpace ?? !symmetric)) return quantized;
  const { bytes, rewritten } = await depthToSpaceInChannelsLast(quantized);
  if (rewritten > 0) log(`rewrote ${rewritten} DepthToSpace node(s) as channels-last reshapes and transposes`);
  return bytes;
}


/**
 * The fp32 model with the same upsample folding the int8 path uses: identical outputs
 * (to float rounding), fewer and cheaper ops, so fp32 users get the faster graph too.
 */
export function foldUpsampleModel(fp32: Uint8Array): Uint8Array {
  const model = decodeModel(fp32);
  return foldNearestUpsampleIntoConv(model.graph!) > 0 ? onnx.ModelProto.encode(model).finish() : fp32;
}
