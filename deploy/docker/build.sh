#!/usr/bin/env bash
# Builds the cluster's Docker images: cctv/{redis,rtmp,scheduler,worker-motion,worker-yolo,
# worker-record}:<tag>, and cctv/camera-sim:<tag> (simulated RTSP cameras, to try the stack).
#
# The binaries are built here with cargo (the toolchain this repository needs; Debian 12's rustc
# is too old to build inside a Debian image) and copied into runtime images (Dockerfile next to
# this script). The base image is the official debian:bookworm-slim when it is present or can be
# pulled; otherwise one is made from Debian packages with debootstrap (no registry needed).
#
#   deploy/docker/build.sh [--tag TAG] [--profile release|debug] [--no-cargo] [--bin-dir DIR] [--base IMAGE]
#
# --no-cargo uses the binaries already in target/<profile> (or --bin-dir; the tests build them).
set -euo pipefail
trap 'echo "error: deploy/docker/build.sh failed at line $LINENO (command: $BASH_COMMAND)" >&2' ERR
cd "$(dirname "$0")/../.."

tag=latest profile=release cargo_build=1 base="" bin_dir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) tag=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --no-cargo) cargo_build=0; shift ;;
        --bin-dir) bin_dir=$2; shift 2 ;;
        --base) base=$2; shift 2 ;;
        *) echo "usage: $0 [--tag TAG] [--profile release|debug] [--no-cargo] [--bin-dir DIR] [--base IMAGE]" >&2; exit 2 ;;
    esac
done
case "$profile" in
    release) target_dir=target/release ;;
    debug) target_dir=target/debug ;;
    *) echo "error: --profile must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
[ -n "$bin_dir" ] && target_dir=$bin_dir
DOCKER=${DOCKER:-docker}
if ! $DOCKER info >/dev/null 2>&1; then
    echo "error: no Docker engine answers ('$DOCKER info' failed); start dockerd (deploy/install-deps.sh --docker does)" >&2
    exit 1
fi

bins=(scheduler cctv-relay cctv worker-motion worker-yolo worker-record)
if [ "$cargo_build" = 1 ]; then
    flag=(); [ "$profile" = release ] && flag=(--release)
    cargo build --locked "${flag[@]}" -p scheduler -p cctv-relay -p cctv-cli -p worker-motion -p worker-yolo -p worker-record --bins
fi
ort=.ort/libonnxruntime.so.1.32.0
[ -f "$ort" ] || { echo "error: $ort is missing; run deploy/install-deps.sh" >&2; exit 1; }

# The build context: the binaries (stripped: the debug ones carry ~100 MiB of debug info each),
# the ONNX Runtime library and the nginx and Redis start scripts.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/bin" "$ctx/ort"
for b in "${bins[@]}"; do
    [ -x "$target_dir/$b" ] || { echo "error: $target_dir/$b is missing (build it, or drop --no-cargo)" >&2; exit 1; }
    strip -o "$ctx/bin/$b" "$target_dir/$b"
done
cp "$ort" "$ctx/ort/"
cp deploy/docker/rtmp-start.sh deploy/docker/redis-start.sh deploy/docker/redis-health.sh loadtest/rtsp_cameras.py "$ctx/"

# The base image.
if [ -z "$base" ]; then
    if $DOCKER image inspect debian:bookworm-slim >/dev/null 2>&1 || timeout 120 $DOCKER pull -q debian:bookworm-slim >/dev/null 2>&1; then
        base=debian:bookworm-slim
    else
        base=cctv/debian-base:bookworm
        if ! $DOCKER image inspect "$base" >/dev/null 2>&1; then
            command -v debootstrap >/dev/null || { echo "error: no registry and no debootstrap (apt-get install debootstrap)" >&2; exit 1; }
            # The mirror apt uses here (deb.debian.org if none is configured).
            mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
                | grep -oE '^(URIs:|deb) +https?://[^ ]+' | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
            mirror=${mirror:-http://deb.debian.org/debian}
            echo "making $base from Debian packages ($mirror)..."
            rootfs=$(mktemp -d)
            debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
            printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" > "$rootfs/etc/apt/sources.list"
            rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
            # PATH and CMD as the official image sets them (an imported image has none).
            tar -C "$rootfs" -c . | $DOCKER import \
                -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["bash"]' \
                - "$base" >/dev/null
            rm -rf "$rootfs"
        fi
    fi
fi
echo "base image: $base"

# camera-sim: simulated RTSP cameras for trying the stack (and the compose test).
for t in redis rtmp scheduler worker-motion worker-yolo worker-record camera-sim; do
    echo "building cctv/$t:$tag"
    $DOCKER build -q -f deploy/docker/Dockerfile --build-arg "BASE=$base" --target "$t" -t "cctv/$t:$tag" "$ctx" >/dev/null
done
echo "images built: cctv/{redis,rtmp,scheduler,worker-motion,worker-yolo,worker-record,camera-sim}:$tag"
