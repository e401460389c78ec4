"""``attention=fftmix``: FFTMix(h) -> MatMul(3D -> D) -> Add(bias) in place of an attention block.

Everything from the Q/K/V projections through the output projection and its bias is replaced; the
residual add and the norms stay. Fitted as described in ``n6onnx.calibrate.attention``; the
uncalibrated default uses window-mean filters and the block's own W_V W_O (see ``fftmix_default``).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...calibrate import attention as cal
from ...calibrate import inverse_variance
from ...calibrate.collect import Sweep
from ...errors import BadArgumentError
from ...findings import Site
from ...graph import add_initializer, node_label
from .. import targets
from ..finalize import finalize
from .blocks import causal_reason, find_blocks, is_causal, seq_input, stream_pair
from . import cache
from .emit import add_node, bias_vector, weight_in_out


def fftmix_default(b: AttentionBlock) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated projection [3D, D] and bias: W_V W_O / 3 per scale, b_V W_O + b_O."""
    Wo = weight_in_out(b.out)
    bo = bias_vector(b.out, Wo.shape[1])
    D = seq_input(b.h).shape[-1]
    Wv = weight_in_out(b.v.proj) if b.v.proj is not None else None
    bv = bias_vector(b.v.proj, Wv.shape[1]) if Wv is not None else None
    if Wv is not None and b.v.columns is not None:
        Wv, bv = Wv[:, b.v.columns[0]:b.v.columns[1]], bv[b.v.columns[0]:b.v.columns[1]]
    if Wv is not None and b.heads and b.kv_heads and b.head_size and b.kv_heads < b.heads:
        rep = b.heads // b.kv_heads
        Wv = np.repeat(Wv.reshape(D, b.kv_heads, b.head_size), rep, axis=1).reshape(D, -1)
        bv = np.repeat(bv.reshape(b.kv_heads, b.head_size), rep, axis=0).reshape(-1)
    if Wv is None or Wv.shape != (D, Wo.shape[0]):
        return np.zeros((3 * D, Wo.shape[1]), np.float32), bo
    M = Wv @ Wo
    return np.concatenate([M / 3] * 3, 0).astype(np.float32), (bv @ Wo + bo).astype(np.float32)


def fftmix_reason(b: AttentionBlock, graph: ir.Graph) -> str | None:
    if causal_reason(b):
        return causal_reason(b)
    if b.cache is not None and cache.cache_problem(b, graph):
        return cache.cache_problem(b, graph)
    if b.form.startswith("com.microsoft"):
        return f"{b.form}: run the pass on the unfused export (before ORT's fusions)"
    if b.out is None or b.out_value is None:
        return "output projection not found"
    h = seq_input(b.h)
    if h is None or h.shape is None or len(h.shape) != 3 or not isinstance(h.shape[-1], int):
        return "the projections' input is not [B, L, D] with a static D"
    if h.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return f"element type {h.dtype} not supported (float32, float16)"
    if b.out_value in graph.outputs or b.out_value.shape is None or len(b.out_value.shape) != 3:
        return "the block output is a graph output or not [B, L, D]"
    return None


def emit_fftmix(model: ir.Model, b: AttentionBlock, filters, W: np.ndarray, bias: np.ndarray,
                memo: dict | None = None) -> None:
    """FFTMix(h) -> MatMul -> Add in place of the block; a causal block gets causal=1 (``filters``
    are then the one-sided taps [w, D])."""
    g = model.graph
    h = seq_input(b.h)
    dt = h.dtype.numpy()
    tag = f"n6_fftmix{b.index}"
    fs = [add_initializer(g, f.astype(dt), f"{tag}_F{w}") for f, w in zip(filters, (6, 12, 24))]
    B, L, D = h.shape
    if b.cache is not None:  # the state rides in the layer's past/present key tensors (cache.py)
        past, pl = cache.fftmix_inputs(model, b, h, memo if memo is not None else {})
        node = ir.Node("n6onnx", "FFTMix", [h, *fs, past, pl], num_outputs=2, name=tag,
                       attributes=[ir.convenience.convert_attribute("causal", 1)])
        g.append(node)
        y = node.outputs[0]
        y.name, y.type, y.shape = f"{tag}_out", ir.TensorType(h.dtype), ir.Shape([B, L, 3 * D])
        node.outputs[1].name = f"{tag}_present"
        cache.fftmix_outputs(model, b, h, node.outputs[1], tag)
    else:
        attrs = {"causal": 1} if is_causal(b) else {}
        y = add_node(g, "n6onnx", "FFTMix", [h, *fs], f"{tag}", [B, L, 3 * D], h.dtype, **attrs)
    m = add_node(g, "", "MatMul", [y, add_initializer(g, W.astype(dt), f"{tag}_W")], f"{tag}_proj", [B, L, W.shape[1]], h.dtype)
    o = add_node(g, "", "Add", [m, add_initializer(g, bias.astype(dt), f"{tag}_b")], f"{tag}_bias", [B, L, W.shape[1]], h.dtype)
    ir.convenience.replace_all_uses_with(b.out_value, o)


def run(model, ok, arg, ctx, report):
    """Rewrite the chosen blocks of ``ok`` (LAYERS parsed into ``arg``) and fill ``report``."""
    kind, n = arg
    batches = ctx.batches or None
    scores = None
    if kind in ("auto", "count"):
        if not batches:
            raise BadArgumentError(
                "attention=fftmix:auto / :N rank the blocks by redundancy and need calibration data (--calibrate "
                "DATA); without it name the blocks by index, e.g. attention=fftmix:@0 or attention=fftmix:0,3")
        if kind == "auto" and n is None:
            n = max(1, len(ok) // 3)
        scores = redundancy_scores(ctx.original, batches)
        chosen = sorted(ok, key=lambda b: (-scores.get(b.index, -2.0), b.index))[:n]
        if len(chosen) < n:
            report.notes.append(f"asked for {n} blocks, {len(chosen)} can be rewritten")
    else:
        chosen = targets.named("attention=fftmix", "attention", n, ok, ctx, report, "rewritten")
    chosen = sorted(chosen, key=lambda b: b.index)
    orig_blocks = {b.index: b for b in find_blocks(ctx.original)[0]} if batches else {}
    sweeps = (Sweep(batches), Sweep(batches)) if batches else None
    for k, b in enumerate(chosen):
        if sweeps is not None and getattr(ctx, "progress", None):
            ctx.progress(f"attention block {b.index} ({k + 1}/{len(chosen)})")
        W0, b0 = fftmix_default(b)
        D = seq_input(b.h).shape[-1]
        detail = {"index": b.index, "method": "fftmix", "norm": b.norm, "causal": is_causal(b)}
        if scores is not None:
            detail["redundancy"] = scores.get(b.index)
        if batches and b.index in orig_blocks:
            filters, W, bias, fitrep = _fit_block(model, b, orig_blocks[b.index], ctx, W0, b0, sweeps)
            detail["fit"] = fitrep
        else:
            filters, W, bias = (cal.default_taps if is_causal(b) else cal.default_filters)(D), W0, b0
            detail["fit"] = None
        if b.cache is not None:
            detail["cache"] = {**b.cache, "state": "past/present key: FFTMix state [batch, (past length) mod 24, D]; "
                               "value: empty [batch, 0, D]"}
        emit_fftmix(model, b, filters, W, bias, {})
        finalize(model)  # sorts the graph, attaches the fallback functions: the next fit runs it in ORT
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule="attention.fftmix", detail=detail))
        report.rewritten += 1
    if chosen and not batches:
        report.notes.append("uncalibrated FFT-Mix: window-mean filters (causal: taps 1/w) and the block's own W_V W_O "
                            "as the projection; "
                            "a pretrained model loses much accuracy; pass --calibrate DATA to fit filters and projection")


def _fit_block(model, b, ob, ctx, W0, b0, sweeps):
    """Fit block b's FFT-Mix on calibration data. ``sweeps`` = (rewritten, original): collection
    sweeps in block order, each step starting at the residual stream entering the previous block."""
    h = seq_input(b.h)
    cur_names = [h.name, b.residual.name] if b.residual is not None else [h.name]
    orig_names = [ob.out_value.name] + ([ob.residual.name] if ob.residual is not None else [])
    sweeps[0].batches = cache.adapt_feeds(model, ctx.batches)  # layers rewritten so far hold FFT-Mix state
    cur = sweeps[0].step(model, cur_names, b.residual.name if b.residual is not None else None, full=cur_names)
    orig = sweeps[1].step(ctx.original, orig_names, ob.residual.name if ob.residual is not None else None,
                          full=orig_names)
    hs = cur[("full", h.name)]
    reals = [cal._real(feeds, a.shape) for feeds, a in zip(ctx.batches, hs)]
    cur_res = [r.reshape(a.shape[0], a.shape[1], -1) for r, a in zip(cur[("full", b.residual.name)], hs)] \
        if b.residual is not None else []
    targets, stream_var = [], []
    for k, y in enumerate(orig[("full", ob.out_value.name)]):
        y = y.reshape(y.shape[0], y.shape[1], -1) if y.ndim == 3 else y
        if ob.residual is not None:
            y = y + orig[("full", ob.residual.name)][k].reshape(y.shape)
            stream_var.append(y.var(-1, dtype=np.float64))  # the stream after the add, per token
        targets.append(y)
    if cur_res:
        targets = [t - r for t, r in zip(targets, cur_res)]
    weights = None
    if stream_var:
        weights = inverse_variance(np.concatenate([sv[r] for sv, r in zip(stream_var, reals)]))
    f = cal.fit_fftmix(hs, reals, targets, W0, b0, weights=weights, causal=is_causal(b))
    return f.filters, f.W, f.b, f.to_json()


def redundancy_scores(model: ir.Model, batches, blocks: list[AttentionBlock] | None = None) -> dict[int, float]:
    """Block index -> redundancy score on ``batches`` (see ``n6onnx.calibrate.attention.redundancy``)."""
    blocks = blocks if blocks is not None else find_blocks(model)[0]
    pairs = {b.index: p for b in blocks if (p := stream_pair(b)) is not None}
    return cal.redundancy(ir.to_proto(model), pairs, batches) if pairs else {}
