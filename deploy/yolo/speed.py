#!/usr/bin/env python3
"""Median time of one 640x640 inference per model file, ONNX Runtime from Python, one thread:
    PYTHONPATH=.tools/quant python3 deploy/yolo/speed.py ../shared/models/yolov5n.onnx .local/models/yolov5n-int8.onnx
"""
import time, numpy as np, onnxruntime as ort, sys
x = np.random.rand(1,3,640,640).astype(np.float32)
for path in sys.argv[1:]:
    o = ort.SessionOptions(); o.intra_op_num_threads=1; o.inter_op_num_threads=1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    for _ in range(3): s.run(None, {"images": x})
    t=[]
    for _ in range(20):
        a=time.perf_counter(); s.run(None, {"images": x}); t.append(time.perf_counter()-a)
    print(path, "median ms %.1f min %.1f" % (1000*np.median(t), 1000*min(t)))
