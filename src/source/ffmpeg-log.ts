/** Reading ffmpeg's stderr (run with `-loglevel level+info`): credentials scrubbed, last lines kept, facts extracted. */
import { scrubSecrets } from '../redact.js';

export interface SourceSize {
  width: number;
  height: number;
}

// camera.ts and decode.ts take the scrubber from here: it is the one in src/redact.ts, under its old name.
export { scrubSecrets as scrubCredentials } from '../redact.js';

/** Bounds the partial line kept between chunks, should ffmpeg ever print without newlines. */
const MAX_PARTIAL_LINE = 4096;

/** The last `capacity` lines of a text stream, scrubbed of credentials as they arrive. */
export class LineRing {
  private readonly ring: string[] = [];
  private partial = '';

  /** `rewrite` runs on each line before it is scrubbed (it may put a URL back where ffmpeg names its input pipe). */
  constructor(
    readonly capacity: number = 50,
    private readonly rewrite: (line: string) => string = (line) => line,
  ) {}

  /** Adds a chunk; returns the lines it completed (already scrubbed). ffmpeg ends progress lines with \r. */
  push(chunk: string): string[] {
    const parts = (this.partial + chunk).split(/\r\n|\r|\n/);
    this.partial = (parts.pop() ?? '').slice(-MAX_PARTIAL_LINE);
    const completed: string[] = [];
    for (const part of parts) {
      if (part.trim() === '') continue;
      const line = scrubSecrets(this.rewrite(part));
      completed.push(line);
      this.ring.push(line);
      if (this.ring.length > this.capacity) this.ring.shift();
    }
    return completed;
  }

  /** Completes a trailing line without newline (at process exit). */
  flush(): string[] {
    const rest = this.partial;
    this.partial = '';
    return rest === '' ? [] : this.push(`${rest}\n`);
  }

  lines(): string[] {
    return [...this.ring];
  }

  clear(): void {
    this.ring.length = 0;
    this.partial = '';
  }
}

/**
 * Finds the resolution of the first video stream of the *input* (the output section prints the scaled
 * size in the same format, so the parser tracks which section it is in).
 */
export class SourceSizeParser {
  private section: 'none' | 'input' | 'output' = 'none';
  private found = false;

  /** Returns the source size the first time it appears in this ffmpeg run. */
  observe(line: string): SourceSize | undefined {
    const text = stripLogPrefixes(line);
    if (/^Input #\d+/.test(text)) this.section = 'input';
    else if (/^Output #\d+/.test(text) || /^Stream mapping:/.test(text)) this.section = 'output';
    if (this.found || this.section !== 'input') return undefined;
    if (!/^Stream #\d+:\d+.*?: Video: /.test(text)) return undefined;
    // 2+ digits on each side, so codec tags like "0x31637661" never match.
    const match = /\b(\d{2,5})x(\d{2,5})\b/.exec(text.slice(text.indexOf(': Video: ')));
    if (match === null) return undefined;
    this.found = true;
    return { width: Number(match[1]), height: Number(match[2]) };
  }

  reset(): void {
    this.section = 'none';
    this.found = false;
  }
}

/** Removes "[h264 @ 0x55..] " context and "[error] " level tags. */
export function stripLogPrefixes(line: string): string {
  return line.replace(/^(?:\[[^\]]*\]\s*)+/, '').trim();
}

const UNINFORMATIVE = [/^Conversion failed!?$/, /^Exiting normally/, /^frame=\s*\d+/];

/** The most useful line to explain a failure: the last error/fatal message, else the last line; prefixes removed. */
export function failureDetail(lines: readonly string[]): string | undefined {
  const useful = lines.filter((line) => !UNINFORMATIVE.some((pattern) => pattern.test(stripLogPrefixes(line))));
  const errors = useful.filter((line) => /\[(?:error|fatal|panic)\]/.test(line));
  const pick = errors.at(-1) ?? useful.at(-1);
  return pick === undefined ? undefined : stripLogPrefixes(pick);
}
