import { defineConfig } from 'vitest/config';
import NoSkipsInCi from './tests/support/no-skips-in-ci.js';

// Two cores: run test files two at a time in child processes (onnxruntime and
// tfjs-wasm keep native state that is safer in forks than in worker threads).
export default defineConfig({
  test: {
    include: ['tests/**/*.test.ts'],
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default', new NoSkipsInCi()],
  },
});
