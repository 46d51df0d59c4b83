#!/usr/bin/env bash
# YOLOv5n for any input size from the fixed 640x640 export (deploy/yolo/any_size.py says how).
# Paths given are taken from the current directory.
set -euo pipefail
source "$(dirname "$0")/tools.sh"
PYTHONPATH="$TOOLS" exec python3 "$REPO/deploy/yolo/any_size.py" "$@"
