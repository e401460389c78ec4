"""``attention=egyptian`` on a cached block with local or global KV groups: the per-group cache cut.

Local groups only read their last ``window - 1`` past keys and global groups the first ``sinks``;
EgyptianAttention's key-index convention gives the same answer on such truncated caches. The layer's
cache tensors (names unchanged) hold the groups packed along the sequence axis, [B, 1, S, dh]: full
groups first (P rows each, P = past length), then local groups (min(P, window - 1) rows each), then
global groups (min(P, sinks) rows each); within a kind the rows are position-major (position p of
the kind's k-th group at row p * n + k), so each kind's part is its [B, rows, n * dh] cache by a
Reshape, without a transpose of the cache (``docs/decoders.md``). The past length
comes from the attention mask: the op reads it from the mask's length. One EgyptianAttention node
in cache mode per layer appends the new rows to the packed cache and attends. The op takes the KV
groups ordered full, local, global (``default_group_kinds`` assigns them so); kinds assigned by
locality may interleave, and then the groups of Q, the new K/V and the output Y are permuted around
the node (a Gather of columns on the new tokens only; each kind's groups keep their own order in the cache).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...graph import add_initializer
from . import cache
from .blocks import seq_input
from .emit import add_node

def _i64(g: ir.Graph, values, name: str) -> ir.Value:
    return add_initializer(g, np.array(values, np.int64), name)


def _concat_input(present: ir.Value, past: ir.Value) -> ir.Value | None:
    n = present.producer()
    if n is None or n.op_type != "Concat" or len(n.inputs) != 2 or n.inputs[0] is not past:
        return None
    return n.inputs[1]


def problem(b: AttentionBlock, graph: ir.Graph, kinds: list[int]) -> str | None:
    """Why the packed per-group cache cannot be built for ``b`` (None: it can)."""
    why = cache.cache_problem(b, graph)
    if why:
        return why
    c = b.cache
    outs = {v.name: v for v in graph.outputs}
    ins = {v.name: v for v in graph.inputs}
    for p, q in (("past_key", "present_key"), ("past_value", "present_value")):
        if _concat_input(outs[c[q]], ins[c[p]]) is None:
            return f"{c[q]} is not Concat({c[p]}, new) on the sequence axis"
    return None


def _order(kinds: list[int], H: int, Hkv: int) -> list[int]:
    """The KV groups ordered by kind (full, local, global), each kind's groups in their own order."""
    groups = [kinds[k * (H // Hkv)] for k in range(Hkv)]
    return sorted(range(Hkv), key=lambda k: groups[k])


def _gather_groups(g: ir.Graph, x: ir.Value, order: list[int], width: int, tag: str) -> ir.Value:
    """x [B, L, Hkv * width] with its blocks of ``width`` columns in ``order``: one Gather of columns
    (one node: healing looks for the projections within a few nodes of the op)."""
    cols = np.concatenate([np.arange(k * width, (k + 1) * width) for k in order])
    return add_node(g, "", "Gather", [x, _i64(g, cols, f"{tag}_columns")], f"{tag}_gather", None, x.dtype, axis=2)


def emit(model: ir.Model, b: AttentionBlock, q: ir.Value, scale: float, kinds: list[int], window: int,
         sinks: int, tag: str) -> tuple[ir.Value, dict]:
    """Y [B, L, H*dh] of block ``b`` with packed per-group caches; returns (Y, cache report).

    One EgyptianAttention node in cache mode (ops/egyptian_cache.py) takes the layer's packed past
    and the new keys/values, and outputs Y and the packed presents: the cache update and the
    attention of every kind in one node."""
    g = model.graph
    c = b.cache
    H, dh = b.heads, b.head_size
    Hkv = b.kv_heads or H
    rep = H // Hkv
    ins = {v.name: v for v in g.inputs}
    outs = {v.name: v for v in g.outputs}
    memo: dict = {}
    h = cache.mask_input(b, g)  # [B, past + seq]: the op's past length is its length - seq
    cache.past_length(model, b, seq_input(b.h), memo)  # the rest of the graph reads the original past's shape
    for name in (c["past_key"], c["past_value"]):
        cache._redirect_shapes(model, ins[name], list(ins[name].shape), memo)
    mask = add_node(g, "", "Cast", [h], f"{tag}_mask", None, ir.DataType.INT32, to=ir.DataType.INT32)
    groups = [kinds[k * rep] for k in range(Hkv)]
    order = _order(kinds, H, Hkv)  # the op packs the groups ordered by kind: permute them around it when needed
    moved = order != list(range(Hkv))
    if moved:
        q = _gather_groups(g, q, order, rep * dh, f"{tag}_q_order")
        kinds = [groups[order[h // rep]] for h in range(H)]
    new = {}
    for part in ("key", "value"):
        past = ins[c[f"past_{part}"]]
        n4 = _concat_input(outs[c[f"present_{part}"]], past)  # [B, Hkv, L, dh]: only the new tokens are transposed
        new[part] = add_node(g, "", "Reshape", [add_node(g, "", "Transpose", [n4], f"{tag}_{part}_newt", None, past.dtype,
                                                         perm=[0, 2, 1, 3]),
                                                _i64(g, [0, 0, Hkv * dh], f"{tag}_{part}_new3d")], f"{tag}_{part}_new3",
                             None, past.dtype)
        if moved:
            new[part] = _gather_groups(g, new[part], order, dh, f"{tag}_{part}_order")
    attrs = dict(num_heads=H, kv_heads=Hkv, causal=1, sinks=int(sinks), window=int(window), scale=float(scale),
                 head_kinds=[int(k) for k in kinds])
    node = ir.Node("n6onnx", "EgyptianAttention",
                   [q, new["key"], new["value"], mask, ins[c["past_key"]], ins[c["past_value"]]],
                   attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()], name=tag,
                   num_outputs=3)
    g.append(node)
    y, *presents = node.outputs
    y.name, y.type = f"{tag}_out", ir.TensorType(q.dtype)
    if moved:  # back to the original head order for the output projection
        y = _gather_groups(g, y, [order.index(k) for k in range(Hkv)], rep * dh, f"{tag}_y_order")
    for part, p in zip(("key", "value"), presents):
        p.name, p.type = f"{tag}_{part}_present", ir.TensorType(q.dtype)
        p.shape = ir.Shape([ins[c[f"past_{part}"]].shape[0], 1, f"{c[f'present_{part}']}_packed", dh])
        cache._swap_output(g, c[f"present_{part}"], p)
        past = ins[c[f"past_{part}"]]
        past.shape = ir.Shape([past.shape[0], 1, f"{c[f'past_{part}']}_packed", dh])
    itemsize = np.dtype(q.dtype.numpy()).itemsize
    n_full = groups.count(0)
    report = {**c, "layout": "[batch, 1, packed, head_dim]: full groups (P rows each), local (min(P, window-1)), "
              "global (min(P, sinks)); position-major within a kind" + (f"; KV groups packed in the order {order}"
                                                                        if moved else ""), "group_kinds": groups,
              "packed_group_order": order,
              "bytes_per_token": 2 * n_full * dh * itemsize, "bytes_per_token_original": 2 * Hkv * dh * itemsize,
              "bytes_fixed": 2 * (groups.count(1) * (window - 1) + groups.count(2) * sinks) * dh * itemsize}
    return y, report
