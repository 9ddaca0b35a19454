import { Command, CommanderError } from 'commander';
import { formatError, LinewatchError } from '../errors.js';
import { LINEWATCH_VERSION } from '../version.js';

// Each command lives in its own module and adds itself to the program.
import { registerCommands } from './commands.js';

const program = new Command('linewatch')
  .description('Visual anomaly detection on camera streams: a quantized VAE scores frames, events go out over MQTT.')
  .version(LINEWATCH_VERSION)
  .showHelpAfterError()
  .exitOverride();

registerCommands(program);

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    // Help and version exit 0; bad flags are usage errors.
    process.exit(error.exitCode === 0 ? 0 : 2);
  }
  console.error(`linewatch: ${formatError(error)}`);
  process.exit(error instanceof LinewatchError ? error.exitCode : 1);
}
