#!/usr/bin/env bash
# The test command: every unit and integration test of the workspace, on real servers
# (redis-server, nginx-rtmp, ffmpeg) started by the tests themselves on random 127.0.0.1 ports.
# Ends with one summary line: "tests: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install-deps.sh
export ORT_DYLIB_PATH="$(pwd)/.ort/libonnxruntime.so.1.32.0"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# Every binary first: tests run the operator's `cctv` and the other processes as a site does
# (`target/debug/<binary>`), and cargo builds a package's binaries for its own tests only.
# `--tests` too, so the binaries get the features the tests unify (dev-dependencies) and the
# test run below reuses this build instead of compiling the workspace a second time.
cargo build --workspace --locked --bins --tests
cargo test --workspace --locked --no-fail-fast --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log" || status=$?
echo
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
