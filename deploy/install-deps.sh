#!/usr/bin/env bash
# Installs what the cluster and its tests need on Debian 12: Debian's ffmpeg, nginx with the
# RTMP module, redis-server, mosquitto, OpenCV (+ clang for the opencv crate's bindings) and the ONNX Runtime
# shared library from the PyPI wheel (for worker-yolo), chromium (dashboard test). Idempotent; uses
# sudo when not root.
set -euo pipefail
cd "$(dirname "$0")/.."

# libav*-dev + libswscale-dev: worker-motion decodes the gate's packets in process with Debian's
# FFmpeg libraries (ffmpeg-next; bindings made with clang).
# chromium: the dashboard test renders the page headless.
# python3-gi + gir1.2-gst-rtsp-server-1.0 + gstreamer plugins: the simulated RTSP cameras.
# mosquitto (+ clients): the MQTT broker of the notifier test and the local cluster.
# prometheus: its promtool lints /metrics in the API test (the server itself is not used).
# libssl-dev: TLS to webhooks and MQTT brokers through Debian's OpenSSL; openssl: the TLS tests make
# their certificates with it. iproute2: the multi-host (network namespace) test. docker.io + docker-compose + debootstrap:
# the compose test builds the images (base image from Debian packages when no registry answers)
# and runs the stack.
APT_PACKAGES=(ffmpeg libavcodec-dev libavformat-dev libavutil-dev libswscale-dev nginx libnginx-mod-rtmp redis-server libopencv-dev clang libclang-dev pkg-config python3-pip unzip curl chromium
    python3-gi gir1.2-gst-rtsp-server-1.0 gir1.2-gst-plugins-base-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad iproute2
    docker.io docker-compose debootstrap binutils fonts-dejavu-core mosquitto mosquitto-clients prometheus libssl-dev openssl)
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian starts these as system services on install; the cluster runs its own on its own ports.
for svc in nginx redis-server mosquitto prometheus; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
        $SUDO systemctl stop "$svc" || true
    fi
done

# A Docker engine for the compose test: started when none answers (systemd where it runs,
# else dockerd in the background).
if ! docker info >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        $SUDO systemctl start docker
    else
        $SUDO sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
    fi
    for _ in $(seq 1 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "error: the Docker engine did not start (see /var/log/dockerd.log)" >&2; exit 1; }
fi

# ONNX Runtime 1.32.0 (C library) from the PyPI wheel; ORT_DYLIB_PATH points at it.
ORT_DIR=.ort
ORT_LIB="$ORT_DIR/libonnxruntime.so.1.32.0"
if [ ! -f "$ORT_LIB" ]; then
    mkdir -p "$ORT_DIR/wheel"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$ORT_DIR/wheel" onnxruntime==1.32.0
    unzip -q -o -j "$ORT_DIR"/wheel/onnxruntime-1.32.0-*.whl 'onnxruntime/capi/libonnxruntime.so.1.32.0' -d "$ORT_DIR"
    rm -rf "$ORT_DIR/wheel"
fi

# openapi-spec-validator (+ jsonschema): the API test checks the generated OpenAPI document and
# the answers against it. Into .tools/python, not the system's site-packages.
PY_TOOLS=.tools/python
if [ ! -f "$PY_TOOLS/.openapi-spec-validator-0.9.0" ]; then
    rm -rf "$PY_TOOLS"
    python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$PY_TOOLS" \
        openapi-spec-validator==0.9.0
    touch "$PY_TOOLS/.openapi-spec-validator-0.9.0"
fi

# schemathesis: the API test fuzzes every documented route from /api/openapi.json (no answer
# may be a server error). Into .tools/schemathesis, pinned.
ST_TOOLS=.tools/schemathesis
if [ ! -f "$ST_TOOLS/.schemathesis-4.32.5" ]; then
    rm -rf "$ST_TOOLS"
    python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$ST_TOOLS" \
        schemathesis==4.32.5
    touch "$ST_TOOLS/.schemathesis-4.32.5"
fi

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found. Install Rust >= 1.85 with rustup (https://rustup.rs); Debian 12's rustc is too old." >&2
    exit 1
fi
echo "dependencies ok (ORT_DYLIB_PATH=$(pwd)/$ORT_LIB)"
