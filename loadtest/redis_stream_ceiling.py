#!/usr/bin/python3
"""Redis memory of the event streams at their length caps.

Starts a scratch redis-server (random 127.0.0.1 port, temp dir), appends events shaped like the
cluster's (same fields, realistic values; sizes printed) with the same `XADD MAXLEN ~ <cap>` the
workers use, past the cap, and prints used_memory per stream: the ceiling the streams level off
at. Usage: loadtest/redis_stream_ceiling.py [--n N]
"""
import argparse
import json
import os
import random
import socket
import subprocess
import tempfile
import time
import uuid

STREAMS = {
    # stream: (cap, sample entry)
    "events:objects": (100_000, {
        "channel": 12, "frame_ts_ms": 1796099599113, "motion_event": str(uuid.uuid4()),
        "detections": [{"label": "person", "score": 0.7995386, "box": [242.57295, 139.22566, 340.53555, 267.80322]}],
        "frame_width": 640, "frame_height": 360, "latency_ms": 296, "batch_size": 1,
        "snapshot": "/var/lib/cctv/snapshots/ch12/ch12_1796099599113.jpg",
        "job": "01M8QY1TRF9JV94YYRAW4H4CQM", "worker": "yolo-318dcfa0252e-1-211286", "ts_ms": 1796099599409}),
    "events:motion": (100_000, {
        "kind": "end", "channel": 12, "event_id": str(uuid.uuid4()), "ts_ms": 1796099599113,
        "area": 0.11363714933395386, "last_motion_ms": 1796099599013, "duration_ms": 17612, "seq": 42,
        "held_ms": 0, "worker": "motion-87c04ed639e3-1-0fe75b", "batch": "b1", "job": "01M8QXHC7399WTTBPTBMTVV653"}),
    "events:backup": (100_000, {
        "kind": "file", "channel": 12, "recording": "ch12-" + str(uuid.uuid4()),
        "file": "/var/lib/cctv/backups/Channel12_2026-12-01_04-05-06.mkv", "part": 1,
        "start_ms": 1796097834100, "end_ms": 1796097841839, "duration_secs": 8.96, "size_bytes": 511430,
        "trigger": {"kind": "motion", "motion_event": str(uuid.uuid4()), "ts_ms": 1796097837559, "labels": []},
        "events": [str(uuid.uuid4())], "pre_roll_ms": 3459, "writing_since_ms": 1796097837669,
        "validation": "ok: h264 1280x720, 9.0 s", "error": None, "worker": "record-vm-7564-178e97",
        "job": "01M8QWC2FW9CHRRPVVBN3TEZZ8", "ts_ms": 1796097851800}),
    "events:system": (20_000, {
        "kind": "error", "component": "worker-record", "instance": "record-vm-7564-178e97",
        "message": "channel 12 recording ch12-x: gap in the stream: no video for the last 4.8 s", "ts_ms": 1796097851800}),
}


def resp(*args):
    out = f"*{len(args)}\r\n"
    for a in args:
        a = str(a)
        out += f"${len(a.encode())}\r\n{a}\r\n"
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=float, default=1.2, help="entries appended, as a multiple of the cap")
    a = p.parse_args()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with tempfile.TemporaryDirectory() as d:
        srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)
        try:
            cli = ["redis-cli", "-p", str(port)]
            for _ in range(50):
                if subprocess.run(cli + ["ping"], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
            print("| stream | cap | entry bytes (JSON) | MiB at the cap | bytes per entry |")
            print("| --- | --- | --- | --- | --- |")
            total = 0
            for name, (cap, sample) in STREAMS.items():
                n = int(cap * a.n)
                cmds = []
                for i in range(n):
                    e = dict(sample, ts_ms=sample["ts_ms"] + i * 250)
                    cmds.append(resp("XADD", name, "MAXLEN", "~", cap, "*", "data", json.dumps(e)))
                subprocess.run(cli + ["--pipe"], input="".join(cmds).encode(), capture_output=True, check=True)
                used = int(subprocess.run(cli + ["MEMORY", "USAGE", name, "SAMPLES", "0"],
                                          capture_output=True, text=True).stdout.strip())
                length = int(subprocess.run(cli + ["XLEN", name], capture_output=True, text=True).stdout.strip())
                total += used
                print(f"| `{name}` | {cap} ({length} kept) | {len(json.dumps(sample))} | {used / 1048576:.1f} | {used / length:.0f} |")
            print(f"| all | | | {total / 1048576:.1f} | |")
        finally:
            srv.terminate()
            srv.wait()


if __name__ == "__main__":
    main()
