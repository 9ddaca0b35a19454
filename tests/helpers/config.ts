import { expect } from 'vitest';
import { ConfigError } from '../../src/config/index.js';

/** The `path: message` problems a config load reports; fails the test when it loads. */
export function configProblems(load: () => unknown): string[] {
  try {
    load();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigError);
    return (error as ConfigError).issues.map((issue) => `${issue.path}: ${issue.message}`);
  }
  throw new Error('expected the config to be rejected');
}
