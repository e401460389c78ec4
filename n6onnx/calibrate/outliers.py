"""Outlier units of a calibrated FFN get their own small FFN, so per-tensor int8 survives.

A per-tensor quantizer (onnxruntime's ``quantize_dynamic`` with ``per_channel=False``) rounds the
down projection's weights with one step and its input activation with one step, each set by the
largest unit. What sets both is a unit's product p_j = max|X_j| x max|W2_j| (no rescaling of the
unit changes it). On all-MiniLM-L6-v2, p's median is about 0.2, its 99th percentile about 1.1 and
its maximum 90 to 195 per layer: a handful of units (the same outlier dimensions that make stock
per-tensor int8 lose most of its fidelity on the original's W2) set the step for all 1,536.

``split`` moves those units out: in the main FFN their balance scale becomes 0 and their W2 rows
0 (so they no longer set either step), and a detour of the same form computes them from the FFN's
input: MatMul(x, W1[:, k], columns at equal ranges) -> Mul(their gains) -> the same n6 activation
(its folded bias) -> centring Add [-> Mul(+-1): each unit's longer tail positive] -> MatMul(W2[k, :]) [-> Reshape to the stream's shape, where the FFN's input is
flattened, as in GPT-2's Conv1D], added to the residual stream. Any quantizer then gives the detour its own steps. The
float model is unchanged up to rounding. The detour's activation carries ``OUTLIER_TAG`` so that
``blocks.find_ffn_blocks`` does not take it for an FFN of its own.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..graph import OUTLIER_TAG, VARIANT_TAG, add_initializer


def select(Xc: np.ndarray, W: np.ndarray, ratio: float, cap: int) -> np.ndarray:
    """Units whose p_j = max|Xc_j| x max|W_j| exceeds ``ratio`` x the median p, the largest first,
    at most ``cap`` (indices, int64)."""
    p = np.abs(np.asarray(Xc, np.float64)).max(0) * np.abs(np.asarray(W, np.float64)).max(1)
    med = float(np.median(p))
    if med <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-p)
    k = int(min(cap, np.count_nonzero(p > ratio * med)))
    return np.sort(order[:k]).astype(np.int64)


def _node(graph: ir.Graph, before: ir.Node, op: str, inputs, name: str, domain: str = "", attributes=(),
          like: ir.Value | None = None) -> ir.Node:
    node = ir.Node(domain, op, inputs, attributes=list(attributes), name=name)
    graph.insert_before(before, node)  # every detour node right before the residual Add, in order
    out = node.outputs[0]
    out.name = f"{name}_out"
    if like is not None:
        out.type = like.type
    return node


def insert_detour(graph: ir.Graph, act: ir.Node, x: ir.Value, residual_add: ir.Node, residual: ir.Value,
                  w1: np.ndarray, b1: np.ndarray, mean: np.ndarray, w2: np.ndarray, dtype,
                  sign: np.ndarray | None = None) -> None:
    """The detour for the selected units: ``w1`` [d, k] and ``b1`` [k] (folded: the activation's
    input), ``mean`` [k] (their calibration mean), ``w2`` [k, d]; its output is added to
    ``residual`` where ``residual_add`` reads it. ``sign`` [k] (+-1, ``quantfit.orientation``): where any
    is -1, a Mul by it after the centring and the same signs on W2's rows (exact in float), so the down
    projection's uint8 input keeps its bytes low (x86 without VNNI clips pairs of high bytes)."""
    base = f"{act.name}_n6cal_outliers"
    cmax = np.abs(w1).max(0)  # equal column ranges, the gain in a Mul (as the main FFN's up_scale)
    r = np.where(cmax > 0, cmax / max(float(cmax.max()), 1e-30), 1.0).astype(np.float32)
    w1v = add_initializer(graph, np.ascontiguousarray(w1 / r[None, :]).astype(dtype), f"{base}_w1")
    rv = add_initializer(graph, r.astype(dtype), f"{base}_upscale")
    b1v = add_initializer(graph, np.asarray(b1).astype(dtype), f"{base}_b1")
    mv = add_initializer(graph, (-np.asarray(mean)).astype(dtype), f"{base}_centre")
    flip = sign is not None and bool(np.any(np.asarray(sign) < 0))
    if flip:
        w2 = np.asarray(w2) * np.asarray(sign)[:, None]
    w2v = add_initializer(graph, np.ascontiguousarray(w2).astype(dtype), f"{base}_w2")
    at = residual_add
    up = _node(graph, at, "MatMul", [x, w1v], f"{base}_up", like=x)
    up = _node(graph, at, "Mul", [up.outputs[0], rv], f"{base}_upscale", like=x)
    if act.op_type.startswith("Bias"):
        a = _node(graph, at, act.op_type, [up.outputs[0], b1v], f"{base}_act", act.domain,
                  act.attributes.values(), like=x)
    else:
        biased = _node(graph, at, "Add", [up.outputs[0], b1v], f"{base}_bias", like=x)
        a = _node(graph, at, act.op_type, [biased.outputs[0]], f"{base}_act", act.domain, act.attributes.values(),
                  like=x)
    if VARIANT_TAG in act.metadata_props:
        a.metadata_props[VARIANT_TAG] = act.metadata_props[VARIANT_TAG]
    a.metadata_props[OUTLIER_TAG] = act.name
    c = _node(graph, at, "Add", [a.outputs[0], mv], f"{base}_centre", like=x)
    if flip:
        sv = add_initializer(graph, np.asarray(sign).astype(dtype), f"{base}_sign")
        c = _node(graph, at, "Mul", [c.outputs[0], sv], f"{base}_orient", like=x)
    down = _node(graph, at, "MatMul", [c.outputs[0], w2v], f"{base}_down", like=x)
    if x.shape is None or residual.shape is None or len(x.shape) != len(residual.shape):
        # the FFN's input is flattened (GPT-2's Conv1D: a Reshape to [batch*seq, d] before the up Gemm,
        # and back after the down one): the detour's output goes back to the residual stream's shape
        shape = _node(graph, at, "Shape", [residual], f"{base}_shape")
        down = _node(graph, at, "Reshape", [down.outputs[0], shape.outputs[0]], f"{base}_unflatten", like=residual)
    s = _node(graph, at, "Add", [residual, down.outputs[0]], f"{base}_sum", like=residual)
    idx = [i for i, v in enumerate(residual_add.inputs) if v is residual][0]
    residual_add.replace_input_with(idx, s.outputs[0])
