import { pino, type DestinationStream, type Logger as PinoLogger } from 'pino';
import { scrubSecrets } from './redact.js';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

/**
 * The one logger every component receives. Messages are plain sentences; the
 * structure (level, time, component, camera) travels as fields, so `json` output
 * can be filtered by camera while `text` stays readable in journald.
 */
export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  /** A logger whose lines carry these fields (e.g. `{ camera: 'line1' }`). */
  child(fields: Record<string, string>): Logger;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** `text`: one readable line per message; `json`: pino's JSON lines. */
  format?: LogFormat;
  /** Where lines go (without newline); default stderr, so stdout stays for the event lines people read. */
  write?: (line: string) => void;
}

const TEXT_LEVELS: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'warn', 50: 'error', 60: 'fatal' };
// pino's own fields; the rest are the bindings of child loggers.
const PINO_FIELDS = new Set(['level', 'time', 'msg', 'pid', 'hostname']);

/** pino's JSON line as `<ISO time> <level> [field=value ...] message`, the format journald users grep. */
export function formatTextLine(json: string): string {
  const record = JSON.parse(json) as Record<string, unknown>;
  const level = (TEXT_LEVELS[record.level as number] ?? String(record.level)).padEnd(5);
  const fields = Object.entries(record)
    .filter(([key]) => !PINO_FIELDS.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  const prefix = fields.length > 0 ? `[${fields.join(' ')}] ` : '';
  return `${new Date(record.time as number).toISOString()} ${level} ${prefix}${String(record.msg ?? '')}`;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const write = options.write ?? ((line: string) => process.stderr.write(`${line}\n`));
  const format = options.format ?? 'text';
  // A synchronous destination: a line is out before the call returns, so the last
  // words before a crash or an exit are never lost in a buffer. Every line passes
  // the credential scrubber, whatever a component forgot to scrub.
  const destination: DestinationStream = {
    write: (chunk: string) => {
      const line = chunk.endsWith('\n') ? chunk.slice(0, -1) : chunk;
      write(scrubSecrets(format === 'json' ? line : formatTextLine(line)));
    },
  };
  return wrap(pino({ level: options.level ?? 'info', base: undefined, timestamp: pino.stdTimeFunctions.epochTime }, destination));
}

function wrap(logger: PinoLogger): Logger {
  return {
    error: (message) => logger.error(message),
    warn: (message) => logger.warn(message),
    info: (message) => logger.info(message),
    debug: (message) => logger.debug(message),
    child: (fields) => wrap(logger.child(fields)),
  };
}

export const silentLogger: Logger = {
  error() {},
  warn() {},
  info() {},
  debug() {},
  child: () => silentLogger,
};

/** Collects lines in memory (tests, and commands that print a log at the end). */
export function memoryLogger(level: LogLevel = 'debug'): Logger & { lines: string[] } {
  const lines: string[] = [];
  return Object.assign(createLogger({ level, write: (line) => lines.push(line) }), { lines });
}

let fallback: Logger | undefined;
/** For components used without an injected logger (library use, tests): info and above on stderr. */
export function defaultLogger(): Logger {
  fallback ??= createLogger();
  return fallback;
}
