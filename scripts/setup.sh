#!/usr/bin/env bash
# One-time set-up on Debian: the system packages linewatch and its tests use,
# then the node modules (which also compiles the TypeScript to dist/).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  ffmpeg mosquitto mosquitto-clients
  # GStreamer's RTSP server, used by the tests to serve a real camera stream
  python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0
  gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly
  # used by the tests: ps/pgrep (no orphaned ffmpeg), openssl (TLS broker certificates),
  # systemd-notify and systemd-analyze (the service's readiness and unit checks; systemd is not started)
  procps openssl systemd strace
  # libfaketime: tests/faults/clock-step.test.ts steps the agent's wall clock back as NTP would
  faketime
  # Jinja2, which Home Assistant's templates build on: the tests render the discovery templates with it
  python3-jinja2
  # headless Chromium for tests/e2e/page-browser.test.ts (driven by playwright-core, which downloads no browser)
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# onnxruntime-node's install script downloads GPU add-ons; the CPU provider ships in the package.
export ONNXRUNTIME_NODE_INSTALL=skip
if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
