# Sourced by quantize.sh and any_size.sh: ONNX Runtime's Python package (the version of the C
# library worker-yolo loads), onnx and numpy from pip into the repository's .tools/quant, once.
# A lock keeps two scripts started together (tests run in parallel) from installing at once.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS="$REPO/.tools/quant"
mkdir -p "$REPO/.tools"
exec 9>"$REPO/.tools/quant.lock"
flock 9
if [ ! -f "$TOOLS/.onnxruntime-1.32.0" ]; then
    rm -rf "$TOOLS"
    python3 -m pip install -q --disable-pip-version-check --no-warn-conflicts --target "$TOOLS" \
        onnxruntime==1.32.0 onnx==1.23.2 numpy
    touch "$TOOLS/.onnxruntime-1.32.0"
fi
flock -u 9
