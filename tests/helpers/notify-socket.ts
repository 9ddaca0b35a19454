import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export const PYTHON = '/usr/bin/python3';

/**
 * A real AF_UNIX datagram socket standing in for systemd's notify socket. recv()
 * without ancillary space makes the kernel close the fd systemd-notify passes with
 * BARRIER=1, which is what releases its wait, just as the real manager does.
 */
const LISTENER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print("LISTENING", flush=True)
while True:
    data = s.recv(65536)
    if data != b"BARRIER=1":
        print(data.decode().replace("\\n", "|"), flush=True)
`;

export interface NotifyListener {
  readonly process: ChildProcess;
  /** Every notification received, in order, with when it arrived (ms since the epoch). */
  readonly received: { at: number; message: string }[];
  /** Resolves at the next notification. */
  next(): Promise<void>;
  stop(): void;
}

/** Binds `socketPath` and resolves once it listens. */
export async function startNotifyListener(socketPath: string): Promise<NotifyListener> {
  const child = spawn(PYTHON, ['-c', LISTENER, socketPath], { stdio: ['ignore', 'pipe', 'inherit'] });
  const received: { at: number; message: string }[] = [];
  const waiters: Array<() => void> = [];
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'LISTENING') return resolve();
      received.push({ at: Date.now(), message: line });
      waiters.splice(0).forEach((wake) => wake());
    });
  });
  return {
    process: child,
    received,
    next: () => new Promise<void>((resolve) => waiters.push(resolve)),
    stop: () => child.kill('SIGKILL'),
  };
}
