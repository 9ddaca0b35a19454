import { afterEach, describe, expect, it, vi } from 'vitest';
import type { TestModule } from 'vitest/node';
import NoSkipsInCi from '../support/no-skips-in-ci.js';

/** The reporter sees modules through this one method; a stand-in at the very edge. */
function moduleWith(skipped: string[]): TestModule {
  return {
    moduleId: `${process.cwd()}/tests/e2e/agent.test.ts`,
    children: { allTests: (state: string) => (state === 'skipped' ? skipped.map((fullName) => ({ fullName })) : [])[Symbol.iterator]() },
  } as unknown as TestModule;
}

describe('NoSkipsInCi (the reporter .ci/run relies on)', () => {
  const savedCi = process.env.CI;
  const savedExitCode = process.exitCode;
  afterEach(() => {
    process.env.CI = savedCi;
    process.exitCode = savedExitCode;
    vi.restoreAllMocks();
  });

  it('fails the run under CI=true when a test was skipped, naming it', () => {
    const written: string[] = [];
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => (written.push(String(chunk)), true));
    process.env.CI = 'true';
    process.exitCode = 0;
    new NoSkipsInCi().onTestRunEnd([moduleWith(['linewatch run against mosquitto > publishes events'])]);
    expect(process.exitCode).toBe(1);
    expect(written.join('')).toContain('tests/e2e/agent.test.ts > linewatch run against mosquitto > publishes events');
  });

  it('lets skips pass outside CI, and a CI run without skips pass', () => {
    process.exitCode = 0;
    process.env.CI = '';
    new NoSkipsInCi().onTestRunEnd([moduleWith(['x'])]);
    process.env.CI = 'true';
    new NoSkipsInCi().onTestRunEnd([moduleWith([])]);
    expect(process.exitCode).toBe(0);
  });
});
