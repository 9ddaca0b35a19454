import { spawn } from 'node:child_process';
import { defaultLogger } from '../log.js';

/**
 * Readiness, status and watchdog notifications to systemd (sd_notify protocol).
 *
 * Node has no AF_UNIX datagram sockets (`dgram` is UDP only), and writing the
 * datagram through a native addon is a build dependency for every install, so this
 * runs systemd's own `systemd-notify` binary, which is present wherever systemd is.
 * The message then comes from a child process, not the main PID, so the unit needs
 * `NotifyAccess=all` (systemd/linewatch.service sets it). Since systemd 246
 * `systemd-notify` waits for the manager to process the message (BARRIER=1) before
 * exiting, so the child's short life does not lose the message.
 *
 * Outside systemd ($NOTIFY_SOCKET unset) every method is a no-op.
 */

export interface SystemdNotifierOptions {
  /** Where $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID are read; also the child's environment. */
  env?: NodeJS.ProcessEnv;
  /** The systemd-notify executable. */
  command?: string;
  /** Problems talking to systemd; they never throw, since a lost ping must not stop the agent. */
  onWarning?: (message: string) => void;
  /** Clock for watchdog throttling (ms). */
  now?: () => number;
  /** Kill a systemd-notify that has not finished after this long. */
  timeoutMs?: number;
  /** This process's pid, compared with $WATCHDOG_PID. */
  pid?: number;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * How often to ping the watchdog: half of $WATCHDOG_USEC (systemd's own advice), or
 * null when the watchdog is off or meant for another process ($WATCHDOG_PID).
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid: number = process.pid): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return null;
  return usec / 2 / 1000;
}

export class SystemdNotifier {
  /** True when running under systemd with a notify socket. */
  readonly enabled: boolean;
  /** Minimum gap between two watchdog pings; null when systemd expects none. */
  readonly watchdogIntervalMs: number | null;

  readonly #env: NodeJS.ProcessEnv;
  readonly #command: string;
  readonly #warn: (message: string) => void;
  readonly #now: () => number;
  readonly #timeoutMs: number;
  #usable = true;
  #queue: Promise<void> = Promise.resolve();
  #watchdogInFlight = false;
  #lastWatchdogAt = -Infinity;

  constructor(options: SystemdNotifierOptions = {}) {
    this.#env = options.env ?? process.env;
    this.#command = options.command ?? 'systemd-notify';
    this.#warn = options.onWarning ?? ((message) => defaultLogger().warn(message));
    // Monotonic: a wall-clock step back must not silence the pings for as long as the step.
    this.#now = options.now ?? (() => performance.now());
    this.#timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.enabled = Boolean(this.#env.NOTIFY_SOCKET);
    this.watchdogIntervalMs = this.enabled ? watchdogIntervalMs(this.#env, options.pid) : null;
  }

  /** Start-up is complete: systemd (Type=notify) marks the unit active now. */
  ready(statusText?: string): Promise<void> {
    const args = ['--ready'];
    if (statusText !== undefined) args.push(`--status=${oneLine(statusText)}`);
    return this.#enqueue(args);
  }

  /** Free-form text shown by `systemctl status`. */
  status(text: string): Promise<void> {
    return this.#enqueue([`--status=${oneLine(text)}`]);
  }

  /** Shutting down: systemd stops expecting watchdog pings. */
  stopping(): Promise<void> {
    return this.#enqueue(['STOPPING=1']);
  }

  /**
   * Tells systemd the agent is alive. Call it whenever frames flow (per frame is fine):
   * it sends at most one ping per `watchdogIntervalMs` and never queues pings behind a
   * slow one, so a stalled agent stops pinging and systemd restarts it.
   */
  watchdog(): Promise<void> {
    if (this.watchdogIntervalMs === null || this.#watchdogInFlight) return Promise.resolve();
    const now = this.#now();
    if (now - this.#lastWatchdogAt < this.watchdogIntervalMs) return Promise.resolve();
    this.#lastWatchdogAt = now;
    this.#watchdogInFlight = true;
    return this.#enqueue(['WATCHDOG=1']).finally(() => {
      this.#watchdogInFlight = false;
    });
  }

  /** Sends in call order: READY must not overtake an earlier STATUS, nor a ping READY. */
  #enqueue(args: string[]): Promise<void> {
    if (!this.enabled) return Promise.resolve();
    this.#queue = this.#queue.then(() => (this.#usable ? this.#send(args) : undefined));
    return this.#queue;
  }

  #send(args: string[]): Promise<void> {
    return new Promise((resolve) => {
      const child = spawn(this.#command, args, { env: this.#env, stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        if (stderr.length < 2000) stderr += chunk;
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), this.#timeoutMs);
      // A failed spawn may report both 'error' and 'close'; warn once.
      let settled = false;
      child.on('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        if (error.code === 'ENOENT') {
          this.#usable = false;
          this.#warn(
            `NOTIFY_SOCKET is set but '${this.#command}' was not found: systemd gets no readiness or watchdog ` +
              'notifications (a Type=notify unit will time out at start). Install systemd\'s systemd-notify or use Type=simple.',
          );
        } else {
          this.#warn(`cannot run ${this.#command}: ${error.message}`);
        }
        resolve();
      });
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        if (settled) return;
        settled = true;
        if (code !== 0) {
          const why = signal ? `was killed (${signal}) after ${this.#timeoutMs} ms` : `exited with code ${code}`;
          this.#warn(`${this.#command} ${args.join(' ')} ${why}: ${stderr.trim() || 'no message'}`);
        }
        resolve();
      });
    });
  }
}

/** sd_notify separates assignments with newlines, so a status text must not contain any. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').trim();
}
