import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import os from 'node:os';
import type { Readable, Writable } from 'node:stream';

import { systemClock, type Clock, type Timer } from '../clock.js';
import { UsageError } from '../errors.js';
import { DEFAULT_BACKOFF, backoffDelayMs, type BackoffOptions } from './backoff.js';
import { buildFfmpegArgs, channelsOf, classifyInput, frameByteLength, INPUT_SCRIPT_FD, inputScript, PREVIEW_FD, type FfmpegArgsOptions } from './ffmpeg-args.js';
import { failureDetail, LineRing, scrubCredentials, SourceSizeParser, type SourceSize } from './ffmpeg-log.js';
import { FixedSizeFramer, JpegSplitter } from './frame-reader.js';
import { FrameQueue, type OverflowPolicy } from './frame-queue.js';

/**
 * - `streaming`: frames are arriving;
 * - `reconnecting`: connecting, or waiting to retry after ffmpeg failed or stalled (the reason says which);
 * - `offline`: not running: never started, stopped, the input ended (a file without loop), or `maxRestarts` spent.
 */
export type CameraStatus = 'streaming' | 'reconnecting' | 'offline';
export const CAMERA_STATUSES: readonly CameraStatus[] = ['streaming', 'reconnecting', 'offline'];

export interface CameraStatusChange {
  cameraId: string;
  status: CameraStatus;
  previous: CameraStatus;
  /** Human-readable, credentials scrubbed, e.g. "ffmpeg exited with code 1: rtsp://***@cam/1: Connection refused". */
  reason: string;
  /** ms since the epoch: for people (payloads, logs); it jumps when NTP steps the clock. */
  at: number;
  /** `clock.monotonic()` at the change: for ordering and durations (never goes back). */
  monotonicAt: number;
  /** Set while reconnecting: when the next attempt starts. */
  retryInMs?: number;
}

/** One analysis frame: `data` is interleaved HWC bytes, exactly width * height * channels long. */
export interface Frame {
  cameraId: string;
  /** Increases by one per frame read, across ffmpeg restarts; a gap seen by the consumer means dropped frames. */
  seq: number;
  /** When the whole frame had been read from ffmpeg (ms since the epoch): for payloads only, it jumps when NTP steps the clock. */
  capturedAt: number;
  /**
   * `clock.monotonic()` when the whole frame had been read: what orders frames, debounces and measures
   * durations, since it never goes back.
   */
  monotonicAt: number;
  width: number;
  height: number;
  channels: 1 | 3;
  data: Uint8Array;
}

/** A JPEG of the whole source frame (not cropped), for event snapshots. */
export interface PreviewImage {
  /** ms since the epoch. */
  capturedAt: number;
  /** `clock.monotonic()` when it was read; what previewNear() matches on. */
  monotonicAt: number;
  jpeg: Uint8Array;
}

export interface CameraCounters {
  framesIn: number;
  /** Frames never handed to the consumer: evicted from a full queue, or skipped by takeLatest(). */
  framesDropped: number;
  restarts: number;
  /** ms since the epoch, for display. */
  lastFrameAt: number | undefined;
  /** `clock.monotonic()` of the last frame: compare with clock.monotonic() for its age, which a clock step cannot fake. */
  lastFrameMonotonicAt: number | undefined;
  previewsIn: number;
}

/** Frames waiting for inference: two keep the model busy without scoring stale frames after a hiccup. */
export const DEFAULT_QUEUE_CAPACITY = 2;

export interface CameraSourceEvents {
  /** A frame was queued: take it with take() / takeLatest(). */
  frame: [];
  status: [CameraStatusChange];
  preview: [PreviewImage];
  /** The source resolution, parsed from ffmpeg at each (re)start; emitted when it is first known or changes. */
  sourceSize: [SourceSize];
  /** A new ffmpeg process started. */
  spawn: [pid: number];
  /** No more frames will come (end of a file, or maxRestarts spent); queued frames can still be taken. */
  end: [];
}

export type SourceLogLevel = 'debug' | 'info' | 'warn' | 'error';
export type SourceLogger = (level: SourceLogLevel, message: string, fields?: Record<string, unknown>) => void;

export interface CameraSourceOptions extends FfmpegArgsOptions {
  /** Camera name used in frames, logs and status events. */
  id: string;
  ffmpegPath?: string;
  /** Frames held for a slow consumer (default 4). */
  queueCapacity?: number;
  /** `drop-oldest` for live cameras (default); `pause` to process a file without losing frames. */
  overflow?: OverflowPolicy;
  /** Restart ffmpeg when no frame arrived for this long (default 10000 ms). */
  stallTimeoutMs?: number;
  /** Allowance for the first frame after a (re)start: connect, probe, first key frame (default 2 x stallTimeoutMs). */
  startTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** A process that streamed this long resets the backoff to its initial delay (default 60000 ms). */
  stableAfterMs?: number;
  /** Give up (status offline) after this many restarts; default: never, cameras are expected to come back. */
  maxRestarts?: number;
  /** Time between SIGTERM and SIGKILL when stopping ffmpeg (default 3000 ms). */
  stopGraceMs?: number;
  /** ffmpeg stderr lines kept (default 50). */
  stderrLines?: number;
  /** Latest preview JPEGs kept for previewNear() (default 4). */
  previewKeep?: number;
  log?: SourceLogger;
  /** Jitter source, injectable for tests. */
  random?: () => number;
  /**
   * Timers and timestamps (default systemClock). Stall detection, backoff and the stable-run reset use its
   * monotonic time, so an NTP step of the wall clock neither fakes a stall nor resets the backoff.
   */
  clock?: Clock;
}

interface Run {
  child: ChildProcess;
  /** clock.monotonic() */
  startedAt: number;
  /** clock.monotonic() */
  firstFrameAt?: number;
  /** Set when we killed the process on purpose (stall): it explains the exit better than the exit code. */
  killReason?: string;
  killTimer?: Timer;
  pausedByQueue: boolean;
  finished: boolean;
  sizeParser: SourceSizeParser;
  closed: Promise<void>;
  markClosed: () => void;
}

/** ffmpeg stderr lines quoted in the warning that announces a failure. */
const FAILURE_LOG_LINES = 20;

/** Marks the start of each process in the stderr ring, so a failure is explained by its own lines only. */
const RUN_MARKER = '--- ffmpeg started';

/**
 * Children still alive when the Node process exits get SIGKILL. ffmpeg runs in our process group (not
 * detached), so terminal signals and systemd's cgroup kill reach it too; and if we die without running
 * exit handlers (SIGKILL), ffmpeg's next write to the closed stdout pipe fails with EPIPE and it exits.
 */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(child: ChildProcess): void {
  liveChildren.add(child);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const orphan of liveChildren) orphan.kill('SIGKILL');
    });
  }
}

/**
 * One camera: a supervised ffmpeg process that decodes, scales and writes fixed-size raw frames.
 * It restarts ffmpeg on exit or stall with capped, jittered exponential backoff, never throws once
 * constructed (failures become status events and log lines), and holds at most `queueCapacity` frames.
 */
export class CameraSource extends EventEmitter<CameraSourceEvents> {
  readonly id: string;
  readonly frameBytes: number;
  readonly width: number;
  readonly height: number;
  readonly channels: 1 | 3;

  private readonly options: CameraSourceOptions;
  private args: string[];
  /** The input script ffmpeg reads on INPUT_SCRIPT_FD (a camera URL with a password), or undefined. */
  private inputScript: string | undefined;
  private readonly ffmpegPath: string;
  private readonly stallTimeoutMs: number;
  private readonly startTimeoutMs: number;
  private readonly backoff: BackoffOptions;
  private readonly stableAfterMs: number;
  private readonly maxRestarts: number;
  private readonly stopGraceMs: number;
  private readonly previewKeep: number;
  private readonly log: SourceLogger;
  private readonly random: () => number;
  private readonly clock: Clock;
  private readonly endsAtEndOfInput: boolean;
  private readonly previewEnabled: boolean;

  private readonly queue: FrameQueue<Frame>;
  private readonly framer: FixedSizeFramer;
  private readonly jpegs = new JpegSplitter();
  private readonly stderrRing: LineRing;
  private readonly previews: PreviewImage[] = [];
  private waiters: ((frame: Frame | undefined) => void)[] = [];

  private running = false;
  private run: Run | undefined;
  private watchdog: Timer | undefined;
  private restartTimer: Timer | undefined;
  private attempt = 0;
  /** Bumped by start() and stop(), so a start() that awaited across a stop() does not spawn. */
  private generation = 0;
  private lastFailureReason: string | undefined;
  private seq = 0;
  private statusValue: CameraStatus = 'offline';
  private reasonValue = 'not started';
  private sourceSizeValue: SourceSize | undefined;
  private readonly counters: CameraCounters = { framesIn: 0, framesDropped: 0, restarts: 0, lastFrameAt: undefined, lastFrameMonotonicAt: undefined, previewsIn: 0 };

  /** Throws UsageError for invalid options; nothing after construction throws. */
  constructor(options: CameraSourceOptions) {
    super();
    if (options.id.trim() === '') throw new UsageError('camera id is empty', { hint: 'give every camera a unique id' });
    this.options = options;
    this.id = options.id;
    this.args = buildFfmpegArgs(options);
    this.inputScript = inputScript(options);
    this.width = options.width;
    this.height = options.height;
    this.channels = channelsOf(options.pixelFormat ?? 'gray');
    this.frameBytes = frameByteLength(options);
    this.ffmpegPath = options.ffmpegPath ?? 'ffmpeg';
    this.stallTimeoutMs = positiveOption(options, 'stallTimeoutMs', 10_000);
    this.startTimeoutMs = positiveOption(options, 'startTimeoutMs', 2 * this.stallTimeoutMs);
    this.stableAfterMs = positiveOption(options, 'stableAfterMs', 60_000);
    this.stopGraceMs = positiveOption(options, 'stopGraceMs', 3000);
    this.maxRestarts = options.maxRestarts ?? Number.POSITIVE_INFINITY;
    this.previewKeep = positiveOption(options, 'previewKeep', 4, true);
    this.backoff = { ...DEFAULT_BACKOFF, ...options.backoff };
    if (!(this.backoff.initialMs > 0 && this.backoff.maxMs >= this.backoff.initialMs && this.backoff.factor >= 1 && this.backoff.jitter >= 0 && this.backoff.jitter < 1)) {
      throw new UsageError(`camera ${this.id}: invalid backoff ${JSON.stringify(this.backoff)}`, {
        hint: 'need initialMs > 0, maxMs >= initialMs, factor >= 1, 0 <= jitter < 1',
      });
    }
    if (options.fps !== undefined && this.stallTimeoutMs < 2000 / options.fps) {
      throw new UsageError(`camera ${this.id}: stallTimeoutMs ${this.stallTimeoutMs} is shorter than two frames at fps ${options.fps}`, {
        hint: `raise stallTimeoutMs to at least ${Math.ceil(2000 / options.fps)}`,
      });
    }
    this.queue = new FrameQueue<Frame>(positiveOption(options, 'queueCapacity', DEFAULT_QUEUE_CAPACITY, true), options.overflow ?? 'drop-oldest');
    this.framer = new FixedSizeFramer(this.frameBytes);
    // A URL with a password reaches ffmpeg on a pipe, so its messages name `pipe:4`: the log and the
    // status reason say which camera URL (masked) instead.
    const inputPipe = `pipe:${INPUT_SCRIPT_FD}`;
    this.stderrRing = new LineRing(positiveOption(options, 'stderrLines', 50, true), (line) => line.replaceAll(inputPipe, scrubCredentials(options.url)));
    this.log = options.log ?? (() => {});
    this.random = options.random ?? Math.random;
    this.clock = options.clock ?? systemClock;
    this.endsAtEndOfInput = classifyInput(options.url) === 'file' && options.loop !== true;
    this.previewEnabled = options.preview !== undefined && options.preview !== false;
  }

  get status(): CameraStatus {
    return this.statusValue;
  }

  get statusReason(): string {
    return this.reasonValue;
  }

  /** Resolution of the source stream (before crop and scale), once ffmpeg reported it. */
  get sourceSize(): SourceSize | undefined {
    return this.sourceSizeValue;
  }

  /** pid of the running ffmpeg, if any. */
  get pid(): number | undefined {
    return this.run?.child.pid;
  }

  get queued(): number {
    return this.queue.length;
  }

  stats(): CameraCounters {
    return { ...this.counters };
  }

  /** Last ffmpeg stderr lines, credentials scrubbed. */
  stderrTail(): string[] {
    return this.stderrRing.lines();
  }

  /** Starts ffmpeg (resolves once it has been spawned, not at the first frame). Idempotent. */
  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.attempt = 0;
    const generation = ++this.generation;
    if (this.options.ffmpegMajorVersion === undefined) {
      const major = await detectFfmpegMajorVersion(this.ffmpegPath);
      if (major !== undefined) {
        this.args = buildFfmpegArgs({ ...this.options, ffmpegMajorVersion: major });
        this.inputScript = inputScript({ ...this.options, ffmpegMajorVersion: major });
      }
      // stop() (and maybe another start()) came while probing: that call owns the camera now.
      if (generation !== this.generation) return;
    }
    this.setStatus('reconnecting', `connecting to ${scrubCredentials(this.options.url)}`);
    this.spawnFfmpeg();
  }

  /** SIGTERM, then SIGKILL after stopGraceMs; resolves when ffmpeg has exited. Queued frames are discarded. */
  async stop(): Promise<void> {
    this.running = false;
    this.generation += 1;
    this.clock.clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.clearWatchdog();
    const run = this.run;
    if (run !== undefined) {
      this.terminate(run);
      await run.closed;
    }
    this.queue.clear();
    this.releaseWaiters();
    this.setStatus('offline', 'stopped');
  }

  /** Oldest queued frame, without waiting. */
  take(): Frame | undefined {
    const frame = this.queue.shift();
    this.resumeIfRoom();
    return frame;
  }

  /** Newest queued frame; older queued ones are discarded and counted as dropped. */
  takeLatest(): Frame | undefined {
    const { item, skipped } = this.queue.takeLatest();
    this.counters.framesDropped += skipped;
    this.resumeIfRoom();
    return item;
  }

  /** Next frame in order, waiting for one; undefined once stopped or ended and the queue is empty. */
  next(): Promise<Frame | undefined> {
    const frame = this.take();
    if (frame !== undefined || !this.running) return Promise.resolve(frame);
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Frame, void, undefined> {
    for (;;) {
      const frame = await this.next();
      if (frame === undefined) return;
      yield frame;
    }
  }

  /**
   * The kept preview JPEG taken closest to `monotonicMs` (the newer one on a tie). `monotonicMs` is on the
   * source's monotonic clock, like `Frame.monotonicAt`, not wall-clock time: a wall clock stepped between
   * the frame and its previews would otherwise pick the wrong picture.
   */
  previewNear(monotonicMs: number): PreviewImage | undefined {
    let best: PreviewImage | undefined;
    for (const preview of this.previews) {
      if (best === undefined || Math.abs(preview.monotonicAt - monotonicMs) <= Math.abs(best.monotonicAt - monotonicMs)) best = preview;
    }
    return best;
  }

  latestPreview(): PreviewImage | undefined {
    return this.previews.at(-1);
  }

  private spawnFfmpeg(): void {
    this.framer.reset();
    this.jpegs.reset();
    let child: ChildProcess;
    try {
      const script = this.inputScript === undefined ? [] : ['pipe' as const];
      child = spawn(this.ffmpegPath, this.args, { stdio: ['ignore', 'pipe', 'pipe', this.previewEnabled ? 'pipe' : 'ignore', ...script] });
    } catch (error) {
      this.scheduleRestart(`cannot start ffmpeg '${this.ffmpegPath}': ${errorText(error)}`);
      return;
    }
    let markClosed = (): void => {};
    const closed = new Promise<void>((resolve) => {
      markClosed = resolve;
    });
    const run: Run = { child, startedAt: this.clock.monotonic(), pausedByQueue: false, finished: false, sizeParser: new SourceSizeParser(), closed, markClosed };
    this.run = run;
    lowerPriority(child.pid);

    child.once('error', (error) => {
      // Only a failed spawn ends the run here; other errors (a failed kill) are followed by 'close' anyway.
      if (child.pid === undefined) {
        const hint = (error as NodeJS.ErrnoException).code === 'ENOENT' ? ': install ffmpeg or set ffmpegPath' : '';
        this.finishRun(run, `cannot start ffmpeg '${this.ffmpegPath}' (${errorText(error)})${hint}`);
      } else {
        this.log('debug', `camera ${this.id}: ffmpeg process error: ${errorText(error)}`);
      }
    });
    child.once('close', (code, signal) => this.finishRun(run, undefined, code, signal));
    child.stdout?.on('data', (chunk: Buffer) => this.onFrameBytes(run, chunk));
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (text: string) => this.onStderr(run, text));
    const previewPipe = child.stdio[PREVIEW_FD] as Readable | null | undefined;
    previewPipe?.on('data', (chunk: Buffer) => this.onPreviewBytes(run, chunk));
    for (const stream of [child.stdout, child.stderr, previewPipe]) stream?.on('error', () => {});
    if (this.inputScript !== undefined) {
      const scriptPipe = child.stdio[INPUT_SCRIPT_FD] as Writable | null | undefined;
      scriptPipe?.on('error', () => {});
      scriptPipe?.end(this.inputScript);
    }

    if (child.pid !== undefined) {
      trackChild(child);
      this.stderrRing.push(`${RUN_MARKER} (pid ${child.pid}) ---\n`);
      this.log('debug', `camera ${this.id}: ffmpeg started (pid ${child.pid}): ${scrubCredentials([this.ffmpegPath, ...this.args].join(' '))}`);
      this.notify('spawn', child.pid);
    }
    this.armWatchdog(run, this.startTimeoutMs, `no frame within ${seconds(this.startTimeoutMs)} of starting ffmpeg`);
  }

  private onFrameBytes(run: Run, chunk: Buffer): void {
    if (run !== this.run || !this.running) return;
    const frames = this.framer.push(chunk);
    if (frames.length === 0) return;
    const now = this.clock.now();
    const monotonicNow = this.clock.monotonic();
    if (run.firstFrameAt === undefined) {
      run.firstFrameAt = monotonicNow;
      this.setStatus('streaming', 'receiving frames');
    }
    this.armWatchdog(run, this.stallTimeoutMs, `no frame for ${seconds(this.stallTimeoutMs)} (stalled)`);
    for (const data of frames) {
      this.seq += 1;
      this.counters.framesIn += 1;
      this.counters.lastFrameAt = now;
      this.counters.lastFrameMonotonicAt = monotonicNow;
      const frame: Frame = { cameraId: this.id, seq: this.seq, capturedAt: now, monotonicAt: monotonicNow, width: this.width, height: this.height, channels: this.channels, data };
      const waiter = this.waiters.shift();
      if (waiter !== undefined) {
        waiter(frame);
        continue;
      }
      if (this.queue.push(frame) !== undefined) this.counters.framesDropped += 1;
      this.notify('frame');
    }
    if (this.queue.policy === 'pause' && this.queue.isFull && !run.pausedByQueue) {
      run.pausedByQueue = true;
      run.child.stdout?.pause();
      // A consumer that is behind is not a stalled camera.
      this.clearWatchdog();
    }
  }

  private resumeIfRoom(): void {
    const run = this.run;
    if (run === undefined || !run.pausedByQueue || this.queue.isFull) return;
    run.pausedByQueue = false;
    run.child.stdout?.resume();
    this.armWatchdog(run, this.stallTimeoutMs, `no frame for ${seconds(this.stallTimeoutMs)} (stalled)`);
  }

  private onStderr(run: Run, text: string): void {
    for (const line of this.stderrRing.push(text)) this.observeLogLine(run, line);
  }

  private observeLogLine(run: Run, line: string): void {
    const size = run.sizeParser.observe(line);
    if (size === undefined) return;
    const previous = this.sourceSizeValue;
    this.sourceSizeValue = size;
    if (previous?.width !== size.width || previous.height !== size.height) {
      this.log('info', `camera ${this.id}: source is ${size.width}x${size.height}`);
      this.notify('sourceSize', size);
    }
  }

  private onPreviewBytes(run: Run, chunk: Buffer): void {
    if (run !== this.run || !this.running) return;
    for (const jpeg of this.jpegs.push(chunk)) {
      const preview: PreviewImage = { capturedAt: this.clock.now(), monotonicAt: this.clock.monotonic(), jpeg };
      this.previews.push(preview);
      if (this.previews.length > this.previewKeep) this.previews.shift();
      this.counters.previewsIn += 1;
      this.notify('preview', preview);
    }
  }

  private armWatchdog(run: Run, timeoutMs: number, reason: string): void {
    this.clearWatchdog();
    this.watchdog = this.clock.setTimeout(() => {
      if (run !== this.run || run.finished || !this.running) return;
      run.killReason = reason;
      this.terminate(run);
    }, timeoutMs);
  }

  private clearWatchdog(): void {
    this.clock.clearTimeout(this.watchdog);
    this.watchdog = undefined;
  }

  private terminate(run: Run): void {
    if (run.finished || run.killTimer !== undefined) return;
    // A paused stdout would hold back 'close' forever; what is still in the pipe is discarded unread.
    run.child.stdout?.resume();
    run.child.kill('SIGTERM');
    run.killTimer = this.clock.setTimeout(() => run.child.kill('SIGKILL'), this.stopGraceMs);
  }

  /** The one place a run ends, whether ffmpeg exited, was killed, or never started. */
  private finishRun(run: Run, spawnFailure?: string, code?: number | null, signal?: NodeJS.Signals | null): void {
    if (run.finished) return;
    run.finished = true;
    this.clock.clearTimeout(run.killTimer);
    liveChildren.delete(run.child);
    for (const line of this.stderrRing.flush()) this.observeLogLine(run, line);
    if (run === this.run) {
      this.run = undefined;
      this.clearWatchdog();
    }
    run.markClosed();
    if (!this.running) return;

    if (run.firstFrameAt !== undefined && this.clock.monotonic() - run.firstFrameAt >= this.stableAfterMs) this.attempt = 0;
    if (run.firstFrameAt !== undefined) this.lastFailureReason = undefined;
    if (spawnFailure === undefined && code === 0 && run.killReason === undefined && this.endsAtEndOfInput) {
      this.running = false;
      this.setStatus('offline', 'end of input');
      this.log('info', `camera ${this.id}: end of input`);
      this.releaseWaiters();
      this.notify('end');
      return;
    }
    const reason = spawnFailure ?? run.killReason ?? this.describeExit(code ?? null, signal ?? null);
    // A camera that stays down fails the same way on every retry: its stderr is worth logging once.
    if (reason !== this.lastFailureReason) {
      const stderr = this.currentRunLines().slice(-FAILURE_LOG_LINES);
      // In the message itself: the agent's logger takes a string only, so lines passed beside it were lost.
      // Joined on one line so journald keeps the time and level on all of them.
      const tail = stderr.length === 0 ? 'ffmpeg printed nothing' : `ffmpeg's last lines: ${stderr.join(' | ')}`;
      this.log('warn', `camera ${this.id}: ${reason}; ${tail}`, { stderr });
    }
    this.lastFailureReason = reason;
    this.scheduleRestart(reason);
  }

  private describeExit(code: number | null, signal: NodeJS.Signals | null): string {
    if (code === null) return `ffmpeg was killed by ${signal ?? 'a signal'}`;
    if (code === 0) return 'stream ended (ffmpeg exited normally)';
    const detail = failureDetail(this.currentRunLines());
    return `ffmpeg exited with code ${code}${detail === undefined ? '' : `: ${detail}`}`;
  }

  private currentRunLines(): string[] {
    const lines = this.stderrRing.lines();
    const start = lines.findLastIndex((line) => line.startsWith(RUN_MARKER));
    return lines.slice(start + 1);
  }

  private scheduleRestart(reason: string): void {
    if (this.counters.restarts >= this.maxRestarts) {
      this.running = false;
      this.setStatus('offline', `gave up after ${this.counters.restarts} restarts: ${reason}`);
      this.releaseWaiters();
      this.notify('end');
      return;
    }
    const delay = backoffDelayMs(this.attempt, this.backoff, this.random);
    this.attempt += 1;
    this.setStatus('reconnecting', reason, delay);
    this.restartTimer = this.clock.setTimeout(() => {
      this.restartTimer = undefined;
      if (!this.running) return;
      this.counters.restarts += 1;
      this.spawnFfmpeg();
    }, delay);
  }

  private setStatus(status: CameraStatus, reason: string, retryInMs?: number): void {
    if (status === this.statusValue && reason === this.reasonValue && retryInMs === undefined) return;
    const previous = this.statusValue;
    this.statusValue = status;
    this.reasonValue = reason;
    const change: CameraStatusChange = { cameraId: this.id, status, previous, reason, at: this.clock.now(), monotonicAt: this.clock.monotonic() };
    if (retryInMs !== undefined) change.retryInMs = retryInMs;
    this.log('info', `camera ${this.id}: ${status} (${reason}${retryInMs === undefined ? '' : `; retry in ${seconds(retryInMs)}`})`);
    this.notify('status', change);
  }

  private releaseWaiters(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter(undefined);
  }

  /** A throwing listener is the consumer's bug: log it rather than let it kill the supervision loop. */
  private notify<K extends keyof CameraSourceEvents>(event: K, ...args: CameraSourceEvents[K]): void {
    try {
      (this.emit as (event: K, ...args: CameraSourceEvents[K]) => boolean)(event, ...args);
    } catch (error) {
      this.log('error', `camera ${this.id}: a '${event}' listener threw: ${errorText(error)}`);
    }
  }
}

const versionProbes = new Map<string, Promise<number | undefined>>();

/** Major version of an ffmpeg binary ("ffmpeg version 5.1.9-0+deb12u1" -> 5); undefined for git builds or failures. */
export function detectFfmpegMajorVersion(ffmpegPath = 'ffmpeg'): Promise<number | undefined> {
  let probe = versionProbes.get(ffmpegPath);
  if (probe === undefined) {
    probe = new Promise((resolve) => {
      execFile(ffmpegPath, ['-hide_banner', '-version'], { timeout: 5000 }, (error, stdout) => {
        const match = error === null ? /ffmpeg version n?(\d+)\./.exec(stdout) : null;
        resolve(match === null ? undefined : Number(match[1]));
      });
    });
    versionProbes.set(ffmpegPath, probe);
  }
  return probe;
}

function positiveOption(options: CameraSourceOptions, key: keyof CameraSourceOptions, fallback: number, integer = false): number {
  const value = options[key];
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    const kind = integer ? 'a positive integer' : 'a positive number';
    throw new UsageError(`camera ${options.id}: ${key} must be ${kind}, got ${String(value)}`, { hint: `omit it for the default (${fallback})` });
  }
  return value;
}

function seconds(ms: number): string {
  return `${(ms / 1000).toFixed(ms % 1000 === 0 ? 0 : 1)} s`;
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The nice value of every ffmpeg process: the lowest priority there is. Many ffmpeg processes share
 * the cores with one event loop, and the scheduler weighs each process on its own: at nice +5 (weight
 * 335 against the agent's 1024) 48 of them outweighed the agent many times over, and a burst of
 * decoding held its rounds back (48 cameras on 2 cores, capture -> event p99: 124 and 296 ms at +5, 19-100 ms
 * with a median of 39 in six runs at 19, nothing dropped either way; 134 ms at the agent's own priority). At 19
 * (weight 15) decoding still gets every idle cycle and takes the whole CPU only when the agent does not
 * want it. Frames ffmpeg then cannot decode in time show as dropped frames and a late capture, not as a
 * late event. The main thread's value is inherited by the threads ffmpeg starts after it.
 */
export const FFMPEG_NICE = 19;

function lowerPriority(pid: number | undefined): void {
  if (pid === undefined) return;
  try {
    os.setPriority(pid, FFMPEG_NICE);
  } catch {
    // A process gone already, or a platform without priorities: decoding runs at the agent's.
  }
}
