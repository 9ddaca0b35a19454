import type { Command } from 'commander';
import { App } from '../agent/app.js';
import { fewerFullCollections } from '../agent/heap-tuning.js';
import { describeError } from '../agent/models.js';
import { DEFAULT_CONFIG_FILE, loadConfig } from '../config/index.js';
import { formatError } from '../errors.js';
import { createLogger } from '../log.js';
import { leanImageMemory } from '../publish/snapshot.js';

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('watch the configured cameras, score every frame and publish anomaly events over MQTT')
    .option('-c, --config <file>', 'configuration file (YAML)', DEFAULT_CONFIG_FILE)
    .action(async (flags: { config: string }) => {
      const config = await loadConfig(flags.config);
      const log = createLogger({ level: config.log.level, format: config.log.format });
      leanImageMemory();
      fewerFullCollections();
      const app = new App({ config, log, announce: (line) => console.log(line) });

      let stopping: Promise<void> | undefined;
      const shutdown = (signal: string) => {
        if (stopping) {
          log.warn(`${signal} again: exiting without waiting`);
          process.exit(1);
        }
        log.info(`${signal}: stopping cameras, ending open events, flushing MQTT`);
        stopping = app.stop().then(
          () => {
            log.info('stopped');
            process.exit(0);
          },
          (error: unknown) => {
            log.error(`shutdown failed: ${formatError(error)}`);
            process.exit(1);
          },
        );
      };
      // A promise nobody awaited must not take every camera down with it: log it and carry on.
      // An exception thrown out of an event handler may have left state half-updated: exit, so
      // systemd restarts a clean agent (Restart=always).
      process.on('unhandledRejection', (reason) => log.error(`unhandled rejection (carrying on): ${formatError(reason)}`));
      process.on('uncaughtException', (error) => {
        log.error(`uncaught exception, exiting for a clean restart: ${formatError(error)}`);
        process.exit(1);
      });
      process.on('SIGINT', () => shutdown('SIGINT'));
      process.on('SIGTERM', () => shutdown('SIGTERM'));

      // SIGHUP (systemctl reload): read the config again and swap the models that changed. One
      // reload at a time; a SIGHUP during one runs once more after it, with the file as it is then.
      let reloading: Promise<void> | undefined;
      let reloadAgain = false;
      const reload = async (): Promise<void> => {
        do {
          reloadAgain = false;
          log.info(`SIGHUP: reading ${flags.config} again`);
          try {
            const report = await app.reload(await loadConfig(flags.config));
            for (const swapped of report.swapped) log.info(`config reload: camera ${swapped.camera} runs ${swapped.model.model} (${swapped.model.variant}) now`);
            for (const failed of report.failed) log.error(`config reload: camera ${failed.camera} keeps its model: ${describeError(failed.error)}`);
            if (report.needsRestart.length > 0) {
              log.warn(`config reload: these changes need a restart to apply: ${report.needsRestart.join(', ')}`);
            }
            if (report.swapped.length + report.failed.length + report.needsRestart.length === 0) log.info('config reload: no model changed');
          } catch (error) {
            log.error(`config reload failed, the running config stays: ${formatError(error)}`);
          }
        } while (reloadAgain && !stopping);
      };
      let started = false;
      process.on('SIGHUP', () => {
        if (stopping) return;
        if (!started) {
          log.warn('SIGHUP while starting: ignored (send it again once linewatch runs)');
          return;
        }
        if (reloading) {
          reloadAgain = true;
          return;
        }
        reloading = reload().finally(() => (reloading = undefined));
      });

      await app.start();
      started = true;
      const topic = config.mqtt.baseTopic;
      const broker = new URL(app.mqttUrl);
      console.log(
        `linewatch is watching ${config.cameras.length} camera(s); events go to MQTT ${broker.protocol}//${broker.host} under ${topic}/`,
      );
      console.log(`  subscribe: mosquitto_sub -h ${broker.hostname} -p ${broker.port || 1883} -t '${topic}/#' -v`);
      if (app.healthUrl) console.log(`  status page: ${app.healthUrl}/`);
      console.log('  stop with Ctrl-C');
    });
}
