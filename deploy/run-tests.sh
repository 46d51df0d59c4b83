#!/usr/bin/env bash
# The test command: every unit and integration test of the workspace, on real servers
# (redis-server, nginx-rtmp, ffmpeg) started by the tests themselves on random 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export ORT_DYLIB_PATH="$(pwd)/.ort/libonnxruntime.so.1.32.0"
cargo test --workspace --locked -- --test-threads=2
