import { z } from 'zod';
import { PROVIDER_NAMES, type ProviderName } from '../model/providers.js';
import { DEFAULT_BACKOFF } from '../source/backoff.js';
import { DEFAULT_QUEUE_CAPACITY } from '../source/camera.js';
import { DEFAULT_IO_TIMEOUT_MS, DEFAULT_PREVIEW_FPS } from '../source/ffmpeg-args.js';
import { isLoopbackHost } from '../health/api.js';
import { LOG_FORMATS, LOG_LEVELS } from '../log.js';

/**
 * The agent's configuration file (YAML), as a zod schema. Every default is
 * declared here (`.default(...)`; where a library has its own default, it is that
 * constant, so the two cannot differ), every object is strict (unknown keys are
 * errors, so a typo never silently falls back to a default), and
 * `schemas/config.schema.json` is generated from it (see json-schema.ts) so
 * editors can complete and check the file; tests/unit/config-defaults.test.ts
 * checks that the file, the schema and the libraries agree.
 *
 * Conventions the loader (load.ts) applies before validation:
 * - `${VAR}` and `${VAR:-default}` in string values come from the environment.
 * - A key ending in `File` (e.g. `mqtt.passwordFile`) names a file whose trimmed
 *   content becomes the value of the key without the suffix (`mqtt.password`).
 * - A file path may be `{ credential: name }` or start with
 *   `$CREDENTIALS_DIRECTORY/`: both resolve under systemd's credentials folder.
 * - Relative paths resolve against the working directory.
 */

/** Names allowed in MQTT topics and Home Assistant object ids. */
const TOPIC_SAFE = /^[A-Za-z0-9_-]+$/;
export const CAMERA_NAME = /^[a-z0-9_-]+$/;
/** Sparkplug group, edge node and device ids are topic levels: no separators, wildcards or blanks. */
const SPARKPLUG_ID = /^[^/+#\s]+$/;

/** Execution providers a camera may ask for: the model loader's own table, so the config never accepts one it refuses. */
export const EXECUTION_PROVIDERS = PROVIDER_NAMES;
export type ExecutionProvider = ProviderName;

export const HWACCELS = ['none', 'nvidia', 'jetson', 'vaapi'] as const;
export type Hwaccel = (typeof HWACCELS)[number];

/** continuous: every frame scored, events; triggered: only frames an inspect command asks for (the PLC pattern). */
export const CAMERA_MODES = ['continuous', 'triggered'] as const;
export type CameraMode = (typeof CAMERA_MODES)[number];

export { LOG_FORMATS, LOG_LEVELS, type LogLevel } from '../log.js';

/** A systemd credential name (LoadCredential=name:...): one path segment. */
const CredentialRefSchema = z
  .object({
    credential: z
      .string()
      .regex(/^[A-Za-z0-9_.@-]+$/, 'a credential name is one path segment: letters, digits, . _ @ -')
      .describe('Name of a systemd credential (LoadCredential=/SetCredential=); read from $CREDENTIALS_DIRECTORY/<name>.'),
  })
  .strict();

/** A file path, or a systemd credential by name. The loader turns both into an absolute path. */
export const FileRefSchema = z.union([z.string().min(1), CredentialRefSchema]);
export type FileRef = z.infer<typeof FileRefSchema>;

const fraction = () => z.number().min(0).max(1);

// ---------------------------------------------------------------- per camera

const BackoffSchema = z
  .object({
    // The camera source's own defaults: one number each, whether the source is used through the config or directly.
    initialS: z.number().positive().default(DEFAULT_BACKOFF.initialMs / 1000).describe('First wait before restarting ffmpeg after a failure, in seconds.'),
    maxS: z.number().positive().default(DEFAULT_BACKOFF.maxMs / 1000).describe('Longest wait between restarts; the wait doubles up to this.'),
  })
  .strict()
  .superRefine((backoff, ctx) => {
    if (backoff.initialS > backoff.maxS) {
      ctx.addIssue({ code: 'custom', path: ['initialS'], message: `must not exceed maxS (${backoff.maxS})` });
    }
  });

/** Region of interest, as fractions of the source frame (so it survives a resolution change). */
const CropSchema = z
  .object({
    x: fraction().describe('Left edge, fraction of the frame width (0..1).'),
    y: fraction().describe('Top edge, fraction of the frame height (0..1).'),
    width: z.number().gt(0).max(1).describe('Fraction of the frame width (0..1].'),
    height: z.number().gt(0).max(1).describe('Fraction of the frame height (0..1].'),
  })
  .strict()
  .superRefine((crop, ctx) => {
    if (crop.x + crop.width > 1 + 1e-9) ctx.addIssue({ code: 'custom', path: ['width'], message: 'x + width must not exceed 1' });
    if (crop.y + crop.height > 1 + 1e-9) ctx.addIssue({ code: 'custom', path: ['height'], message: 'y + height must not exceed 1' });
  })
  .describe('Analyse only this part of the frame; fractions of the full source frame, applied in ffmpeg before scaling.');

const PointSchema = z.tuple([fraction(), fraction()]).describe('[x, y] as fractions of the full source frame (0..1).');
const PolygonSchema = z.array(PointSchema).min(3, 'a polygon needs at least 3 points');

const PreviewSchema = z
  .object({
    enabled: z.boolean().default(false).describe('Also emit low-rate JPEG previews (for the web page).'),
    fps: z.number().positive().max(30).default(DEFAULT_PREVIEW_FPS),
    width: z.number().int().min(16).max(3840).default(640).describe('Preview width in pixels; height keeps the aspect ratio.'),
  })
  .strict();

export const THRESHOLD_MODES = ['manifest', 'absolute', 'fpr'] as const;
export type ThresholdMode = (typeof THRESHOLD_MODES)[number];

const ThresholdSchema = z
  .object({
    mode: z
      .enum(THRESHOLD_MODES)
      .default('manifest')
      .describe(
        "manifest: the model bundle's calibrated threshold; absolute: `value` is the score threshold; fpr: `value` is the target false-positive rate, looked up in the bundle's calibration quantiles.",
      ),
    value: z.number().optional().describe('Score (mode absolute) or false-positive rate in (0, 1) (mode fpr); unused for manifest.'),
  })
  .strict()
  .superRefine((threshold, ctx) => {
    if (threshold.mode === 'manifest' && threshold.value !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['value'], message: 'mode manifest takes no value (use mode absolute or fpr)' });
    }
    if (threshold.mode !== 'manifest' && threshold.value === undefined) {
      ctx.addIssue({ code: 'custom', path: ['value'], message: `mode ${threshold.mode} needs a value` });
    }
    if (threshold.mode === 'fpr' && threshold.value !== undefined && !(threshold.value > 0 && threshold.value < 1)) {
      ctx.addIssue({ code: 'custom', path: ['value'], message: 'a false-positive rate must be between 0 and 1 (exclusive), e.g. 0.01' });
    }
  });

export const DebounceSchema = z
  .object({
    k: z.number().int().min(1).default(3).describe('An event starts when k of the last n frames score above the threshold.'),
    n: z.number().int().min(1).max(1000).default(5).describe('Window of the k-of-n rule, in frames.'),
    endFrames: z
      .number()
      .int()
      .min(1)
      .default(5)
      .describe('An event ends after this many consecutive frames below the lower (hysteresis) threshold.'),
    hysteresis: z
      .number()
      .gt(0)
      .max(1)
      .default(0.9)
      .describe('Lower threshold as a fraction of the threshold (0.9 = 90%); frames between the two neither start nor end an event.'),
    minDurationMs: z
      .number()
      .int()
      .min(0)
      .default(1000)
      .describe('An event lasts at least this long: a recovery sooner than this is deferred, never suppressed.'),
    cooldownMs: z
      .number()
      .int()
      .min(0)
      .default(0)
      .describe('After an event recovers, frames are ignored for this long before a new one may start (0: a new event may start at once; k of n still applies).'),
    updateIntervalMs: z
      .number()
      .int()
      .min(0)
      .default(1000)
      .describe('Least time between messages of one event; an update is sent only when the peak score has risen.'),
    maxDurationMs: z
      .number()
      .int()
      .positive()
      .optional()
      .describe('End an event that lasts this long (reason max-duration); a new one starts if the anomaly persists. Unset: no limit.'),
  })
  .strict()
  .superRefine((debounce, ctx) => {
    if (debounce.k > debounce.n) ctx.addIssue({ code: 'custom', path: ['k'], message: `must not exceed n (${debounce.n})` });
    if (debounce.maxDurationMs !== undefined && debounce.maxDurationMs < debounce.minDurationMs) {
      ctx.addIssue({ code: 'custom', path: ['maxDurationMs'], message: `must not be below minDurationMs (${debounce.minDurationMs})` });
    }
  });
export type DebounceSettings = z.infer<typeof DebounceSchema>;

const SnapshotsSchema = z
  .object({
    enabled: z.boolean().default(true).describe("Write a JPEG of each event's peak frame (with its box) under dataDir/snapshots."),
    retain: z.number().int().min(1).default(100).describe('Snapshots kept per camera; the oldest are deleted.'),
    maxMegabytes: z
      .number()
      .positive()
      .default(100)
      .describe(
        "Disk space (megabytes, 10^6 bytes) the snapshots of one camera may take, each counted with its original picture; beyond it the oldest are deleted, as beyond retain. The newest is always kept.",
      ),
  })
  .strict();

const checkSwitch = (what: string) => z.boolean().default(true).describe(`Run the ${what} check.`);
const FaultChecksSchema = z
  .object({
    bright: z
      .object({
        enabled: checkSwitch('bright (burnt-out picture)'),
        maxBrightness: z.number().min(0).max(255).optional().describe('Mean grey level (0-255) above which a frame is too bright. Default: learned (halfway from the brightest training frame to 255), else 230.'),
        maxClipped: z.number().min(0).max(1).optional().describe('Share of pixels at 250 or above beyond which a frame is burnt out. Default: learned (training maximum + 0.25), else 0.3.'),
      })
      .strict()
      .prefault({}),
    covered: z
      .object({
        enabled: checkSwitch('covered-lens'),
        maxFlatShare: z.number().min(0).max(1).optional().describe('Share of pixels within ±6 levels of one grey level beyond which the view counts as covered. Default: learned (halfway from the training maximum to 1), else 0.85.'),
      })
      .strict()
      .prefault({}),
    dark: z
      .object({
        enabled: checkSwitch('dark-picture'),
        minBrightness: z.number().min(0).max(255).optional().describe('Mean grey level (0-255) below which a frame is too dark. Default: learned (two thirds of the darkest training frame), else 25.'),
      })
      .strict()
      .prefault({}),
    frozen: z
      .object({
        enabled: checkSwitch('frozen-picture'),
        minChange: z.number().min(0).optional().describe('Mean grey-level change between analysed frames below which the picture counts as frozen. Default 0.02 (a live camera\'s noise alone moves it above this).'),
      })
      .strict()
      .prefault({}),
    blur: z
      .object({
        enabled: checkSwitch('blur (defocus, fog)'),
        minSharpness: z.number().min(0).optional().describe('Laplacian variance over level variance below which a frame is blurred. Default: learned (40 % of the softest training frame); without a quality profile the check is off.'),
      })
      .strict()
      .prefault({}),
    moved: z
      .object({
        enabled: checkSwitch('moved-camera'),
        maxShift: z.number().gt(0).max(0.15).optional().describe('Displacement of the view against the trained scene, as a share of the frame width/height, beyond which the camera counts as moved. Default: learned (largest training shift + 2 px, at least 0.02); needs the bundle\'s scene reference.'),
      })
      .strict()
      .prefault({}),
  })
  .strict();

const FaultsSchema = z
  .object({
    enabled: z.boolean().default(true).describe('Check every analysed frame for camera faults (blur, dark, bright, covered, frozen, moved); false turns every check off.'),
    suppressEvents: z
      .boolean()
      .default(true)
      .describe('While a fault holds (and on frames that fail a check), anomaly events of this camera are held back and counted instead: a covered lens is not a defective part.'),
    startS: z.number().positive().max(60).default(1.5).describe('A fault starts when a check failed on `share` of the frames of this many seconds (at least 3 frames).'),
    share: z.number().gt(0).max(1).default(0.8).describe('Share of frames in startS that must fail a check.'),
    endS: z.number().positive().max(600).default(1.5).describe('A fault ends after this many seconds of frames that pass its check (at least 3 frames).'),
    checks: FaultChecksSchema.prefault({}),
  })
  .strict();
export type FaultSettings = z.infer<typeof FaultsSchema>;

/** Stream codecs the jetson preset has a decoder for. */
export const VIDEO_CODECS = ['h264', 'hevc'] as const;

const ProviderOptionsSchema = z
  .object({
    cuda: z
      .object({
        deviceId: z.number().int().min(0).max(63).optional().describe('GPU index for the CUDA provider (default 0).'),
      })
      .strict()
      .optional(),
    tensorrt: z
      .object({
        deviceId: z.number().int().min(0).max(63).optional().describe('GPU index for the TensorRT provider (default 0).'),
        fp16: z.boolean().optional().describe('Allow fp16 kernels (trt_fp16_enable).'),
        int8: z.boolean().optional().describe('Allow int8 kernels (trt_int8_enable); the int8 variant carries its own QDQ scales.'),
        engineCacheDir: z
          .string()
          .min(1)
          .optional()
          .describe('Folder where built TensorRT engines are cached (trt_engine_cache_enable + trt_engine_cache_path), so a restart skips the build.'),
        workspaceMiB: z.number().int().min(1).max(1048576).optional().describe('Most scratch memory TensorRT may use, MiB (trt_max_workspace_size).'),
      })
      .strict()
      .optional(),
  })
  .strict()
  .describe(
    'Per-provider settings. cuda.deviceId and tensorrt.deviceId reach onnxruntime-node as they are; the other TensorRT switches are applied only by an onnxruntime-node binding built with the patch in docs/jetson.md (the stock binding ignores them, and the agent logs so).',
  );

/**
 * Everything a camera can set. `defaults:` uses this schema as is; each camera
 * may override any part of it (objects merge deeply, arrays replace).
 */
export const CameraSettingsSchema = z
  .object({
    model: z.string().min(1).optional().describe('Model bundle folder (holds manifest.json), e.g. models/demo.'),
    variant: z.enum(['fp32', 'int8']).default('int8').describe('Which ONNX model of the bundle to run.'),
    providers: z
      .array(
        z.enum(EXECUTION_PROVIDERS, {
          error: (issue) => `unknown execution provider ${JSON.stringify(issue.input)}: use one of ${EXECUTION_PROVIDERS.join(', ')}`,
        }),
      )
      .min(1)
      .default(['cpu'])
      .describe('Execution providers in order of preference; unavailable ones fall back to the next, cpu last.'),
    threads: z.number().int().min(1).max(64).default(1).describe('Intra-op threads of the inference session.'),
    providerOptions: ProviderOptionsSchema.optional(),
    fps: z.number().positive().max(120).default(10).describe('Analysis rate: frames per second scored (ffmpeg drops the rest).'),
    mode: z
      .enum(CAMERA_MODES)
      .default('continuous')
      .describe(
        'continuous: score every frame and publish anomaly events; triggered: keep streaming but score only the frame after each inspect command (MQTT <base>/<camera>/inspect or POST /api/cameras/<camera>/inspect), no events.',
      ),
    transport: z.enum(['tcp', 'udp']).default('tcp').describe('RTSP transport.'),
    socketTimeoutS: z.number().positive().default(DEFAULT_IO_TIMEOUT_MS / 1000).describe('Network read timeout for ffmpeg (RTSP/HTTP), seconds.'),
    stallTimeoutS: z.number().positive().default(10).describe('Restart ffmpeg when no frame arrived for this long, seconds.'),
    backoff: BackoffSchema.prefault({}),
    hwaccel: z
      .enum(HWACCELS)
      .default('none')
      .describe('Hardware video decoding: nvidia (-hwaccel cuda), vaapi (-hwaccel vaapi on vaapiDevice), jetson (the <codec>_nvv4l2dec decoder of NVIDIA\'s L4T ffmpeg, or `decoder`).'),
    codec: z
      .enum(VIDEO_CODECS)
      .optional()
      .describe('Codec of the camera stream; the jetson preset picks its decoder by it (h264_nvv4l2dec / hevc_nvv4l2dec). Default h264.'),
    decoder: z
      .string()
      .regex(/^[A-Za-z0-9_]+$/, 'an ffmpeg decoder name, e.g. hevc_nvv4l2dec, h264_nvmpi, h264_cuvid')
      .optional()
      .describe('ffmpeg decoder for the stream (-c:v before -i), e.g. h264_nvmpi for a jetson-ffmpeg build or h264_cuvid; replaces the one the jetson preset picks.'),
    decodeThreads: z.number().int().min(1).max(64).optional().describe('ffmpeg decoder threads (-threads before -i), for a stream one core cannot decode in real time; each extra frame thread delays every frame by one frame interval. Default: slice threads only (no added delay).'),
    keyframesOnly: z
      .boolean()
      .optional()
      .describe('Decode key frames only (-skip_frame nokey): a large CPU saving when fps is at or below the camera\'s key-frame rate; events then see one frame per GOP.'),
    vaapiDevice: z.string().min(1).optional().describe('Render node for hwaccel vaapi. Default /dev/dri/renderD128.'),
    inputArgs: z.array(z.string()).default([]).describe('Extra ffmpeg arguments placed before -i.'),
    outputArgs: z.array(z.string()).default([]).describe('Extra ffmpeg arguments placed after -i (before the raw-frame output).'),
    crop: CropSchema.optional(),
    loop: z.boolean().default(false).describe('Files only: start again at the end.'),
    realtime: z.boolean().default(false).describe('Files only: decode at native speed (like a live camera) instead of as fast as possible.'),
    queueSize: z
      .number()
      .int()
      .min(1)
      .max(1000)
      .default(DEFAULT_QUEUE_CAPACITY)
      .describe('Frames waiting for inference; when full the oldest is dropped (and counted), never buffered without bound.'),
    preview: PreviewSchema.prefault({}),
    threshold: ThresholdSchema.prefault({}),
    ignore: z
      .array(PolygonSchema)
      .default([])
      .describe('Polygons whose pixels never count towards the score; points are [x, y] fractions (0..1) of the full source frame, before crop.'),
    debounce: DebounceSchema.prefault({}),
    snapshots: SnapshotsSchema.prefault({}),
    faults: FaultsSchema.prefault({}),
    scorePublish: z.boolean().optional().describe("Publish this camera's per-frame scores; unset: mqtt.scoreTopic.enabled."),
  })
  .strict();
export type CameraSettings = z.infer<typeof CameraSettingsSchema>;

/** Same fields as CameraSettingsSchema, all optional and without defaults: what a camera entry may override. */
const CameraOverridesShape = deepPartialWithoutDefaults(CameraSettingsSchema).shape;

export const CameraEntrySchema = z
  .object({
    name: z
      .string()
      .regex(CAMERA_NAME, 'use lowercase letters, digits, _ and - (it becomes an MQTT topic level)')
      .describe('Unique camera name; part of MQTT topics.'),
    url: z
      .string()
      .min(1)
      .describe('rtsp:// or rtsps:// or http(s):// stream, a video file path, or a V4L2 device (/dev/videoN).'),
    ...CameraOverridesShape,
  })
  .strict();
export type CameraEntry = z.infer<typeof CameraEntrySchema>;

/** A camera after merging defaults and overrides: what validation of the merged result checks. */
export const MergedCameraSchema = CameraSettingsSchema.extend({
  model: z.string({ error: 'no model: set it on the camera or in defaults.model' }).min(1),
});

// ---------------------------------------------------------------- global

const TlsSchema = z
  .object({
    ca: FileRefSchema.optional().describe('CA certificate (PEM) to trust for the broker.'),
    cert: FileRefSchema.optional().describe('Client certificate (PEM) for mutual TLS.'),
    key: FileRefSchema.optional().describe('Client private key (PEM) for mutual TLS.'),
    rejectUnauthorized: z.boolean().default(true).describe('Refuse brokers whose certificate does not verify. Turn off only for testing.'),
  })
  .strict()
  .superRefine((tls, ctx) => {
    if ((tls.cert === undefined) !== (tls.key === undefined)) {
      ctx.addIssue({ code: 'custom', path: [tls.cert === undefined ? 'cert' : 'key'], message: 'cert and key go together' });
    }
  });

const BROKER_SCHEMES = ['mqtt:', 'mqtts:', 'tcp:', 'tls:', 'ssl:', 'ws:', 'wss:'];
const SECURE_BROKER = /^(mqtts|tls|ssl|wss):/i;

function isBrokerUrl(url: string): boolean {
  try {
    const parsed = new URL(url);
    return BROKER_SCHEMES.includes(parsed.protocol) && parsed.hostname !== '';
  } catch {
    return false;
  }
}

export const MqttSchema = z
  .object({
    url: z
      .string()
      .refine(isBrokerUrl, 'not a broker URL: use mqtt://host[:port], mqtts://, ws:// or wss://')
      .optional()
      .describe('Broker URL (mqtt://, mqtts://, ws://, wss://). Unset: the agent runs an embedded broker (see embeddedBroker).'),
    embeddedBroker: z
      .object({
        host: z.string().min(1).default('127.0.0.1').refine(isLoopbackHost, 'the embedded broker listens on this machine only: use 127.0.0.1 or ::1, or set mqtt.url to a real broker'),
        port: z.number().int().min(1).max(65535).default(1883),
      })
      .strict()
      .prefault({})
      .describe('Where the embedded broker listens when mqtt.url is unset.'),
    clientId: z.string().min(1).optional().describe('MQTT client id. Unset: linewatch-<deviceId>.'),
    username: z.string().optional(),
    usernameFile: FileRefSchema.optional().describe('File holding the username (instead of username).'),
    password: z.string().optional(),
    passwordFile: FileRefSchema.optional().describe('File holding the password (instead of password), e.g. { credential: mqtt-password }.'),
    protocolVersion: z.union([z.literal(4), z.literal(5)]).default(4).describe('4 = MQTT 3.1.1, 5 = MQTT 5.'),
    tls: TlsSchema.optional(),
    baseTopic: z
      .string()
      .regex(/^[^#+]+$/, 'must not contain MQTT wildcards (+ or #)')
      .refine((topic) => !topic.startsWith('/') && !topic.endsWith('/'), 'must not start or end with /')
      .optional()
      .describe('Prefix of every topic. Unset: linewatch/<deviceId>.'),
    scoreTopic: z
      .object({
        enabled: z.boolean().default(false).describe('Publish per-frame scores (cameras may override with scorePublish).'),
        maxRateHz: z.number().positive().max(100).default(2).describe('Most score messages per second and camera.'),
      })
      .strict()
      .prefault({}),
    statsIntervalS: z.number().positive().default(60).describe('Seconds between stats messages.'),
    keepaliveS: z.number().int().min(0).max(65535).default(30),
  })
  .strict()
  .superRefine(
    (mqtt, ctx) => {
      for (const secret of ['username', 'password'] as const) {
        if (mqtt[secret] !== undefined && mqtt[`${secret}File`] !== undefined) {
          ctx.addIssue({ code: 'custom', path: [`${secret}File`], message: `set ${secret} or ${secret}File, not both` });
        }
      }
      if (mqtt.tls !== undefined && !(typeof mqtt.url === 'string' && SECURE_BROKER.test(mqtt.url))) {
        ctx.addIssue({ code: 'custom', path: ['tls'], message: 'TLS settings need a TLS broker URL: set mqtt.url to mqtts://... or wss://...' });
      }
    },
    // These checks only look at presence, so they hold even when other mqtt fields are invalid: report them in the same pass.
    { when: () => true },
  );

export const ConfigFileSchema = z
  .object({
    deviceId: z
      .string()
      .regex(TOPIC_SAFE, 'use letters, digits, _ and - (it becomes an MQTT topic level)')
      .optional()
      .describe("This device's id in MQTT topics. Unset: the hostname, with other characters replaced by -."),
    dataDir: z.string().min(1).default('./data').describe('Folder for snapshots and the MQTT outbox.'),
    log: z
      .object({
        level: z.enum(LOG_LEVELS).default('info'),
        format: z
          .enum(LOG_FORMATS)
          .default('text')
          .describe('text: one readable line per message (journald); json: one JSON object per line, for log collectors.'),
      })
      .strict()
      .prefault({}),
    mqtt: MqttSchema.prefault({}),
    ffmpeg: z
      .object({ path: z.string().min(1).default('ffmpeg').describe('ffmpeg executable (name on PATH or a path).') })
      .strict()
      .prefault({}),
    inference: z
      .object({
        batchWindowMs: z
          .number()
          .min(0)
          .max(1000)
          .default(0)
          .describe(
            'For boxes with many cameras: how long (ms) a frame that finds inference idle waits for frames of other cameras, so one run scores several. Saves agent CPU at that much added latency (README, Configuration: measured figures, and keep it well below a frame interval). 0: no wait.',
          ),
      })
      .strict()
      .prefault({}),
    health: z
      .object({
        enabled: z.boolean().default(true).describe('Serve /healthz, /metrics and the status page.'),
        host: z.string().min(1).default('127.0.0.1').describe('Address to bind: 127.0.0.1 keeps the page and API on this box; any other address needs health.token.'),
        port: z.number().int().min(1).max(65535).default(9464),
        token: z
          .string()
          .min(16, 'use at least 16 characters (e.g. openssl rand -hex 24)')
          .optional()
          .describe('Bearer token the REST API (/api) requires; required when host is not a loopback address.'),
        tokenFile: FileRefSchema.optional().describe('File holding the token (instead of token), e.g. { credential: health-token }.'),
      })
      .strict()
      .superRefine((health, context) => {
        if (health.enabled && !isLoopbackHost(health.host) && health.token === undefined && health.tokenFile === undefined) {
          context.addIssue({
            code: 'custom',
            path: ['token'],
            message: `health.host ${health.host} exposes the API beyond this box: set health.token (or health.tokenFile) or bind 127.0.0.1`,
          });
        }
      })
      .prefault({}),
    sparkplug: z
      .object({
        enabled: z.boolean().default(false).describe('Also act as a Sparkplug B 3.0 edge node (each camera a device) on the mqtt broker, over a connection of its own.'),
        groupId: z
          .string()
          .regex(SPARKPLUG_ID, 'must not contain /, +, # or whitespace (it becomes a Sparkplug topic level)')
          .default('linewatch')
          .describe('Sparkplug group id: spBv1.0/<groupId>/...'),
        edgeNodeId: z
          .string()
          .regex(SPARKPLUG_ID, 'must not contain /, +, # or whitespace (it becomes a Sparkplug topic level)')
          .optional()
          .describe('Sparkplug edge node id: spBv1.0/<groupId>/<type>/<edgeNodeId>. Unset: the deviceId.'),
      })
      .strict()
      .prefault({})
      .describe('Sparkplug B edge node: NBIRTH/NDEATH for the agent, DBIRTH/DDATA/DDEATH per camera (anomaly state, score, fps, event counters).'),
    homeassistant: z
      .object({
        enabled: z
          .boolean()
          .default(false)
          .describe('Announce each camera to Home Assistant by MQTT discovery (a device with anomaly, score and last-anomaly image entities), on the mqtt connection.'),
        prefix: z
          .string()
          .regex(/^[^#+]+$/, 'must not contain MQTT wildcards (+ or #)')
          .refine((topic) => !topic.startsWith('/') && !topic.endsWith('/') && !topic.includes('//'), 'must not start or end with / or have an empty level')
          .default('homeassistant')
          .describe("Home Assistant's discovery prefix (its MQTT integration setting); its birth message is expected on <prefix>/status."),
        snapshotBaseUrl: z
          .string()
          .refine((url) => /^https?:\/\/[^/]/.test(url), 'use http://host:port or https://host:port')
          .optional()
          .describe(
            "Where Home Assistant reaches this agent's health server, for the last-anomaly image, e.g. http://line1.local:9464. Unset: http://<health.host>:<health.port> (a wildcard host becomes this machine's hostname).",
          ),
      })
      .strict()
      .prefault({})
      .describe('Home Assistant MQTT discovery (device-based, Home Assistant 2024.11 or later).'),
    defaults: CameraSettingsSchema.prefault({}).describe('Settings every camera starts from; a camera overrides any part of them.'),
    cameras: z.array(CameraEntrySchema).min(1, 'configure at least one camera'),
  })
  .strict();
/** The file as validated, before the loader fills derived values. */
export type ConfigFile = z.infer<typeof ConfigFileSchema>;

type DeepPartial<T> = T extends readonly unknown[] ? T : T extends object ? { [K in keyof T]?: DeepPartial<T[K]> } : T;

/**
 * The override form of a settings object: every field optional, no defaults
 * (so an absent field inherits instead of resetting), nested objects likewise,
 * and without cross-field checks (those run on the merged camera). Descriptions
 * are kept for the JSON Schema.
 */
function deepPartialWithoutDefaults<Shape extends z.ZodRawShape>(
  schema: z.ZodObject<Shape>,
): z.ZodObject<{ [K in keyof Shape]: z.ZodOptional<z.ZodType<DeepPartial<z.output<Shape[K]>>>> }> {
  const shape: Record<string, z.ZodType> = {};
  for (const [key, field] of Object.entries(schema.shape)) {
    shape[key] = overridable(field as z.ZodType).optional();
  }
  return z.object(shape).strict() as never;
}

function overridable(field: z.ZodType): z.ZodType {
  const description = field.description;
  let inner: z.ZodType = field;
  while (inner instanceof z.ZodDefault || inner instanceof z.ZodPrefault || inner instanceof z.ZodOptional) {
    inner = inner.unwrap() as z.ZodType;
  }
  if (inner instanceof z.ZodObject) inner = deepPartialWithoutDefaults(inner);
  const partial = inner.description ?? description;
  return partial === undefined ? inner : inner.describe(partial);
}
