import { createRequire } from 'node:module';
import { afterAll, describe, expect, it } from 'vitest';
import { connectClient } from '../../src/publish/mqtt.js';
import { isMosquittoInstalled, startMosquitto, type MosquittoBroker } from '../helpers/mosquitto.js';

// The number cache mqtt-packet fills at its first packet unless a client turned it off: module
// state, so this file has no other MQTT client (vitest gives each file its own modules).
const numberCache = (createRequire(import.meta.url)('mqtt-packet/numbers.js') as { cache: Record<number, Buffer> }).cache;

let broker: MosquittoBroker | undefined;
afterAll(async () => broker?.stop());

describe.skipIf(!isMosquittoInstalled())('MQTT client memory', () => {
  it("writes packets without mqtt-packet's cache of 65,536 Buffers (about 7 MB of heap in the agent)", async () => {
    broker = await startMosquitto();
    const client = connectClient(broker.url, { reconnectPeriod: 0 });
    try {
      await new Promise((resolve) => client.once('connect', resolve));
      await client.publishAsync('linewatch/test/memory', 'x', { qos: 1 });
      await client.subscribeAsync('linewatch/test/#', { qos: 1 });
      expect(Object.keys(numberCache)).toHaveLength(0);
    } finally {
      await client.endAsync(true);
    }
  });
});
