"""Bias correction after int8 weight quantization (Nagel et al. 2019, "Data-Free Quantization",
section 4.2, here with calibration data for E[x]).

Rounding W to Q(W) shifts a linear layer's expected output by E[x] @ (Q(W) - W). Where the
MatMul is followed by a constant bias Add, that shift is subtracted from the bias: the node set
is unchanged, only bias values move. Q(W) is read back from the quantized model (the
``<W>_quantized`` / ``_scale`` / ``_zero_point`` initializers onnxruntime's ``quantize_dynamic``
writes), so the correction matches the rounding actually used, whatever its formula.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibrate import collect
from ..graph import proto_consumers

_CHUNK = 8  # MatMul inputs collected per run (memory: rows x width each)


def _targets(fproto: onnx.ModelProto, qproto: onnx.ModelProto):
    """(x name, float W, dequantized W, bias Add node in qproto, index of its constant input)."""
    finit = {t.name: t for t in fproto.graph.initializer}
    qinit = {t.name: t for t in qproto.graph.initializer}
    users = proto_consumers(qproto)
    for n in fproto.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in finit or f"{n.input[1]}_quantized" not in qinit:
            continue
        adds = users.get(n.output[0], [])
        if len(adds) != 1 or adds[0].op_type != "Add":
            continue
        k = [j for j, v in enumerate(adds[0].input) if v != n.output[0] and v in qinit]
        if len(k) != 1:
            continue
        w = numpy_helper.to_array(finit[n.input[1]]).astype(np.float64)
        q = numpy_helper.to_array(qinit[f"{n.input[1]}_quantized"]).astype(np.float64)
        scale = numpy_helper.to_array(qinit[f"{n.input[1]}_scale"]).astype(np.float64)
        zp_t = qinit.get(f"{n.input[1]}_zero_point")
        zp = numpy_helper.to_array(zp_t).astype(np.float64) if zp_t is not None else 0.0
        if w.ndim != 2 or q.shape != w.shape or np.ndim(scale) > 1 or np.size(scale) not in (1, w.shape[1]):
            continue
        yield n.input[0], w, (q - zp) * scale, adds[0], k[0]


def correct_bias(fproto: onnx.ModelProto, qproto: onnx.ModelProto, batches: Sequence[dict],
                 threads: int | None = None) -> int:
    """Subtract E[x] @ (Q(W) - W) from the bias of every quantized MatMul -> Add(bias) in ``qproto``
    (in place); E[x] over the real tokens of ``batches`` run through the float ``fproto``. Returns
    how many biases were corrected."""
    todo = list(_targets(fproto, qproto))
    qinit = {t.name: t for t in qproto.graph.initializer}
    done, replaced = 0, set()
    for start in range(0, len(todo), _CHUNK):
        part = todo[start:start + _CHUNK]
        rows = collect.collect(fproto, sorted({t[0] for t in part}), batches, threads)
        for x, w, wq, add, k in part:
            mean_x = rows[x].astype(np.float64).mean(0)
            if mean_x.shape != (w.shape[0],):
                continue
            old = qinit[add.input[k]]
            b = numpy_helper.to_array(old)
            new = (b.astype(np.float64) - mean_x @ (wq - w)).astype(b.dtype)
            t = numpy_helper.from_array(new.reshape(b.shape) if new.size == b.size else new,
                                        f"{old.name}_biascorr_{done}")
            qproto.graph.initializer.append(t)
            add.input[k] = t.name
            replaced.add(old.name)
            done += 1
    used = {i for n in qproto.graph.node for i in n.input}
    keep = [t for t in qproto.graph.initializer if t.name not in replaced or t.name in used]
    if len(keep) != len(qproto.graph.initializer):
        del qproto.graph.initializer[:]
        qproto.graph.initializer.extend(keep)
    return done
