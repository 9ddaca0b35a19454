import type { Reporter, TestModule } from 'vitest/node';

/**
 * Under CI=true a skipped test is a failure: the suites skip themselves when a real
 * component (mosquitto, the RTSP server, the shared data) is missing, which is
 * convenient on a laptop but would let CI go green without the checks that matter.
 */
export default class NoSkipsInCi implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    if (process.env.CI !== 'true') return;
    const skipped = testModules.flatMap((module) =>
      [...module.children.allTests('skipped')].map((test) => `${module.moduleId.replace(`${process.cwd()}/`, '')} > ${test.fullName}`),
    );
    if (skipped.length === 0) return;
    process.stderr.write(
      `\nCI=true: ${skipped.length} test(s) were skipped, which CI counts as failures (a real component or the shared data is missing; run scripts/setup.sh and check ../shared):\n` +
        skipped.map((name) => `  - ${name}\n`).join(''),
    );
    process.exitCode = 1;
  }
}
