import type { CameraConfig } from '../config/index.js';
import type { Logger } from '../log.js';
import type { LoadedBundle } from '../model/bundle.js';
import { EventTracker } from '../scoring/events.js';
import {
  diagnose,
  faultDebounce,
  faultRules,
  FaultTracker,
  type ActiveFault,
  type FaultEndReason,
  type FaultFinding,
  type FaultMessage,
  type FaultRule,
} from '../scoring/faults.js';
import { QualityMeter, type QualitySignals } from '../scoring/quality.js';
import type { Frame } from '../source/index.js';

type Time = { monotonicMs: number; wallMs: number };

/** What one frame's checks decided. */
export interface FaultVerdict {
  /** Fault starts and ends this frame caused. */
  messages: FaultMessage[];
  /** The frame must not reach the anomaly debouncer: it failed a check, or a fault holds (with suppressEvents). */
  withhold: boolean;
}

/**
 * One camera's sensor-fault guard: measures each scored frame's quality, diagnoses it
 * against the camera's rules and debounces faults. While a fault holds (or a frame fails a
 * check that may be the start of one) anomaly events are held back; a shadow debouncer
 * counts the events that would have started, so the operator sees what was suppressed.
 */
export class CameraFaults {
  private meter: QualityMeter;
  private rules: FaultRule[];
  private readonly tracker: FaultTracker;
  private shadow: EventTracker | undefined;
  private latest: QualitySignals | undefined;
  private suppressedFramesCount = 0;
  private suppressedEventsCount = 0;
  private readonly frame: { width: number; height: number };

  constructor(
    private readonly camera: CameraConfig,
    bundle: LoadedBundle,
    private readonly threshold: () => number,
    log: Logger,
  ) {
    const { width, height } = bundle.manifest.input;
    this.frame = { width, height };
    [this.meter, this.rules] = this.measureWith(bundle, log);
    this.tracker = new FaultTracker(camera.name, faultDebounce(camera.faults, camera.fps));
  }

  get enabled(): boolean {
    return this.camera.faults.enabled;
  }

  /** Faults that hold now, for the camera status. */
  active(): ActiveFault[] {
    return this.tracker.active();
  }

  /** The last frame's signals (undefined before the first frame, or with the checks off). */
  signals(): QualitySignals | undefined {
    return this.latest;
  }

  /** The rules in force, for the operator page. */
  limits(): readonly FaultRule[] {
    return this.rules;
  }

  suppressed(): { frames: number; events: number } {
    return { frames: this.suppressedFramesCount, events: this.suppressedEventsCount };
  }

  /** A new model: its profile and reference give new limits (open faults carry on). */
  useBundle(bundle: LoadedBundle, log: Logger): void {
    [this.meter, this.rules] = this.measureWith(bundle, log);
  }

  judge(frame: Frame, time: Time): FaultVerdict {
    if (!this.enabled) return { messages: [], withhold: false };
    const signals = this.meter.measure(frame.data);
    this.latest = signals;
    const finding: FaultFinding | undefined = diagnose(signals, this.rules, this.frame);
    const messages = this.tracker.push(finding, time);
    const withhold = this.camera.faults.suppressEvents && (finding !== undefined || this.tracker.holding);
    if (!this.tracker.holding) this.shadow = undefined;
    return { messages, withhold };
  }

  /**
   * A withheld frame's score: counted, and fed to the shadow debouncer while a fault holds.
   * Returns whether an anomaly event would have started on it.
   */
  withheld(score: number, time: Time): boolean {
    this.suppressedFramesCount++;
    if (!this.tracker.holding) return false;
    this.shadow ??= new EventTracker({ camera: this.camera.name, threshold: this.threshold(), ...this.camera.debounce });
    const started = this.shadow.push(score, time).some((message) => message.type === 'start');
    if (started) this.suppressedEventsCount++;
    return started;
  }

  /** Ends open faults (camera offline, shutdown); the next frame after a gap is no "change" from the last. */
  close(reason: FaultEndReason, time: Time): FaultMessage[] {
    this.meter.reset();
    this.shadow = undefined;
    return this.tracker.close(reason, time);
  }

  /** A meter for the bundle's frames and scene, and the rules its profile and the config give. */
  private measureWith(bundle: LoadedBundle, log: Logger): [QualityMeter, FaultRule[]] {
    const { width, height, channels } = bundle.manifest.input;
    return [new QualityMeter(width, height, channels, bundle.sceneReference), this.rulesFor(bundle, log)];
  }

  private rulesFor(bundle: LoadedBundle, log: Logger): FaultRule[] {
    if (!this.camera.faults.enabled) return [];
    const { rules, unavailable } = faultRules(this.camera.faults.checks, bundle.manifest.quality, this.frame);
    const described = rules.map((rule) => `${rule.kind} ${rule.signal} ${rule.min !== undefined ? `>= ${rule.min.toFixed(3)}` : `<= ${rule.max!.toFixed(3)}`} (${rule.source})`);
    log.info(`camera ${this.camera.name}: fault checks: ${described.join(', ') || 'none'}`);
    for (const line of unavailable) log.warn(`camera ${this.camera.name}: fault check off: ${line}`);
    return rules;
  }
}
