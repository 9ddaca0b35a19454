import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import YAML from 'yaml';
import { DEMO_MODEL, DEMO_VIDEO, REPO } from '../helpers/agent.js';
import { PYTHON, startNotifyListener } from '../helpers/notify-socket.js';
import { rtspServerUnavailable, startRtspServer } from '../helpers/rtsp.js';

/**
 * The shipped unit's hardening (issue 13), checked without systemd as PID 1:
 * - systemd-analyze verify and security --offline=yes on the unit (exposure at most 2.5);
 * - a demo run traced with strace (under the unit's own seccomp filter, /proc, file-system,
 *   user and umask settings when this runs as root: tests/helpers/unit-sandbox.py), which fails
 *   if the agent, onnxruntime, sharp, ffmpeg or systemd-notify make a system call or open a socket
 *   family the unit does not allow, or if it needs more memory than MemoryHigh=.
 */

const UNIT_FILE = path.join(REPO, 'systemd/linewatch.service');
const SANDBOX = path.join(REPO, 'tests/helpers/unit-sandbox.py');
const MAX_EXPOSURE = 2.5;

function hasCommand(command: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

/** The [Service] section's `Key=value` lines (comments skipped); repeated keys keep every value. */
function serviceSettings(text: string): Record<string, string[]> {
  const settings: Record<string, string[]> = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line.startsWith('[')) section = line;
    else if (section === '[Service]' && /^[A-Za-z]+=/.test(line)) {
      const at = line.indexOf('=');
      (settings[line.slice(0, at)] ??= []).push(line.slice(at + 1));
    }
  }
  return settings;
}

/** `systemd-analyze syscall-filter`: every group with its members (calls and nested groups). */
function syscallGroups(): Map<string, string[]> {
  const text = execFileSync('systemd-analyze', ['syscall-filter'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const groups = new Map<string, string[]>();
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    if (/^@[\w-]+$/.test(line)) groups.set(line, (current = []));
    else if (current && line.trim() && !line.trim().startsWith('#')) current.push(line.trim());
  }
  return groups;
}

function expand(names: string[], groups: Map<string, string[]>): Set<string> {
  const calls = new Set<string>();
  for (const name of names) {
    if (!name.startsWith('@')) calls.add(name);
    else for (const call of expand(groups.get(name) ?? [], groups)) calls.add(call);
  }
  return calls;
}

/** What SystemCallFilter= lines allow, with systemd's semantics (an allow-list, then ~ removals). */
function allowedSyscalls(lines: string[], groups: Map<string, string[]>): Set<string> {
  const allowed = new Set<string>();
  for (const line of lines) {
    const deny = line.startsWith('~');
    for (const call of expand(line.replace(/^~/, '').split(/\s+/), groups)) {
      if (deny) allowed.delete(call);
      else allowed.add(call);
    }
  }
  return allowed;
}

function bytes(size: string): number {
  const match = /^(\d+(?:\.\d+)?)([KMGT]?)$/.exec(size);
  if (!match) throw new Error(`not a size: ${size}`);
  return Number(match[1]) * 1024 ** ' KMGT'.indexOf(match[2] || ' ');
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Node and its descendants (ffmpeg, systemd-notify): the resident memory they add up to, in bytes. */
function treeRss(rootPid: number): number {
  const ps = spawnSync('ps', ['-eo', 'pid=,ppid=,rss='], { encoding: 'utf8' });
  const rows = ps.stdout
    .trim()
    .split('\n')
    .map((line) => line.trim().split(/\s+/).map(Number) as [number, number, number]);
  const inTree = new Set([rootPid]);
  for (let grew = true; grew; ) {
    grew = false;
    for (const [pid, ppid] of rows) if (inTree.has(ppid) && !inTree.has(pid)) inTree.add(pid), (grew = true);
  }
  return rows.filter(([pid]) => inTree.has(pid)).reduce((sum, [, , rss]) => sum + rss * 1024, 0);
}

const unitText = readFileSync(UNIT_FILE, 'utf8');
const service = serviceSettings(unitText);
const one = (key: string): string | undefined => service[key]?.at(-1);
const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});
function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  dirs.push(dir);
  return dir;
}

const hasAnalyze = hasCommand('systemd-analyze');
if (!hasAnalyze) console.warn('systemd-unit: skipping the systemd-analyze checks (install systemd: scripts/setup.sh)');

describe('systemd/linewatch.service hardening', () => {
  it('sets the hardening, memory and credential directives, and not the two that break the agent', () => {
    for (const key of ['ProtectKernelTunables', 'ProtectKernelModules', 'ProtectKernelLogs', 'ProtectControlGroups', 'ProtectClock',
      'ProtectHostname', 'RestrictNamespaces', 'RestrictRealtime', 'RestrictSUIDSGID', 'LockPersonality', 'NoNewPrivileges',
      'PrivateTmp', 'PrivateMounts', 'ProtectHome', 'RemoveIPC']) {
      expect({ key, value: one(key) }).toEqual({ key, value: 'yes' });
    }
    expect(one('ProtectProc')).toBe('invisible');
    expect(one('RestrictAddressFamilies')!.split(/\s+/).sort()).toEqual(['AF_INET', 'AF_INET6', 'AF_UNIX']);
    expect(one('SystemCallArchitectures')).toBe('native');
    expect(service.SystemCallFilter?.[0]).toMatch(/^@system-service\b/);
    expect(one('SystemCallErrorNumber')).toBe('EPERM');
    expect(one('UMask')).toBe('0077');
    expect(one('CapabilityBoundingSet')).toBe('');
    expect(one('LimitCORE')).toBe('0');
    // A leak ends in an OOM kill and a restart: a soft limit below a hard one, no swap.
    expect(bytes(one('MemoryHigh')!)).toBeLessThan(bytes(one('MemoryMax')!));
    expect(bytes(one('MemoryHigh')!)).toBeGreaterThanOrEqual(512 * 1024 ** 2);
    expect(one('MemorySwapMax')).toBe('0');
    expect(one('Restart')).toBe('always');
    // PrivateDevices hides the cameras and decoders; MemoryDenyWriteExecute breaks V8's JIT.
    expect(one('PrivateDevices')).toBeUndefined();
    expect(one('MemoryDenyWriteExecute')).toBeUndefined();
  });

  it.skipIf(!hasAnalyze)('passes systemd-analyze verify', () => {
    const dir = tempDir('linewatch-unit-');
    const unit = path.join(dir, 'linewatch.service');
    // verify checks that ExecStart's binary exists: use this machine's node.
    writeFileSync(unit, unitText.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`));
    const result = spawnSync('systemd-analyze', ['verify', '--man=no', unit], { encoding: 'utf8' });
    expect({ status: result.status, output: `${result.stdout}${result.stderr}`.trim() }).toEqual({ status: 0, output: '' });
  });

  it.skipIf(!hasAnalyze)(`is rated ${MAX_EXPOSURE} or less by systemd-analyze security --offline=yes`, () => {
    const dir = tempDir('linewatch-unit-');
    const unit = path.join(dir, 'linewatch.service');
    writeFileSync(unit, unitText);
    const result = spawnSync('systemd-analyze', ['security', '--offline=yes', '--no-pager', unit], { encoding: 'utf8' });
    const output = `${result.stdout}${result.stderr}`;
    const overall = /Overall exposure level for linewatch\.service: (\d+(?:\.\d+)?)/.exec(output);
    expect(overall, output).not.toBeNull();
    const exposure = Number(overall![1]);
    console.info(`systemd-unit: exposure ${exposure} (at most ${MAX_EXPOSURE})`);
    expect(exposure, output).toBeLessThanOrEqual(MAX_EXPOSURE);
    // The rows the hardening of issue 13 turned green.
    const failing = output.split('\n').filter((line) => line.startsWith('✗')).map((line) => line.slice(2).split(/\s+/)[0]);
    for (const row of ['ProtectProc=', 'PrivateMounts=', 'RemoveIPC=', 'UMask=', 'RestrictAddressFamilies=~AF_NETLINK',
      'SystemCallFilter=~@privileged', 'SystemCallFilter=~@debug', 'SystemCallFilter=~@mount', 'SystemCallFilter=~@module',
      'SystemCallFilter=~@raw-io', 'SystemCallFilter=~@reboot', 'SystemCallFilter=~@swap', 'SystemCallFilter=~@clock',
      'SystemCallFilter=~@obsolete', 'SystemCallFilter=~@cpu-emulation']) {
      expect(failing, row).not.toContain(row);
    }
  });
});

/** System calls and socket families in an `strace -f -o` file, from the successful exec of `program` on. */
function tracedCalls(trace: string, program: string): { used: Set<string>; socketFamilies: Set<string> } {
  const lines = readFileSync(trace, 'utf8').split('\n');
  // The sandbox's own set-up calls (mount, setuid, seccomp) come before the exec.
  const start = lines.findIndex((line) => line.includes(`execve("${program}"`) && line.endsWith('= 0'));
  expect(start, `no exec of ${program} in the trace`).toBeGreaterThanOrEqual(0);
  const used = new Set<string>();
  const socketFamilies = new Set<string>();
  for (const line of lines.slice(start)) {
    const call = /^\d+\s+([a-z_0-9]+)\(/.exec(line)?.[1];
    if (call) used.add(call);
    const family = /^\d+\s+socket\((AF_\w+)/.exec(line)?.[1];
    if (family) socketFamilies.add(family);
  }
  expect(lines.filter((line) => /killed by SIGSYS/.test(line))).toEqual([]);
  return { used, socketFamilies };
}

const isRoot = process.getuid?.() === 0;
const demoMissing = [
  hasCommand('strace') ? undefined : 'strace is not installed (run scripts/setup.sh)',
  hasAnalyze ? undefined : 'systemd-analyze is not installed',
  hasCommand('systemd-notify') ? undefined : 'systemd-notify is not installed',
  existsSync(PYTHON) ? undefined : `${PYTHON} is missing`,
  existsSync(path.join(DEMO_MODEL, 'manifest.json')) ? undefined : 'models/demo is missing',
  existsSync(DEMO_VIDEO) ? undefined : 'the demo video is missing',
  existsSync(path.join(REPO, 'dist/cli/index.js')) ? undefined : 'dist is missing (npm run build)',
].filter((reason): reason is string => reason !== undefined);
if (demoMissing.length) console.warn(`systemd-unit: skipping the demo run under the unit's filters: ${demoMissing.join('; ')}`);
if (!isRoot) console.warn('systemd-unit: not root, so the demo runs traced but not sandboxed (the mounts and the user switch need root)');

describe.skipIf(demoMissing.length > 0)("the demo under the unit's system call filter", () => {
  it('makes only system calls and opens only socket families the unit allows, within MemoryHigh', async () => {
    const allowed = allowedSyscalls(service.SystemCallFilter ?? [], syscallGroups());
    const families = new Set(one('RestrictAddressFamilies')!.split(/\s+/));
    expect(allowed.size).toBeGreaterThan(300);

    const dir = tempDir('linewatch-sandbox-');
    chmodSync(dir, 0o755);
    if (isRoot) chownSync(dir, 65534, 65534); // the sandbox runs the agent as nobody, in this directory only
    const [mqttPort, healthPort] = [await freePort(), await freePort()];
    const config = path.join(dir, 'linewatch.yaml');
    writeFileSync(
      config,
      YAML.stringify({
        deviceId: 'sandbox',
        dataDir: path.join(dir, 'data'),
        defaults: { model: DEMO_MODEL, fps: 10 },
        mqtt: { embeddedBroker: { port: mqttPort } },
        health: { port: healthPort },
        cameras: [{ name: 'demo', url: DEMO_VIDEO, loop: true, realtime: true, preview: { enabled: true } }],
      }),
    );
    // The agent tells "systemd" it is ready and pings the watchdog through systemd-notify, as under the unit.
    const notifySocket = path.join(dir, 'notify.sock');
    const notify = await startNotifyListener(notifySocket);
    chmodSync(notifySocket, 0o666);

    const trace = path.join(dir, 'strace.txt');
    const agent = [process.execPath, path.join(REPO, 'bin/linewatch.js'), 'run', '--config', config];
    const command = isRoot ? [PYTHON, SANDBOX, UNIT_FILE, dir, '--', ...agent] : agent;
    const child = spawn('strace', ['-f', '-qq', '-o', trace, ...command], {
      cwd: REPO,
      env: { ...process.env, NOTIFY_SOCKET: notifySocket, WATCHDOG_USEC: '4000000', NODE_ENV: 'production' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let peakRss = 0;
    let agentPid = 0; // strace's child: the sandbox, which becomes node (exec)
    const sampler = setInterval(() => {
      agentPid ||= Number(spawnSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' }).stdout.trim().split('\n')[0]);
      if (agentPid) peakRss = Math.max(peakRss, treeRss(agentPid));
    }, 500);

    try {
      // A whole anomaly (start, snapshot, MQTT event, end) on the demo video, about 15 s in.
      const deadline = Date.now() + 45_000;
      while (!/anomaly ended \(recovered\)/.test(output)) {
        if (Date.now() > deadline || child.exitCode !== null) throw new Error(`no anomaly came and went; output:\n${output.slice(-4000)}`);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      const health = await fetch(`http://127.0.0.1:${healthPort}/healthz`);
      expect(health.status, await health.text()).toBe(200);
    } finally {
      clearInterval(sampler);
      // To the agent itself: strace -o ignores SIGINT. The agent stops in order, strace exits with its code.
      if (agentPid) process.kill(agentPid, 'SIGINT');
      else child.kill('SIGKILL');
    }
    const code = await exited;
    notify.stop();
    expect(code, output.slice(-4000)).toBe(0);
    if (isRoot) expect(output).toMatch(/^unit-sandbox: uid 65534, \d+ system calls allowed \(else EPERM\)/m);
    expect(output).toMatch(/embedded MQTT broker listening/);
    expect(notify.received.map((entry) => entry.message)).toEqual(expect.arrayContaining([expect.stringMatching(/^READY=1/), 'WATCHDOG=1']));

    const { used, socketFamilies } = tracedCalls(trace, process.execPath);
    const refused = [...used].filter((call) => !allowed.has(call)).sort();
    console.info(
      `systemd-unit: the demo made ${used.size} different system calls (${[...socketFamilies].sort().join(', ')} sockets), ` +
        `peak memory ${Math.round(peakRss / 1024 ** 2)} MiB for node and ffmpeg`,
    );
    expect(refused, 'system calls the demo makes that SystemCallFilter= does not allow').toEqual([]);
    expect([...socketFamilies].filter((family) => !families.has(family))).toEqual([]);
    expect(peakRss).toBeGreaterThan(0);
    expect(peakRss).toBeLessThan(bytes(one('MemoryHigh')!));
  }, 90_000);
});

const rtspMissing = [...demoMissing, rtspServerUnavailable(), hasCommand('ffmpeg') ? undefined : 'ffmpeg is not installed'].filter(
  (reason): reason is string => reason !== undefined,
);
if (rtspMissing.length) console.warn(`systemd-unit: skipping ffmpeg on an RTSP camera under the unit's filters: ${rtspMissing.join('; ')}`);

describe.skipIf(rtspMissing.length > 0)("ffmpeg on an RTSP camera under the unit's system call filter", () => {
  it('reads the stream over TCP and UDP with only the system calls and socket families the unit allows', async () => {
    const allowed = allowedSyscalls(service.SystemCallFilter ?? [], syscallGroups());
    const families = new Set(one('RestrictAddressFamilies')!.split(/\s+/));
    const server = await startRtspServer({ file: DEMO_VIDEO });
    try {
      const dir = tempDir('linewatch-sandbox-');
      chmodSync(dir, 0o755);
      if (isRoot) chownSync(dir, 65534, 65534);
      const ffmpeg = spawnSync('sh', ['-c', 'command -v ffmpeg'], { encoding: 'utf8' }).stdout.trim();
      for (const transport of ['tcp', 'udp']) {
        const trace = path.join(dir, `strace-${transport}.txt`);
        const command = [ffmpeg, '-hide_banner', '-nostdin', '-loglevel', 'error', '-rtsp_transport', transport, '-i', server.url,
          '-t', '2', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-y', '/dev/null'];
        const result = spawnSync('strace', ['-f', '-qq', '-o', trace, ...(isRoot ? [PYTHON, SANDBOX, UNIT_FILE, dir, '--'] : []), ...command], {
          encoding: 'utf8',
          timeout: 30_000,
        });
        expect(result.status, result.stderr).toBe(0);
        const { used, socketFamilies } = tracedCalls(trace, ffmpeg);
        expect([...used].filter((call) => !allowed.has(call)).sort(), `${transport}: system calls not allowed`).toEqual([]);
        expect(socketFamilies).toContain('AF_INET');
        expect([...socketFamilies].filter((family) => !families.has(family))).toEqual([]);
      }
    } finally {
      await server.stop();
    }
  }, 60_000);
});
