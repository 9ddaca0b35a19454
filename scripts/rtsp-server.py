#!/usr/bin/python3
"""Serve an H.264 MP4 over RTSP at rtsp://127.0.0.1:<port>/<path> (test and demo helper).

Usage: /usr/bin/python3 scripts/rtsp-server.py --file video.mp4 [--port 8554] [--path stream] [--loop | --no-loop]

Prints "ready" on stdout once the port is listening; exits cleanly on SIGTERM or SIGINT.

Why not `filesrc ! qtdemux ! rtph264pay` as the media pipeline: at the end of the file it sends EOS, and seeking an
RTSP media back to the start resets its timestamps, which RTP clients such as ffmpeg treat as a broken stream. Instead
the file is demuxed once into memory at start-up and every client gets its own appsrc that replays the access units
with timestamps that keep increasing across loops, so a looped file looks like an endless camera stream.
Memory is the size of the encoded file: fine for test clips, not meant for hour-long recordings.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def demux_access_units(path):
    """Return (caps, [(buffer, pts, dts)], loop_duration_ns) of the file's first H.264 video track."""
    pipeline = Gst.parse_launch(
        "filesrc name=src ! qtdemux ! h264parse ! video/x-h264,stream-format=avc,alignment=au "
        "! appsink name=sink sync=false emit-signals=false"
    )
    pipeline.get_by_name("src").set_property("location", path)
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    caps = None
    units = []
    error = None
    while True:
        # A demux error posts on the bus but never ends the appsink: poll both.
        sample = sink.emit("try-pull-sample", 100 * Gst.MSECOND)
        if sample is not None:
            caps = sample.get_caps()
            buffer = sample.get_buffer()
            units.append((buffer, buffer.pts, buffer.dts, buffer.duration))
            continue
        error = bus.pop_filtered(Gst.MessageType.ERROR)
        if error is not None or sink.get_property("eos"):
            break
    pipeline.set_state(Gst.State.NULL)
    if error is not None:
        err, debug = error.parse_error()
        raise RuntimeError(f"cannot demux {path}: {err.message} ({debug})")
    if not units:
        raise RuntimeError(f"{path} has no H.264 video track (only H.264 in MP4/MOV is supported)")
    first_pts = min(u[1] for u in units)
    frame_ns = units[0][3] if units[0][3] != Gst.CLOCK_TIME_NONE else 33_333_333
    last_end = max(u[1] + (u[3] if u[3] != Gst.CLOCK_TIME_NONE else frame_ns) for u in units)
    return caps, units, last_end - first_pts


class ReplayFactory(GstRtspServer.RTSPMediaFactory):
    """One media (pipeline) per client, each replaying the file from its start."""

    def __init__(self, caps, units, loop_duration, loop):
        super().__init__()
        self.caps = caps
        self.units = units
        self.loop_duration = loop_duration
        self.loop = loop
        self.set_shared(False)
        self.connect("media-configure", self.on_media_configure)

    def do_create_element(self, url):
        return Gst.parse_launch("appsrc name=src format=time ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1")

    def on_media_configure(self, factory, media):
        appsrc = media.get_element().get_by_name("src")
        appsrc.set_property("caps", self.caps)
        state = {"index": 0, "loops": 0}

        def on_need_data(src, _length):
            if state["index"] >= len(self.units):
                if not self.loop:
                    src.emit("end-of-stream")
                    return
                state["index"] = 0
                state["loops"] += 1
            buffer, pts, dts, _duration = self.units[state["index"]]
            state["index"] += 1
            offset = state["loops"] * self.loop_duration
            copy = buffer.copy()
            copy.pts = pts + offset if pts != Gst.CLOCK_TIME_NONE else pts
            copy.dts = dts + offset if dts != Gst.CLOCK_TIME_NONE else dts
            src.emit("push-buffer", copy)

        appsrc.connect("need-data", on_need_data)


def require_login(server, factory, user, password):
    """Basic authentication, as IP cameras ask for it: without the user and password, 401."""
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "viewer")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
    server.set_auth(auth)
    permissions = GstRtspServer.RTSPPermissions()
    permissions.add_role_from_structure(Gst.Structure.new_from_string(
        "viewer, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
    factory.set_permissions(permissions)


def main():
    parser = argparse.ArgumentParser(description="Serve an H.264 MP4 file over RTSP.")
    parser.add_argument("--file", required=True, help="H.264 MP4/MOV file to serve")
    parser.add_argument("--port", type=int, default=8554)
    parser.add_argument("--path", default="stream", help="mount path, without the leading slash")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--user", help="require RTSP basic authentication with this user (and --password)")
    parser.add_argument("--password", default="")
    loop_group = parser.add_mutually_exclusive_group()
    loop_group.add_argument("--loop", dest="loop", action="store_true", default=True,
                            help="restart the file at its end so the stream never ends (default)")
    loop_group.add_argument("--no-loop", dest="loop", action="store_false",
                            help="serve the file once, then end the stream (ground-truth runs)")
    args = parser.parse_args()

    Gst.init(None)
    try:
        caps, units, loop_duration = demux_access_units(args.file)
    except (RuntimeError, GLib.Error) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2

    server = GstRtspServer.RTSPServer()
    server.set_address(args.address)
    server.set_service(str(args.port))
    factory = ReplayFactory(caps, units, loop_duration, args.loop)
    if args.user:
        require_login(server, factory, args.user, args.password)
    server.get_mount_points().add_factory("/" + args.path.lstrip("/"), factory)
    if server.attach(None) == 0:
        print(f"error: cannot listen on {args.address}:{args.port} (port in use?)", file=sys.stderr, flush=True)
        return 1

    main_loop = GLib.MainLoop()

    def on_signal():
        main_loop.quit()
        return GLib.SOURCE_REMOVE

    for signum in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signum, on_signal)
    print("ready", flush=True)
    main_loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
