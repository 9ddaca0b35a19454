import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

/**
 * The bare specifiers node resolves while importing `entry` (dist build), recorded by a module.register()
 * resolve hook in a fresh process: what a module costs in heap is only paid by those that load it.
 */
function packagesImportedBy(entry: string): string[] {
  const hook = `data:text/javascript,${encodeURIComponent(
    'export async function resolve(specifier, context, next) { if (!/^[.\\/]|^node:|^file:|^data:/.test(specifier)) process.stderr.write("IMPORT " + specifier + "\\n"); return next(specifier, context); }',
  )}`;
  const register = `import { register } from 'node:module'; register(${JSON.stringify(hook)});`;
  const result = spawnSync(process.execPath, ['--import', `data:text/javascript,${encodeURIComponent(register)}`, '--input-type=module', '-e', `await import(${JSON.stringify(entry)});`], {
    encoding: 'utf8',
  });
  expect(result.status, result.stderr).toBe(0);
  return [...new Set(result.stderr.split('\n').filter((line) => line.startsWith('IMPORT ')).map((line) => line.slice('IMPORT '.length)))];
}

describe('what `linewatch run` loads up front', () => {
  it('leaves the embedded broker (aedes) and Sparkplug (sparkplug-payload) unloaded until a config asks for them', () => {
    const imported = packagesImportedBy(new URL('../../dist/agent/app.js', import.meta.url).href);
    expect(imported).toContain('mqtt'); // the hook sees the agent's packages
    expect(imported).not.toContain('aedes');
    expect(imported).not.toContain('sparkplug-payload');
  });
});
