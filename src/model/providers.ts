import { UsageError } from '../errors.js';

/**
 * The one provider table: linewatch provider names -> onnxruntime execution
 * providers. The config schema takes its allowed `providers` from here, so a name
 * the model loader would refuse is a config error, not a start-up failure. It
 * lives apart from onnx.ts so that checking a config does not load onnxruntime's
 * native library.
 *
 * Several names may mean the same provider (`directml` is `dml`). Whether a
 * provider can actually start depends on the platform and the onnxruntime-node
 * build; the ones it cannot start fall back to the next, and finally to the CPU.
 * Providers onnxruntime-node is never built with (rocm, migraphx) are not listed.
 */
export const PROVIDERS = Object.freeze({
  cpu: 'cpu',
  cuda: 'cuda',
  tensorrt: 'tensorrt',
  openvino: 'openvino',
  coreml: 'coreml',
  dml: 'dml',
  directml: 'dml',
  webgpu: 'webgpu',
  qnn: 'qnn',
  xnnpack: 'xnnpack',
} as const);

export type ProviderName = keyof typeof PROVIDERS;

/** Every name a config or `--providers` may use, in table order. */
export const PROVIDER_NAMES = Object.keys(PROVIDERS) as [ProviderName, ...ProviderName[]];

/** Resolve user-facing provider names into onnxruntime names; unknown names are a usage error. */
export function resolveProviders(names: readonly string[] = ['cpu']): string[] {
  const table: Readonly<Record<string, string>> = PROVIDERS;
  const resolved: string[] = [];
  for (const raw of names) {
    const name = raw.trim().toLowerCase();
    const provider = table[name];
    if (provider === undefined) {
      throw new UsageError(`unknown execution provider "${raw}"`, {
        hint: `use one of: ${PROVIDER_NAMES.join(', ')}`,
      });
    }
    if (!resolved.includes(provider)) resolved.push(provider);
  }
  if (!resolved.includes('cpu')) resolved.push('cpu');
  return resolved;
}
