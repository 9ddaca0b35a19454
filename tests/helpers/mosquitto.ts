import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { freePort, waitForListener } from '../../bench/net.js';

export { freePort };

/** A real mosquitto broker on 127.0.0.1, started for one test file. */
export interface MosquittoBroker {
  readonly url: string;
  readonly port: number;
  /** Stops the broker (SIGTERM; a persistent one saves its sessions first) and waits for it to exit. */
  stop(): Promise<void>;
  /** Starts it again on the same port with the same configuration. */
  start(): Promise<void>;
  /** stop() then start(): retained messages are gone unless `persistence` is on. */
  restart(): Promise<void>;
  /** The last lines mosquitto wrote to stderr, for failure messages. */
  log(): string;
}

export interface MosquittoOptions {
  /** Fixed port; default: a free one. */
  port?: number;
  /** Require these credentials (anonymous clients are refused). */
  users?: Record<string, string>;
  /** Keep retained messages and persistent sessions across restarts. */
  persistence?: boolean;
  /** Serve MQTT over TLS with these PEM files; clients must present a certificate signed by `caFile`. */
  tls?: { caFile: string; certFile: string; keyFile: string };
  /**
   * mosquitto.conf lines appended after the ones above (a bridge, queue
   * limits). Leave out what this helper sets: another `listener` would open a
   * second port, and mosquitto refuses a second `persistence_location`.
   */
  extraConfig?: string[];
}

export interface TestCertificates {
  caFile: string;
  serverCertFile: string;
  serverKeyFile: string;
  clientCertFile: string;
  clientKeyFile: string;
}

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (openssl, EC keys: fast). */
export function createTestCertificates(dir: string): TestCertificates {
  const file = (name: string) => join(dir, name);
  const openssl = (...args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  const ecKey = (name: string) => openssl('ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', file(name));
  ecKey('ca.key');
  openssl('req', '-x509', '-new', '-key', file('ca.key'), '-subj', '/CN=linewatch test CA', '-days', '2', '-out', file('ca.pem'));
  const issue = (name: string, subject: string, extensions: string) => {
    ecKey(`${name}.key`);
    openssl('req', '-new', '-key', file(`${name}.key`), '-subj', subject, '-out', file(`${name}.csr`));
    writeFileSync(file(`${name}.ext`), extensions);
    openssl('x509', '-req', '-in', file(`${name}.csr`), '-CA', file('ca.pem'), '-CAkey', file('ca.key'),
      '-CAcreateserial', '-days', '2', '-extfile', file(`${name}.ext`), '-out', file(`${name}.pem`));
  };
  issue('server', '/CN=127.0.0.1', 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  issue('client', '/CN=linewatch-agent', 'extendedKeyUsage=clientAuth\n');
  return {
    caFile: file('ca.pem'),
    serverCertFile: file('server.pem'),
    serverKeyFile: file('server.key'),
    clientCertFile: file('client.pem'),
    clientKeyFile: file('client.key'),
  };
}

const running = new Set<ChildProcess>();
const configDirs = new Set<string>();
// Vitest runs each file in its own fork; a test that throws before its
// afterAll must not leave brokers behind. Config folders outlive stop() so
// that start() can bring the same broker back.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
  for (const dir of configDirs) rmSync(dir, { recursive: true, force: true });
});

export function isMosquittoInstalled(): boolean {
  try {
    execFileSync('mosquitto', ['-h'], { stdio: 'ignore' });
    return true;
  } catch (error) {
    // `mosquitto -h` exits 3 after printing its usage; only a missing binary is fatal.
    return (error as NodeJS.ErrnoException).code !== 'ENOENT';
  }
}


export async function startMosquitto(options: MosquittoOptions = {}): Promise<MosquittoBroker> {
  const port = options.port ?? (await freePort());
  const dir = mkdtempSync(join(tmpdir(), 'linewatch-mosquitto-'));
  configDirs.add(dir);
  const configLines = [
    // Started as root, mosquitto would switch to the `mosquitto` user, who cannot read this private folder.
    `user ${userInfo().username}`,
    `listener ${port} 127.0.0.1`,
    `allow_anonymous ${options.users ? 'false' : 'true'}`,
    `persistence ${options.persistence ? 'true' : 'false'}`,
    `persistence_location ${dir}/`,
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    'log_type notice',
  ];
  if (options.tls) {
    configLines.push(
      `cafile ${options.tls.caFile}`,
      `certfile ${options.tls.certFile}`,
      `keyfile ${options.tls.keyFile}`,
      'require_certificate true',
    );
  }
  if (options.users) {
    const passwordFile = join(dir, 'passwd');
    writeFileSync(passwordFile, '');
    for (const [user, password] of Object.entries(options.users)) {
      execFileSync('mosquitto_passwd', ['-b', passwordFile, user, password], { stdio: 'ignore' });
    }
    configLines.push(`password_file ${passwordFile}`);
  }
  configLines.push(...(options.extraConfig ?? []));
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(configFile, configLines.join('\n') + '\n');

  let child: ChildProcess | undefined;
  let stderr = '';

  const start = async (): Promise<void> => {
    if (child) return;
    const started = spawn('mosquitto', ['-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = started;
    running.add(started);
    started.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const exited = new Promise<never>((_, reject) =>
      started.once('exit', (code) => reject(new Error(`mosquitto exited (${code}) at start:\n${stderr}`))),
    );
    await Promise.race([waitForListener(port, 5000, 'mosquitto'), exited]);
    exited.catch(() => undefined);
  };

  const stop = async (): Promise<void> => {
    const stopping = child;
    if (!stopping) return;
    child = undefined;
    if (stopping.exitCode === null && stopping.signalCode === null) {
      const exited = new Promise<void>((resolve) => stopping.once('exit', () => resolve()));
      stopping.kill('SIGTERM');
      await exited;
    }
    running.delete(stopping);
  };

  await start();
  return {
    url: `${options.tls ? 'mqtts' : 'mqtt'}://127.0.0.1:${port}`,
    port,
    start,
    stop,
    restart: async () => {
      await stop();
      await start();
    },
    log: () => stderr,
  };
}


export interface ReceivedMessage {
  topic: string;
  payload: string;
  retain: boolean;
  qos: number;
}

/** A real mqtt.js subscriber that records what it receives and lets tests wait for it. */
export interface MqttRecorder {
  readonly client: MqttClient;
  readonly messages: ReceivedMessage[];
  /** Resolves with the first recorded message (past or future) that matches; rejects after timeoutMs. */
  waitFor(match: (message: ReceivedMessage) => boolean, timeoutMs?: number): Promise<ReceivedMessage>;
  /** Resolves once `count` messages match. */
  waitForCount(match: (message: ReceivedMessage) => boolean, count: number, timeoutMs?: number): Promise<ReceivedMessage[]>;
  /** Resolves once `done(all messages so far)` holds. */
  waitUntil(done: (messages: readonly ReceivedMessage[]) => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function recordMqtt(
  url: string,
  topics: string | string[],
  options: IClientOptions = {},
): Promise<MqttRecorder> {
  const client = await mqtt.connectAsync(url, { reconnectPeriod: 100, connectTimeout: 5000, ...options });
  const messages: ReceivedMessage[] = [];
  const waiters = new Set<() => void>();
  client.on('message', (topic, payload, packet) => {
    messages.push({ topic, payload: payload.toString('utf8'), retain: packet.retain, qos: packet.qos });
    for (const wake of waiters) wake();
  });
  await client.subscribeAsync(topics, { qos: 1 });

  const waitUntil = (done: (messages: readonly ReceivedMessage[]) => boolean, what: string, timeoutMs = 5000) =>
    new Promise<void>((resolve, reject) => {
      const check = (): boolean => {
        if (!done(messages)) return false;
        waiters.delete(check);
        clearTimeout(timer);
        resolve();
        return true;
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        const seen = messages.map((m) => `${m.topic} ${m.payload.slice(0, 80)}`).join('\n  ');
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}; received:\n  ${seen}`));
      }, timeoutMs);
      if (!check()) waiters.add(check);
    });
  const waitForCount = async (match: (message: ReceivedMessage) => boolean, count: number, timeoutMs?: number) => {
    await waitUntil((all) => all.filter(match).length >= count, `${count} matching message(s)`, timeoutMs);
    return messages.filter(match);
  };

  return {
    client,
    messages,
    waitForCount,
    waitUntil,
    waitFor: async (match, timeoutMs) => (await waitForCount(match, 1, timeoutMs))[0]!,
    close: async () => {
      await client.endAsync(true);
    },
  };
}
