import { UsageError } from '../errors.js';
import type { ConfigIssue } from './substitute.js';

/**
 * A config file that cannot be used. The message lists every problem found,
 * one `path: message` per line, so a user fixes them in one pass.
 */
export class ConfigError extends UsageError {
  readonly file: string;
  readonly issues: readonly ConfigIssue[];

  constructor(file: string, issues: readonly ConfigIssue[], options: { hint?: string; cause?: unknown } = {}) {
    const count = issues.length === 1 ? '1 problem' : `${issues.length} problems`;
    super(`config ${file} is invalid (${count}):\n${issues.map((issue) => `  ${issue.path}: ${issue.message}`).join('\n')}`, {
      hint: options.hint ?? 'fix the lines above; `linewatch validate-config <file>` checks a file without starting the agent',
      cause: options.cause,
    });
    this.file = file;
    this.issues = issues;
  }
}
