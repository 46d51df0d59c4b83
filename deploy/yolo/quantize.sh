#!/usr/bin/env bash
# int8 YOLOv5n from the fp32 model (deploy/yolo/quantize.py says how). Installs ONNX Runtime's
# Python package (same version as the C library worker-yolo loads) and onnx into the
# repository's .tools/quant. Paths given are taken from the current directory.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
TOOLS="$REPO/.tools/quant"
if [ ! -f "$TOOLS/.onnxruntime-1.32.0" ]; then
    rm -rf "$TOOLS"
    python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$TOOLS" \
        onnxruntime==1.32.0 onnx==1.23.2 numpy
    touch "$TOOLS/.onnxruntime-1.32.0"
fi
PYTHONPATH="$TOOLS" exec python3 "$REPO/deploy/yolo/quantize.py" "$@"
