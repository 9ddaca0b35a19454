import { mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Component } from '../agent/controller.js';
import type { CameraConfig, Config } from '../config/index.js';
import type { Logger } from '../log.js';
import { LINEWATCH_VERSION } from '../version.js';
import { writeFileAtomic } from './disk.js';
import type { MqttPublisher } from './mqtt.js';

/**
 * Home Assistant MQTT discovery, device-based (Home Assistant 2024.11+): one retained
 * `<prefix>/device/<object id>/config` per camera, whose device holds an `anomaly`
 * binary sensor, a `fault` binary sensor (the sensor-fault guard's camera faults, from
 * the retained camera status), a live `score` sensor and a `last_anomaly` image, plus one for the
 * agent itself (the cameras' `via_device`, with a connectivity sensor). The entities
 * read linewatch's own topics, so nothing is published twice.
 *
 * Retained configs survive broker restarts only where the broker persists them, so
 * they are sent again on every (re)connect and whenever Home Assistant announces
 * itself on `<prefix>/status` (its birth message, after a restart of Home Assistant).
 * Cameras that left the configuration get an empty retained config (Home Assistant
 * then deletes their device); which topics were announced is remembered in
 * `<dataDir>/homeassistant.json` because the broker cannot be asked.
 */

export const HOMEASSISTANT_STATE_FILE = 'homeassistant.json';

export const ORIGIN_URL = 'https://github.com/linewatch/linewatch';

/** The part of MqttPublisher discovery uses (its one connection, its topics). */
export type DiscoveryPublisher = Pick<MqttPublisher, 'topics' | 'connected' | 'publishRetained' | 'subscribe' | 'onConnectionChange'>;

export interface DiscoveryMessage {
  topic: string;
  payload: string;
}

export interface HomeAssistantDiscoveryOptions {
  publisher: DiscoveryPublisher;
  config: Pick<Config, 'deviceId' | 'dataDir' | 'health' | 'homeassistant'>;
  cameras: readonly CameraConfig[];
  log: Logger;
}

type DiscoveryCamera = Pick<CameraConfig, 'name' | 'model' | 'scorePublish' | 'snapshots'> & { faults: Pick<CameraConfig['faults'], 'enabled'> };

/** Templates Home Assistant renders on linewatch's payloads (Jinja). */
export const TEMPLATES = {
  /** Event messages: start and update mean an open event, end closes it. */
  anomaly: "{{ 'OFF' if value_json.type == 'end' else 'ON' }}",
  score: '{{ value_json.score }}',
  /** Camera status: a camera fault holds while its `faults` list has entries. */
  fault: "{{ 'ON' if value_json.faults | default([]) | length > 0 else 'OFF' }}",
  /** Camera status: the faults that hold (kind, signal, since, value, expected) and their kinds, as attributes. */
  faultAttributes: "{{ {'kinds': value_json.faults | default([]) | map(attribute='kind') | list, 'faults': value_json.faults | default([])} | tojson }}",
  /** Camera status: only a streaming camera's entities are worth showing. */
  cameraAvailable: "{{ 'online' if value_json.state == 'streaming' else 'offline' }}",
  /** The health server's URL of an event's snapshot, from the file path the event carries. */
  snapshotUrl: (cameraBaseUrl: string) => `${cameraBaseUrl}{{ value_json.snapshot.split('/') | last }}`,
} as const;

export function objectIds(deviceId: string): { agent: string; camera(name: string): string } {
  return { agent: `linewatch_${deviceId}`, camera: (name) => `linewatch_${deviceId}_${name}` };
}

/**
 * Where Home Assistant fetches snapshots: the configured base URL, else the health
 * server's own address (a wildcard address names no host, so this machine's name
 * stands in); undefined without a health server, which is what serves them.
 */
export function snapshotBaseUrl(config: Pick<Config, 'health' | 'homeassistant'>): string | undefined {
  if (config.homeassistant.snapshotBaseUrl) return config.homeassistant.snapshotBaseUrl.replace(/\/+$/, '');
  if (!config.health.enabled) return undefined;
  const wildcard = ['0.0.0.0', '::', '[::]', ''].includes(config.health.host);
  const host = wildcard ? hostname() : config.health.host;
  return `http://${host.includes(':') && !host.startsWith('[') ? `[${host}]` : host}:${config.health.port}`;
}

/**
 * Every retained discovery config: the agent's device first (the cameras name it as
 * their via_device), then one per camera. Pure, so the payloads can be checked
 * without a broker.
 */
export function discoveryMessages(options: {
  prefix: string;
  deviceId: string;
  topics: DiscoveryPublisher['topics'];
  cameras: readonly DiscoveryCamera[];
  /** The health server as Home Assistant reaches it; no image entities without it. */
  snapshotBaseUrl?: string;
}): DiscoveryMessage[] {
  const { prefix, deviceId, topics } = options;
  const ids = objectIds(deviceId);
  const origin = { name: 'linewatch', sw_version: LINEWATCH_VERSION, support_url: ORIGIN_URL };
  const agent = {
    dev: {
      identifiers: [ids.agent],
      name: `linewatch ${deviceId}`,
      manufacturer: 'linewatch',
      model: 'linewatch agent',
      sw_version: LINEWATCH_VERSION,
      ...(options.snapshotBaseUrl ? { configuration_url: `${options.snapshotBaseUrl}/` } : {}),
    },
    o: origin,
    cmps: {
      status: {
        p: 'binary_sensor',
        unique_id: `${ids.agent}_status`,
        device_class: 'connectivity',
        entity_category: 'diagnostic',
        // The agent's own availability topic is this sensor's state, last will included: no availability of its own.
        state_topic: topics.availability,
        payload_on: 'online',
        payload_off: 'offline',
      },
    },
    qos: 1,
  };
  const messages: DiscoveryMessage[] = [{ topic: configTopic(prefix, ids.agent), payload: JSON.stringify(agent) }];

  for (const camera of options.cameras) {
    const id = ids.camera(camera.name);
    const events = topics.events(camera.name);
    const status = topics.cameraStatus(camera.name);
    const image = options.snapshotBaseUrl && camera.snapshots.enabled;
    const device = {
      dev: {
        identifiers: [id],
        name: `${deviceId} ${camera.name}`,
        manufacturer: 'linewatch',
        model: 'anomaly camera',
        model_id: basename(camera.model),
        sw_version: LINEWATCH_VERSION,
        via_device: ids.agent,
      },
      o: origin,
      cmps: {
        anomaly: {
          p: 'binary_sensor',
          name: 'Anomaly',
          unique_id: `${id}_anomaly`,
          device_class: 'problem',
          state_topic: events,
          value_template: TEMPLATES.anomaly,
          // The last event message (score, peakScore, threshold, box, snapshot) as attributes.
          json_attributes_topic: events,
        },
        // The retained camera status lists the faults that hold. With the camera's fault
        // checks off it would always read OFF, which says nothing: removed then, like the score.
        fault: camera.faults.enabled
          ? {
              p: 'binary_sensor',
              name: 'Camera fault',
              unique_id: `${id}_fault`,
              device_class: 'problem',
              state_topic: status,
              value_template: TEMPLATES.fault,
              json_attributes_topic: status,
              json_attributes_template: TEMPLATES.faultAttributes,
            }
          : { p: 'binary_sensor' },
        // Without scorePublish nothing is sent on the score topic, and an event's score
        // would stand still between events: the sensor is removed instead (a config of
        // its platform alone is Home Assistant's way to drop one component).
        score: camera.scorePublish
          ? {
              p: 'sensor',
              name: 'Score',
              unique_id: `${id}_score`,
              state_class: 'measurement',
              suggested_display_precision: 2,
              state_topic: topics.score(camera.name),
              value_template: TEMPLATES.score,
            }
          : { p: 'sensor' },
        last_anomaly: image
          ? {
              p: 'image',
              name: 'Last anomaly',
              unique_id: `${id}_last_anomaly`,
              url_topic: events,
              url_template: TEMPLATES.snapshotUrl(`${options.snapshotBaseUrl}/snapshots/${encodeURIComponent(camera.name)}/`),
              content_type: 'image/jpeg',
            }
          : { p: 'image' },
      },
      availability: [
        { topic: topics.availability, payload_available: 'online', payload_not_available: 'offline' },
        {
          topic: status,
          value_template: TEMPLATES.cameraAvailable,
          payload_available: 'online',
          payload_not_available: 'offline',
        },
      ],
      availability_mode: 'all',
      qos: 1,
    };
    messages.push({ topic: configTopic(prefix, id), payload: JSON.stringify(device) });
  }
  return messages;
}

function configTopic(prefix: string, objectId: string): string {
  return `${prefix}/device/${objectId}/config`;
}

function basename(path: string): string {
  return path.replace(/\/+$/, '').split('/').pop() || path;
}

/** The announcing component: on the agent's MQTT connection, optional, never waits for the broker. */
export class HomeAssistantDiscovery implements Component {
  readonly name = 'homeassistant';
  readonly optional = true;
  private readonly publisher: DiscoveryPublisher;
  private readonly log: Logger;
  private readonly prefix: string;
  private readonly stateFile: string;
  private readonly messages: DiscoveryMessage[];
  /** Config topics of a previous run that are no longer configured: cleared on every connect of this run. */
  private stale: string[] = [];
  /** Whether the state file still lists the stale topics (until their removal was sent once). */
  private staleRecorded = false;
  private unsubscribe: (() => void)[] = [];

  constructor(options: HomeAssistantDiscoveryOptions) {
    const { config, publisher } = options;
    this.publisher = publisher;
    this.log = options.log;
    this.prefix = config.homeassistant.prefix;
    this.stateFile = join(config.dataDir, HOMEASSISTANT_STATE_FILE);
    const baseUrl = snapshotBaseUrl(config);
    this.messages = discoveryMessages({ prefix: this.prefix, deviceId: config.deviceId, topics: publisher.topics, cameras: options.cameras, snapshotBaseUrl: baseUrl });
    const withoutScore = options.cameras.filter((camera) => !camera.scorePublish).map((camera) => camera.name);
    if (withoutScore.length > 0) {
      this.log.info(
        `no score sensor for ${withoutScore.join(', ')} (it needs the score topic: set scorePublish: true on the camera or mqtt.scoreTopic.enabled)`,
      );
    }
    const withoutFaults = options.cameras.filter((camera) => !camera.faults.enabled).map((camera) => camera.name);
    if (withoutFaults.length > 0) {
      this.log.info(`no camera fault sensor for ${withoutFaults.join(', ')} (their fault checks are off: faults.enabled: false)`);
    }
    if (baseUrl === undefined) {
      this.log.info('no last-anomaly image entities (they need the health server, which serves the snapshots)');
    }
  }

  async start(): Promise<void> {
    const current = this.messages.map((message) => message.topic);
    const previous = this.readState();
    this.stale = previous.filter((topic) => !current.includes(topic));
    // Recorded before anything is announced: a crash after announcing must not forget a topic it has to clear one day.
    const recorded = [...current, ...this.stale];
    if (recorded.length !== previous.length || recorded.some((topic) => !previous.includes(topic))) this.writeState(recorded);
    this.staleRecorded = this.stale.length > 0;
    this.unsubscribe.push(
      this.publisher.onConnectionChange((connected) => {
        if (connected) this.announce();
      }),
      this.publisher.subscribe(`${this.prefix}/status`, (_topic, payload, packet) => {
        // A retained birth (some installations retain it) comes with every subscribe: the connect already announced.
        if (!packet.retain && payload.toString('utf8').trim() === 'online') this.announce();
      }),
    );
    if (this.publisher.connected) this.announce();
  }

  async stop(): Promise<void> {
    // The configs stay: the agent's `offline` makes the entities unavailable until it is back.
    for (const unsubscribe of this.unsubscribe.splice(0)) unsubscribe();
  }

  /** All configs (and the removals), again: idempotent for Home Assistant. */
  private announce(): void {
    for (const topic of this.stale) {
      if (!this.publisher.publishRetained(topic, '', 1)) return;
    }
    for (const { topic, payload } of this.messages) {
      if (!this.publisher.publishRetained(topic, payload, 1)) return;
    }
    if (this.staleRecorded) {
      this.log.info(`removed ${this.stale.length} device(s) no longer configured (${this.stale.join(', ')})`);
      this.writeState(this.messages.map((message) => message.topic));
      this.staleRecorded = false;
    }
  }

  private readState(): string[] {
    let text: string;
    try {
      text = readFileSync(this.stateFile, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') this.log.warn(`cannot read ${this.stateFile}: ${(error as Error).message}`);
      return [];
    }
    try {
      const value = JSON.parse(text) as { topics?: unknown };
      // Only ever discovery config topics: an edited file must not make the agent clear anything else.
      const isConfigTopic = (topic: unknown) => typeof topic === 'string' && /^[^#+]+\/config$/.test(topic);
      if (Array.isArray(value.topics) && value.topics.every(isConfigTopic)) return value.topics as string[];
    } catch {
      // Falls through to the warning: an unreadable file only costs the clean-up of removed cameras.
    }
    this.log.warn(`ignoring ${this.stateFile} (not a list of announced topics); cameras removed earlier stay in Home Assistant`);
    return [];
  }

  private writeState(topics: string[]): void {
    try {
      mkdirSync(join(this.stateFile, '..'), { recursive: true });
      writeFileAtomic(this.stateFile, `${JSON.stringify({ topics }, null, 2)}\n`);
    } catch (error) {
      this.log.warn(`cannot write ${this.stateFile} (${(error as Error).message}); a camera removed later may stay in Home Assistant`);
    }
  }
}
