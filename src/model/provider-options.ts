/**
 * Per-provider options of the config (`providerOptions`) -> onnxruntime's execution provider entries.
 * Apart from onnx.ts so that it can be unit-tested (and read by the config) without loading onnxruntime.
 *
 * What the stock onnxruntime-node binding reads of an entry object (js/node/src/session_options_helper.cc,
 * 1.2x-1.30): `name`, and `deviceId` for cuda, tensorrt and dml. The TensorRT switches below are put on the
 * entry under onnxruntime's own TensorRT provider-option keys (`trt_fp16_enable`, ... as strings, the form
 * `UpdateTensorRTProviderOptions` takes); the stock binding ignores them, a binding built with the small patch
 * in docs/jetson.md passes them on. `tensorrtOptionsIgnoredNote` says so in the log.
 */

export interface CudaProviderSettings {
  /** GPU index (default 0). */
  deviceId?: number;
}

export interface TensorRtProviderSettings {
  deviceId?: number;
  /** Let TensorRT pick fp16 kernels. */
  fp16?: boolean;
  /** Let TensorRT pick int8 kernels (the QDQ int8 model carries its own scales). */
  int8?: boolean;
  /** Folder for built engines: set, engines are cached there and the next start skips the (minutes-long on a Jetson) build. */
  engineCacheDir?: string;
  /** Most scratch memory TensorRT may use while building, MiB. */
  workspaceMiB?: number;
}

export interface ProviderSettings {
  cuda?: CudaProviderSettings;
  tensorrt?: TensorRtProviderSettings;
}

/** One entry of `SessionOptions.executionProviders`: a name, or an object with a name. */
export type ExecutionProviderEntry = string | ({ readonly name: string } & Record<string, string | number>);

/** TensorRT keys beyond deviceId that this module may set; the stock binding ignores them. */
export const TENSORRT_EXTRA_KEYS = [
  'trt_fp16_enable',
  'trt_int8_enable',
  'trt_engine_cache_enable',
  'trt_engine_cache_path',
  'trt_max_workspace_size',
] as const;

/**
 * The execution provider list for onnxruntime: a provider without settings stays a plain name (the CPU path is
 * exactly what it was), one with settings becomes `{ name, deviceId?, trt_*? }`.
 */
export function buildExecutionProviders(providers: readonly string[], settings: ProviderSettings = {}): ExecutionProviderEntry[] {
  return providers.map((name): ExecutionProviderEntry => {
    if (name === 'cuda' && settings.cuda !== undefined) {
      const { deviceId } = settings.cuda;
      return deviceId === undefined ? 'cuda' : { name: 'cuda', deviceId };
    }
    if (name === 'tensorrt' && settings.tensorrt !== undefined) {
      const trt = settings.tensorrt;
      const entry: Record<string, string | number> = {};
      if (trt.deviceId !== undefined) entry.deviceId = trt.deviceId;
      if (trt.fp16 !== undefined) entry.trt_fp16_enable = trt.fp16 ? '1' : '0';
      if (trt.int8 !== undefined) entry.trt_int8_enable = trt.int8 ? '1' : '0';
      if (trt.engineCacheDir !== undefined) {
        entry.trt_engine_cache_enable = '1';
        entry.trt_engine_cache_path = trt.engineCacheDir;
      }
      if (trt.workspaceMiB !== undefined) entry.trt_max_workspace_size = String(Math.round(trt.workspaceMiB * 1024 * 1024));
      return Object.keys(entry).length === 0 ? 'tensorrt' : { name: 'tensorrt', ...entry };
    }
    return name;
  });
}

/** A log line when TensorRT switches were asked for: only a patched onnxruntime-node binding applies them. */
export function tensorrtOptionsIgnoredNote(entries: readonly ExecutionProviderEntry[]): string | undefined {
  const trt = entries.find((entry): entry is Exclude<ExecutionProviderEntry, string> => typeof entry !== 'string' && entry.name === 'tensorrt');
  if (trt === undefined) return undefined;
  const keys = TENSORRT_EXTRA_KEYS.filter((key) => key in trt);
  if (keys.length === 0) return undefined;
  return `TensorRT options ${keys.join(', ')} are passed to onnxruntime-node, but its stock binding reads only deviceId of them; ` +
    'they take effect with a binding built as docs/jetson.md describes';
}
