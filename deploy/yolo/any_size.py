#!/usr/bin/env python3
"""YOLOv5n that takes any input height and width (multiples of 32), from a model exported for
640x640 only: worker-yolo then runs a lone 640x360 frame as a 640x384 input (YOLOv5's
rectangular inference) instead of a 640x640 square of which 44 % is grey padding.

    deploy/yolo/any_size.sh [--model ../shared/models/yolov5n.onnx] [--out .local/models/yolov5n-any.onnx]

A fixed-size export (`torch.onnx.export` without dynamic axes) differs from a dynamic one
(`export.py --dynamic`) in two places only: the input's declared height and width, and the
Detect layer's grids, which are constants of the export size: per scale, the cell offsets
(1, 3, ny, nx, 2) and the anchor sizes (1, 3, ny, nx, 2). Everything else (convolutions,
the reshapes, which take their sizes from the tensors at run time) already works at any size.
Here each grid constant is cut, at run time, to the ny x nx of its scale's output (a Slice whose
end is the shape of the convolution it decodes): the first ny rows and nx columns of a grid
are the same numbers a dynamic export computes, so at 640x640 the model is unchanged and at
another size it is what `--dynamic` would give. The output is written to a part file and renamed
when complete; the model is checked (onnx.checker) before. The class names beside --model
(coco.names) are copied beside --out, where worker-yolo looks.
"""
import argparse
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.path.join(REPO, "..", "shared", "models", "yolov5n.onnx"))
    p.add_argument("--out", default=os.path.join(REPO, ".local", "models", "yolov5n-any.onnx"))
    a = p.parse_args()
    m = onnx.load(a.model)
    g = m.graph
    dims = g.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        sys.exit(f"{a.model}: input has {len(dims)} dimensions; expected [N, 3, H, W]")
    if all(d.dim_param for d in dims[2:]):
        sys.exit(f"{a.model}: height and width are already dynamic; use it as it is")
    if m.opset_import[0].version < 10:
        sys.exit(f"{a.model}: opset {m.opset_import[0].version}; Slice with inputs needs opset 10 or later")
    size = dims[2].dim_value
    # Detect's per-scale convolutions, by the grid size they produce: stride 8, 16, 32.
    convs = [n for n in g.node if n.op_type == "Conv" and "/m." in n.name and n.name.split("/")[-2].startswith("m.")]
    by_cells = {}
    for c in convs:
        scale = int(c.name.split("/")[-2][2:])
        by_cells[size // (8 << scale)] = c.output[0]
    consumers = {}
    for n in g.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    cut = 0
    new_nodes = []
    for n in g.node:
        new_nodes.append(n)
        if n.op_type != "Constant":
            continue
        t = numpy_helper.to_array(n.attribute[0].t)
        if t.ndim != 5 or t.shape[:2] != (1, 3) or t.shape[4] != 2 or t.shape[2] != t.shape[3] or t.shape[2] not in by_cells:
            continue
        conv = by_cells[t.shape[2]]
        grid = n.output[0]
        base = grid + "_any"
        new_nodes += [
            # Shape's start/end attributes need opset 15; this model is opset 12.
            helper.make_node("Shape", [conv], [base + "_full_shape"]),
            helper.make_node("Constant", [], [base + "_two"], value=numpy_helper.from_array(np.array([2], np.int64))),
            helper.make_node("Constant", [], [base + "_four"], value=numpy_helper.from_array(np.array([4], np.int64))),
            helper.make_node("Slice", [base + "_full_shape", base + "_two", base + "_four"], [base + "_shape"]),
            helper.make_node("Constant", [], [base + "_starts"], value=numpy_helper.from_array(np.array([0, 0], np.int64))),
            helper.make_node("Constant", [], [base + "_axes"], value=numpy_helper.from_array(np.array([2, 3], np.int64))),
            helper.make_node("Slice", [grid, base + "_starts", base + "_shape", base + "_axes"], [base]),
        ]
        for user, i in consumers.get(grid, []):
            user.input[i] = base
        cut += 1
    if cut != 6:
        sys.exit(f"{a.model}: found {cut} Detect grid constants; expected 6 (cell offsets and anchors of 3 scales)")
    del g.node[:]
    g.node.extend(new_nodes)
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    # The export's shape annotations of inner tensors name 640x640's grid sizes; ONNX Runtime
    # infers the shapes itself (and warns on every run where an annotation does not match).
    del g.value_info[:]
    # The export also names each scale's raw output (N, 3, ny, nx, 85) an output of the graph.
    for out in g.output:
        out_dims = out.type.tensor_type.shape.dim
        if len(out_dims) == 5:
            out_dims[2].dim_param, out_dims[3].dim_param = out.name + "_rows", out.name + "_columns"
    onnx.checker.check_model(m)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    # Its own part file: two runs at once (tests) each write whole files, the last rename wins.
    part = f"{a.out}.{os.getpid()}.part"
    onnx.save(m, part)
    os.replace(part, a.out)
    # worker-yolo looks for the class names beside the model (yolo.class_names' default).
    names_from = os.path.join(os.path.dirname(os.path.abspath(a.model)), "coco.names")
    names_to = os.path.join(os.path.dirname(os.path.abspath(a.out)), "coco.names")
    if os.path.isfile(names_from) and not os.path.exists(names_to):
        part = f"{names_to}.{os.getpid()}.part"
        shutil.copyfile(names_from, part)
        os.replace(part, names_to)
    print(f"wrote {a.out}: input [N, 3, height, width] (multiples of 32), from {a.model}")


if __name__ == "__main__":
    main()
