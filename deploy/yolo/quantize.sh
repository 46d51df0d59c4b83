#!/usr/bin/env bash
# int8 YOLOv5n from the fp32 model (deploy/yolo/quantize.py says how). Paths given are taken
# from the current directory.
set -euo pipefail
source "$(dirname "$0")/tools.sh"
PYTHONPATH="$TOOLS" exec python3 "$REPO/deploy/yolo/quantize.py" "$@"
