import path from 'node:path';
import { systemClock, type Clock } from '../clock.js';
import { resolveCameras, type CameraConfig, type Config } from '../config/index.js';
import type { AgentSnapshot, RecentEvent } from '../health/agent-snapshot.js';
import { ApiRouter, OPENAPI_PATH } from '../health/api.js';
import { AgentMetrics } from '../health/metrics.js';
import { startHealthServer, type HealthServer } from '../health/server.js';
import { SystemdNotifier } from '../health/systemd.js';
import type { Logger } from '../log.js';
import type { EmbeddedBroker } from '../publish/broker.js';
import { HomeAssistantDiscovery } from '../publish/homeassistant.js';
import { MqttPublisher, redactUrl } from '../publish/mqtt.js';
import type { AnomalyEventPayload } from '../publish/payloads.js';
import { SnapshotStore, warmUpSnapshotRendering } from '../publish/snapshot.js';
import { sparkplugNodeFromConfig } from '../publish/sparkplug.js';
import { LINEWATCH_VERSION } from '../version.js';
import { addInspectRoute, addReadApiRoutes } from './api-routes.js';
import { CameraPipeline, describeEvent, describeFault } from './camera.js';
import { Controller } from './controller.js';
import { EventHistory } from './event-history.js';
import { fanOut, type EventSink } from './event-sink.js';
import { FeedbackDesk } from './feedback.js';
import { INSPECTION_LIMITS, InspectionDesk } from './inspection.js';
import { Liveness } from './liveness.js';
import { ModelManager, type ReloadReport } from './models.js';
import { InferenceScheduler } from './scheduler.js';

export interface AppOptions {
  config: Config;
  log: Logger;
  /** One human line per event message. */
  announce?: (line: string) => void;
  /** Replaces $NOTIFY_SOCKET etc. (tests). */
  env?: NodeJS.ProcessEnv;
  clock?: Clock;
}

const RECENT_EVENTS_KEPT = 50;

/**
 * The agent: builds its components and hands them to the controller, which starts
 * them in order (broker, MQTT, models, cameras with the inference scheduler,
 * health page, systemd) and stops them in reverse, so that on shutdown every
 * ffmpeg is stopped, open events end with reason `shutdown` and still reach MQTT,
 * and `offline` is the last word. The health page and systemd notifications are
 * optional: if they fail, the agent runs on and says so.
 */
export class App {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly clock: Clock;
  private readonly announce: (line: string) => void;
  private readonly metrics = new AgentMetrics();
  private readonly notifier: SystemdNotifier;
  private readonly controller: Controller;
  private readonly scheduler: InferenceScheduler;
  private readonly startedAt: Date;
  private readonly recentEvents: RecentEvent[] = [];
  /** Loaded models, shared by cameras that run the same one; swapped at run time (REST API, SIGHUP). */
  private readonly models: ModelManager;
  /** Where integrations (Sparkplug B, Home Assistant) receive every camera message. */
  private readonly integrationSinks: Partial<EventSink>[] = [];
  /** The REST API under /api, served by the health server; routes are added where their data lives. */
  private readonly api: ApiRouter;
  private cameras: CameraConfig[] = [];
  private broker: EmbeddedBroker | undefined;
  private publisher: MqttPublisher | undefined;
  private pipelines: CameraPipeline[] = [];
  private health: HealthServer | undefined;
  private inspections: InspectionDesk | undefined;
  private unsubscribeInspect: (() => void) | undefined;
  private liveness: Liveness | undefined;
  private brokerUrl = '';

  constructor(options: AppOptions) {
    this.config = options.config;
    this.log = options.log;
    this.clock = options.clock ?? systemClock;
    this.startedAt = new Date(this.clock.now());
    this.announce = options.announce ?? (() => {});
    this.notifier = new SystemdNotifier({ env: options.env, onWarning: (message) => this.log.warn(message) });
    this.controller = new Controller({ log: this.log, clock: this.clock });
    this.api = new ApiRouter({ token: this.config.health.token, version: LINEWATCH_VERSION });
    this.api.add({
      method: 'GET',
      path: OPENAPI_PATH,
      summary: 'This OpenAPI document',
      tags: ['meta'],
      responses: { '200': { description: 'the OpenAPI 3.1 document of every /api route' } },
      handle: () => ({ status: 200, json: this.api.openApiDocument() }),
    });
    // The API's event history hears every camera message the way integrations do.
    const eventHistory = new EventHistory();
    this.integrationSinks.push(eventHistory);
    addReadApiRoutes(this.api, { cameras: () => this.pipelines, events: eventHistory });
    addInspectRoute(this.api, { maxBodyBytes: INSPECTION_LIMITS.commandMaxBytes, handle: (camera, body) => this.inspections!.http(camera, body) });
    // Feedback ("this was normal", "capture normal frames") remembers events by id, so it hears them too.
    const feedback = new FeedbackDesk({ dataDir: this.config.dataDir, pipelines: () => this.pipelines, cameras: () => this.cameras, clock: this.clock, log: this.log.child({ component: 'feedback' }) });
    this.integrationSinks.push(feedback.sink);
    feedback.addRoutes(this.api);
    // (API routes are added here)
    this.scheduler = new InferenceScheduler({
      clock: this.clock,
      onRound: () => this.syncMqttMetrics(),
      handBack: (scored) => (this.publisher ? this.publisher.batchWrites(scored) : scored()),
      batchWindowMs: this.config.inference.batchWindowMs,
    });
    this.models = new ModelManager({ log: this.log, clock: this.clock, between: (change) => this.scheduler.between(change) });
    this.models.addRoutes(this.api);
    this.controller.add({ name: 'mqtt', start: () => this.startMqtt(), stop: () => this.stopMqtt() });
    this.controller.add({ name: 'models', start: () => this.loadModels(), stop: () => this.disposeModels() });
    // Integrations: optional components started before the cameras (so they see the first
    // statuses) and stopped after them (so they see the last events). Each one also adds
    // its EventSink to this.integrationSinks.
    if (this.config.homeassistant.enabled) {
      // Built at start: it needs the publisher, which the mqtt component creates.
      let discovery: HomeAssistantDiscovery | undefined;
      this.controller.add({
        name: 'homeassistant',
        optional: true,
        start: () =>
          (discovery = new HomeAssistantDiscovery({
            publisher: this.publisher!,
            config: this.config,
            cameras: this.cameras,
            log: this.log.child({ component: 'homeassistant' }),
          })).start(),
        stop: async () => discovery?.stop(),
      });
    }
    if (this.config.sparkplug.enabled) {
      const sparkplug = sparkplugNodeFromConfig(this.config, {
        brokerUrl: () => this.brokerUrl,
        cameras: () => this.cameras.map((camera) => camera.name),
        cameraStats: () => Object.fromEntries(this.pipelines.map((pipeline) => [pipeline.name, pipeline.stats()])),
        log: this.log.child({ component: 'sparkplug' }),
        clock: this.clock,
      });
      this.controller.add(sparkplug);
      this.integrationSinks.push(sparkplug);
    }
    // (integrations are added here)
    this.controller.add({ name: 'cameras', start: () => this.startCameras(), stop: () => this.stopCameras() });
    this.controller.add({ name: 'health server', optional: true, start: () => this.startHealth(), stop: async () => this.health?.close() });
    this.controller.add({ name: 'systemd', optional: true, start: () => this.startSystemd(), stop: () => this.stopSystemd() });
  }

  get mqttUrl(): string {
    return this.brokerUrl;
  }

  get healthUrl(): string | undefined {
    return this.health?.url;
  }

  async start(): Promise<void> {
    this.cameras = resolveCameras(this.config);
    await this.controller.start();
  }

  /** Stop in reverse order. Safe to call more than once and after a failed start. */
  stop(): Promise<void> {
    return this.controller.stop();
  }

  snapshot(): AgentSnapshot {
    const mqtt = this.publisher?.metrics();
    return {
      version: LINEWATCH_VERSION,
      startedAt: this.startedAt.toISOString(),
      deviceId: this.config.deviceId,
      cameras: this.pipelines.map((pipeline) => pipeline.snapshot()),
      mqtt: {
        connected: mqtt?.connected ?? false,
        broker: redactUrl(this.brokerUrl),
        outboxSize: mqtt?.outboxSize ?? 0,
        dropped: mqtt?.dropped ?? 0,
        durable: mqtt?.durable ?? true,
        notDurableReason: mqtt?.notDurableReason ?? null,
      },
      components: this.controller.status(),
      recentEvents: [...this.recentEvents],
    };
  }

  private async startMqtt(): Promise<void> {
    const { config, log } = this;
    if (config.mqtt.url) {
      this.brokerUrl = config.mqtt.url;
    } else {
      // Loaded only here: aedes is about 2 MB of heap that an agent publishing to a real broker never uses.
      const { startEmbeddedBroker } = await import('../publish/broker.js');
      // Only the agent (with the broker's per-start credentials below) may use its client id there.
      this.broker = await startEmbeddedBroker({ ...config.mqtt.embeddedBroker, agentClientId: config.mqtt.clientId });
      this.brokerUrl = this.broker.url;
      log.info(`no mqtt.url configured: embedded MQTT broker listening on ${this.broker.url}`);
    }
    this.publisher = new MqttPublisher({
      url: this.brokerUrl,
      deviceId: config.deviceId,
      baseTopic: config.mqtt.baseTopic,
      clientId: config.mqtt.clientId,
      username: this.broker?.agentCredentials.username ?? config.mqtt.username,
      password: this.broker?.agentCredentials.password ?? config.mqtt.password,
      protocolVersion: config.mqtt.protocolVersion,
      tls: config.mqtt.tls,
      keepaliveSec: config.mqtt.keepaliveS,
      dataDir: config.dataDir,
      scoreMaxRateHz: config.mqtt.scoreTopic.maxRateHz,
      statsIntervalMs: config.mqtt.statsIntervalS * 1000,
      statsProvider: () => ({ cameras: Object.fromEntries(this.pipelines.map((p) => [p.name, p.stats()])) }),
      logger: log.child({ component: 'mqtt' }),
      onEventWrite: (seconds) => this.metrics.eventWrite(seconds),
    });
    this.publisher.onConnectionChange(() => this.syncMqttMetrics());
    // Never blocks on the broker: events wait in the durable outbox until it is reachable.
    await this.publisher.connect();
  }

  private async stopMqtt(): Promise<void> {
    await this.publisher?.close();
    await this.broker?.close();
  }

  /** Cameras that share a model (same bundle, variant, providers, threads) share one loaded session. */
  private async loadModels(): Promise<void> {
    await this.models.loadFor(this.cameras);
  }

  private async disposeModels(): Promise<void> {
    await this.models.dispose();
  }

  /**
   * SIGHUP: `next` is the config file read again. Cameras whose model, variant, providers or
   * threads changed get the new model (loaded beside the old one; a bundle that fails leaves the
   * old one running); every other change is only reported: it needs a restart.
   */
  async reload(next: Config): Promise<ReloadReport> {
    return this.models.reload(this.config, next, resolveCameras(next), this.cameras);
  }

  private async startCameras(): Promise<void> {
    const { config, log } = this;
    const sink = this.eventSink();
    if (this.cameras.some((camera) => camera.snapshots.enabled)) {
      await warmUpSnapshotRendering().then(
        (ms) => log.debug(`snapshot renderer warmed up in ${Math.round(ms)} ms`),
        // Only the first events' snapshots come slower without it.
        (error: unknown) => log.warn(`could not warm up the snapshot renderer: ${(error as Error).message}`),
      );
    }
    for (const camera of this.cameras) {
      // One store per camera: each keeps its own `retain` newest files, within its byte budget, under snapshots/<camera>/.
      const snapshots = new SnapshotStore({
        dir: path.join(config.dataDir, 'snapshots'),
        retain: camera.snapshots.retain,
        maxBytes: camera.snapshots.maxMegabytes * 1e6,
        onWarning: (message) => log.warn(message),
      });
      // Not awaited: a large folder must not hold up the camera; a budget lowered since the last run applies now.
      if (camera.snapshots.enabled) {
        snapshots.prune(camera.name).catch((error: unknown) => log.warn(`camera ${camera.name}: cannot delete old snapshots: ${(error as Error).message}`));
      }
      const pipeline = new CameraPipeline({
        camera,
        bundle: this.models.bundleFor(camera),
        ffmpegPath: config.ffmpeg.path,
        sink,
        metrics: this.metrics,
        snapshots: camera.snapshots.enabled ? snapshots : undefined,
        log: log.child({ camera: camera.name }),
        clock: this.clock,
      });
      this.pipelines.push(pipeline);
      this.scheduler.add(pipeline);
      pipeline.source.on('frame', () => {
        this.metrics.frameIn(pipeline.name);
        this.scheduler.wake();
      });
    }
    const publisher = this.publisher!;
    this.inspections = new InspectionDesk({
      cameras: this.pipelines.map((pipeline) => pipeline.inspections),
      clock: this.clock,
      log: log.child({ component: 'inspection' }),
      refuse: (reply) => publisher.publishNow(publisher.topics.inspections(reply.camera), JSON.stringify(reply)),
    });
    // `+` rather than one subscription per camera, so that a command for a camera that does not exist is answered too.
    this.unsubscribeInspect = publisher.subscribe(`${config.mqtt.baseTopic}/+/inspect`, (topic, payload, packet) =>
      this.inspections?.command(topic.split('/').at(-2) ?? '', payload, packet.retain),
    );
    this.models.attach(this.pipelines.map((pipeline, i) => ({ camera: pipeline, config: this.cameras[i]! })));
    for (const pipeline of this.pipelines) await pipeline.start();
  }

  /** The round in progress finishes first, so no frame is scored after its camera closed its events. */
  private async stopCameras(): Promise<void> {
    this.unsubscribeInspect?.();
    // A swap half done when the cameras stop would switch a stopped camera; let it finish, refuse new ones.
    await this.models.close();
    await this.scheduler.stop();
    await Promise.all(this.pipelines.map((pipeline) => pipeline.stop()));
  }

  private async startHealth(): Promise<void> {
    const { config } = this;
    if (!config.health.enabled) return;
    this.health = await startHealthServer({
      host: config.health.host,
      port: config.health.port,
      metrics: this.metrics,
      api: this.api,
      snapshot: () => this.snapshot(),
      snapshotDir: path.join(config.dataDir, 'snapshots'),
    });
    this.log.info(`health: ${this.health.url}/healthz, metrics: ${this.health.url}/metrics, status page: ${this.health.url}/`);
  }

  private async startSystemd(): Promise<void> {
    this.liveness = new Liveness({
      notifier: this.notifier,
      inferenceBusyForMs: () => this.scheduler.busyForMs(),
      log: this.log,
      clock: this.clock,
    });
    await this.notifier.ready(`watching ${this.pipelines.length} camera(s)`);
    this.liveness.start();
  }

  private async stopSystemd(): Promise<void> {
    this.liveness?.stop();
    await this.notifier.stopping();
  }

  /** Each event message to MQTT, the metrics, the operator page's recent events and the event lines. */
  private eventSink(): EventSink {
    const publisher = this.publisher!;
    const scoreTopicCameras = new Set(this.cameras.filter((camera) => camera.scorePublish).map((camera) => camera.name));
    const recent: Partial<EventSink> = {
      event: (payload: AnomalyEventPayload) => {
        this.recentEvents.unshift({
          id: payload.id,
          camera: payload.camera,
          type: payload.type,
          at: payload.at,
          score: payload.score,
          peakScore: payload.peakScore,
          threshold: payload.threshold,
          snapshot: payload.snapshot,
        });
        this.recentEvents.length = Math.min(this.recentEvents.length, RECENT_EVENTS_KEPT);
      },
    };
    return fanOut(
      [
        {
          event: (payload) => publisher.publishEvent(payload),
          cameraStatus: (camera, status) => publisher.publishCameraStatus(camera, status),
          inspection: (payload) => publisher.publishDurable(publisher.topics.inspections(payload.camera), JSON.stringify(payload)),
          fault: (message) => publisher.publishFault(message),
          // Every camera's scores reach the sinks (Sparkplug needs them); only those with scorePublish go to <base>/<camera>/score.
          score: (camera, payload) => {
            if (scoreTopicCameras.has(camera)) publisher.publishScore(camera, payload);
          },
        },
        { event: (payload) => this.metrics.eventMessage(payload.camera, payload.type) },
        { inspection: (payload) => this.metrics.inspection(payload.camera, 'error' in payload ? payload.error : payload.result) },
        recent,
        { event: (payload) => this.announce(describeEvent(payload)), fault: (message) => this.announce(describeFault(message)) },
        ...this.integrationSinks,
      ],
      (error) => this.log.error(`delivering an event message failed: ${(error as Error).stack ?? String(error)}`),
    );
  }

  private syncMqttMetrics(): void {
    const counters = this.publisher?.metrics();
    if (counters) this.metrics.mqtt(counters);
  }
}
