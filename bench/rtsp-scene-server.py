#!/usr/bin/python3
"""Live RTSP cameras whose scene turns anomalous at known instants (bench/scene-latency.ts).

Usage: /usr/bin/python3 bench/rtsp-scene-server.py --file assets/demo/bottle-detection.mp4 --port 8554 --cameras 4
         --log episodes.jsonl [--normal-from-s 0 --normal-s 1.5] [--period-s 3 --anomaly-s 1.5 --first-s 2]
         [--fps 30] [--bitrate 1500] [--gop 30]

Serves rtsp://127.0.0.1:<port>/cam1 ... /camN. Each camera is a live H.264 stream (x264enc, tune=zerolatency,
ultrafast, no B-frames, an IDR every --gop frames, SPS/PPS with every IDR), 640x360 at --fps, encoded per client
from raw frames pushed in real time. The normal scene is the video's --normal-from-s .. +--normal-s stretch (the part
the demo model was trained on and scores lowest), played forwards and backwards so there is no cut. On a schedule
tied to the wall clock -- camera i (0-based) is anomalous while (now - origin - i * period / N) mod period is in
[first + d, first + d + anomaly), d in [0, 0.2 s) varying from episode to episode -- the same frames are served with a large grey checkerboard over the middle of the picture.

Every line of --log is one JSON object (flushed at once):
  {"kind":"ready", "at":...}                                      the port listens
  {"kind":"play", "camera":"cam1", "at":...}                      a client's PLAY request was answered
  {"kind":"first-frame", "camera":"cam1", "at":..., ...}           first frame of a client's stream left the payloader
  {"kind":"episode", "camera":"cam1", "episode":7, "scheduledAt":..., "pushedAt":..., "payFirstAt":...,
   "payLastAt":..., "sinkFirstAt":..., "sinkLastAt":...}
  {"kind":"frames", "camera":"cam1", "pushed":..., "at":...}        frames pushed on a client's stream so far (on close)
Times are time.time() (wall clock, seconds). "episode" is written once the episode's first anomalous frame has left
the payloader (payFirstAt: its first RTP packet, payLastAt: the packet with the marker bit, i.e. the whole frame) and,
when the media's network sink could be found, when those packets reached it (sinkFirstAt/sinkLastAt; the TCP sink
hands them to the RTSP connection). Prints "ready" on stdout once listening; exits on SIGTERM/SIGINT.
"""

import argparse
import json
import signal
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LOG_LOCK = threading.Lock()
LOG_FILE = None


def log(record):
    line = json.dumps(record)
    with LOG_LOCK:
        LOG_FILE.write(line + "\n")
        LOG_FILE.flush()


def decode_frames(path, start_s, length_s, width, height):
    """I420 frames (bytes) of path from start_s for length_s, scaled to width x height."""
    pipeline = Gst.parse_launch(
        "filesrc name=src ! qtdemux ! h264parse ! openh264dec ! videoconvert ! videoscale "
        f"! video/x-raw,format=I420,width={width},height={height} ! appsink name=sink sync=false"
    )
    pipeline.get_by_name("src").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    frames = []
    first_pts = None
    while True:
        sample = sink.emit("try-pull-sample", 200 * Gst.MSECOND)
        if sample is not None:
            buffer = sample.get_buffer()
            if first_pts is None:
                first_pts = buffer.pts
            t = (buffer.pts - first_pts) / Gst.SECOND
            if t >= start_s + length_s:
                break
            if t >= start_s:
                ok, info = buffer.map(Gst.MapFlags.READ)
                frames.append(bytes(info.data))
                buffer.unmap(info)
            continue
        error = bus.pop_filtered(Gst.MessageType.ERROR)
        if error is not None:
            err, debug = error.parse_error()
            pipeline.set_state(Gst.State.NULL)
            raise RuntimeError(f"cannot decode {path}: {err.message} ({debug})")
        if sink.get_property("eos"):
            break
    pipeline.set_state(Gst.State.NULL)
    if not frames:
        raise RuntimeError(f"no frames decoded from {path} in {start_s}..{start_s + length_s} s")
    return frames


def with_checkerboard(frame, width, height, box=(0.2, 0.15, 0.6, 0.7), square=40, levels=(70, 185)):
    """The frame with a grey checkerboard (luma levels[0]/levels[1], neutral chroma) over the box (fractions)."""
    data = bytearray(frame)
    x0, y0 = int(box[0] * width) & ~1, int(box[1] * height) & ~1
    x1, y1 = (int((box[0] + box[2]) * width) & ~1), (int((box[1] + box[3]) * height) & ~1)
    for y in range(y0, y1):
        row = bytearray()
        for x in range(x0, x1, square):
            n = min(square, x1 - x)
            level = levels[(((x - x0) // square) + ((y - y0) // square)) % 2]
            row += bytes([level]) * n
        data[y * width + x0 : y * width + x1] = row
    chroma_w, chroma_h = width // 2, height // 2
    for plane in (width * height, width * height + chroma_w * chroma_h):
        for y in range(y0 // 2, y1 // 2):
            start = plane + y * chroma_w + x0 // 2
            data[start : start + (x1 - x0) // 2] = bytes([128]) * ((x1 - x0) // 2)
    return bytes(data)


class Schedule:
    def __init__(self, origin, period_s, anomaly_s, first_s, cameras):
        self.origin, self.period, self.anomaly, self.first, self.cameras = origin, period_s, anomaly_s, first_s, cameras

    # Each episode starts up to this much later than `first`, spread evenly (golden-ratio sequence): with a period
    # that is a whole number of analysis slots, the first anomalous frame would otherwise always land at the same
    # place in the agent's 1/fps slot, and every episode would wait the same time for an analysed frame.
    SPREAD_S = 0.2

    def at(self, camera_index, now):
        """(anomalous, episode number, scheduled start of that episode) for a camera at wall time now."""
        t = now - self.origin - camera_index * self.period / self.cameras
        episode = int(t // self.period)
        phase = t - episode * self.period
        start = self.first + ((episode * 0.6180339887 + camera_index * 0.37) % 1.0) * self.SPREAD_S
        anomalous = t >= 0 and start <= phase < start + self.anomaly
        return anomalous, episode, self.origin + camera_index * self.period / self.cameras + episode * self.period + start


class SceneFactory(GstRtspServer.RTSPMediaFactory):
    """One pipeline per client (not shared): a live appsrc fed by a thread at the frame rate."""

    def __init__(self, name, index, args, normal, anomalous, schedule):
        super().__init__()
        self.name, self.index, self.args = name, index, args
        self.normal, self.anomalous, self.schedule = normal, anomalous, schedule
        # The server keeps one episode record per camera: a reconnecting client does not repeat an episode.
        self.logged_episodes = set()
        self.set_shared(False)
        self.connect("media-configure", self.on_media_configure)

    def do_create_element(self, url):
        a = self.args
        return Gst.parse_launch(
            f"appsrc name=src is-live=true format=time do-timestamp=false "
            f"caps=video/x-raw,format=I420,width={a.width},height={a.height},framerate={a.fps}/1 "
            f"! x264enc tune=zerolatency speed-preset=ultrafast bitrate={a.bitrate} key-int-max={a.gop} bframes=0 threads=1 "
            f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=-1"
        )

    def on_media_configure(self, factory, media):
        element = media.get_element()
        appsrc = element.get_by_name("src")
        pay = element.get_by_name("pay0")
        # x264enc shifts its output timestamps (by 1000 hours): the payloader's PTS is the pushed PTS + offset,
        # learnt from the first frame (no B-frames, zerolatency: frames leave in the order they came in).
        state = {"stop": False, "pending": {}, "first_frame": None, "pushed": 0, "sink_probed": False, "first_in_pts": None, "offset": None}
        lock = threading.Lock()

        def buffers_of(info):
            # rtph264pay pushes the fragments (FU-A) of a large frame as one buffer list.
            if info.type & Gst.PadProbeType.BUFFER_LIST:
                group = info.get_buffer_list()
                return [group.get(i) for i in range(group.length())]
            return [info.get_buffer()]

        def pay_probe(pad, info):
            now = time.time()
            with lock:
                for buffer in buffers_of(info):
                    if state["first_frame"] is None:
                        state["first_frame"] = now
                        state["offset"] = buffer.pts - state["first_in_pts"]
                        log({"kind": "first-frame", "camera": self.name, "at": now})
                    record = state["pending"].get(buffer.pts - state["offset"])
                    if record is None:
                        continue
                    record.setdefault("payFirstAt", now)
                    record["payPackets"] = record.get("payPackets", 0) + 1
                    if buffer.has_flags(Gst.BufferFlags.MARKER) and "payLastAt" not in record:
                        record["payLastAt"] = now
                        # Give the network sink a moment, then write the record.
                        GLib.timeout_add(300, finish, buffer.pts - state["offset"])
            return Gst.PadProbeReturn.OK

        def sink_probe(pad, info):
            now = time.time()
            with lock:
                if state["offset"] is None:
                    return Gst.PadProbeReturn.OK
                for buffer in buffers_of(info):
                    record = state["pending"].get(buffer.pts - state["offset"])
                    if record is None:
                        continue
                    record.setdefault("sinkFirstAt", now)
                    if buffer.has_flags(Gst.BufferFlags.MARKER):
                        record.setdefault("sinkLastAt", now)
            return Gst.PadProbeReturn.OK

        def finish(pts):
            with lock:
                record = state["pending"].pop(pts, None)
            if record is not None:
                log(record)
            return GLib.SOURCE_REMOVE

        pay.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, pay_probe)

        def attach_sink_probe():
            # The stream's network sinks are created when the transport is set up; probe the RTP one.
            pipeline = element.get_parent()
            while pipeline is not None and pipeline.get_parent() is not None:
                pipeline = pipeline.get_parent()
            if pipeline is None or state["sink_probed"]:
                return
            iterator = pipeline.iterate_recurse()
            while True:
                result, item = iterator.next()
                if result != Gst.IteratorResult.OK:
                    break
                factory_name = item.get_factory().get_name() if item.get_factory() else ""
                # The RTP and the RTCP sink: RTCP packets carry no matching PTS.
                if factory_name in ("appsink", "multiudpsink"):
                    item.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, sink_probe)
                    state["sink_probed"] = True

        def on_new_state(_media, new_state):
            if new_state == Gst.State.PLAYING:
                attach_sink_probe()

        media.connect("new-state", on_new_state)

        def pump():
            frame_s = 1.0 / self.args.fps
            step = 0
            next_at = time.monotonic()
            direction_len = len(self.normal)
            while not state["stop"]:
                now_mono = time.monotonic()
                if now_mono < next_at:
                    time.sleep(next_at - now_mono)
                next_at += frame_s
                if next_at < time.monotonic() - 1.0:  # fell far behind (suspended): do not burst
                    next_at = time.monotonic()
                ok, current, _pending = appsrc.get_state(0)
                if current != Gst.State.PLAYING:
                    continue
                clock = appsrc.get_clock()
                if clock is None:
                    continue
                # Ping-pong over the normal frames: forwards, then backwards, no cut.
                cycle = step % (2 * direction_len - 2) if direction_len > 1 else 0
                frame_index = cycle if cycle < direction_len else 2 * direction_len - 2 - cycle
                step += 1
                now = time.time()
                anomalous, episode, scheduled = self.schedule.at(self.index, now)
                data = (self.anomalous if anomalous else self.normal)[frame_index]
                buffer = Gst.Buffer.new_wrapped(data)
                buffer.pts = clock.get_time() - appsrc.get_base_time()
                buffer.duration = int(frame_s * Gst.SECOND)
                with lock:
                    if state["first_in_pts"] is None:
                        state["first_in_pts"] = buffer.pts
                    if anomalous and episode not in self.logged_episodes:
                        self.logged_episodes.add(episode)
                        state["pending"][buffer.pts] = {
                            "kind": "episode", "camera": self.name, "episode": episode,
                            "scheduledAt": scheduled, "pushedAt": now, "pts": buffer.pts,
                        }
                    state["pushed"] += 1
                if appsrc.emit("push-buffer", buffer) != Gst.FlowReturn.OK:
                    break
            log({"kind": "frames", "camera": self.name, "pushed": state["pushed"], "at": time.time()})

        thread = threading.Thread(target=pump, daemon=True)

        def on_unprepared(_media):
            state["stop"] = True

        media.connect("unprepared", on_unprepared)
        thread.start()


def main():
    global LOG_FILE
    parser = argparse.ArgumentParser(description="Live RTSP cameras with anomalous episodes on a schedule.")
    parser.add_argument("--file", required=True)
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--cameras", type=int, default=1)
    parser.add_argument("--log", required=True, help="JSON-lines file the episodes and connections are written to (appended)")
    parser.add_argument("--normal-from-s", type=float, default=0.0)
    parser.add_argument("--normal-s", type=float, default=1.5)
    parser.add_argument("--period-s", type=float, default=3.0)
    parser.add_argument("--anomaly-s", type=float, default=1.5)
    parser.add_argument("--first-s", type=float, default=1.0, help="anomaly starts this far into each period")
    parser.add_argument("--origin", type=float, help="wall-clock origin of the schedule (default: now); keep it across a restart")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--bitrate", type=int, default=1500, help="kbit/s")
    parser.add_argument("--gop", type=int, default=30, help="frames between IDR frames")
    args = parser.parse_args()

    LOG_FILE = open(args.log, "a", encoding="utf-8")
    Gst.init(None)
    try:
        normal = decode_frames(args.file, args.normal_from_s, args.normal_s, args.width, args.height)
    except (RuntimeError, GLib.Error) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    anomalous = [with_checkerboard(frame, args.width, args.height) for frame in normal]
    schedule = Schedule(args.origin if args.origin is not None else time.time(), args.period_s, args.anomaly_s, args.first_s, args.cameras)

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for index in range(args.cameras):
        name = f"cam{index + 1}"
        mounts.add_factory(f"/{name}", SceneFactory(name, index, args, normal, anomalous, schedule))

    def on_client(_server, client):
        def on_play(_client, context):
            path = context.uri.abspath if context.uri is not None else ""
            log({"kind": "play", "camera": path.strip("/").split("/")[0], "at": time.time()})

        client.connect("play-request", on_play)

    server.connect("client-connected", on_client)
    if server.attach(None) == 0:
        print(f"error: cannot listen on {args.address}:{args.port}", file=sys.stderr, flush=True)
        return 1
    main_loop = GLib.MainLoop()

    def on_signal():
        main_loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, on_signal)
    log({"kind": "ready", "at": time.time(), "origin": schedule.origin, "frames": len(normal)})
    print("ready", flush=True)
    main_loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
