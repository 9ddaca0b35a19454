import { randomUUID } from 'node:crypto';
import { z } from 'zod';
import type { QualitySignals } from './quality.js';

/**
 * Camera faults: a broken camera told from a broken part. Each frame's quality
 * signals (quality.ts) are held against limits learned from the training frames
 * (the bundle's quality profile) or set in the config; a check that fails on
 * most frames for a while is a fault, debounced like an anomaly (k of n frames
 * to start, a run of good frames to end). Pure: no timers and no I/O.
 */

/**
 * In the order a frame is diagnosed: the first check it fails names the fault. A black cover
 * is dark and frozen too, but `covered`; a picture burnt out to one white level is `bright`, not `covered`.
 */
export const FAULT_KINDS = ['bright', 'covered', 'dark', 'frozen', 'blur', 'moved'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
export type FaultSignal = 'flatShare' | 'brightness' | 'clipped' | 'change' | 'sharpness' | 'shift';

export const FAULT_END_REASONS = ['recovered', 'camera-offline', 'shutdown', 'interrupted'] as const;
export type FaultEndReason = (typeof FAULT_END_REASONS)[number];

/**
 * What the training frames looked like: the ranges the checks' default limits come
 * from (manifest `quality`). Levels are 0-255 grey at the model's resolution.
 */
export const QualityProfileSchema = z
  .object({
    /** Training frames it was measured on. */
    frames: z.number().int().min(1),
    brightness: z.object({ min: z.number().min(0).max(255), max: z.number().min(0).max(255) }).strict(),
    clipped: z.object({ max: z.number().min(0).max(1) }).strict(),
    flatShare: z.object({ max: z.number().min(0).max(1) }).strict(),
    sharpness: z.object({ min: z.number().min(0), max: z.number().min(0) }).strict(),
    /**
     * Largest displacement of a training frame against the reference, in pixels. Absent when
     * the frames do not share one view (a folder of separate photos): no displacement check then.
     */
    shift: z.object({ maxX: z.number().min(0), maxY: z.number().min(0) }).strict().optional(),
    /** Grey PNG of the scene (the per-pixel median of the training frames), for the displacement check. */
    reference: z.string().optional(),
  })
  .strict();
export type QualityProfile = z.infer<typeof QualityProfileSchema>;

/** One check's limit: a frame fails it when its signal is below `min` or above `max`. */
export interface FaultRule {
  kind: FaultKind;
  signal: FaultSignal;
  min?: number;
  max?: number;
  /** Where the limit came from, for the log and the status page. */
  source: 'learned' | 'config' | 'default';
}

/** The config's per-camera fault settings (config/schema.ts FaultsSchema). */
export interface FaultCheckSettings {
  covered: { enabled: boolean; maxFlatShare?: number | undefined };
  dark: { enabled: boolean; minBrightness?: number | undefined };
  bright: { enabled: boolean; maxBrightness?: number | undefined; maxClipped?: number | undefined };
  frozen: { enabled: boolean; minChange?: number | undefined };
  blur: { enabled: boolean; minSharpness?: number | undefined };
  moved: { enabled: boolean; maxShift?: number | undefined };
}

/** Limits for bundles without a quality profile (or a profile lacking what a check needs). */
export const FAULT_DEFAULTS = {
  maxFlatShare: 0.85,
  minBrightness: 25,
  maxBrightness: 230,
  maxClipped: 0.3,
  /** Not learned: a live camera's noise alone changes the picture by more than this between frames. */
  minChange: 0.02,
} as const;

/**
 * The rules a camera runs, in diagnosis order, and one line per check that cannot
 * run (and why). Learned limits leave room beyond what training saw: half the way
 * to the end of the scale for the upper limits, a third below the darkest training
 * frame, 40 % of the softest one's sharpness, two pixels (or 2 % of the frame) of
 * displacement beyond the largest seen.
 */
export function faultRules(
  checks: FaultCheckSettings,
  profile: QualityProfile | undefined,
  frame: { width: number; height: number },
): { rules: FaultRule[]; unavailable: string[] } {
  const rules: FaultRule[] = [];
  const unavailable: string[] = [];
  /** The configured limit, else the learned one, else the fixed default. */
  const add = (kind: FaultKind, signal: FaultSignal, bound: 'min' | 'max', configured: number | undefined, learned: number | undefined, fallback: number) => {
    const [value, source] = configured !== undefined ? [configured, 'config' as const] : learned !== undefined ? [learned, 'learned' as const] : [fallback, 'default' as const];
    rules.push({ kind, signal, [bound]: value, source });
  };
  const towardsTop = (max: number, top: number) => max + 0.5 * (top - max);
  const { bright, covered, dark, frozen, blur, moved } = checks;
  if (bright.enabled) {
    add('bright', 'brightness', 'max', bright.maxBrightness, profile && towardsTop(profile.brightness.max, 255), FAULT_DEFAULTS.maxBrightness);
    add('bright', 'clipped', 'max', bright.maxClipped, profile && Math.min(1, profile.clipped.max + 0.25), FAULT_DEFAULTS.maxClipped);
  }
  if (covered.enabled) add('covered', 'flatShare', 'max', covered.maxFlatShare, profile && towardsTop(profile.flatShare.max, 1), FAULT_DEFAULTS.maxFlatShare);
  if (dark.enabled) add('dark', 'brightness', 'min', dark.minBrightness, profile && (profile.brightness.min * 2) / 3, FAULT_DEFAULTS.minBrightness);
  if (frozen.enabled) add('frozen', 'change', 'min', frozen.minChange, undefined, FAULT_DEFAULTS.minChange);
  // Sharpness depends on the scene: no fixed default can tell a plain scene from a blurred one.
  const softest = profile && profile.sharpness.min * 0.4;
  if (blur.enabled && blur.minSharpness === undefined && softest === undefined) {
    unavailable.push('blur: the model bundle has no quality profile: set faults.checks.blur.minSharpness, or run `linewatch quality-profile`');
  } else if (blur.enabled) {
    add('blur', 'sharpness', 'min', blur.minSharpness, softest, Number.NaN);
  }
  if (moved.enabled) {
    if (!profile?.reference) {
      unavailable.push('moved: the model bundle has no scene reference to compare with: run `linewatch quality-profile` on normal footage of this camera');
    } else if (!profile.shift && moved.maxShift === undefined) {
      unavailable.push('moved: the training frames do not share one view (separate photos), so there is no scene to compare with');
    } else {
      const learned = profile.shift && Math.max((profile.shift.maxX + 2) / frame.width, (profile.shift.maxY + 2) / frame.height, 0.02);
      add('moved', 'shift', 'max', moved.maxShift, learned, Number.NaN);
    }
  }
  // Diagnosis order, whatever order they were added in.
  rules.sort((a, b) => FAULT_KINDS.indexOf(a.kind) - FAULT_KINDS.indexOf(b.kind));
  return { rules, unavailable };
}

/** The value a rule judges: the signal itself, or the displacement as a share of the frame. */
export function signalValue(signals: QualitySignals, signal: FaultSignal, frame: { width: number; height: number }): number {
  if (signal === 'shift') return Math.max(Math.abs(signals.shiftX) / frame.width, Math.abs(signals.shiftY) / frame.height);
  return signals[signal];
}

/** A failed check: what failed, by how much. */
export interface FaultFinding {
  kind: FaultKind;
  signal: FaultSignal;
  value: number;
  expected: { min?: number; max?: number };
}

/** The first rule (in diagnosis order) the frame fails, or undefined when it passes them all (NaN never fails). */
export function diagnose(signals: QualitySignals, rules: readonly FaultRule[], frame: { width: number; height: number }): FaultFinding | undefined {
  for (const rule of rules) {
    const value = signalValue(signals, rule.signal, frame);
    if ((rule.min !== undefined && value < rule.min) || (rule.max !== undefined && value > rule.max)) {
      return { kind: rule.kind, signal: rule.signal, value, expected: expectedOf(rule) };
    }
  }
  return undefined;
}

export function expectedOf(rule: FaultRule): { min?: number; max?: number } {
  return { ...(rule.min === undefined ? {} : { min: rule.min }), ...(rule.max === undefined ? {} : { max: rule.max }) };
}

/** One message on `<base>/<camera>/faults` (schemas/fault.schema.json). */
export interface FaultMessage {
  type: 'start' | 'end';
  /** The same uuid on a fault's start and end. */
  id: string;
  camera: string;
  kind: FaultKind;
  signal: FaultSignal;
  /** Capture time of the frame (or close) that caused this message. */
  at: string;
  /** Capture time of the first failing frame of the fault. */
  since: string;
  /** The signal's value on the frame that caused this message (on `end`: the last failing one). */
  value: number;
  expected: { min?: number; max?: number };
  /** Only on `end`. */
  durationMs?: number;
  reason?: FaultEndReason;
}

/** A fault that holds now, as the camera status lists it. */
export interface ActiveFault {
  id: string;
  kind: FaultKind;
  signal: FaultSignal;
  since: string;
  value: number;
  expected: { min?: number; max?: number };
}

export interface FaultDebounce {
  /** Failing frames among the last `n` that raise a fault. */
  k: number;
  n: number;
  /** Consecutive frames that pass which end it. */
  endFrames: number;
}

/** k of n and the end run from the config's seconds at the camera's frame rate: at least 3 frames each. */
export function faultDebounce(settings: { startS: number; endS: number; share: number }, fps: number): FaultDebounce {
  const n = Math.max(3, Math.round(settings.startS * fps));
  return { k: Math.max(1, Math.min(n, Math.ceil(settings.share * n))), n, endFrames: Math.max(3, Math.round(settings.endS * fps)) };
}

type Time = { monotonicMs: number; wallMs: number };

interface KindState {
  /** Whether each of the last n frames failed this kind (newest last). */
  window: { failed: boolean; time: Time }[];
  open: { id: string; since: Time; finding: FaultFinding; passRun: number } | undefined;
}

/**
 * Debounces each kind on its own: a frame counts against the kind that diagnose()
 * names and passes every other one, so a covered lens is one `covered` fault, not
 * also `dark` and `frozen`.
 */
export class FaultTracker {
  private readonly states = new Map<FaultKind, KindState>();

  constructor(
    readonly camera: string,
    private readonly debounce: FaultDebounce,
    private readonly newId: () => string = randomUUID,
  ) {
    for (const kind of FAULT_KINDS) this.states.set(kind, { window: [], open: undefined });
  }

  /** Faults that hold now, in diagnosis order. */
  active(): ActiveFault[] {
    const faults: ActiveFault[] = [];
    for (const [kind, state] of this.states) {
      if (state.open) {
        const { id, since, finding } = state.open;
        faults.push({ id, kind, signal: finding.signal, since: iso(since.wallMs), value: finding.value, expected: finding.expected });
      }
    }
    return faults;
  }

  get holding(): boolean {
    for (const state of this.states.values()) if (state.open) return true;
    return false;
  }

  /** One frame's finding (undefined: it passed every check); returns the messages it causes. */
  push(finding: FaultFinding | undefined, time: Time): FaultMessage[] {
    const messages: FaultMessage[] = [];
    for (const [kind, state] of this.states) {
      const failed = finding?.kind === kind;
      const open = state.open;
      if (open) {
        if (failed) {
          open.passRun = 0;
          open.finding = finding;
        } else if (++open.passRun >= this.debounce.endFrames) {
          messages.push(this.endMessage(kind, open, time, 'recovered'));
          state.open = undefined;
        }
        continue;
      }
      state.window.push({ failed, time });
      if (state.window.length > this.debounce.n) state.window.shift();
      const failing = state.window.filter((entry) => entry.failed);
      if (!failed || failing.length < this.debounce.k) continue;
      state.open = { id: this.newId(), since: failing[0]!.time, finding: finding!, passRun: 0 };
      state.window = [];
      messages.push(this.message('start', kind, state.open, time));
    }
    return messages;
  }

  /** Ends every open fault (the camera went offline, the agent stops, checks were turned off). */
  close(reason: FaultEndReason, time: Time): FaultMessage[] {
    const messages: FaultMessage[] = [];
    for (const [kind, state] of this.states) {
      state.window = [];
      if (state.open) messages.push(this.endMessage(kind, state.open, time, reason));
      state.open = undefined;
    }
    return messages;
  }

  private endMessage(kind: FaultKind, open: NonNullable<KindState['open']>, time: Time, reason: FaultEndReason): FaultMessage {
    return { ...this.message('end', kind, open, time), durationMs: Math.max(0, time.monotonicMs - open.since.monotonicMs), reason };
  }

  private message(type: 'start' | 'end', kind: FaultKind, open: NonNullable<KindState['open']>, time: Time): FaultMessage {
    return {
      type,
      id: open.id,
      camera: this.camera,
      kind,
      signal: open.finding.signal,
      at: iso(time.wallMs),
      since: iso(open.since.wallMs),
      value: open.finding.value,
      expected: open.finding.expected,
    };
  }
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
