import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SystemdNotifier, watchdogIntervalMs } from '../../src/health/systemd.js';
import { PYTHON, startNotifyListener, type NotifyListener } from '../helpers/notify-socket.js';


function hasCommand(command: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const canListen = existsSync(PYTHON) && hasCommand('systemd-notify');
if (!canListen) console.warn('skipping the notify-socket tests: they need /usr/bin/python3 and systemd-notify');


describe.skipIf(!canListen)('SystemdNotifier on a real notify socket', () => {
  let dir: string;
  let socketPath: string;
  let listener: NotifyListener;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'linewatch-notify-'));
    socketPath = join(dir, 'notify.sock');
    listener = await startNotifyListener(socketPath);
  });

  afterAll(() => {
    listener?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function receivedAfter<T>(action: () => Promise<T>, count: number): Promise<string[]> {
    const start = listener.received.length;
    await action();
    // systemd-notify returns only after the datagram was read, but our listener may print it a moment later.
    while (listener.received.length < start + count) await listener.next();
    return listener.received.slice(start).map((entry) => entry.message);
  }

  it('sends READY, STATUS and STOPPING in call order', async () => {
    const warnings: string[] = [];
    const notifier = new SystemdNotifier({ env: { ...process.env, NOTIFY_SOCKET: socketPath }, onWarning: (m) => warnings.push(m) });
    expect(notifier.enabled).toBe(true);
    expect(notifier.watchdogIntervalMs).toBeNull();
    const messages = await receivedAfter(async () => {
      void notifier.status('loading model\nfor cam1');
      void notifier.ready('2 cameras');
      await notifier.stopping();
    }, 3);
    expect(messages).toEqual(['STATUS=loading model for cam1', 'READY=1|STATUS=2 cameras', 'STOPPING=1']);
    expect(warnings).toEqual([]);
  });

  it('pings the watchdog at most once per half of WATCHDOG_USEC', async () => {
    let now = 1_000_000;
    const notifier = new SystemdNotifier({
      env: { ...process.env, NOTIFY_SOCKET: socketPath, WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) },
      now: () => now,
    });
    expect(notifier.watchdogIntervalMs).toBe(15_000);
    const start = listener.received.length;
    const first = await receivedAfter(async () => {
      await Promise.all([notifier.watchdog(), notifier.watchdog(), notifier.watchdog()]);
      now += 14_999;
      await notifier.watchdog();
    }, 1);
    expect(first).toEqual(['WATCHDOG=1']);
    now += 1;
    const second = await receivedAfter(() => notifier.watchdog(), 1);
    expect(second).toEqual(['WATCHDOG=1']);
    // Nothing else arrived: the throttled calls sent nothing.
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(listener.received.slice(start).map((entry) => entry.message)).toEqual(['WATCHDOG=1', 'WATCHDOG=1']);
  });

  it('reports a notify socket that does not exist instead of throwing', async () => {
    const warnings: string[] = [];
    const notifier = new SystemdNotifier({ env: { ...process.env, NOTIFY_SOCKET: join(dir, 'missing.sock') }, onWarning: (m) => warnings.push(m) });
    await notifier.ready();
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/systemd-notify --ready exited with code 1: .*No such file or directory/);
  });
});

/** A stand-in for systemd-notify that records the socket it was given and its arguments, one call a line. */
function fakeNotify(): { command: string; calls(): string[]; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-notify-'));
  const log = join(dir, 'calls');
  const command = join(dir, 'fake-notify');
  writeFileSync(command, `#!/bin/sh\necho "$NOTIFY_SOCKET $*" >> '${log}'\n`, { mode: 0o755 });
  return {
    command,
    calls: () => (existsSync(log) ? readFileSync(log, 'utf8').trim().split('\n') : []),
    remove: () => rmSync(dir, { recursive: true, force: true }),
  };
}

describe('SystemdNotifier outside systemd', () => {
  it('does nothing without NOTIFY_SOCKET', async () => {
    const fake = fakeNotify();
    const notifier = new SystemdNotifier({ env: { WATCHDOG_USEC: '1000000' }, command: fake.command, onWarning: () => { throw new Error('no warning expected'); } });
    expect(notifier.enabled).toBe(false);
    expect(notifier.watchdogIntervalMs).toBeNull();
    await notifier.ready();
    await notifier.watchdog();
    await notifier.status('x');
    expect(fake.calls()).toEqual([]);
    fake.remove();
  });

  it('warns once and stops trying when systemd-notify is missing', async () => {
    const warnings: string[] = [];
    const notifier = new SystemdNotifier({
      env: { NOTIFY_SOCKET: '/run/systemd/notify' },
      command: '/nonexistent/systemd-notify',
      onWarning: (m) => warnings.push(m),
    });
    await notifier.ready();
    await notifier.status('still here');
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/was not found/);
  });

  it('passes the arguments systemd-notify expects', async () => {
    const fake = fakeNotify();
    const notifier = new SystemdNotifier({ env: { NOTIFY_SOCKET: '@linewatch-test', WATCHDOG_USEC: '1000000' }, command: fake.command });
    await notifier.ready();
    await notifier.watchdog();
    await notifier.status('ok');
    await notifier.stopping();
    expect(fake.calls()).toEqual([
      '@linewatch-test --ready',
      '@linewatch-test WATCHDOG=1',
      '@linewatch-test --status=ok',
      '@linewatch-test STOPPING=1',
    ]);
    fake.remove();
  });
});

describe('watchdogIntervalMs', () => {
  it('is half of WATCHDOG_USEC, for this process only', () => {
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '42' }, 42)).toBe(15_000);
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 42)).toBeNull();
    expect(watchdogIntervalMs({}, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: 'soon' }, 42)).toBeNull();
    expect(watchdogIntervalMs({ WATCHDOG_USEC: '0' }, 42)).toBeNull();
  });
});

describe('systemd/linewatch.service', () => {
  const unitText = readFileSync('systemd/linewatch.service', 'utf8');

  /** `Key=value` lines per section; repeated keys keep every value. */
  function parseUnit(text: string): Record<string, Record<string, string[]>> {
    const sections: Record<string, Record<string, string[]>> = {};
    let current: Record<string, string[]> = {};
    for (const line of text.split('\n')) {
      const header = /^\[(\w+)\]$/.exec(line.trim());
      if (header) sections[header[1]!] = current = {};
      else if (/^[A-Za-z]+=/.test(line)) {
        const at = line.indexOf('=');
        (current[line.slice(0, at)] ??= []).push(line.slice(at + 1));
      }
    }
    return sections;
  }

  it('runs the agent as a hardened notify service with a watchdog', () => {
    const service = parseUnit(unitText).Service!;
    const one = (key: string): string | undefined => service[key]?.at(-1);
    expect(one('ExecStart')).toMatch(/^\/\S+\/node \/opt\/linewatch\/bin\/linewatch\.js run --config \/etc\/linewatch\/linewatch\.yaml$/);
    expect(one('Type')).toBe('notify');
    // The notification comes from the systemd-notify child, not the main PID.
    expect(one('NotifyAccess')).toBe('all');
    expect(one('WatchdogSec')).toBe('30');
    expect(watchdogIntervalMs({ WATCHDOG_USEC: String(Number(one('WatchdogSec')) * 1e6) })).toBe(15_000);
    expect(one('Restart')).toBe('always');
    expect(one('RestartSec')).toBe('5');
    expect(one('KillMode')).toBe('mixed');
    expect(Number(one('TimeoutStopSec'))).toBeGreaterThan(0);
    expect(one('User')).toBe('linewatch');
    expect(one('SupplementaryGroups')).toBe('video');
    for (const key of ['NoNewPrivileges', 'ProtectHome', 'PrivateTmp']) expect(one(key)).toBe('yes');
    expect(one('ProtectSystem')).toBe('strict');
    expect(one('StateDirectory')).toBe('linewatch');
    expect(one('ReadWritePaths')).toBe('/var/lib/linewatch');
    expect(service.LoadCredential).toContain('mqtt-password:/etc/linewatch/mqtt-password');
    // These two would break the agent: hidden camera devices, and no JIT for V8.
    expect(one('PrivateDevices')).toBeUndefined();
    expect(one('MemoryDenyWriteExecute')).toBeUndefined();
  });

  /**
   * How many MB glibc's heap (the `[heap]` mapping) grows by when a node started with `environment` allocates
   * 200 blocks of 256 KB, after it freed one 1 MB block. Without a fixed threshold that free has raised glibc's
   * mmap threshold above 256 KB, so the blocks come from the heap, whose freed pages stay resident while
   * anything above them lives; with it, each block is mapped on its own and unmapped when freed.
   */
  function heapGrowthMb(environment: Record<string, string>): number {
    const script = `
      const heapMb = () => {
        const line = require('node:fs').readFileSync('/proc/self/maps', 'utf8').split('\\n').find((l) => l.endsWith('[heap]'));
        if (!line) return 0;
        const [from, to] = line.split(' ')[0].split('-').map((address) => parseInt(address, 16));
        return (to - from) / 1048576;
      };
      (async () => {
        // V8 frees array buffers' memory after a collection, off the main thread: a few rounds, with time.
        for (let round = 0; round < 3; round++) {
          let big = Buffer.allocUnsafeSlow(1 << 20).fill(1);
          big = null;
          gc();
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        const before = heapMb();
        const blocks = [];
        for (let i = 0; i < 200; i++) blocks.push(Buffer.allocUnsafeSlow(256 * 1024));
        console.log(heapMb() - before);
      })();`;
    const result = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '', ...environment } });
    expect(result.status, result.stderr).toBe(0);
    return Number(result.stdout.trim());
  }

  const glibc = (process.report.getReport() as { header?: { glibcVersionRuntime?: string } }).header?.glibcVersionRuntime !== undefined;
  if (!glibc) console.warn('skipping the malloc environment test: node does not run on glibc here');

  it.skipIf(!glibc)('its malloc environment maps blocks of 128 KB and more on their own, so freeing them gives the memory back', () => {
    const environment: Record<string, string> = {};
    for (const line of parseUnit(unitText).Service!.Environment ?? []) {
      const at = line.indexOf('=');
      if (line.startsWith('MALLOC_')) environment[line.slice(0, at)] = line.slice(at + 1);
    }
    expect(environment.MALLOC_MMAP_THRESHOLD_).toBeDefined();
    expect(heapGrowthMb(environment)).toBeLessThan(5);
    // The control: without the fixed threshold the same blocks land in the heap.
    const { MALLOC_MMAP_THRESHOLD_: _threshold, ...withoutThreshold } = environment;
    expect(heapGrowthMb(withoutThreshold)).toBeGreaterThan(45);
  });

  it.skipIf(!hasCommand('systemd-analyze'))('passes systemd-analyze verify', () => {
    const dir = mkdtempSync(join(tmpdir(), 'linewatch-unit-'));
    // verify checks that ExecStart's binary exists: use this machine's node.
    const unit = join(dir, 'linewatch.service');
    writeFileSync(unit, unitText.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`));
    const result = spawnSync('systemd-analyze', ['verify', '--man=no', unit], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
    // Warnings (unknown keys, bad values) go to stderr, sometimes with exit code 0.
    const output = `${result.stdout}${result.stderr}`;
    expect({ status: result.status, output: output.trim() }).toEqual({ status: 0, output: '' });
  });
});
