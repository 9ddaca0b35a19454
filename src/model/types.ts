/**
 * What a loaded model does, independent of the runtime behind it
 * (only src/model/onnx.ts knows about onnxruntime).
 */
export interface ModelOutputs {
  /** Reconstructions, `count` images of channels x height x width (NCHW), values in [0,1]. */
  readonly recon: Float32Array;
  /** Latent means, `count` x latentDim. */
  readonly mu: Float32Array;
  /** The comparator's anomaly map (logits), `count` x height x width; absent for models without a comparator. */
  readonly map?: Float32Array;
  /** That map as blurred probabilities (OnnxModelOptions.mapBlur), packed the same way; absent unless asked for. */
  readonly blurredMap?: Float32Array;
}

export interface InferenceModel {
  /** Execution providers actually in use, in order (e.g. ['cpu']). */
  readonly providers: readonly string[];
  /** Runs `count` images packed NCHW in `input` (float32, [0,1]). */
  run(input: Float32Array, count: number): Promise<ModelOutputs>;
  dispose(): Promise<void>;
}
