import { existsSync } from 'node:fs';
import type { Command } from 'commander';
import { formatProbe, probe } from '../agent/probe.js';
import { DEFAULT_CONFIG_FILE, loadConfig, resolveCameras, type CameraConfig } from '../config/index.js';

export function registerProbe(program: Command): void {
  program
    .command('probe')
    .description(
      'report what this box offers (CPU features, memory, ffmpeg hardware decoding, onnxruntime providers) and time each configured model on its providers; exits 2 when a provider a camera needs is missing',
    )
    .option('-c, --config <file>', `configuration whose models to load and time (default ${DEFAULT_CONFIG_FILE} when it exists)`)
    .option('--json', 'print one JSON object (see ProbeReport in src/agent/probe.ts) instead of text', false)
    .action(async (flags: { config?: string; json: boolean }) => {
      // Only the default may be absent: a box being checked before it has a config still gets the hardware part.
      const file = flags.config ?? (existsSync(DEFAULT_CONFIG_FILE) ? DEFAULT_CONFIG_FILE : undefined);
      let cameras: CameraConfig[] = [];
      let ffmpegPath = 'ffmpeg';
      if (file !== undefined) {
        const config = await loadConfig(file);
        cameras = resolveCameras(config);
        ffmpegPath = config.ffmpeg.path;
      }
      const report = await probe({ ffmpegPath, configFile: file ?? null, cameras });
      if (flags.json) console.log(JSON.stringify(report, null, 2));
      else for (const line of formatProbe(report)) console.log(line);
      if (report.problems.length > 0) {
        if (flags.json) for (const problem of report.problems) console.error(`linewatch: ${problem}`);
        process.exitCode = 2;
      }
    });
}
