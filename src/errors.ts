/**
 * Errors a user can act on. `message` says what is wrong, `hint` how to fix it;
 * the CLI prints both and exits with `exitCode` instead of a stack trace.
 */
export class LinewatchError extends Error {
  override readonly name: string = 'LinewatchError';
  readonly hint?: string;
  readonly exitCode: number;

  constructor(message: string, options: { hint?: string; exitCode?: number; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.hint = options.hint;
    this.exitCode = options.exitCode ?? 1;
  }
}

/** Invalid user input: bad flags, bad config, missing files. Exit code 2. */
export class UsageError extends LinewatchError {
  override readonly name: string = 'UsageError';
  constructor(message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, { ...options, exitCode: 2 });
  }
}

/** A model bundle that cannot be used: missing, truncated, foreign or of another format version. */
export class ModelError extends LinewatchError {
  override readonly name: string = 'ModelError';
  readonly file?: string;
  constructor(message: string, options: { file?: string; hint?: string; cause?: unknown } = {}) {
    super(message, { ...options, exitCode: 2 });
    this.file = options.file;
  }
}

export function formatError(error: unknown): string {
  if (error instanceof LinewatchError) {
    return error.hint ? `${error.message}\n  hint: ${error.hint}` : error.message;
  }
  if (error instanceof Error) return error.stack ?? error.message;
  return String(error);
}
