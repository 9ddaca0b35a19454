import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { beforeAll, describe, expect, it } from 'vitest';
import { imageTensor, type ImageTensor } from '../../src/image/tensor.js';
import { EXPORT_OPSET, exportOnnx } from '../../src/toolkit/export.js';
import { MODEL_IO } from '../../src/model/manifest.js';
import { foldUpsampleModel } from '../../src/toolkit/quantize.js';
import { seededRandom } from '../../src/toolkit/train/random.js';
import { SyntheticAnomalies } from '../../src/toolkit/train/synthetic.js';
import { forwardVae, initTf, trainVae, type VaeConfig, type VaeWeights } from '../../src/toolkit/train/vae.js';
import { maxAbsDiff } from '../helpers/arrays.js';

const { onnx } = onnxProto;

/** Smooth random structure with noise, in [0, 1]. */
function testImages(count: number, config: VaeConfig, seed: number): ImageTensor[] {
  const random = seededRandom(seed);
  const { width, height, channels } = config;
  return Array.from({ length: count }, () => {
    const image = imageTensor(width, height, channels);
    const fx = 1 + random() * 3;
    const fy = 1 + random() * 3;
    for (let c = 0; c < channels; c++) {
      const phase = random() * 6;
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < width; x++) {
          const wave = 0.5 + 0.35 * Math.sin((fx * x) / width * 6 + phase) * Math.cos((fy * y) / height * 6);
          image.data[(c * height + y) * width + x] = Math.min(1, Math.max(0, wave + 0.1 * (random() - 0.5)));
        }
      }
    }
    return image;
  });
}

function packed(images: ImageTensor[]): Float32Array {
  const out = new Float32Array(images.reduce((n, image) => n + image.data.length, 0));
  let offset = 0;
  for (const image of images) {
    out.set(image.data, offset);
    offset += image.data.length;
  }
  return out;
}

/** Non-square on purpose: a swapped height/width anywhere in the export breaks the match. */
const CONFIGS: Record<string, VaeConfig> = {
  grey: { width: 24, height: 16, channels: 1, filters: [4, 8], latentDim: 6, beta: 0.1 },
  rgb: { width: 16, height: 24, channels: 3, filters: [4, 6, 8], latentDim: 5, beta: 0.1 },
  'grey + comparator': { width: 24, height: 16, channels: 1, filters: [4, 8], latentDim: 6, beta: 0.1, comparator: { filters: [3, 5] } },
  'rgb + comparator': { width: 16, height: 24, channels: 3, filters: [4, 6, 8], latentDim: 5, beta: 0.1, comparator: { filters: [2, 4, 6] } },
};

beforeAll(async () => {
  await initTf();
});

describe.each(Object.entries(CONFIGS))('exportOnnx (%s)', (_, config) => {
  let weights: VaeWeights;
  let session: ort.InferenceSession;
  /** The graph bundles ship: upsample + conv folded into conv + DepthToSpace. */
  let shipped: ort.InferenceSession;
  const images = testImages(12, config, 4);

  beforeAll(async () => {
    // Briefly trained so that biases and the decoder are no longer at their initial values.
    // The comparator trains on synthetic defects; 3 passes move its weights off their initial values too.
    const anomalies = config.comparator ? new SyntheticAnomalies(images, { share: 0.5 }, 3) : undefined;
    ({ weights } = await trainVae(images, config, { epochs: 3, comparatorEpochs: 3, anomalies, batchSize: 4, learningRate: 3e-3, seed: 9 }));
    session = await ort.InferenceSession.create(exportOnnx(weights));
    shipped = await ort.InferenceSession.create(foldUpsampleModel(exportOnnx(weights)));
  });

  it('declares image -> recon, mu (and anomaly_map with a comparator) with a symbolic batch dimension', () => {
    expect(session.inputNames).toEqual([MODEL_IO.input]);
    const outputs = config.comparator ? [MODEL_IO.mu, MODEL_IO.recon, MODEL_IO.map] : [MODEL_IO.mu, MODEL_IO.recon];
    expect([...session.outputNames].sort()).toEqual(outputs.sort());
    const model = onnx.ModelProto.decode(exportOnnx(weights));
    expect(Number(model.opsetImport[0]!.version)).toBe(EXPORT_OPSET);
    const input = model.graph!.input![0]!.type!.tensorType!.shape!.dim!;
    expect(input.map((d) => d.dimParam || Number(d.dimValue))).toEqual(['batch', config.channels, config.height, config.width]);
    const ops = new Set(model.graph!.node!.map((node) => node.opType));
    const expectedOps = ['Conv', 'Flatten', 'Gemm', 'Relu', 'Reshape', 'Resize', 'Sigmoid', ...(config.comparator ? ['Concat', 'Sub'] : [])];
    expect([...ops].sort()).toEqual(expectedOps.sort());
    const names = model.graph!.node!.map((node) => node.name);
    expect(new Set(names).size).toBe(names.length);
    expect(names).toContain('encoder.conv0');
  });

  it.each([1, 3])('matches forwardVae within 1e-4 for batch %i', async (batch) => {
    const batchImages = images.slice(2, 2 + batch);
    const reference = forwardVae(weights, batchImages);
    const { channels, height, width, latentDim } = config;
    const feeds = { [MODEL_IO.input]: new ort.Tensor('float32', packed(batchImages), [batch, channels, height, width]) };
    for (const graph of [session, shipped]) {
      const results = await graph.run(feeds);
      const recon = results[MODEL_IO.recon]!;
      const mu = results[MODEL_IO.mu]!;
      expect(recon.dims).toEqual([batch, channels, height, width]);
      expect(mu.dims).toEqual([batch, latentDim]);
      expect(maxAbsDiff(recon.data as Float32Array, reference.recon)).toBeLessThan(1e-4);
      expect(maxAbsDiff(mu.data as Float32Array, reference.mu)).toBeLessThan(1e-4);
      if (config.comparator) {
        const map = results[MODEL_IO.map]!;
        expect(map.dims).toEqual([batch, 1, height, width]);
        expect(maxAbsDiff(map.data as Float32Array, reference.map!)).toBeLessThan(1e-4);
      }
    }
    // Not a trivially constant model: images differ in their latent codes and reconstructions.
    if (batch > 1) expect(maxAbsDiff(reference.mu.subarray(0, latentDim), reference.mu.subarray(latentDim, 2 * latentDim))).toBeGreaterThan(1e-3);
  });
});

describe('exportOnnx input checks', () => {
  it('names a missing or misshapen weight', async () => {
    const { weights } = await trainVae(testImages(2, CONFIGS.grey!, 1), CONFIGS.grey!, { epochs: 1, seed: 1 });
    const { ['decoder.dense.bias']: _dropped, ...rest } = weights.tensors;
    expect(() => exportOnnx({ ...weights, tensors: rest })).toThrow(/decoder\.dense\.bias is missing/);
    const bad = { ...weights.tensors, 'encoder.conv0.kernel': { shape: [3, 3, 1, 5], data: new Float32Array(45) } };
    expect(() => exportOnnx({ ...weights, tensors: bad })).toThrow(/encoder\.conv0\.kernel is \[3, 3, 1, 5\].*expected \[3, 3, 1, 4\]/);
  });
});
