#!/usr/bin/env python3
"""Statically quantized (int8) YOLOv5n from the fp32 model: ONNX Runtime's quantization tools,
calibrated on frames of real footage prepared exactly as worker-yolo feeds the model.

    deploy/yolo/quantize.sh [--model ../shared/models/yolov5n.onnx] [--media ../shared/media] \
        [--out .local/models/yolov5n-int8.onnx]

Calibration frames: every video and picture under --media, cut at --fps into 640x360 frames (a
camera's sub-stream), each fed both ways worker-yolo runs the model: alone, letterboxed into
640x640 with grey 114, and two to an input, each scaled edge to edge into a 640x320 half
(`yolo.pair_frames`). Weights int8 per channel, activations uint8 (QDQ): the u8 x s8 kernels
that AVX2 / AVX-512 VNNI run. The Detect layer's decoding (sigmoid, grid, anchors, concat:
box coordinates in pixels) stays in float; its three convolutions are quantized.
"""
import argparse
import glob
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx.version_converter
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

SIZE = 640
# Defaults are the workspace's: the repository root and ../shared beside it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ffmpeg_frames(path, fps, width, height, pad_to=None):
    """RGB uint8 frames of `path` at `fps`, scaled to width x height (then padded, grey 114)."""
    vf = f"fps={fps},scale={width}:{height}"
    if pad_to:
        vf += f",pad={pad_to}:{pad_to}:(ow-iw)/2:(oh-ih)/2:color=0x727272"
    else:
        pad_to = None
    if path.lower().endswith((".jpg", ".jpeg", ".png")):
        vf = vf.split(",", 1)[1]  # a still picture: one frame
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-i", path, "-vf", vf, "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:1"],
        check=True, capture_output=True).stdout
    w, h = (pad_to, pad_to) if pad_to else (width, height)
    n = len(out) // (w * h * 3)
    return np.frombuffer(out[: n * w * h * 3], dtype=np.uint8).reshape(n, h, w, 3)


def tensor(rgb):
    """HWC uint8 → NCHW float 0..1."""
    return (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]


class Frames(CalibrationDataReader):
    def __init__(self, media, fps, input_name):
        paths = sorted(p for p in glob.glob(os.path.join(media, "*"))
                       if p.lower().endswith((".mp4", ".mkv", ".gif", ".jpg", ".jpeg", ".png")))
        if not paths:
            sys.exit(f"error: no videos or pictures under {media}")
        inputs = []
        for p in paths:
            # Alone: letterboxed, as worker-yolo runs a lone frame.
            inputs += [tensor(f) for f in ffmpeg_frames(p, fps, SIZE, 360, pad_to=SIZE)]
            # Two to an input: each half filled edge to edge.
            halves = ffmpeg_frames(p, fps, SIZE, SIZE // 2)
            inputs += [tensor(np.concatenate([a, b])) for a, b in zip(halves[0::2], halves[1::2])]
        print(f"calibration: {len(inputs)} inputs from {len(paths)} files of {media}", file=sys.stderr)
        self.items = iter([{input_name: x} for x in inputs])

    def get_next(self):
        return next(self.items, None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "../shared/models/yolov5n.onnx"))
    ap.add_argument("--media", default=os.path.join(REPO, "../shared/media"))
    ap.add_argument("--out", default=os.path.join(REPO, ".local/models/yolov5n-int8.onnx"))
    ap.add_argument("--fps", type=float, default=1.0, help="calibration frames per second of video")
    ap.add_argument("--calibrate", choices=["minmax", "percentile", "entropy"], default="percentile",
                    help="how activation ranges are taken from the calibration frames")
    ap.add_argument("--percentile", type=float, default=99.9999,
                    help="with --calibrate percentile: the activation range covers this share of values")
    ap.add_argument("--conv-only", action="store_true",
                    help="quantize the convolutions only; activations (SiLU) stay float between them")
    ap.add_argument("--float-head", action="store_true",
                    help="keep the Detect layer's three convolutions in float too")
    a = ap.parse_args()
    model = onnx.load(a.model)
    input_name = model.graph.input[0].name
    # The Detect layer's decoding stays float: its outputs are pixel coordinates and scores.
    keep_float = [n.name for n in model.graph.node
                  if n.name.startswith("/model.24/") and (a.float_head or n.op_type != "Conv")]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[a.calibrate]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    prepared = a.out + ".prep.onnx"
    # Per-channel weights need DequantizeLinear's `axis`, which came with opset 13.
    if model.opset_import[0].version < 13:
        model = onnx.version_converter.convert_version(model, 13)
    onnx.save(model, prepared)
    quant_pre_process(prepared, prepared, skip_symbolic_shape=True)
    try:
        tmp = a.out + ".part"
        quantize_static(prepared, tmp, Frames(a.media, a.fps, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=keep_float,
                        op_types_to_quantize=["Conv"] if a.conv_only else None,
                        extra_options={"CalibPercentile": a.percentile})
        os.replace(tmp, a.out)  # never a half-written model under the final name
    finally:
        for p in (prepared, a.out + ".part"):
            if os.path.exists(p):
                os.remove(p)
    print(f"wrote {a.out} ({os.path.getsize(a.out) // 1024} KiB; {len(keep_float)} Detect nodes kept float)")


if __name__ == "__main__":
    main()
