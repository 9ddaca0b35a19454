import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.js';

describe('the structured logger (pino)', () => {
  it('writes readable text lines with the child fields, at or above its level', () => {
    const lines: string[] = [];
    const log = createLogger({ level: 'info', write: (line) => lines.push(line) });
    log.debug('not shown');
    log.info('started');
    log.child({ camera: 'line1' }).warn('reconnecting');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info  started$/);
    expect(lines[1]).toMatch(/ warn  \[camera=line1\] reconnecting$/);
  });

  it('writes JSON lines whose fields a log collector can filter on', () => {
    const lines: string[] = [];
    createLogger({ format: 'json', write: (line) => lines.push(line) }).child({ camera: 'line1' }).error('ffmpeg exited');
    expect(JSON.parse(lines[0]!)).toMatchObject({ level: 50, camera: 'line1', msg: 'ffmpeg exited' });
  });

  it('scrubs credentials from every line, in both formats, whatever the caller forgot', () => {
    for (const format of ['text', 'json'] as const) {
      const lines: string[] = [];
      const log = createLogger({ format, write: (line) => lines.push(line) });
      log.error('cannot open rtsp://admin:hunter2@10.0.0.5/stream?pwd=s3cret&channel=1');
      expect(lines[0]).not.toMatch(/hunter2|s3cret/);
      expect(lines[0]).toMatch(/rtsp:\/\/\*\*\*@10\.0\.0\.5\/stream\?pwd=\*\*\*&channel=1/);
    }
  });
});
