import { UsageError } from '../errors.js';
import { scrubSecrets } from '../redact.js';
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
    // Messages quote URLs and values from the file, which may carry credentials; the issues are scrubbed too, for callers that list them.
    const scrubbed = issues.map((issue) => ({ path: issue.path, message: scrubSecrets(issue.message) }));
    super(scrubSecrets(`config ${file} is invalid (${count}):\n${scrubbed.map((issue) => `  ${issue.path}: ${issue.message}`).join('\n')}`), {
      hint: scrubSecrets(options.hint ?? 'fix the lines above; `linewatch validate-config <file>` checks a file without starting the agent'),
      cause: options.cause,
    });
    this.file = file;
    this.issues = scrubbed;
  }
}
