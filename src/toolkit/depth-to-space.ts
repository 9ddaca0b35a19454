/**
 * DepthToSpace of a quantized graph rewritten as channels-last data movement.
 *
 * onnxruntime's CPU provider runs QLinearConv channels-last (NHWC) but DepthToSpace only
 * channels-first, and its uint8 DepthToSpace is a generic element-by-element shuffle: on the demo
 * model the five DepthToSpace nodes and the NHWC <-> NCHW transposes put around them took about a
 * fifth of the whole run. In NHWC, DepthToSpace (DCR) only moves whole runs of channels:
 *
 *   [N, H, W, b*b*C] -> Reshape [N, H, W, b, b*C] -> Transpose(0,1,3,2,4) -> [N, H, b, W, b*C] -> Reshape [N, H*b, W*b, C]
 *
 * So each DepthToSpace becomes Transpose to NHWC, that chain, and Transpose back to NCHW; the
 * outer transposes cancel against the ones onnxruntime inserts around its NHWC convolutions,
 * leaving one block-copy transpose. Every new tensor gets the Q/DQ pair of the DepthToSpace's
 * output, so onnxruntime runs the whole chain on the uint8 data: the outputs are bit-identical.
 */
import onnxProto from 'onnx-proto';
import { runWithExtraOutputs } from '../model/onnx.js';
import { consumersOf, imageSize, intAttribute, producersOf, stringAttribute } from './onnx-graph.js';

const { onnx } = onnxProto;
type INode = onnxProto.onnx.INodeProto;
type ITensor = onnxProto.onnx.ITensorProto;
const AttributeType = onnx.AttributeProto.AttributeType;

interface Candidate {
  readonly node: INode;
  readonly blockSize: number;
  /** The DequantizeLinear's output that the DepthToSpace reads (float, NCHW). */
  readonly input: string;
  /** Scale and zero-point initializer names of the QuantizeLinear that reads the DepthToSpace's output. */
  readonly scale: string;
  readonly zeroPoint: string;
}

/** DepthToSpace nodes (DCR) between a DequantizeLinear and QuantizeLinear consumers that share one scale and zero point. */
function candidates(nodes: readonly INode[]): Candidate[] {
  const producers = producersOf(nodes);
  const consumers = consumersOf(nodes);
  const found: Candidate[] = [];
  for (const node of nodes) {
    if (node.opType !== 'DepthToSpace' || stringAttribute(node, 'mode', 'DCR') !== 'DCR') continue;
    const blockSize = intAttribute(node, 'blocksize', 0);
    const input = node.input?.[0] ?? '';
    const users = consumers.get(node.output?.[0] ?? '') ?? [];
    const quantizers = users.filter((user) => user.opType === 'QuantizeLinear');
    const [scale, zeroPoint] = [quantizers[0]?.input?.[1], quantizers[0]?.input?.[2]];
    if (
      !(blockSize > 1) ||
      producers.get(input)?.opType !== 'DequantizeLinear' ||
      quantizers.length === 0 ||
      quantizers.length !== users.length ||
      !scale ||
      !zeroPoint ||
      quantizers.some((q) => q.input?.[1] !== scale || q.input?.[2] !== zeroPoint)
    ) {
      continue;
    }
    found.push({ node, blockSize, input, scale, zeroPoint });
  }
  return found;
}

function intsTensor(name: string, values: number[]): ITensor {
  return { name, dims: [values.length], dataType: onnx.TensorProto.DataType.INT64, int64Data: values };
}

/** The chain that replaces one DepthToSpace, given its input's [N, b*b*C, H, W]. */
function channelsLastChain(candidate: Candidate, dims: readonly number[], initializers: ITensor[]): INode[] {
  const { node, blockSize: b, scale, zeroPoint } = candidate;
  const [, depth, height, width] = dims as [number, number, number, number];
  const channels = depth / (b * b);
  const base = node.name || node.output![0]!;
  const output = node.output![0]!;
  const nodes: INode[] = [];
  let current = candidate.input;
  const step = (opType: 'Transpose' | 'Reshape', suffix: string, extra: Partial<INode>, last = false) => {
    const name = `${base}_${suffix}`;
    const produced = last ? output : name;
    nodes.push({ opType, name, input: [current, ...(extra.input ?? [])], output: [produced], attribute: extra.attribute ?? [] });
    if (last) return;
    nodes.push(
      { opType: 'QuantizeLinear', name: `${name}_QuantizeLinear`, input: [produced, scale, zeroPoint], output: [`${name}_quantized`] },
      { opType: 'DequantizeLinear', name: `${name}_DequantizeLinear`, input: [`${name}_quantized`, scale, zeroPoint], output: [`${name}_DequantizeLinear_Output`] },
    );
    current = `${name}_DequantizeLinear_Output`;
  };
  const perm = (values: number[]) => ({ attribute: [{ name: 'perm', type: AttributeType.INTS, ints: values }] });
  const shape = (suffix: string, values: number[]) => {
    initializers.push(intsTensor(`${base}_${suffix}.shape`, values));
    return { input: [`${base}_${suffix}.shape`] };
  };
  step('Transpose', 'nhwc', perm([0, 2, 3, 1]));
  // 0 copies the batch (and H, W) from the input, so the graph keeps its dynamic batch.
  step('Reshape', 'split_rows', shape('split_rows', [0, 0, 0, b, b * channels]));
  step('Transpose', 'interleave', perm([0, 1, 3, 2, 4]));
  step('Reshape', 'merge', shape('merge', [0, height * b, width * b, channels]));
  step('Transpose', 'nchw', perm([0, 3, 1, 2]), true);
  return nodes;
}

/**
 * Rewrite every quantized DepthToSpace (DCR) of an int8 QDQ model as channels-last data movement.
 * Returns the new model and how many nodes were rewritten (0: the bytes are returned unchanged).
 */
export async function depthToSpaceInChannelsLast(modelBytes: Uint8Array): Promise<{ bytes: Uint8Array; rewritten: number }> {
  const model = onnx.ModelProto.decode(modelBytes);
  const graph = model.graph!;
  const found = candidates(graph.node ?? []);
  if (found.length === 0) return { bytes: modelBytes, rewritten: 0 };
  const perImage = imageSize(model, 'rewrite DepthToSpace');
  // The spatial size of each DepthToSpace input, from one run on a blank image.
  const dims = new Map<string, readonly number[]>();
  await runWithExtraOutputs(modelBytes, [{ input: new Float32Array(perImage), count: 1 }], found.map((c) => c.input), (outputs) => {
    for (const [name, tensor] of outputs) dims.set(name, tensor.dims);
  });
  const initializers = (graph.initializer ??= []);
  const replaced = new Map(found.map((c) => [c.node, channelsLastChain(c, dims.get(c.input)!, initializers)]));
  graph.node = graph.node!.flatMap((node) => replaced.get(node) ?? [node]);
  return { bytes: onnx.ModelProto.encode(model).finish(), rewritten: found.length };
}
