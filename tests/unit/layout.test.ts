import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

// The import rules the layout promises, checked on the source so that they cannot drift.
const ROOT = path.resolve(import.meta.dirname, '../..');
const SRC = path.join(ROOT, 'src');

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const full = path.join(dir, name);
    return statSync(full).isDirectory() ? filesUnder(full) : full.endsWith('.ts') ? [full] : [];
  });
}

/** Static imports only (`import ... from`, `export ... from`); `await import()` is how a command defers a heavy module. */
function staticImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/^\s*(?:import|export)\s(?!type\s)[^;]*?from\s+'([^']+)'/gms)].map((match) => match[1]!);
}

function resolveLocal(from: string, specifier: string): string | undefined {
  if (!specifier.startsWith('.')) return undefined;
  return path.resolve(path.dirname(from), specifier).replace(/\.js$/, '.ts');
}

const relative = (file: string) => path.relative(ROOT, file);
const ALL = filesUnder(SRC);
const isToolkit = (file: string) => relative(file).startsWith('src/toolkit/');
const isCli = (file: string) => relative(file).startsWith('src/cli/');

/** Every file reachable from `entry` through static imports. */
function reachable(entry: string): Set<string> {
  const seen = new Set<string>();
  const visit = (file: string) => {
    if (seen.has(file)) return;
    seen.add(file);
    for (const specifier of staticImports(file)) {
      const target = resolveLocal(file, specifier);
      if (target) visit(target);
    }
  };
  visit(entry);
  return seen;
}

describe('source layout', () => {
  it('no import runs from the runtime into the toolkit (training, export, quantization, evaluation)', () => {
    const offending = ALL.filter((file) => !isToolkit(file) && !isCli(file)).flatMap((file) =>
      staticImports(file)
        .map((specifier) => resolveLocal(file, specifier))
        .filter((target): target is string => target !== undefined && isToolkit(target))
        .map((target) => `${relative(file)} -> ${relative(target)}`),
    );
    expect(offending).toEqual([]);
  });

  it('the agent (`linewatch run`) loads nothing from the toolkit', () => {
    const files = [...reachable(path.join(SRC, 'cli/run.ts'))];
    expect(files.filter(isToolkit).map(relative)).toEqual([]);
  });

  it('TensorFlow.js is loaded only when `train` runs (no static import path from the CLI)', () => {
    const files = [...reachable(path.join(SRC, 'cli/index.ts'))];
    const tf = files.filter((file) => staticImports(file).some((specifier) => specifier.startsWith('@tensorflow/')));
    expect(tf.map(relative)).toEqual([]);
  });

  it('scoring/ imports nothing from model/ (a bundle builds its scorer; the scorer knows no bundle)', () => {
    const upward = ALL.filter((file) => relative(file).startsWith('src/scoring/')).flatMap((file) =>
      [...readFileSync(file, 'utf8').matchAll(/from\s+'([^']+)'/g)]
        .map((match) => resolveLocal(file, match[1]!))
        .filter((target): target is string => target !== undefined && relative(target).startsWith('src/model/'))
        .map((target) => `${relative(file)} -> ${relative(target)}`),
    );
    expect(upward).toEqual([]);
  });

  it('exactly one file imports onnxruntime', () => {
    const importers = ALL.filter((file) => staticImports(file).some((specifier) => specifier.startsWith('onnxruntime')));
    expect(importers.map(relative)).toEqual(['src/model/onnx.ts']);
  });

  it('src/ holds no benchmark code and nothing in it imports bench/', () => {
    expect(ALL.filter((file) => relative(file).includes('/bench/')).map(relative)).toEqual([]);
    const toBench = ALL.filter((file) => staticImports(file).some((specifier) => /(^|\/)bench\//.test(specifier)));
    expect(toBench.map(relative)).toEqual([]);
  });

  it('library code logs through the injected logger, not console (the CLI prints its output)', () => {
    const printing = ALL.filter((file) => !isCli(file) && /\bconsole\.(log|warn|error|info|debug)\(/.test(readFileSync(file, 'utf8')));
    expect(printing.map(relative)).toEqual([]);
  });

  it('package.json: every dependency is used by src/, none is the package itself (test-only ones are devDependencies)', () => {
    const manifest = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { name: string; dependencies: Record<string, string> };
    const used = new Set(ALL.flatMap((file) => [...readFileSync(file, 'utf8').matchAll(/(?:from\s+|import\()\s*'([^'.][^']*)'/g)].map((m) => m[1]!)));
    const isUsed = (name: string) => [...used].some((specifier) => specifier === name || specifier.startsWith(`${name}/`));
    expect(Object.keys(manifest.dependencies).filter((name) => name === manifest.name || !isUsed(name))).toEqual([]);
  });
});
