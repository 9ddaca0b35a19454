/**
 * Fault 5: a YAML alias bomb ("billion laughs") in the config crashed the CLI with a
 * stack trace and exit 1, which systemd answers with a restart every 5 s. It must be
 * an ordinary config error: the file named, what to do about it, no stack trace.
 * Through the real CLI (bin/linewatch.js runs dist/: build first).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/config/index.js';
import { REPO, runCli } from '../helpers/agent.js';

const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-config-limits-'));
/** The documented limit (CONFIG_LIMITS.maxBytes in src/config/load.ts), written out so this test also runs against code without it. */
const MAX_CONFIG_BYTES = 1024 * 1024;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Nine levels of nine aliases each: 9^9 (387 million) strings once expanded, from ten short lines. */
const BILLION_LAUGHS = [
  'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
  ...'bcdefghi'.split('').map((name, index) => {
    const previous = 'abcdefghi'[index]!;
    return `${name}: &${name} [${Array(9).fill(`*${previous}`).join(', ')}]`;
  }),
  'cameras: *i',
  '',
].join('\n');

function expectOneClearConfigError(output: string, file: string, problem: RegExp): void {
  expect(output).not.toMatch(/^\s+at /m);
  expect(output).not.toMatch(/ReferenceError|RangeError|TypeError/);
  expect(output.match(/is invalid/g), output).toHaveLength(1);
  expect(output).toContain(`config ${file} is invalid (1 problem):`);
  expect(output).toMatch(problem);
  expect(output).toMatch(/hint: /);
}

describe('config parse limits', () => {
  const bomb = path.join(dir, 'bomb.yaml');
  writeFileSync(bomb, BILLION_LAUGHS);
  const huge = path.join(dir, 'huge.yaml');
  // A comment line repeated past the limit: valid YAML, so only the size can stop it.
  writeFileSync(huge, `${'# padding padding padding padding padding padding padding padding\n'.repeat(Math.ceil((MAX_CONFIG_BYTES + 1) / 66))}cameras: []\n`);

  it('linewatch run -c bomb.yaml: exit 2 with one config error naming the file and the aliases, no stack trace', () => {
    const result = runCli(['run', '-c', bomb], { timeoutMs: 30_000 });
    expect(result.code, result.output).toBe(2);
    expect(result.stdout).toBe('');
    expectOneClearConfigError(result.stderr, bomb, /\(yaml\): aliases \(\*name\) expand past the limit of \d+/);
    expect(result.stderr).toMatch(/billion laughs/);
  });

  it('linewatch validate-config bomb.yaml: the same message, with its "invalid file" status 1', () => {
    const result = runCli(['validate-config', bomb], { timeoutMs: 30_000 });
    expect(result.code, result.output).toBe(1);
    expect(result.stdout).toBe('');
    expectOneClearConfigError(result.stderr, bomb, /\(yaml\): aliases \(\*name\) expand past the limit of \d+/);
  });

  it('a file over the size limit is refused before it is parsed', () => {
    const result = runCli(['run', '--config', huge], { timeoutMs: 30_000 });
    expect(result.code, result.output).toBe(2);
    expectOneClearConfigError(result.stderr, huge, /\(file\): the file is more than 1 MiB; a config file may be at most 1 MiB/);
    expect(() => parseConfig('#'.repeat(MAX_CONFIG_BYTES + 1), { file: 'x.yaml' })).toThrow(ConfigError);
  });

  it('ordinary use of anchors and aliases is still fine: twenty cameras sharing one block', () => {
    const text = [
      'cameras:',
      '  - { name: cam0, url: clip.mp4, model: m, debounce: &debounce { k: 2, n: 4 } }',
      ...Array.from({ length: 20 }, (_, index) => `  - { name: cam${index + 1}, url: clip.mp4, model: m, debounce: *debounce }`),
    ].join('\n');
    const config = parseConfig(text, { baseDir: REPO, env: {}, fileExists: () => true });
    expect(config.cameras).toHaveLength(21);
    expect(config.cameras.every((camera) => camera.debounce?.k === 2)).toBe(true);
  });
});
