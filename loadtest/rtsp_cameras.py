#!/usr/bin/python3
"""Simulated IP cameras: a real RTSP server (GStreamer's gst-rtsp-server) serving N cameras,
each with a main stream and a sub-stream, from H.264 or H.265 MP4 clips, without re-encoding
(the codec is read from the clip: `hvc1`/`hev1` sample entries are served with rtph265pay).

    rtsp_cameras.py --port 8554 --camera main.mp4,sub.mp4 --camera main2.mp4,sub2.mp4 ...

Camera i (from 1) is rtsp://<address>:<port>/cam<i>/main and .../cam<i>/sub. A clip that ends
ends the RTSP session (as a camera reboot would); clients reconnect and it starts again.
With --auth user:password the cameras ask for those credentials (RTSP Basic authentication)
and answer anyone else 401 Unauthorized, as a camera does. With --g711 every main stream also
carries G.711 A-law audio (a tone as long as the clip, rtppcmapay), the usual IP-camera audio;
`--camera main.mp4,sub.mp4,g711` gives it to one camera only.
Debian packages: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good
gstreamer1.0-plugins-bad. Prints "ready" once listening.
"""
import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def clip_codec(clip):
    """'h265' when the MP4's video sample entry is HEVC, else 'h264'."""
    with open(clip, "rb") as f:
        data = f.read()
    return "h265" if (b"hvc1" in data or b"hev1" in data) else "h264"


def clip_tenths(clip):
    """The clip's duration in tenths of a second."""
    gi.require_version("GstPbutils", "1.0")  # gir1.2-gst-plugins-base-1.0; only with audio
    from gi.repository import GstPbutils

    info = GstPbutils.Discoverer.new(10 * Gst.SECOND).discover_uri(Gst.filename_to_uri(clip))
    return max(1, info.get_duration() // (Gst.SECOND // 10))


def factory(clip, auth, g711=False):
    f = GstRtspServer.RTSPMediaFactory()
    if auth:
        # Only the "camera-user" role may see and open the streams.
        f.add_role_from_structure(Gst.Structure.new_from_string(
            "camera-user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
    # Stream copy: demux the MP4, repeat SPS/PPS on every keyframe, packetise.
    codec = clip_codec(clip)
    # The tone lasts as long as the clip (100 ms buffers), so the session still ends with it.
    audio = (
        f" audiotestsrc wave=sine freq=440 samplesperbuffer=800 num-buffers={clip_tenths(clip)}"
        " ! audio/x-raw,rate=8000,channels=1 ! alawenc ! rtppcmapay name=pay1 pt=8"
        if g711
        else ""
    )
    f.set_launch(
        f'( filesrc location="{clip}" ! qtdemux ! {codec}parse config-interval=-1 ! rtp{codec}pay name=pay0 pt=96'
        f"{audio} )"
    )
    # One pipeline per client, as a camera serves each client on its own: a shared media is
    # rewound for everyone by each new client's PLAY, and a client connecting while it ends
    # leaves it refusing every later client for good.
    f.set_shared(False)
    return f


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--camera", action="append", required=True, help="main.mp4[,sub.mp4[,g711]]")
    p.add_argument("--auth", help="user:password every client must give (Basic)")
    p.add_argument("--g711", action="store_true", help="main streams carry G.711 A-law audio")
    a = p.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    if a.auth:
        user, password = a.auth.split(":", 1)
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string("media.factory.role", "camera-user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(user, password), token)
        server.set_auth(auth)
    server.set_address(a.address)
    server.set_service(str(a.port))
    mounts = server.get_mount_points()
    for i, cam in enumerate(a.camera, start=1):
        clips = cam.split(",")
        g711 = a.g711 or (len(clips) > 2 and clips[2] == "g711")
        mounts.add_factory(f"/cam{i}/main", factory(clips[0], a.auth, g711))
        mounts.add_factory(f"/cam{i}/sub", factory(clips[1] if len(clips) > 1 else clips[0], a.auth))
    if server.attach(None) == 0:
        print(f"cannot listen on {a.address}:{a.port}", file=sys.stderr)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
