"""Graph building shared by the attention rewrites: initialisers, nodes, projection weights, the
all-ones key-padding mask, and the check that an n6 op's function fallback is valid at an opset."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper

from ...blocks import Projection
from ...graph import const_array
from ...ops import DOMAIN, DOMAIN_VERSION, REGISTRY

WINDOW = 64  # the EgyptianAttention window the rewrite emits (local heads see |i - j| <= WINDOW / 2)
SINKS = 1  # causal global heads: attention sinks (the first SINKS tokens) plus the token itself


def add_node(graph: ir.Graph, domain: str, op: str, inputs, name: str, shape=None, dtype=None, **attrs) -> ir.Value:
    n = ir.Node(domain, op, inputs, attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
                name=name)
    graph.append(n)
    out = n.outputs[0]
    out.name = f"{name}_out"
    if shape is not None:
        out.shape = ir.Shape(shape)
    if dtype is not None:
        out.type = ir.TensorType(dtype)
    return out


def weight_in_out(p: Projection) -> np.ndarray:
    w = ir.convenience.get_const_tensor(p.weight).numpy().astype(np.float32)
    return w.T if p.transposed else w


def bias_vector(p: Projection | None, width: int) -> np.ndarray:
    a = const_array(p.bias) if p is not None and p.bias is not None else None
    return np.zeros(width, np.float32) if a is None else a.astype(np.float32).reshape(-1)


def ones_mask(g: ir.Graph, q: ir.Value, tag: str) -> ir.Value:
    """An all-ones key-padding mask [B, L] (int32) shaped like q [B, L, ...]: EgyptianAttention's
    function fallback needs the mask input even when the model has none."""
    bl = add_node(g, "", "Shape", [q], f"{tag}_bl", [2], ir.DataType.INT64, start=0, end=2)
    return add_node(g, "", "ConstantOfShape", [bl], f"{tag}_ones", None, ir.DataType.INT32,
                 value=ir.tensor(np.ones(1, np.int32)))


@functools.lru_cache(maxsize=None)
def fallback_problem(op: str, opset: int) -> str | None:
    """Why the op's function fallback is not valid at this default opset (onnx.checker), or None."""
    f = TensorProto.FLOAT
    if op == "FFTMix":
        ins = [("X", f, [1, 8, 4]), ("F6", f, [4, 4]), ("F12", f, [7, 4]), ("F24", f, [13, 4])]
        attrs, yshape = {}, [1, 8, 12]
    else:
        ins = [("Q", f, [1, 8, 8]), ("K", f, [1, 8, 8]), ("V", f, [1, 8, 8]), ("key_padding_mask", TensorProto.INT32, [1, 8])]
        attrs, yshape = {"num_heads": 2}, [1, 8, 8]
    node = helper.make_node(op, [n for n, _, _ in ins], ["Y"], domain=DOMAIN, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in ins],
                          [helper.make_tensor_value_info("Y", f, yshape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                          functions=[REGISTRY[op].function(opset)])
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker complaint is the reason
        return f"the {op} function fallback is not valid at opset {opset}: {str(e).splitlines()[0][:160]}"
    return None
