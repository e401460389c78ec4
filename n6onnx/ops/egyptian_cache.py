"""EgyptianAttention's cache mode (inputs PastKey/PastValue, outputs PresentKey/PresentValue): the
node appends the new keys/values to its own packed KV cache, so a layer's cache update and
attention are one node. The op's contract is in egyptian_attention.py's docstring; this module
holds the packed layout, the numpy reference of the mode, the function-fallback overloads and the
samples, plus the body helpers both modules use.

Packed layout (what ``attention=egyptian`` stores in a layer's cache tensors, docs/decoders.md):
[B, 1, S, dh], the KV groups ordered by kind (full, local, global); full groups keep all P past
rows each, local groups their last min(P, window - 1), global groups their first min(P, sinks);
within a kind rows are position-major (position t of the kind's r-th of n groups at row
base + t * n + r).

Fallback: every (absolute position, KV group) key row is gathered from the packed past or the new
rows (rows a group does not keep point at row 0: no allowed key of that group is among them), and
the plain body runs on that full-length K/V with the absolute mask; the presents are gathered from
it. Dense, like the plain fallback: correct, without the saving.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._spec import BodyBuilder, Sample

FULL, LOCAL, GLOBAL = 0, 1, 2


# ------------------------------------------------------------------------------ body helpers
def ints(b: BodyBuilder, values) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value_ints=[int(v) for v in values]))
    return name


def attr_ref(b: BodyBuilder, kind: str, attr: str) -> str:
    """A Constant whose value is the function attribute ``attr`` (kind: value_int / value_float / value_ints)."""
    name = b.tmp()
    node = helper.make_node("Constant", [], [name])
    a = onnx.AttributeProto()
    a.name = kind
    a.ref_attr_name = attr
    a.type = {"value_int": onnx.AttributeProto.INT, "value_float": onnx.AttributeProto.FLOAT,
              "value_ints": onnx.AttributeProto.INTS}[kind]
    node.attribute.append(a)
    b.nodes.append(node)
    return name


def head_kinds_expr(b: BodyBuilder, heads: str, kv: str, group: str) -> str:
    """[H] int64 kinds: the head_kinds attribute, or (its default [-1]) default_group_kinds."""
    zero, one = b.op("Constant", value_int=0), b.op("Constant", value_int=1)
    gidx = b.op("Div", b.op("Range", zero, heads, one), group)  # KV group of each query head
    n_full = b.op("Div", kv, b.op("Constant", value_int=2))
    n_fl = b.op("Add", n_full, b.op("Div", kv, b.op("Constant", value_int=3)))
    by_group = b.op("Add", b.op("Cast", b.op("GreaterOrEqual", gidx, n_full), to=onnx.TensorProto.INT64),
                    b.op("Cast", b.op("GreaterOrEqual", gidx, n_fl), to=onnx.TensorProto.INT64))
    given = attr_ref(b, "value_ints", "head_kinds")
    return b.op("Where", b.op("Less", b.op("ReduceMin", given, keepdims=0), zero), by_group, given)


# ------------------------------------------------------------------------------ layout
def kept(kind: int, n: int, window: int, sinks: int) -> int:
    """Rows per group a kind keeps of n positions."""
    if kind == FULL:
        return n
    return min(n, max(window - 1, 0) if kind == LOCAL else sinks)


def layout(groups: list[int], positions: int, window: int, sinks: int) -> dict:
    """kind -> (first group, groups, rows per group, first packed row) for a cache of ``positions``."""
    out, base = {}, 0
    for kind in (FULL, LOCAL, GLOBAL):
        gs = [g for g, k in enumerate(groups) if k == kind]
        if gs:
            rows = kept(kind, positions, window, sinks)
            out[kind] = (gs[0], len(gs), rows, base)
            base += len(gs) * rows
    return out


def packed_rows(groups: list[int], positions: int, window: int, sinks: int) -> int:
    return sum(n * rows for _, n, rows, _ in layout(groups, positions, window, sinks).values())


def check(pr, mask, past_key, past_value) -> tuple[int, list[int]]:
    """Shapes of a cache-mode call (pr: the resolved Problem of Q and the new K/V); returns
    (P, kinds per KV group). ValueError with a one-line reason."""
    B, Lq, dh = pr.B, pr.Lq, pr.dh
    if past_key is None or past_value is None:
        raise ValueError("EgyptianAttention: PastKey and PastValue go together (and the presents need both)")
    if not pr.causal:
        raise ValueError("EgyptianAttention: PastKey/PastValue need causal=1")
    if pr.Lk != Lq:
        raise ValueError(f"EgyptianAttention: with PastKey, K and V hold the {Lq} new tokens only, got Lk={pr.Lk}")
    if mask is None or np.ndim(mask) != 2 or np.shape(mask)[0] != B or np.shape(mask)[1] < Lq:
        raise ValueError(f"EgyptianAttention: with PastKey, key_padding_mask [B, past + Lq] = [{B}, P + {Lq}] is "
                         f"required (it gives the past length), got shape {None if mask is None else np.shape(mask)}")
    P = int(np.shape(mask)[1]) - Lq
    groups = [pr.kinds[g * pr.group] for g in range(pr.Hkv)]
    if groups != sorted(groups):
        raise ValueError(f"EgyptianAttention: with PastKey the KV groups must be ordered full, local, global; "
                         f"got kinds {groups}")
    S = packed_rows(groups, P, pr.window, pr.sinks)
    for name, t in (("PastKey", past_key), ("PastValue", past_value)):
        if np.shape(t) != (B, 1, S, dh):
            raise ValueError(f"EgyptianAttention: {name} must be the packed cache [B, 1, S, dh] = [{B}, 1, {S}, {dh}] "
                             f"for past length {P}, got shape {np.shape(t)}")
    return P, groups


def reference(attend, pr, attrs: dict, Q, K, V, mask, past_key, past_value, cat=np.concatenate):
    """(Y, PresentKey, PresentValue): per kind, its past rows + the new rows, attended by ``attend``
    (the plain op) on that kind's heads with its part of the absolute mask, as the graph
    attention=egyptian emitted before the op took the cache. Arrays of one library: numpy, or
    torch with ``cat`` its concatenation (the torch functional)."""
    P, groups = check(pr, mask, past_key, past_value)
    B, Lq, dh, G = pr.B, pr.Lq, pr.dh, pr.group
    ys, presents = [], {"k": [], "v": []}
    for kind, (g0, n, rows, base) in layout(groups, P, pr.window, pr.sinks).items():
        kv = {}
        for part, past, new in (("k", past_key, K), ("v", past_value, V)):
            old = past[:, 0, base:base + rows * n].reshape(B, rows, n * dh)
            full = cat([old, new[:, :, g0 * dh:(g0 + n) * dh]], axis=1)
            keep = kept(kind, rows + Lq, pr.window, pr.sinks)
            kept_rows = full[:, full.shape[1] - keep:] if kind == LOCAL else full[:, :keep]
            presents[part].append(kept_rows.reshape(B, -1, dh))
            kv[part] = full
        m = {FULL: mask, LOCAL: mask[:, P - rows:], GLOBAL: cat([mask[:, :rows], mask[:, P:]], axis=1)}[kind]
        sub = {**attrs, "num_heads": n * G, "kv_heads": n, "head_kinds": [kind] * (n * G), "causal": 1}
        ys.append(attend(Q[:, :, g0 * G * dh:(g0 + n) * G * dh], kv["k"], kv["v"], m, **sub))
    y = cat(ys, axis=2)
    pk, pv = (cat(presents[p], axis=1)[:, None] for p in ("k", "v"))
    return y, pk, pv


# ------------------------------------------------------------------------------ fallback
def overload_name(has_present: bool) -> str:
    return "cache_present" if has_present else "cache"


def choose_overload(attrs: dict, bound: frozenset) -> str:
    if "PastKey" not in bound and "PastValue" not in bound:
        return ""
    return overload_name("PresentKey" in bound or "PresentValue" in bound)


def _body(attend, has_present: bool):
    def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
        b = BodyBuilder("EgyptianCache")
        Q, K, V, mask, PK, PV = inputs
        I64 = onnx.TensorProto.INT64
        zero, one = b.op("Constant", value_int=0), b.op("Constant", value_int=1)
        heads = attr_ref(b, "value_int", "num_heads")
        kv_attr = attr_ref(b, "value_int", "kv_heads")
        kv = b.op("Where", b.op("Equal", kv_attr, zero), heads, kv_attr)
        group = b.op("Div", heads, kv)
        groups = b.op("Gather", head_kinds_expr(b, heads, kv, group), b.op("Range", zero, heads, group))  # [Hkv]
        scalar = lambda x: b.op("Squeeze", x, ints(b, [0]))  # noqa: E731
        Lq = scalar(b.op("Shape", Q, start=1, end=2))
        P = b.op("Sub", scalar(b.op("Shape", mask, start=1, end=2)), Lq)
        A = b.op("Add", P, Lq)  # positions after the step
        S = scalar(b.op("Shape", PK, start=2, end=3))
        w1 = b.op("Max", b.op("Sub", attr_ref(b, "value_int", "window"), one), zero)
        sinks = attr_ref(b, "value_int", "sinks")
        n = [b.op("ReduceSum", b.op("Cast", b.op("Equal", groups, b.op("Constant", value_int=k)), to=I64), keepdims=0)
             for k in (FULL, LOCAL, GLOBAL)]

        def per_kind(count):  # rows per group of each kind for `count` positions
            return [count, b.op("Min", count, w1), b.op("Min", count, sinks)]

        def vec(xs):  # three scalars -> [3]
            return b.op("Concat", *[b.op("Reshape", x, ints(b, [1])) for x in xs], axis=0)

        rows = per_kind(P)
        g0 = [zero, n[0], b.op("Add", n[0], n[1])]
        base0 = [zero, b.op("Mul", n[0], rows[0])]
        base = base0 + [b.op("Add", base0[1], b.op("Mul", n[1], rows[1]))]
        shift = [zero, b.op("Sub", P, rows[1]), zero]
        at = lambda xs: b.op("Gather", vec(xs), groups)  # [Hkv]: the kind's value per group  # noqa: E731
        gi = b.op("Range", zero, kv, one)
        a = b.op("Unsqueeze", b.op("Range", zero, A, one), ints(b, [1]))  # [A, 1]
        t = b.op("Sub", a, at(shift))  # [A, Hkv]: row within the kind's past
        stored = b.op("And", b.op("GreaterOrEqual", t, zero), b.op("Less", t, at(rows)))
        past_row = b.op("Add", b.op("Add", at(base), b.op("Mul", t, at(n))), b.op("Sub", gi, at(g0)))
        new_row = b.op("Add", b.op("Add", S, b.op("Mul", b.op("Sub", a, P), kv)), gi)
        idx = b.op("Where", b.op("GreaterOrEqual", a, P), new_row,
                   b.op("Where", stored, past_row, b.op("Mul", gi, zero)))
        idx = b.op("Reshape", idx, ints(b, [-1]))
        dh = b.op("Shape", PK, start=3, end=4)
        rows3 = b.op("Concat", ints(b, [0, -1]), dh, axis=0)
        kvdim = b.op("Shape", K, start=2, end=3)
        full3 = b.op("Concat", ints(b, [0, -1]), kvdim, axis=0)
        absolute = {}
        for part, past, new in (("k", PK, K), ("v", PV, V)):
            src = b.op("Concat", b.op("Reshape", past, rows3), b.op("Reshape", new, rows3), axis=1)
            absolute[part] = b.op("Reshape", b.op("Gather", src, idx, axis=1), full3)  # [B, A, Hkv*dh]
        if has_present:
            keep = per_kind(A)
            lo = [zero, b.op("Sub", A, keep[1]), zero]  # first position each kind keeps
            parts = []
            for k in (FULL, LOCAL, GLOBAL):
                j = b.op("Range", zero, b.op("Mul", n[k], keep[k]), one)
                d = b.op("Max", n[k], one)
                pos = b.op("Add", b.op("Div", j, d), lo[k])
                parts.append(b.op("Add", b.op("Mul", pos, kv), b.op("Add", g0[k], b.op("Mod", j, d))))
            pidx = b.op("Concat", *parts, axis=0)
            for part, out in (("k", outputs[1]), ("v", outputs[2])):
                flat = b.op("Reshape", absolute[part], rows3)  # [B, A*Hkv, dh]
                b.op("Unsqueeze", b.op("Gather", flat, pidx, axis=1), ints(b, [1]), out=out)
        # the plain body's temporaries are named _EgyptianAttention*, distinct from these
        return b.nodes + attend([Q, absolute["k"], absolute["v"], mask], [outputs[0]])

    return body


def overloads(attend) -> dict:
    """The cache-mode fallback overloads around the plain body ``attend``."""
    return {overload_name(p): (_body(attend, p), ("Y", "PresentKey", "PresentValue") if p else ("Y",))
            for p in (False, True)}


# ------------------------------------------------------------------------------ samples
def pack(full_k: np.ndarray, groups: list[int], window: int, sinks: int) -> np.ndarray:
    """[B, P, Hkv*dh] keys of every position -> the packed cache [B, 1, S, dh] of past length P."""
    B, P, D = full_k.shape
    dh = D // len(groups)
    parts = []
    for kind, (g0, n, rows, _) in layout(groups, P, window, sinks).items():
        x = full_k[:, P - rows:] if kind == LOCAL else full_k[:, :rows]
        parts.append(x[:, :, g0 * dh:(g0 + n) * dh].reshape(B, -1, dh))
    return np.concatenate(parts, axis=1)[:, None] if parts else np.zeros((B, 1, 0, dh), full_k.dtype)


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(20)
    C = {"causal": 1}
    cases = [  # id, B, Lq, P, H, Hkv, dh, attrs, padding?
        ("cache_decode_default_kinds", 2, 1, 40, 12, 6, 8, {**C, "num_heads": 12, "kv_heads": 6, "window": 8,
                                                             "sinks": 2}, True),
        ("cache_prefill_empty_past", 1, 5, 0, 8, 4, 8, {**C, "num_heads": 8, "kv_heads": 4, "window": 4}, False),
        ("cache_chunk3_short_past", 2, 3, 2, 6, 3, 8, {**C, "num_heads": 6, "kv_heads": 3, "window": 5, "sinks": 4},
         True),
        ("cache_chunk6_mha_scale", 1, 6, 20, 3, 3, 16, {**C, "num_heads": 3, "window": 6, "scale": 0.4,
                                                         "head_kinds": [0, 1, 2]}, True),
        ("cache_decode2_local_global_only", 1, 2, 30, 4, 2, 8, {**C, "num_heads": 4, "kv_heads": 2, "window": 9,
                                                                 "head_kinds": [1, 1, 2, 2]}, False),
        ("cache_decode_full_only", 2, 1, 17, 4, 1, 8, {**C, "num_heads": 4, "kv_heads": 1, "head_kinds": [0] * 4}, True),
    ]
    out = []
    for sid, B, Lq, P, H, Hkv, dh, attrs, padding in cases:
        kinds = attrs.get("head_kinds")
        groups = [(kinds[g * (H // Hkv)]) for g in range(Hkv)] if kinds else None
        if groups is None:
            n_full, n_local = Hkv // 2, Hkv // 3
            groups = [FULL] * n_full + [LOCAL] * n_local + [GLOBAL] * (Hkv - n_full - n_local)
        feeds = {"Q": rng.normal(0, 1, (B, Lq, H * dh)).astype(dtype)}
        feeds.update({n: rng.normal(0, 1, (B, Lq, Hkv * dh)).astype(dtype) for n in ("K", "V")})
        m = np.ones((B, P + Lq), np.int32)
        if padding:
            m[0, : (P + Lq) // 3] = 0  # left padding, including the sinks
        feeds["key_padding_mask"] = m
        for name in ("PastKey", "PastValue"):
            feeds[name] = pack(rng.normal(0, 1, (B, P, Hkv * dh)).astype(dtype), groups, attrs.get("window", 64),
                               attrs.get("sinks", 1))
        out.append(Sample(sid, feeds, attrs))
    return out
