import path from 'node:path';
import { CameraPipeline } from './camera-pipeline.js';
import { resolveCameras, type CameraConfig, type Config } from './config/index.js';
import type { AgentSnapshot, RecentEvent } from './health/agent-snapshot.js';
import { AgentMetrics } from './health/metrics.js';
import { startHealthServer, type HealthServer } from './health/server.js';
import { SystemdNotifier } from './health/systemd.js';
import type { Logger } from './log.js';
import { loadBundle, type LoadedBundle } from './model/bundle.js';
import { inferImages } from './model/infer.js';
import { startEmbeddedBroker, type EmbeddedBroker } from './publish/broker.js';
import { MqttPublisher, redactUrl } from './publish/mqtt.js';
import { SnapshotStore } from './publish/snapshot.js';
import type { Frame } from './source/index.js';
import { LINEWATCH_VERSION } from './version.js';
import type { ImageTensor } from './image/tensor.js';

export interface AppOptions {
  config: Config;
  log: Logger;
  /** One human line per event message. */
  announce?: (line: string) => void;
  /** Replaces $NOTIFY_SOCKET etc. (tests). */
  env?: NodeJS.ProcessEnv;
}

const RECENT_EVENTS_KEPT = 50;

/**
 * The one place that wires linewatch together. start() brings components up in
 * order (broker, MQTT, models, cameras, health) and stop() takes them down in
 * reverse, so that on shutdown every ffmpeg is stopped, open events end with
 * reason `shutdown` and still reach MQTT, and `offline` is the last word.
 */
export class App {
  private readonly config: Config;
  private readonly log: Logger;
  private readonly announce: (line: string) => void;
  private readonly metrics = new AgentMetrics();
  private readonly notifier: SystemdNotifier;
  private readonly startedAt = new Date();
  private readonly recentEvents: RecentEvent[] = [];
  private broker: EmbeddedBroker | undefined;
  private publisher: MqttPublisher | undefined;
  private bundles = new Map<string, LoadedBundle>();
  private pipelines: CameraPipeline[] = [];
  private health: HealthServer | undefined;
  private pumping = false;
  /** The inference round in progress: stop() lets it finish so no frame is scored after its camera's events were closed. */
  private pumpRun: Promise<void> | undefined;
  private pumpAgain = false;
  private stopping = false;
  private brokerUrl = '';

  constructor(options: AppOptions) {
    this.config = options.config;
    this.log = options.log;
    this.announce = options.announce ?? (() => {});
    this.notifier = new SystemdNotifier({ env: options.env, onWarning: (message) => this.log.warn(message) });
  }

  get mqttUrl(): string {
    return this.brokerUrl;
  }

  get healthUrl(): string | undefined {
    return this.health?.url;
  }

  async start(): Promise<void> {
    const { config, log } = this;
    try {
      const cameras = resolveCameras(config);
      if (config.mqtt.url) {
        this.brokerUrl = config.mqtt.url;
      } else {
        this.broker = await startEmbeddedBroker(config.mqtt.embeddedBroker);
        this.brokerUrl = this.broker.url;
        log.info(`no mqtt.url configured: embedded MQTT broker listening on ${this.broker.url}`);
      }
      this.publisher = new MqttPublisher({
        url: this.brokerUrl,
        deviceId: config.deviceId,
        baseTopic: config.mqtt.baseTopic,
        clientId: config.mqtt.clientId,
        username: config.mqtt.username,
        password: config.mqtt.password,
        protocolVersion: config.mqtt.protocolVersion,
        tls: config.mqtt.tls,
        keepaliveSec: config.mqtt.keepaliveS,
        dataDir: config.dataDir,
        scoreMaxRateHz: config.mqtt.scoreTopic.maxRateHz,
        statsIntervalMs: config.mqtt.statsIntervalS * 1000,
        statsProvider: () => ({ cameras: Object.fromEntries(this.pipelines.map((p) => [p.name, p.stats()])) }),
        logger: { info: (m) => log.info(m), warn: (m) => log.warn(m) },
      });
      this.publisher.onConnectionChange(() => this.syncMqttMetrics());
      // Never blocks on the broker: events wait in the durable outbox until it is reachable.
      await this.publisher.connect();

      for (const camera of cameras) {
        // One store per camera: each keeps its own `retain` newest files under snapshots/<camera>/.
        const snapshots = new SnapshotStore({
          dir: path.join(config.dataDir, 'snapshots'),
          retain: camera.snapshots.retain,
          onWarning: (message) => log.warn(message),
        });
        const bundle = await this.bundleFor(camera);
        this.pipelines.push(
          new CameraPipeline({
            camera,
            bundle,
            ffmpegPath: config.ffmpeg.path,
            publisher: this.publisher,
            metrics: this.metrics,
            snapshots: camera.snapshots.enabled ? snapshots : undefined,
            log,
            announce: this.announce,
            onEvent: (event) => {
              this.recentEvents.unshift(event);
              this.recentEvents.length = Math.min(this.recentEvents.length, RECENT_EVENTS_KEPT);
            },
          }),
        );
      }
      for (const pipeline of this.pipelines) {
        pipeline.source.on('frame', () => {
          this.metrics.frameIn(pipeline.name);
          this.schedulePump();
        });
        await pipeline.start();
      }
      if (config.health.enabled) {
        this.health = await startHealthServer({
          host: config.health.host,
          port: config.health.port,
          metrics: this.metrics,
          snapshot: () => this.snapshot(),
          snapshotDir: path.join(config.dataDir, 'snapshots'),
        });
        log.info(`health: ${this.health.url}/healthz, metrics: ${this.health.url}/metrics, status page: ${this.health.url}/`);
      }
      await this.notifier.ready(`watching ${this.pipelines.length} camera(s)`);
    } catch (error) {
      await this.stop();
      throw error;
    }
  }

  /** Stop in reverse order. Safe to call more than once and after a failed start. */
  async stop(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    await this.notifier.stopping();
    await this.health?.close().catch((error: unknown) => this.log.warn(`health server: ${(error as Error).message}`));
    await this.pumpRun;
    // Stopping a pipeline stops its ffmpeg and publishes the end of an open event.
    await Promise.all(this.pipelines.map((pipeline) => pipeline.stop()));
    await this.publisher?.close();
    for (const bundle of this.bundles.values()) await bundle.dispose();
    this.bundles.clear();
    await this.broker?.close();
  }

  snapshot(): AgentSnapshot {
    const mqtt = this.publisher?.metrics();
    return {
      version: LINEWATCH_VERSION,
      startedAt: this.startedAt.toISOString(),
      deviceId: this.config.deviceId,
      cameras: this.pipelines.map((pipeline) => pipeline.snapshot()),
      mqtt: { connected: mqtt?.connected ?? false, broker: redactUrl(this.brokerUrl), outboxSize: mqtt?.outboxSize ?? 0 },
      recentEvents: [...this.recentEvents],
    };
  }

  /** Cameras that share a model (same bundle, variant, providers, threads) share one loaded session. */
  private async bundleFor(camera: CameraConfig): Promise<LoadedBundle> {
    const key = JSON.stringify([camera.model, camera.variant, camera.providers, camera.threads]);
    let bundle = this.bundles.get(key);
    if (!bundle) {
      bundle = await loadBundle(camera.model, {
        variant: camera.variant,
        providers: camera.providers,
        threads: camera.threads,
        log: (message) => this.log.info(message),
      });
      this.log.info(
        `model ${camera.model} (${camera.variant}, ${bundle.manifest.input.width}x${bundle.manifest.input.height}x${bundle.manifest.input.channels}, scorer ${bundle.manifest.scoring.scorer}) on ${bundle.model.providers.join(', ')}, warm-up ${bundle.warmUpMs.toFixed(1)} ms`,
      );
      this.bundles.set(key, bundle);
    }
    return bundle;
  }

  private schedulePump(): void {
    if (this.stopping) return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = true;
    this.pumpRun = new Promise((resolve) => setImmediate(() => void this.pump().finally(resolve)));
  }

  /**
   * Score whatever frames are waiting: one per camera per round, frames of cameras
   * that share a model in one batch. Frames that arrive meanwhile wait in their
   * camera's bounded queue (oldest dropped and counted when inference falls behind).
   */
  private async pump(): Promise<void> {
    try {
      do {
        this.pumpAgain = false;
        const ready: { pipeline: CameraPipeline; frame: Frame }[] = [];
        for (const pipeline of this.pipelines) {
          const frame = pipeline.source.take();
          if (frame) ready.push({ pipeline, frame });
        }
        if (ready.length === 0) break;
        this.pumpAgain = true;
        const byBundle = new Map<LoadedBundle, typeof ready>();
        for (const item of ready) {
          const group = byBundle.get(item.pipeline.bundle) ?? [];
          group.push(item);
          byBundle.set(item.pipeline.bundle, group);
        }
        for (const [bundle, group] of byBundle) {
          const images: ImageTensor[] = group.map(({ pipeline, frame }) => pipeline.tensorOf(frame));
          const outputs = await inferImages(bundle.model, images, group.length);
          const seconds = outputs.inferenceMs / 1000 / group.length;
          group.forEach(({ pipeline, frame }, i) => {
            try {
              pipeline.score(frame, images[i]!, outputs.recon[i]!, outputs.mu[i]!, seconds, outputs.map?.[i]);
            } catch (error) {
              this.log.error(`camera ${pipeline.name}: scoring failed: ${(error as Error).message}`);
            }
          });
        }
        void this.notifier.watchdog();
        this.syncMqttMetrics();
      } while (this.pumpAgain && !this.stopping);
    } catch (error) {
      this.log.error(`inference failed: ${(error as Error).stack ?? error}`);
    } finally {
      this.pumping = false;
    }
  }

  private syncMqttMetrics(): void {
    const counters = this.publisher?.metrics();
    if (counters) this.metrics.mqtt(counters.connected, counters.outboxSize);
  }
}
