import type { Command } from 'commander';
import { registerEval } from './eval.js';
import { registerProbe } from './probe.js';
import { registerQualityProfile } from './quality-profile.js';
import { registerReplay } from './replay.js';
import { registerRun } from './run.js';
import { registerTrain } from './train.js';
import { registerValidateConfig } from './validate-config.js';

/** Every CLI command, in the order `--help` lists them. */
export function registerCommands(program: Command): void {
  registerRun(program);
  registerValidateConfig(program);
  registerTrain(program);
  registerQualityProfile(program);
  registerEval(program);
  registerReplay(program);
  registerProbe(program);
}
