"""``attention=egyptian``: the Q.K^T -> scale/mask -> softmax -> .V core becomes EgyptianAttention on
[B, L, H*dh] tensors (weights kept), with the attention mask as a key-padding mask (int32). Heads
are assigned full / local / global by locality on calibration data or by index (see the package
docstring); the ``mha`` core runs the full heads as com.microsoft.MultiHeadAttention (``heads.py``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...calibrate import attention as cal
from ...calibrate.collect import subgraph_proto
from ...errors import BadArgumentError
from ...findings import Site
from ...graph import add_initializer, consumers, const_array, is_const, node_label, scalar_const
from ..finalize import finalize
from ...ops import egyptian_attention as ea
from .blocks import MERGE_PATH, causal_reason, find_blocks, is_causal, side_factor, static_shape
from . import egycache
from .emit import SINKS, WINDOW, add_node, ones_mask, weight_in_out
from .heads import split_full_heads


def _simulate(nodes: list[ir.Node], a: np.ndarray) -> np.ndarray | None:
    for n in nodes:
        if n.op_type == "Reshape":
            s = const_array(n.inputs[1])
            if s is None:
                return None
            az = n.attributes.get("allowzero")
            az = az.as_int() if az is not None else 0
            shape = [a.shape[i] if (d == 0 and not az) else int(d) for i, d in enumerate(s)]
            try:
                a = a.reshape(shape)
            except ValueError:
                return None
        elif n.op_type == "Transpose":
            p = n.attributes.get("perm")
            a = a.transpose(list(p.as_ints()) if p is not None else None)
    return a


def _source3(v: ir.Value, layout: tuple[int, ...], heads: int, dh: int, scaled: bool):
    """The [B, L, H*dh] value ``v`` is a pure head split (+ scalar factors) of, with the factor."""
    chain, factor, cur = [], 1.0, v
    for _ in range(10):
        n = cur.producer()
        if n is None:
            return None
        if n.op_type in ("Reshape", "Transpose", "Identity"):
            chain.insert(0, n)
            cur = n.inputs[0]
        elif scaled and n.op_type in ("Mul", "Div"):
            live = [i for i in n.inputs if not is_const(i)]
            c = scalar_const(next((i for i in n.inputs if is_const(i)), None))
            if len(live) != 1 or c is None:
                return None
            factor *= 1 / c if n.op_type == "Div" else c
            chain.insert(0, n)
            cur = live[0]
        else:
            return None
        s = static_shape(cur.shape)
        if s and len(s) == 3 and s[2] == heads * dh:
            a = np.arange(int(np.prod(s))).reshape(s)
            want = a.reshape(s[0], s[1], heads, dh).transpose(layout)
            got = _simulate(chain, a)
            if got is not None and got.shape == want.shape and np.array_equal(got, want):
                return cur, factor
    return None


def _to3(g: ir.Graph, v: ir.Value, layout: tuple[int, ...], heads: int, dh: int, scaled: bool, tag: str):
    """(value [B, L, H*dh], scalar factor inside it)."""
    src = _source3(v, layout, heads, dh, scaled)
    if src is not None:
        return src
    back = [layout.index(i) for i in range(4)]  # layout -> [B, L, H, dh] (the inverse permutation)
    t = add_node(g, "", "Transpose", [v], f"{tag}_t", None, v.dtype, perm=back)
    r = add_node(g, "", "Reshape", [t, add_initializer(g, np.array([0, 0, -1], np.int64), f"{tag}_shape")], f"{tag}_r", None,
              v.dtype)
    return r, 1.0


def egyptian_reason(b: AttentionBlock, graph: ir.Graph) -> str | None:
    if causal_reason(b):  # first: whatever else holds, a causal block this pass cannot handle is refused
        return causal_reason(b)
    if b.form.startswith("com.microsoft"):
        return f"{b.form}: run the pass on the unfused export (before ORT's fusions)"
    if b.q4 is None or b.kt4 is None or b.v4 is None or b.core_out is None:
        return "per-head Q, K, V tensors not found"
    if not (b.heads and b.head_size):
        return "number of heads / head size unknown"
    if b.mask is not None and not (is_causal(b) and not b.mask.inputs):  # causal only: causal=1, no mask input
        if not b.mask.inputs:
            return ("constant additive attention mask or bias that is not known to be all zero: EgyptianAttention takes only a "
                    "[batch, seq] key-padding mask input")
        gin = {v.name: v for v in graph.inputs}
        if len(b.mask.inputs) != 1 or b.mask.inputs[0] not in gin or gin[b.mask.inputs[0]].shape is None \
                or len(gin[b.mask.inputs[0]].shape) != 2:
            return f"mask is not derived from one [batch, seq] attention-mask input ({b.mask.inputs})"
    if b.q4.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return f"element type {b.q4.dtype} not supported"
    if _merge(b) is None:
        return "the head merge before the output projection could not be verified (dynamic shapes?)"
    return None


def _merge(b: AttentionBlock):
    """(consumer node, input index, shape) where the merged heads [B, L, H*dh] enter the output
    projection, checked by simulating the reshape/transpose chain on an index tensor."""
    if b.out is None:
        return None
    first = b.out.nodes[0]
    target = first.inputs[0]
    chain, cur = [], b.core_out
    for _ in range(5):
        if cur is target:
            break
        users = consumers(cur)
        if len(users) != 1 or users[0].op_type not in MERGE_PATH:
            return None
        chain.append(users[0])
        cur = users[0].outputs[0]
    if cur is not target:
        return None
    s, ts = static_shape(b.core_out.shape), static_shape(target.shape)
    if s is None or ts is None or len(s) != 4:
        return _merge_dynamic(b, chain, target)
    a = np.arange(int(np.prod(s))).reshape(s)
    got = _simulate(chain, a)
    want = a.transpose(0, 2, 1, 3).reshape(ts)
    if got is None or got.shape != want.shape or not np.array_equal(got, want):
        return None
    return first, 0, ts


def _merge_dynamic(b: AttentionBlock, chain: list[ir.Node], target: ir.Value):
    """The head merge with symbolic batch/sequence dims: Transpose(0, 2, 1, 3) to [B, L, H, dh], then
    possibly a Reshape to [B, L, H*dh], B and L being the core output's own (symbolic) dims."""
    s, ts = b.core_out.shape, target.shape
    if s is None or ts is None or len(s) != 4 or not chain or chain[0].op_type != "Transpose" \
            or not (b.heads and b.head_size):
        return None
    perm = chain[0].attributes.get("perm")
    if perm is None or list(perm.as_ints()) != [0, 2, 1, 3] or ts[0] != s[0] or ts[1] != s[2]:
        return None
    ops = [n.op_type for n in chain]
    if ops == ["Transpose"] and len(ts) == 4 and list(ts)[2:] == [b.heads, b.head_size]:
        return b.out.nodes[0], 0, list(ts)
    if ops == ["Transpose", "Reshape"] and len(ts) == 3 and ts[2] == b.heads * b.head_size:
        return b.out.nodes[0], 0, list(ts)
    return None


def emit_egyptian(model: ir.Model, b: AttentionBlock, kinds: list[int], masks: dict, window: int = WINDOW) -> dict | None:
    """Rewrite block ``b``; returns the per-group cache report when its KV cache was cut (egycache)."""
    g = model.graph
    H, dh = b.heads, b.head_size
    tag = f"n6_egyptian{b.index}"
    if is_causal(b) and b.cache is not None and any(kinds) and not egycache.problem(b, g, kinds) \
            and b.form != "onnx.Attention":
        qk = b.nodes[0]
        q, fq = _to3(g, qk.inputs[0], (0, 2, 1, 3), H, dh, True, f"{tag}_q")
        y, report = egycache.emit(model, b, q, b.scale * fq / side_factor(qk.inputs[0]), kinds, window, SINKS, tag)
        _into_output_projection(g, b, y, q.dtype, tag)
        return report
    if b.form == "onnx.Attention":
        q, fq = _to3(g, b.q4, (0, 2, 1, 3), H, dh, False, f"{tag}_q")
        k, fk = _to3(g, b.kt4, (0, 2, 1, 3), H, dh, False, f"{tag}_k")
        scale = b.scale
    else:
        qk = b.nodes[0]
        q, fq = _to3(g, qk.inputs[0], (0, 2, 1, 3), H, dh, True, f"{tag}_q")
        k, fk = _to3(g, qk.inputs[1], (0, 2, 3, 1), H, dh, True, f"{tag}_k")
        ss = b.scale / (side_factor(qk.inputs[0]) * side_factor(qk.inputs[1]))
        scale = ss * fq * fk
    v, _ = _to3(g, b.v4, (0, 2, 1, 3), H, dh, False, f"{tag}_v")
    inputs = [q, k, v]
    if b.mask is not None and b.mask.inputs:
        name = b.mask.inputs[0]
        if name not in masks:
            src = next(x for x in g.inputs if x.name == name)
            masks[name] = add_node(g, "", "Cast", [src], f"n6_key_padding_mask_{name}", src.shape, ir.DataType.INT32,
                                to=ir.DataType.INT32)
        inputs.append(masks[name])
    else:  # the op's function fallback needs the mask input: all ones [B, L]
        inputs.append(ones_mask(g, q, tag))
    causal = {"causal": 1, "kv_heads": int(H), "sinks": SINKS} if is_causal(b) else {}  # K/V repeated per query head
    y = add_node(g, "n6onnx", "EgyptianAttention", inputs, tag, None, q.dtype, num_heads=int(H), window=int(window),
              scale=float(scale), head_kinds=[int(x) for x in kinds], **causal)
    _into_output_projection(g, b, y, q.dtype, tag)
    return None


def _into_output_projection(g: ir.Graph, b: AttentionBlock, y: ir.Value, dtype, tag: str) -> None:
    """Y [B, L, H*dh] takes the place of the merged heads where the output projection reads them."""
    H, dh = b.heads, b.head_size
    first, idx, ts = _merge(b)
    if len(ts) != 3:
        shape = ts if all(isinstance(d, int) for d in ts) else [0, 0, H, dh]  # symbolic [B, L, H, dh]
        y = add_node(g, "", "Reshape", [y, add_initializer(g, np.array(shape, np.int64), f"{tag}_merge_shape")],
                     f"{tag}_merge", ts, dtype)
    first.replace_input_with(idx, y)


def _probe(b: AttentionBlock, probs: str) -> cal.CausalProbe:
    """What the causal locality reads of the original's block ``b``: its probabilities, and its values and
    output projection weight [H * dh, D] where they are visible (else the lost mass decides alone)."""
    w = None
    if b.out is not None and b.heads and b.head_size and is_const(b.out.weight):
        w = weight_in_out(b.out)
        w = w if w.shape[0] == b.heads * b.head_size else None
    return cal.CausalProbe(probs, b.kv_heads or b.heads, b.v4.name if b.v4 is not None and w is not None else None, w)


def run(model, ok, arg, ctx, report):
    """Rewrite every block of ``ok`` (HEADS and CORE parsed into ``arg``) and fill ``report``."""
    mode, core = arg

    batches = ctx.batches or None
    if mode is None:
        mode = "locality" if batches else "by-index"
        if not batches:
            report.notes.append("no calibration data: heads assigned by index as the reference (first H/2 full, "
                                "next H/3 local, the rest global); pass --calibrate DATA to assign them by locality")
    loc = {}
    if mode == "locality":
        if not batches:
            raise BadArgumentError("attention=egyptian:locality measures the heads on calibration data: pass "
                                   "--calibrate DATA (or use egyptian:by-index)")
        orig = {b.index: b for b in find_blocks(ctx.original)[0]}
        seen = [b for b in ok if b.index in orig and orig[b.index].probs is not None]
        probs = {b.index: orig[b.index].probs.name for b in seen if not is_causal(b)}
        causal = {b.index: _probe(orig[b.index], orig[b.index].probs.name) for b in seen if is_causal(b)}
        names = [*probs.values(), *(n for p in causal.values() for n in (p.probs, p.values) if n)]
        proto = subgraph_proto(ctx.original, names) if names else None  # only what the captures need
        loc = cal.head_locality(proto, probs, batches, WINDOW) if probs else {}
        if causal:  # per KV group: the causal window, the sinks + own key, and what each costs (calibrate/attention.py)
            loc.update(cal.causal_locality(proto, causal, batches, WINDOW, SINKS))
    masks: dict = {}
    for b in ok:
        counts = cal.reference_counts(b.heads)
        if mode == "full":
            kinds = [0] * b.heads
        elif is_causal(b):  # kinds per KV group (a group's cache shrinks only if all its heads agree)
            Hkv = b.kv_heads or b.heads
            kinds = ea.default_group_kinds(b.heads, Hkv)
            if mode == "locality" and b.index in loc:  # the default split's counts, groups chosen by locality
                groups = cal.assign_groups(loc[b.index], kinds[::b.heads // Hkv])
                kinds = [groups[h // (b.heads // Hkv)] for h in range(b.heads)]
            elif mode == "locality":
                report.notes.append(f"{b.label}: causal block: attention probabilities not visible (fused op); heads "
                                    "assigned per KV group by index")
        elif mode == "locality" and b.index in loc:
            kinds = cal.assign_heads(loc[b.index]["local"], loc[b.index]["global"], counts)
        else:
            if mode == "locality":
                report.notes.append(f"{b.label}: attention probabilities not visible (fused op); heads by index")
            kinds = [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
        cut = emit_egyptian(model, b, kinds, masks)
        split = bool(split_full_heads(model)) if core == "mha" else False
        if core == "mha" and not split:
            why = "every head is full" if all(k == 0 for k in kinds) else "no full head" if 0 not in kinds \
                else "causal block: MultiHeadAttention has no causal mode" if is_causal(b) \
                else "the head width of Q is not static"
            report.notes.append(f"{b.label}: the mha core was not applied ({why}); the block runs as one "
                                f"EgyptianAttention node")
        finalize(model)  # sorts the graph, attaches the fallback functions: the next fit runs it in ORT
        detail = {"index": b.index, "method": "egyptian", "heads": b.heads, "head_kinds": kinds, "window": WINDOW,
                  "assignment": mode if mode != "locality" or b.index in loc else "by-index", "core": "mha" if split else "fused", "causal": is_causal(b)}
        if is_causal(b):
            detail.update(kv_heads=b.kv_heads or b.heads, sinks=SINKS)
        if cut is not None:
            detail["cache"] = cut
        elif b.cache is not None:
            detail["cache"] = {**b.cache, "layout": "unchanged (full cache)"}
        if b.index in loc:
            detail["locality"] = loc[b.index]
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule="attention.egyptian", detail=detail))
        report.rewritten += 1
