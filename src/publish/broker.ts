import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type Server, type Socket } from 'node:net';
import { Aedes, type AuthenticateError, type Client } from 'aedes';
import { LinewatchError, UsageError } from '../errors.js';
import { isLoopbackHost } from '../health/api.js';

export interface EmbeddedBrokerOptions {
  /** Default 127.0.0.1. A loopback address only (127.x.x.x, ::1, localhost): the demo broker has no access control. */
  host?: string;
  /** Default 1883; 0 picks a free port. */
  port?: number;
  /**
   * The agent's own MQTT client id. Only a client presenting `agentCredentials` may connect
   * with it: anyone else gets CONNACK "identifier rejected" instead of taking the agent's session
   * over (MQTT drops the older of two connections with the same client id).
   */
  agentClientId?: string;
}

export interface EmbeddedBroker {
  /** mqtt://host:port to hand to the publisher and to print for `mosquitto_sub`. */
  readonly url: string;
  readonly host: string;
  readonly port: number;
  /** Random per start; the agent connects with these so that its client id stays its own. */
  readonly agentCredentials: { readonly username: string; readonly password: string };
  close(): Promise<void>;
}

export const EMBEDDED_BROKER_DEFAULTS = { host: '127.0.0.1', port: 1883 } as const;

/**
 * An in-process MQTT broker (aedes, in memory) so that the no-config demo
 * publishes somewhere a user can subscribe to. Not meant for production: it
 * keeps nothing across restarts.
 */
export async function startEmbeddedBroker(options: EmbeddedBrokerOptions = {}): Promise<EmbeddedBroker> {
  const host = options.host ?? EMBEDDED_BROKER_DEFAULTS.host;
  const requestedPort = options.port ?? EMBEDDED_BROKER_DEFAULTS.port;
  if (!isLoopbackHost(host)) {
    throw new UsageError(`the embedded MQTT broker listens on this machine only, not on ${host}`, {
      hint:
        'set mqtt.embeddedBroker.host to 127.0.0.1 (or ::1); for clients on other machines run a real broker ' +
        '(mosquitto, with passwords and TLS) and set mqtt.url to it',
    });
  }
  const agentCredentials = {
    username: options.agentClientId ?? 'linewatch',
    password: randomBytes(24).toString('base64url'),
  };
  const aedes = await Aedes.createBroker({
    authenticate: (client, username, password, done) => {
      if (options.agentClientId === undefined || client.id !== options.agentClientId) return done(null, true);
      if (username === agentCredentials.username && password && sameSecret(password, agentCredentials.password)) {
        return done(null, true);
      }
      done(identifierRejected(client), false);
    },
  });
  const sockets = new Set<Socket>();
  // No Nagle: an event right after another one would wait for the delayed ACK of the first, up
  // to 40 ms on Linux (tests/e2e/publish-broker.test.ts has the figures).
  const server = createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    aedes.handle(socket);
  });

  try {
    await listen(server, host, requestedPort);
  } catch (error) {
    await closeAedes(aedes);
    throw listenError(error as NodeJS.ErrnoException, host, requestedPort);
  }
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : requestedPort;

  let closed: Promise<void> | undefined;
  return {
    url: `mqtt://${host.includes(':') ? `[${host}]` : host}:${port}`,
    host,
    port,
    agentCredentials,
    close: () =>
      (closed ??= (async () => {
        const serverClosed = new Promise<void>((resolve) => server.close(() => resolve()));
        await closeAedes(aedes);
        // aedes ends its clients' streams; destroy whatever is left so close() cannot hang.
        for (const socket of sockets) socket.destroy();
        await serverClosed;
      })()),
  };
}

function sameSecret(given: Buffer, expected: string): boolean {
  const wanted = Buffer.from(expected, 'utf8');
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

/** CONNACK return code 2: the client id is the agent's, and the client is not the agent. */
function identifierRejected(client: Client): AuthenticateError {
  return Object.assign(new Error(`client id ${client.id} is reserved for the linewatch agent`), { returnCode: 2 as const });
}

function listen(server: Server, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function closeAedes(aedes: Aedes): Promise<void> {
  return new Promise((resolve) => aedes.close(() => resolve()));
}

function listenError(error: NodeJS.ErrnoException, host: string, port: number): Error {
  const where = `${host}:${port}`;
  if (error.code === 'EADDRINUSE') {
    // Exit 1, not 2: a port in use can free itself (a broker restarting), so systemd should try again.
    return new LinewatchError(`cannot start the embedded MQTT broker: ${where} is already in use`, {
      hint:
        'another MQTT broker (or another linewatch) is listening there: set mqtt.url to use that broker, ' +
        'set mqtt.embeddedBroker.port to a free port, or stop the other process',
      cause: error,
    });
  }
  if (error.code === 'EACCES') {
    return new UsageError(`cannot start the embedded MQTT broker: no permission to listen on ${where}`, {
      hint: 'set mqtt.embeddedBroker.port above 1023, or set mqtt.url to an existing broker',
      cause: error,
    });
  }
  if (error.code === 'EADDRNOTAVAIL') {
    return new UsageError(`cannot start the embedded MQTT broker: ${host} is not an address of this machine`, {
      hint: 'set mqtt.embeddedBroker.host to 127.0.0.1 (or ::1 where IPv6 is enabled)',
      cause: error,
    });
  }
  return new UsageError(`cannot start the embedded MQTT broker on ${where}: ${error.message}`, { cause: error });
}
