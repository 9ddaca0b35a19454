import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Controller, type Component } from '../../src/agent/controller.js';
import { memoryLogger } from '../../src/log.js';

function component(name: string, journal: string[], options: { optional?: boolean; failStart?: boolean; hangStop?: boolean } = {}): Component {
  return {
    name,
    optional: options.optional,
    start: async () => {
      journal.push(`start ${name}`);
      if (options.failStart) throw new Error(`${name} cannot start`);
    },
    stop: () => {
      journal.push(`stop ${name}`);
      return options.hangStop ? new Promise<void>(() => {}) : Promise.resolve();
    },
  };
}

describe('Controller', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('starts components in order and stops them in reverse, once', async () => {
    const journal: string[] = [];
    const controller = new Controller({ log: memoryLogger() });
    for (const name of ['mqtt', 'models', 'cameras']) controller.add(component(name, journal));
    await controller.start();
    await Promise.all([controller.stop(), controller.stop()]);
    expect(journal).toEqual(['start mqtt', 'start models', 'start cameras', 'stop cameras', 'stop models', 'stop mqtt']);
    expect(controller.status().map((status) => status.state)).toEqual(['stopped', 'stopped', 'stopped']);
  });

  it('contains a failing optional component: logged, shown as failed, the rest starts and runs', async () => {
    const journal: string[] = [];
    const log = memoryLogger();
    const controller = new Controller({ log });
    controller.add(component('mqtt', journal));
    controller.add(component('health server', journal, { optional: true, failStart: true }));
    controller.add(component('systemd', journal, { optional: true }));
    await controller.start();
    expect(controller.status()).toEqual([
      { name: 'mqtt', optional: false, state: 'running' },
      { name: 'health server', optional: true, state: 'failed', error: 'health server cannot start' },
      { name: 'systemd', optional: true, state: 'running' },
    ]);
    expect(log.lines.join('\n')).toMatch(/health server failed to start; linewatch runs on without it: (Error: )?health server cannot start/);
    await controller.stop();
    // The failed one is not stopped: it never ran.
    expect(journal).toEqual(['start mqtt', 'start health server', 'start systemd', 'stop systemd', 'stop mqtt']);
  });

  it('stops what already started, in reverse, when a required component fails, and rethrows', async () => {
    const journal: string[] = [];
    const controller = new Controller({ log: memoryLogger() });
    controller.add(component('mqtt', journal));
    controller.add(component('models', journal, { failStart: true }));
    controller.add(component('cameras', journal));
    await expect(controller.start()).rejects.toThrow('models cannot start');
    expect(journal).toEqual(['start mqtt', 'start models', 'stop mqtt']);
  });

  it('leaves a component that hangs on stop behind after the timeout and still stops the others', async () => {
    const journal: string[] = [];
    const log = memoryLogger();
    const controller = new Controller({ log, stopTimeoutMs: 5000 });
    controller.add(component('mqtt', journal));
    controller.add(component('cameras', journal, { hangStop: true }));
    await controller.start();
    const stopped = controller.stop();
    await vi.advanceTimersByTimeAsync(4999);
    expect(journal).toEqual(['start mqtt', 'start cameras', 'stop cameras']);
    await vi.advanceTimersByTimeAsync(1);
    await stopped;
    expect(journal).toEqual(['start mqtt', 'start cameras', 'stop cameras', 'stop mqtt']);
    expect(log.lines.join('\n')).toMatch(/cameras did not stop cleanly: (Error: )?still stopping after 5 s/);
  });
});
