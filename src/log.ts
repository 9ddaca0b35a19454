export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

const RANK: Record<LogLevel, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

/**
 * Plain timestamped lines on stderr: journald and `docker logs` keep them as they
 * are, and stdout stays free for the one-line-per-event output people read.
 */
export function createLogger(level: LogLevel = 'info', write: (line: string) => void = (line) => process.stderr.write(`${line}\n`)): Logger {
  const at = (wanted: LogLevel) => (message: string) => {
    if (RANK[wanted] <= RANK[level]) write(`${new Date().toISOString()} ${wanted.padEnd(5)} ${message}`);
  };
  return { error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') };
}

export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} };
