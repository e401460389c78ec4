"""Ship a model's graph without its large weights, and regrow them elsewhere.

The GPU machine can receive only small files and cannot export models itself, so latency and
energy runs there use the exported graph with its large floating-point initializers replaced by
seeded random values of the same shape and dtype (GEMM and elementwise timings do not depend on
the values). Small initializers (shapes, indices, masks, scalars) are kept exactly.
Fidelity is never measured on regrown weights.

    python tools/weightless.py strip  model.onnx  model.weightless.onnx
    python tools/weightless.py regrow model.weightless.onnx model.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import numpy_helper

KEEP_BYTES = 4096
TAG = "n6onnx.weightless"


def strip(src: str, dst: str) -> None:
    m = onnx.load(src)
    names = []
    for t in m.graph.initializer:
        if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.raw_data) > KEEP_BYTES:
            t.ClearField("raw_data")
            names.append(t.name)
    m.metadata_props.add(key=TAG, value=",".join(names))
    onnx.save(m, dst)


def regrow(src: str, dst: str, seed: int = 0) -> None:
    m = onnx.load(src)
    meta = {p.key: p.value for p in m.metadata_props}
    names = set(filter(None, meta.get(TAG, "").split(",")))
    rng = np.random.default_rng(seed)
    for t in m.graph.initializer:
        if t.name in names:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
            arr = (rng.standard_normal(tuple(t.dims)) * 0.02).astype(dtype)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))
    onnx.save(m, dst)


if __name__ == "__main__":
    {"strip": strip, "regrow": regrow}[sys.argv[1]](sys.argv[2], sys.argv[3])
