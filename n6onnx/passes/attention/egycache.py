"""``attention=egyptian`` on a cached block with local or global KV groups: the per-group cache cut.

Local groups only read their last ``window - 1`` past keys and global groups the first ``sinks``;
EgyptianAttention's key-index convention gives the same answer on such truncated caches. The layer's
cache tensors (names unchanged) hold the groups packed along the sequence axis, [B, 1, S, dh]: full
groups first (P rows each, P = past length), then local groups (min(P, window - 1) rows each), then
global groups (min(P, sinks) rows each); within a kind the rows are position-major (position p of
the kind's k-th group at row p * n + k), so each kind's part is its [B, rows, n * dh] cache by a
Reshape, without a transpose of the cache (``docs/decoders.md``). The past length
comes from the attention mask (``cache.past_length``). One EgyptianAttention node per kind, on
contiguous KV groups (``default_group_kinds`` assigns them so), outputs concatenated in head order.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...graph import add_initializer
from . import cache
from .blocks import seq_input
from .emit import add_node

BIG = np.iinfo(np.int64).max


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
    H, Hkv = b.heads, b.kv_heads or b.heads
    groups = [kinds[g * (H // Hkv)] for g in range(Hkv)]
    if groups != sorted(groups):
        return "KV groups of one kind are not contiguous"
    return None


def emit(model: ir.Model, b: AttentionBlock, q: ir.Value, scale: float, kinds: list[int], window: int,
         sinks: int, tag: str) -> tuple[ir.Value, dict]:
    """Y [B, L, H*dh] of block ``b`` with packed per-group caches; returns (Y, cache report)."""
    g = model.graph
    c = b.cache
    H, dh = b.heads, b.head_size
    Hkv = b.kv_heads or H
    rep = H // Hkv
    ins = {v.name: v for v in g.inputs}
    outs = {v.name: v for v in g.outputs}
    memo: dict = {}
    h = cache.mask_input(b, g)  # [B, past + seq]
    pl = cache.past_length(model, b, seq_input(b.h), memo)
    for name in (c["past_key"], c["past_value"]):
        cache._redirect_shapes(model, ins[name], list(ins[name].shape), memo)
    mask = add_node(g, "", "Cast", [h], f"{tag}_mask", None, ir.DataType.INT32, to=ir.DataType.INT32)
    groups = [kinds[k * rep] for k in range(Hkv)]
    keep = {0: None, 1: window - 1, 2: sinks}
    rows = {}  # kind -> rows per group in the past, int64 [1]
    for kind in (0, 1, 2):
        if keep[kind] is None:
            rows[kind] = pl
        else:
            rows[kind] = add_node(g, "", "Min", [pl, _i64(g, [keep[kind]], f"{tag}_keep{kind}")], f"{tag}_rows{kind}",
                                  [1], ir.DataType.INT64)
    ys, packed = [], {"key": [], "value": []}
    offset = _i64(g, [0], f"{tag}_off0")
    for kind in (0, 1, 2):
        gs = [k for k in range(Hkv) if groups[k] == kind]
        if not gs:
            continue
        n, g0 = len(gs), gs[0]
        t = f"{tag}_k{kind}"
        size = add_node(g, "", "Mul", [rows[kind], _i64(g, [n], f"{t}_n")], f"{t}_size", [1], ir.DataType.INT64)
        end = add_node(g, "", "Add", [offset, size], f"{t}_end", [1], ir.DataType.INT64)
        kv = {}
        for part in ("key", "value"):
            past = ins[c[f"past_{part}"]]
            new = _concat_input(outs[c[f"present_{part}"]], past)
            # position-major rows (position p, group k at row p * n + k): the part is [B, rows, n * dh]
            # by a Reshape, the layout EgyptianAttention reads; only the new tokens are transposed
            p3 = add_node(g, "", "Reshape", [
                add_node(g, "", "Slice", [past, offset, end, _i64(g, [2], f"{t}_{part}_ax")], f"{t}_{part}_past", None,
                         past.dtype),
                _i64(g, [0, -1, n * dh], f"{t}_{part}_3d")], f"{t}_{part}_past3", None, past.dtype)
            n4 = add_node(g, "", "Slice", [new, _i64(g, [g0], f"{t}_{part}_g0"), _i64(g, [g0 + n], f"{t}_{part}_g1"),
                                           _i64(g, [1], f"{t}_{part}_hax")], f"{t}_{part}_new", None, past.dtype)
            n3 = add_node(g, "", "Reshape", [add_node(g, "", "Transpose", [n4], f"{t}_{part}_newt", None, past.dtype,
                                                      perm=[0, 2, 1, 3]),
                                             _i64(g, [0, 0, n * dh], f"{t}_{part}_new3d")], f"{t}_{part}_new3", None,
                          past.dtype)
            full = add_node(g, "", "Concat", [p3, n3], f"{t}_{part}_all", None, past.dtype, axis=1)
            kept = full
            if kind == 1:
                kept = add_node(g, "", "Slice", [full, _i64(g, [-(window - 1)], f"{t}_{part}_ls"), _i64(g, [BIG], f"{t}_{part}_le"),
                                                 _i64(g, [1], f"{t}_{part}_lax")], f"{t}_{part}_keep", None, past.dtype)
            elif kind == 2:
                kept = add_node(g, "", "Slice", [full, _i64(g, [0], f"{t}_{part}_gs"), _i64(g, [sinks], f"{t}_{part}_ge"),
                                                 _i64(g, [1], f"{t}_{part}_gax")], f"{t}_{part}_keep", None, past.dtype)
            packed[part].append(add_node(g, "", "Reshape", [kept, _i64(g, [0, 1, -1, dh], f"{t}_{part}_pack")],
                                         f"{t}_{part}_packed", None, past.dtype))
            kv[part] = full
        # the key-padding mask over this kind's keys: full all of it, local its last rows + new, global
        # its first rows + new
        if kind == 0:
            m = mask
        else:
            start = add_node(g, "", "Sub", [pl, rows[kind]], f"{t}_mstart", [1], ir.DataType.INT64)
            tail = add_node(g, "", "Slice", [mask, start if kind == 1 else pl, _i64(g, [BIG], f"{t}_mend"),
                                             _i64(g, [1], f"{t}_max")], f"{t}_mtail", None, ir.DataType.INT32)
            if kind == 1:
                m = tail
            else:
                head = add_node(g, "", "Slice", [mask, _i64(g, [0], f"{t}_m0"), rows[kind], _i64(g, [1], f"{t}_max0")],
                                f"{t}_mhead", None, ir.DataType.INT32)
                m = add_node(g, "", "Concat", [head, tail], f"{t}_mask", None, ir.DataType.INT32, axis=1)
        qk = add_node(g, "", "Slice", [q, _i64(g, [g0 * rep * dh], f"{t}_q0"), _i64(g, [(g0 + n) * rep * dh], f"{t}_q1"),
                                       _i64(g, [2], f"{t}_qax")], f"{t}_q", None, q.dtype)
        ys.append(add_node(g, "n6onnx", "EgyptianAttention", [qk, kv["key"], kv["value"], m], t, None, q.dtype,
                           num_heads=n * rep, kv_heads=n, causal=1, sinks=int(sinks), window=int(window),
                           scale=float(scale), head_kinds=[kind] * (n * rep)))
        offset = end
    y = ys[0] if len(ys) == 1 else add_node(g, "", "Concat", ys, f"{tag}_heads", None, q.dtype, axis=2)
    for part in ("key", "value"):
        p = packed[part][0] if len(packed[part]) == 1 else add_node(g, "", "Concat", packed[part], f"{tag}_{part}_present",
                                                                     None, q.dtype, axis=2)
        p.shape = ir.Shape([ins[c[f"past_{part}"]].shape[0], 1, f"{c[f'present_{part}']}_packed", dh])
        cache._swap_output(g, c[f"present_{part}"], p)
        past = ins[c[f"past_{part}"]]
        past.shape = ir.Shape([past.shape[0], 1, f"{c[f'past_{part}']}_packed", dh])
    itemsize = np.dtype(q.dtype.numpy()).itemsize
    n_full = groups.count(0)
    report = {**c, "layout": "[batch, 1, packed, head_dim]: full groups (P rows each), local (min(P, window-1)), "
              "global (min(P, sinks)); position-major within a kind", "group_kinds": groups,
              "bytes_per_token": 2 * n_full * dh * itemsize, "bytes_per_token_original": 2 * Hkv * dh * itemsize,
              "bytes_fixed": 2 * (groups.count(1) * (window - 1) + groups.count(2) * sinks) * dh * itemsize}
    return y, report
