import type { Command } from 'commander';
import { App } from '../agent/app.js';
import { DEFAULT_CONFIG_FILE, loadConfig } from '../config/index.js';
import { formatError } from '../errors.js';
import { createLogger } from '../log.js';

export function registerRun(program: Command): void {
  program
    .command('run')
    .description('watch the configured cameras, score every frame and publish anomaly events over MQTT')
    .option('-c, --config <file>', 'configuration file (YAML)', DEFAULT_CONFIG_FILE)
    .action(async (flags: { config: string }) => {
      const config = await loadConfig(flags.config);
      const log = createLogger({ level: config.log.level, format: config.log.format });
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

      await app.start();
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
