/**
 * The trained VAE as an fp32 ONNX model: input `image` [batch, C, H, W] in [0,1],
 * outputs `recon` [batch, C, H, W] and `mu` [batch, latentDim]. The decoder is fed
 * with mu (no sampling), so the graph is deterministic and matches `forwardVae`.
 *
 * Only ops that onnxruntime's static int8 (QDQ) path quantizes: Conv, Relu, Flatten,
 * Gemm, Reshape, Resize (nearest), Sigmoid. Opset 13 is the first with per-channel
 * QuantizeLinear, which quantize.ts may use on this graph.
 *
 * Layout conversions from TensorFlow (NHWC) to ONNX (NCHW):
 * - conv kernels [kh, kw, in, out] -> [out, in, kh, kw] (transpose [3, 2, 0, 1]);
 * - TF flattens (h, w, c), ONNX flattens (c, h, w): the encoder's dense rows and
 *   the decoder's dense columns (and bias) are permuted to channel-first;
 * - TF 'same' with stride 2 and an even input pads only after (bottom/right):
 *   explicit pads [0, 0, 1, 1]; stride 1 pads [1, 1, 1, 1].
 */
import onnxProto from 'onnx-proto';
import { validateVaeConfig, weightShapes, type VaeWeights, type WeightTensor } from './train/vae-config.js';
import { LINEWATCH_VERSION } from '../version.js';
import { MODEL_IO } from '../model/manifest.js';

const { onnx } = onnxProto;
type NodeProto = onnxProto.onnx.INodeProto;
type TensorProto = onnxProto.onnx.ITensorProto;
type AttributeProto = onnxProto.onnx.IAttributeProto;
type ValueInfoProto = onnxProto.onnx.IValueInfoProto;

/** The opset the graph is written against; every op used is unchanged from 13 to 15. */
export const EXPORT_OPSET = 13;
/** IR version 7 goes with opset 13 (ONNX 1.8) and is read by every onnxruntime since 1.6. */
export const EXPORT_IR_VERSION = 7;
const BATCH_DIM = 'batch';

/** Serialises trained VAE weights as an fp32 ONNX model. */
export function exportOnnx(weights: VaeWeights): Uint8Array {
  const { config } = weights;
  validateVaeConfig(config);
  const tensors = checkedWeights(weights);
  const { width, height, channels, filters, latentDim } = config;
  const levels = filters.length;
  const bottomHeight = height / 2 ** levels;
  const bottomWidth = width / 2 ** levels;
  const bottomChannels = filters[levels - 1]!;

  const graph = new GraphBuilder();
  let x: string = MODEL_IO.input;

  filters.forEach((_, i) => {
    x = graph.conv(`encoder.conv${i}`, x, tensors, 2);
    x = graph.unary('Relu', `encoder.conv${i}.relu`, x);
  });
  const flat = graph.node('Flatten', 'encoder.flatten', [x], [intAttribute('axis', 1)]);

  const toChannelFirst = hwcToChwOrder(bottomHeight, bottomWidth, bottomChannels);
  graph.gemm('encoder.mu', flat, permuteRows(tensors['encoder.mu.kernel']!, toChannelFirst), tensors['encoder.mu.bias']!.data, MODEL_IO.mu);
  // encoder.logVar only matters for sampling during training: the exported graph has no use for it.

  const decoded = graph.gemm(
    'decoder.dense',
    MODEL_IO.mu,
    permuteColumns(tensors['decoder.dense.kernel']!, toChannelFirst),
    permute(tensors['decoder.dense.bias']!.data, toChannelFirst),
  );
  graph.initializer(int64Tensor('decoder.reshape.shape', [-1, bottomChannels, bottomHeight, bottomWidth]));
  x = graph.node('Reshape', 'decoder.reshape', [decoded, 'decoder.reshape.shape']);
  x = graph.unary('Relu', 'decoder.reshape.relu', x);

  graph.initializer(floatTensor('decoder.upsample.scales', [4], new Float32Array([1, 1, 2, 2])));
  for (let j = 0; j < levels; j++) {
    // floor(output / 2) is TF's resizeNearestNeighbor without half-pixel centres: every pixel repeated 2x2.
    x = graph.node('Resize', `decoder.upsample${j}`, [x, '', 'decoder.upsample.scales'], NEAREST_UPSAMPLE);
    x = graph.conv(`decoder.conv${j}`, x, tensors, 1);
    const last = j === levels - 1;
    x = graph.unary(last ? 'Sigmoid' : 'Relu', last ? 'decoder.sigmoid' : `decoder.conv${j}.relu`, x, last ? MODEL_IO.recon : undefined);
  }

  const outputs = [floatValueInfo(MODEL_IO.recon, [BATCH_DIM, channels, height, width]), floatValueInfo(MODEL_IO.mu, [BATCH_DIM, latentDim])];
  if (config.comparator) {
    exportComparator(graph, config.comparator.filters, tensors);
    outputs.push(floatValueInfo(MODEL_IO.map, [BATCH_DIM, 1, height, width]));
  }

  const model = onnx.ModelProto.create({
    irVersion: EXPORT_IR_VERSION,
    opsetImport: [{ domain: '', version: EXPORT_OPSET }],
    producerName: 'linewatch',
    producerVersion: LINEWATCH_VERSION,
    docString: `linewatch VAE ${width}x${height}x${channels}, filters [${filters.join(', ')}], latent ${latentDim}`,
    graph: {
      name: 'linewatch_vae',
      node: graph.nodes,
      initializer: graph.initializers,
      input: [floatValueInfo(MODEL_IO.input, [BATCH_DIM, channels, height, width])],
      output: outputs,
    },
  });
  return onnx.ModelProto.encode(model).finish();
}

/** The comparator U-Net (see comparatorWeightShapes) on concat(image, recon, image - recon), ending in the anomaly-map logits. */
function exportComparator(graph: GraphBuilder, filters: readonly number[], tensors: Record<string, WeightTensor>): void {
  const convRelu = (name: string, input: string, stride: 1 | 2) => graph.unary('Relu', `${name}.relu`, graph.conv(name, input, tensors, stride));
  const difference = graph.node('Sub', 'comparator.difference', [MODEL_IO.input, MODEL_IO.recon]);
  let x = graph.node('Concat', 'comparator.concat', [MODEL_IO.input, MODEL_IO.recon, difference], [intAttribute('axis', 1)]);
  const skips: string[] = [];
  filters.forEach((_, i) => {
    x = convRelu(`comparator.enc${i}.a`, x, 2);
    x = convRelu(`comparator.enc${i}.b`, x, 1);
    skips.push(x);
  });
  for (let i = filters.length - 2; i >= 0; i--) {
    const up = graph.node('Resize', `comparator.dec${i}.upsample`, [x, '', 'decoder.upsample.scales'], NEAREST_UPSAMPLE);
    const merged = graph.node('Concat', `comparator.dec${i}.concat`, [convRelu(`comparator.dec${i}.up`, up, 1), skips[i]!], [intAttribute('axis', 1)]);
    x = convRelu(`comparator.dec${i}.merge`, merged, 1);
  }
  const logits = graph.conv('comparator.head', x, tensors, 1);
  graph.node('Resize', 'comparator.upsample', [logits, '', 'decoder.upsample.scales'], NEAREST_UPSAMPLE, MODEL_IO.map);
}

class GraphBuilder {
  readonly nodes: NodeProto[] = [];
  readonly initializers: TensorProto[] = [];

  initializer(tensor: TensorProto): void {
    this.initializers.push(tensor);
  }

  /** Adds a node named `name` whose single output is `output` (default: the node's name). */
  node(opType: string, name: string, inputs: string[], attribute: AttributeProto[] = [], output = name): string {
    this.nodes.push({ opType, name, input: inputs, output: [output], attribute });
    return output;
  }

  unary(opType: string, name: string, input: string, output?: string): string {
    return this.node(opType, name, [input], [], output);
  }

  /** A 3x3 convolution with TF 'same' padding, from the TF weights `<name>.kernel` / `<name>.bias`. */
  conv(name: string, input: string, tensors: Record<string, WeightTensor>, stride: 1 | 2, output = name): string {
    const kernel = tensors[`${name}.kernel`]!;
    const [kh, kw, inChannels, outChannels] = kernel.shape as [number, number, number, number];
    this.initializer(floatTensor(`${name}.weight`, [outChannels, inChannels, kh, kw], transposeKernel(kernel)));
    this.initializer(floatTensor(`${name}.bias`, [outChannels], tensors[`${name}.bias`]!.data));
    return this.node('Conv', name, [input, `${name}.weight`, `${name}.bias`], [
      intsAttribute('kernel_shape', [kh, kw]),
      intsAttribute('strides', [stride, stride]),
      intsAttribute('pads', stride === 2 ? [0, 0, 1, 1] : [1, 1, 1, 1]),
      intsAttribute('dilations', [1, 1]),
      intAttribute('group', 1),
    ], output);
  }

  /** y = x W + b with W stored [in, out] as TF keeps it (Gemm without transB). */
  gemm(name: string, input: string, kernel: WeightTensor, bias: Float32Array, output?: string): string {
    this.initializer(floatTensor(`${name}.weight`, kernel.shape, kernel.data));
    this.initializer(floatTensor(`${name}.bias`, [bias.length], bias));
    return this.node('Gemm', name, [input, `${name}.weight`, `${name}.bias`], [], output);
  }
}

function checkedWeights(weights: VaeWeights): Record<string, WeightTensor> {
  for (const [name, shape] of weightShapes(weights.config)) {
    const tensor = weights.tensors[name];
    const size = shape.reduce((a, b) => a * b, 1);
    if (!tensor || tensor.shape.join('x') !== shape.join('x') || tensor.data.length !== size) {
      throw new Error(
        `cannot export VAE: weight ${name} is ${tensor ? `[${tensor.shape.join(', ')}] with ${tensor.data.length} values` : 'missing'}, expected [${shape.join(', ')}]`,
      );
    }
  }
  return weights.tensors;
}

/** TF conv kernel [kh, kw, in, out] to ONNX [out, in, kh, kw]. */
function transposeKernel(kernel: WeightTensor): Float32Array {
  const [kh, kw, inChannels, outChannels] = kernel.shape as [number, number, number, number];
  const out = new Float32Array(kernel.data.length);
  for (let y = 0; y < kh; y++) {
    for (let x = 0; x < kw; x++) {
      for (let i = 0; i < inChannels; i++) {
        for (let o = 0; o < outChannels; o++) {
          out[((o * inChannels + i) * kh + y) * kw + x] = kernel.data[((y * kw + x) * inChannels + i) * outChannels + o]!;
        }
      }
    }
  }
  return out;
}

/** order[chwIndex] = the (h, w, c) index holding the same element. */
function hwcToChwOrder(height: number, width: number, channels: number): Int32Array {
  const order = new Int32Array(height * width * channels);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) order[(c * height + y) * width + x] = (y * width + x) * channels + c;
    }
  }
  return order;
}

function permute(values: Float32Array, order: Int32Array): Float32Array {
  return Float32Array.from(order, (source) => values[source]!);
}

function permuteRows(matrix: WeightTensor, order: Int32Array): WeightTensor {
  const [rows, columns] = matrix.shape as [number, number];
  const data = new Float32Array(rows * columns);
  order.forEach((source, row) => data.set(matrix.data.subarray(source * columns, (source + 1) * columns), row * columns));
  return { shape: [rows, columns], data };
}

function permuteColumns(matrix: WeightTensor, order: Int32Array): WeightTensor {
  const [rows, columns] = matrix.shape as [number, number];
  const data = new Float32Array(rows * columns);
  for (let r = 0; r < rows; r++) {
    const base = r * columns;
    for (let c = 0; c < columns; c++) data[base + c] = matrix.data[base + order[c]!]!;
  }
  return { shape: [rows, columns], data };
}

function floatTensor(name: string, dims: number[], values: Float32Array): TensorProto {
  // ONNX raw data is little-endian; DataView keeps that true on any host.
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  values.forEach((value, i) => view.setFloat32(i * 4, value, true));
  return { name, dims, dataType: onnx.TensorProto.DataType.FLOAT, rawData: bytes };
}

function int64Tensor(name: string, values: number[]): TensorProto {
  const bytes = new Uint8Array(values.length * 8);
  const view = new DataView(bytes.buffer);
  values.forEach((value, i) => view.setBigInt64(i * 8, BigInt(value), true));
  return { name, dims: [values.length], dataType: onnx.TensorProto.DataType.INT64, rawData: bytes };
}

/** floor(output / 2) is TF's resizeNearestNeighbor without half-pixel centres: every pixel repeated 2x2. */
const NEAREST_UPSAMPLE: AttributeProto[] = [
  stringAttribute('mode', 'nearest'),
  stringAttribute('coordinate_transformation_mode', 'asymmetric'),
  stringAttribute('nearest_mode', 'floor'),
];

function intAttribute(name: string, i: number): AttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.INT, i };
}

function intsAttribute(name: string, ints: number[]): AttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.INTS, ints };
}

function stringAttribute(name: string, value: string): AttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode(value) };
}

/** A float32 graph input or output; string dims are symbolic (e.g. 'batch'). */
export function floatValueInfo(name: string, dims: Array<number | string>): ValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: onnx.TensorProto.DataType.FLOAT,
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  };
}
