"""The ``attention=egyptian:...:mha`` core: the full heads of an EgyptianAttention node run as
com.microsoft.MultiHeadAttention, the other heads stay EgyptianAttention (``split_full_heads``)."""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ...graph import add_initializer
from ...ops import egyptian_attention as ea
from .blocks import static_shape
from .emit import WINDOW, add_node, ones_mask


def _head_group(g: ir.Graph, x: ir.Value, heads: list[int], H: int, dh: int, tag: str) -> ir.Value:
    """Heads ``heads`` (ascending) of x [B, L, H*dh] as [B, L, len(heads)*dh]: one Slice when they are
    contiguous, else Reshape, Gather on the head axis, Reshape."""
    if heads == list(range(heads[0], heads[-1] + 1)):
        return add_node(g, "", "Slice", [x, add_initializer(g, np.array([heads[0] * dh], np.int64), f"{tag}_start"),
                                      add_initializer(g, np.array([(heads[-1] + 1) * dh], np.int64), f"{tag}_end"),
                                      add_initializer(g, np.array([2], np.int64), f"{tag}_axes")], tag, None, x.dtype)
    x4 = add_node(g, "", "Reshape", [x, add_initializer(g, np.array([0, 0, H, dh], np.int64), f"{tag}_4d")], f"{tag}_4d", None,
               x.dtype)
    sel = add_node(g, "", "Gather", [x4, add_initializer(g, np.array(heads, np.int64), f"{tag}_idx")], f"{tag}_sel", None, x.dtype,
                axis=2)
    return add_node(g, "", "Reshape", [sel, add_initializer(g, np.array([0, 0, len(heads) * dh], np.int64), f"{tag}_3d")],
                 f"{tag}_3d", None, x.dtype)


def split_full_heads(model: ir.Model, skip_all_ones_mask: bool | None = None) -> list[str]:
    """Run the full heads of every EgyptianAttention node that has both full and local/global heads
    as com.microsoft.MultiHeadAttention, and only the other heads as EgyptianAttention (the
    ``attention=egyptian:...:mha`` core). Returns the names of the nodes split.

    A full head is ordinary attention, which onnxruntime's own kernel runs best (flash attention on
    CUDA); EgyptianAttention is then left with the O(L * window) and O(L) heads. The head groups
    are Slices when contiguous (the by-index assignment), else Gathers on the head axis; the two
    results are concatenated and, unless the full heads come first, put back in head order by one
    Gather. The copies cost O(L * D) per block: worth it at long sequences, not at short ones (see
    README for the measured crossovers). MultiHeadAttention takes the key-padding mask as [B, L]
    int32 like EgyptianAttention (an all-ones mask made by ConstantOfShape is dropped outright).
    With ``skip_all_ones_mask`` (default: for float16 and bfloat16, where onnxruntime has flash
    attention) it sits behind an If that leaves the mask out when it is all ones
    (``_mha_unless_all_ones``): on an H200 at L=4096 that took the float16 mha core from 0.59x to
    1.20x of ORT's best original, while in float32 the unmasked path (memory-efficient attention)
    was slower than the masked one (unfused): 1.62x vs 1.93x. A query whose keys are all padded gets
    MHA's average over them instead of zeros."""
    g = model.graph
    done = []
    for node in list(g):
        if node.domain != "n6onnx" or node.op_type != "EgyptianAttention":
            continue
        H = int(node.attributes["num_heads"].as_int())
        ca, kva = node.attributes.get("causal"), node.attributes.get("kv_heads")
        if (ca is not None and ca.as_int() != 0) or (kva is not None and kva.as_int() not in (0, H)):
            continue  # the MultiHeadAttention core is the non-causal form with one KV head per query head
        ka = node.attributes.get("head_kinds")
        kinds = list(ka.as_ints()) if ka is not None else [-1]
        kinds = ea.default_head_kinds(H) if kinds == [-1] else kinds
        shape = static_shape(node.inputs[0].shape)
        if not shape or len(shape) != 3 or shape[2] % H or 0 not in kinds or all(k == 0 for k in kinds):
            continue
        dh = shape[2] // H
        sa, wa = node.attributes.get("scale"), node.attributes.get("window")
        scale = sa.as_float() if sa is not None else 0.0
        scale = scale if scale != 0.0 else 1.0 / math.sqrt(dh)
        window = wa.as_int() if wa is not None else WINDOW
        inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
        mask = inputs[3]
        ones = mask is not None and mask.producer() is not None and mask.producer().op_type == "ConstantOfShape"
        skip = (skip_all_ones_mask if skip_all_ones_mask is not None
                else inputs[0].dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16))
        y = _split_full_heads(model, inputs, mask is not None and not ones, H, dh, kinds, scale, window,
                              f"{node.name}_split" if node.name else f"n6_egyptian_split{len(done)}", skip)
        y.shape, y.type = node.outputs[0].shape, node.outputs[0].type
        old = node.outputs[0]
        ir.convenience.replace_all_uses_with(old, y, replace_graph_outputs=True)
        if y in g.outputs:  # keep the graph output's name
            name = old.name
            old.name = f"{name}_replaced"
            y.name = name
        g.remove(node, safe=False)
        done.append(node.name)
    return done


def _split_full_heads(model: ir.Model, inputs: list, masked: bool, H: int, dh: int, kinds: list[int], scale: float,
                      window: int, tag: str, skip_all_ones_mask: bool) -> ir.Value:
    """See ``split_full_heads``: the replacement of one node, [B, L, H*dh] in head order."""
    g = model.graph
    q, k, v = inputs[:3]
    full = [h for h in range(H) if kinds[h] == 0]
    rest = [h for h in range(H) if kinds[h] != 0]
    groups = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        groups[name] = (_head_group(g, x, full, H, dh, f"{tag}_{name}full"),
                        _head_group(g, x, rest, H, dh, f"{tag}_{name}rest"))
    mha_in = [groups["q"][0], groups["k"][0], groups["v"][0]]
    model.opset_imports.setdefault("com.microsoft", 1)
    mha_attrs = {"num_heads": len(full), "scale": float(scale)}
    if masked and skip_all_ones_mask:
        yf = _mha_unless_all_ones(g, mha_in, inputs[3], q.dtype, mha_attrs, f"{tag}_full")
    else:
        yf = add_node(g, "com.microsoft", "MultiHeadAttention", mha_in + ([None, inputs[3]] if masked else []),
                   f"{tag}_full", None, q.dtype, **mha_attrs)
    mask = inputs[3]
    if mask is None:  # the op's function fallback needs the mask input: all ones [B, L]
        mask = ones_mask(g, q, tag)
    rest_in = [groups["q"][1], groups["k"][1], groups["v"][1], mask]
    yr = add_node(g, "n6onnx", "EgyptianAttention", rest_in,
               tag, None, q.dtype, num_heads=len(rest), window=int(window), scale=float(scale),
               head_kinds=[int(kinds[h]) for h in rest])
    y = add_node(g, "", "Concat", [yf, yr], f"{tag}_concat", None, q.dtype, axis=2)
    order = full + rest
    if order != list(range(H)):
        inverse = np.argsort(np.array(order)).astype(np.int64)
        y4 = add_node(g, "", "Reshape", [y, add_initializer(g, np.array([0, 0, H, dh], np.int64), f"{tag}_y4d")], f"{tag}_y4d",
                   None, q.dtype)
        y4 = add_node(g, "", "Gather", [y4, add_initializer(g, inverse, f"{tag}_order")], f"{tag}_order", None, q.dtype, axis=2)
        y = add_node(g, "", "Reshape", [y4, add_initializer(g, np.array([0, 0, H * dh], np.int64), f"{tag}_y3d")], f"{tag}_y3d",
                  None, q.dtype)
    return y


def _mha_unless_all_ones(g: ir.Graph, qkv: list, mask: ir.Value, dtype, attrs: dict, tag: str) -> ir.Value:
    """MultiHeadAttention(Q, K, V) with the key-padding mask only when it masks something:
    If(ReduceMin(mask) == 1) runs it without the mask. The result is the same either way, but with a
    [B, L] mask onnxruntime's CUDA MultiHeadAttention takes its unfused kernel (flash and memory-
    efficient attention accept none)."""
    lowest = add_node(g, "", "ReduceMin", [mask], f"{tag}_mask_min", [], ir.DataType.INT32, keepdims=0)
    cond = add_node(g, "", "Equal", [lowest, add_initializer(g, np.array(1, np.int32), f"{tag}_one")], f"{tag}_all_ones", [],
                 ir.DataType.BOOL)

    def branch(name: str, node_inputs: list) -> ir.Graph:
        n = ir.Node("com.microsoft", "MultiHeadAttention", node_inputs,
                    attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()], name=name)
        n.outputs[0].name = f"{name}_out"
        n.outputs[0].type = ir.TensorType(dtype)
        return ir.Graph([], [n.outputs[0]], nodes=[n], name=name)

    node = ir.Node("", "If", [cond], name=f"{tag}_if",
                   attributes=[ir.AttrGraph("then_branch", branch(f"{tag}_nomask", list(qkv))),
                               ir.AttrGraph("else_branch", branch(f"{tag}_masked", list(qkv) + [None, mask]))])
    g.append(node)
    out = node.outputs[0]
    out.name, out.type = f"{tag}_out", ir.TensorType(dtype)
    return out
