/**
 * Fault 10: the warning that announces "ffmpeg's last lines" must carry them. The agent's
 * logger takes one string per line (src/log.ts), and the camera pipeline hands the source
 * exactly that, so anything passed beside the message never reaches the log.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { memoryLogger } from '../../src/log.js';
import type { CameraSource, SourceLogger } from '../../src/source/camera.js';
import { cameraFactory, waitForStatus } from '../helpers/camera.js';

const haveFfmpeg = spawnSync('ffmpeg', ['-version'], { stdio: 'ignore' }).status === 0;
if (!haveFfmpeg) console.warn('ffmpeg-stderr-log tests skipped: ffmpeg is not installed');

const camera = cameraFactory('cam1');
const dir = mkdtempSync(path.join(tmpdir(), 'linewatch-stderr-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The agent's own logger, wired to the source the way src/camera-pipeline.ts wires it: the message only. */
function agentLog(): { log: SourceLogger; lines: string[] } {
  const logger = memoryLogger('debug');
  return { log: (level, message) => logger[level](message), lines: logger.lines };
}

async function firstFailure(source: CameraSource, lines: string[]): Promise<string> {
  await source.start();
  await waitForStatus(source, (change) => change.retryInMs !== undefined, 15_000, 'the first retry');
  const warnings = lines.filter((line) => / warn /.test(line));
  expect(warnings, lines.join('\n')).toHaveLength(1);
  return warnings[0]!;
}

describe.skipIf(!haveFfmpeg)('the failure warning carries ffmpeg\'s last stderr lines', () => {
  it('a real ffmpeg on a file that is not a video: every line it printed, not only the one the reason picked', async () => {
    const notVideo = path.join(dir, 'notes.mp4');
    writeFileSync(notVideo, 'these are notes, not a video\n');
    const { log, lines } = agentLog();
    const source = camera({ url: notVideo, width: 32, height: 32, loop: true, backoff: { initialMs: 60_000, maxMs: 60_000, jitter: 0 }, log });
    const warning = await firstFailure(source, lines);

    const stderr = source.stderrTail().filter((line) => !line.startsWith('--- ffmpeg started'));
    // ffmpeg 5 says "moov atom not found", then "...: Invalid data found when processing input".
    expect(stderr.length, stderr.join('\n')).toBeGreaterThanOrEqual(2);
    for (const line of stderr.slice(-3)) expect(warning).toContain(line);
    expect(warning).toContain('Invalid data found when processing input');
    expect(warning).toMatch(/moov atom not found/);
    // One log line, so journald keeps level and time on all of it.
    expect(warning).not.toContain('\n');
  });

  it('a final line without a trailing newline is there too, scrubbed of credentials', async () => {
    const fake = path.join(dir, 'fake-ffmpeg.sh');
    // Stands in for an ffmpeg killed mid-line; the URL carries credentials the log must not.
    writeFileSync(
      fake,
      [
        '#!/bin/sh',
        "printf '[error] rtsp://admin:hunter2@10.0.0.7/live: 401 Unauthorized\\n' >&2",
        "printf '[info] giving up on rtsp://admin:hunter2@10.0.0.7/live after 3 tries' >&2",
        'exit 1',
        '',
      ].join('\n'),
    );
    chmodSync(fake, 0o755);
    const { log, lines } = agentLog();
    const source = camera({
      url: 'rtsp://admin:hunter2@10.0.0.7/live',
      width: 32,
      height: 32,
      ffmpegPath: fake,
      ffmpegMajorVersion: 5,
      backoff: { initialMs: 60_000, maxMs: 60_000, jitter: 0 },
      log,
    });
    const warning = await firstFailure(source, lines);

    expect(warning).toContain('401 Unauthorized');
    expect(warning).toContain('[info] giving up on rtsp://***@10.0.0.7/live after 3 tries');
    expect(lines.join('\n')).not.toContain('hunter2');
  });
});
