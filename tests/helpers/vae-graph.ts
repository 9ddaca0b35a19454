import onnxProto from 'onnx-proto';
import { MODEL_IO } from '../../src/model/manifest.js';
import { weightShapes, type VaeConfig, type VaeWeights } from '../../src/toolkit/train/vae-config.js';
import { seededRandom as mulberry32 } from '../../src/toolkit/train/random.js';
import { floatValueInfo } from '../../src/toolkit/export.js';

const { onnx } = onnxProto;

/**
 * An independent build of the VAE graph that src/toolkit/export.ts writes: the same
 * graph (stride-2 Conv+Relu encoder, Gemm to `mu`, Gemm+Reshape decoder with
 * nearest x2 Resize + Conv+Relu per level, last Conv+Sigmoid to `recon`) with
 * seeded random He-initialised weights.
 */
export interface VaeGraphSpec {
  channels: 1 | 3;
  size: number;
  filters: number[];
  latentDim: number;
  seed?: number;
}

function gaussian(random: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
}

function floatInit(name: string, dims: number[], values: Float32Array): onnxProto.onnx.ITensorProto {
  return { name, dims, dataType: onnx.TensorProto.DataType.FLOAT, rawData: new Uint8Array(values.buffer.slice(0)) };
}

function int64Init(name: string, values: number[]): onnxProto.onnx.ITensorProto {
  return { name, dims: [values.length], dataType: onnx.TensorProto.DataType.INT64, int64Data: values };
}

function attrInts(name: string, ints: number[]): onnxProto.onnx.IAttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.INTS, ints };
}
function attrInt(name: string, i: number): onnxProto.onnx.IAttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.INT, i };
}
function attrString(name: string, s: string): onnxProto.onnx.IAttributeProto {
  return { name, type: onnx.AttributeProto.AttributeType.STRING, s: new TextEncoder().encode(s) };
}


export function buildVaeGraph(spec: VaeGraphSpec): Uint8Array {
  const random = mulberry32(spec.seed ?? 1);
  const nodes: onnxProto.onnx.INodeProto[] = [];
  const inits: onnxProto.onnx.ITensorProto[] = [];
  const he = (fanIn: number, count: number) => {
    const std = Math.sqrt(2 / fanIn);
    const v = new Float32Array(count);
    for (let i = 0; i < count; i++) v[i] = gaussian(random) * std;
    return v;
  };
  const smallBias = (count: number) => Float32Array.from({ length: count }, () => (random() - 0.5) * 0.1);

  const conv = (x: string, out: string, cin: number, cout: number, stride: number) => {
    inits.push(floatInit(`${out}.w`, [cout, cin, 3, 3], he(cin * 9, cout * cin * 9)));
    inits.push(floatInit(`${out}.b`, [cout], smallBias(cout)));
    const pads = stride === 2 ? [0, 0, 1, 1] : [1, 1, 1, 1];
    nodes.push({
      opType: 'Conv',
      name: out,
      input: [x, `${out}.w`, `${out}.b`],
      output: [out],
      attribute: [attrInts('kernel_shape', [3, 3]), attrInts('strides', [stride, stride]), attrInts('pads', pads)],
    });
  };
  const relu = (x: string, out: string) => nodes.push({ opType: 'Relu', name: out, input: [x], output: [out] });

  let x: string = MODEL_IO.input;
  let cin: number = spec.channels;
  spec.filters.forEach((f, i) => {
    conv(x, `enc${i}`, cin, f, 2);
    relu(`enc${i}`, `enc${i}.relu`);
    x = `enc${i}.relu`;
    cin = f;
  });
  const bottom = spec.size >> spec.filters.length;
  const flat = cin * bottom * bottom;
  nodes.push({ opType: 'Flatten', name: 'flatten', input: [x], output: ['flat'], attribute: [attrInt('axis', 1)] });
  inits.push(floatInit('mu.w', [spec.latentDim, flat], he(flat, spec.latentDim * flat)));
  inits.push(floatInit('mu.b', [spec.latentDim], smallBias(spec.latentDim)));
  nodes.push({ opType: 'Gemm', name: 'mu', input: ['flat', 'mu.w', 'mu.b'], output: [MODEL_IO.mu], attribute: [attrInt('transB', 1)] });

  inits.push(floatInit('dec.w', [flat, spec.latentDim], he(spec.latentDim, flat * spec.latentDim)));
  inits.push(floatInit('dec.b', [flat], smallBias(flat)));
  nodes.push({ opType: 'Gemm', name: 'dec', input: [MODEL_IO.mu, 'dec.w', 'dec.b'], output: ['dec'], attribute: [attrInt('transB', 1)] });
  inits.push(int64Init('dec.shape', [-1, cin, bottom, bottom]));
  nodes.push({ opType: 'Reshape', name: 'dec.reshape', input: ['dec', 'dec.shape'], output: ['dec.reshape'] });
  relu('dec.reshape', 'dec.relu');
  x = 'dec.relu';
  inits.push(floatInit('up.scales', [4], new Float32Array([1, 1, 2, 2])));
  // As in export.ts: one Resize + Conv per level, the last Conv back to the image channels.
  const levels = spec.filters.length;
  for (let j = 0; j < levels; j++) {
    const out = j === levels - 1 ? spec.channels : spec.filters[levels - 2 - j]!;
    nodes.push({
      opType: 'Resize',
      name: `up${j}`,
      input: [x, '', 'up.scales'],
      output: [`up${j}`],
      attribute: [attrString('mode', 'nearest'), attrString('coordinate_transformation_mode', 'asymmetric'), attrString('nearest_mode', 'floor')],
    });
    conv(`up${j}`, `dec${j}`, cin, out, 1);
    cin = out;
    if (j < levels - 1) {
      relu(`dec${j}`, `dec${j}.relu`);
      x = `dec${j}.relu`;
    } else {
      x = `dec${j}`;
    }
  }
  nodes.push({ opType: 'Sigmoid', name: 'sigmoid', input: [x], output: [MODEL_IO.recon] });

  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'linewatch-test',
    opsetImport: [{ domain: '', version: 13 }],
    graph: {
      name: 'vae',
      node: nodes,
      initializer: inits,
      input: [floatValueInfo(MODEL_IO.input, ['batch', spec.channels, spec.size, spec.size])],
      output: [
        floatValueInfo(MODEL_IO.recon, ['batch', spec.channels, spec.size, spec.size]),
        floatValueInfo(MODEL_IO.mu, ['batch', spec.latentDim]),
      ],
    },
  });
  return onnx.ModelProto.encode(model).finish();
}

/** Seeded He-initialised weights in export.ts's (TensorFlow) layout, for tests that need no training. */
export function randomVaeWeights(config: VaeConfig, seed: number): VaeWeights {
  const random = mulberry32(seed);
  const tensors: VaeWeights['tensors'] = {};
  for (const [name, shape] of weightShapes(config)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const fanIn = shape.length === 1 ? 1 : shape.slice(0, -1).reduce((a, b) => a * b, 1);
    const std = name.endsWith('.bias') ? 0.01 : Math.sqrt(2 / fanIn);
    tensors[name] = { shape, data: Float32Array.from({ length: size }, () => gaussian(random) * std) };
  }
  return { config: { ...config, filters: [...config.filters] }, tensors };
}
