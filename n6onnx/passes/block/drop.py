"""Redundancy drops: ``attention=drop:N|@I,J`` and ``block=drop:N|@I,J``.

From "What matters in transformers? Not all attention is needed" (He et al., 2024): the attention
sub-layers (or whole layers) whose output stream is most similar to their input stream, by cosine,
contribute least and can be removed.

- ``attention=drop``: the attention block's contribution to the residual stream goes; the residual
  passes through. With calibration data the block's mean contribution (over real tokens) stays as a
  constant bias on the residual add, so the stream keeps its mean; without data nothing is added.
  Ranking (``drop:N``): the ``redundancy`` score of ``inspect --calibrate`` (mean cos(stream before,
  stream after the block's residual add)), highest first.
- ``block=drop``: a whole layer (attention and FFN, with their norms) goes: the stream leaving the
  layer is replaced by the stream entering it (plus, with data, the layer's mean change of the stream
  as a bias). Ranking: the ``layer_redundancy`` score (mean cos(stream entering, stream leaving)).

Layer i is delimited by attention block i: it enters at the block's residual stream x and leaves at
the FFN residual add that follows (post-LN: at the norm after it). Block indices are 0-based in graph
order, stable across passes (``n6onnx.passes.targets``). Targets named by an earlier attention or
block pass are refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...calibrate.attention import _real, run_batches
from ...errors import BadArgumentError
from ...findings import KindReport, Rejection, Site
from ...graph import RULE_TAG, add_initializer, consumers, is_const, node_label
from .. import targets
from ..attention.blocks import NORMS, _is_rmsnorm, find_blocks
from ..attention.fftmix import redundancy_scores

OPTIONS = ("drop:N", "drop:@I,J")


@dataclasses.dataclass
class Layer:
    index: int
    block: AttentionBlock
    x: ir.Value  # the residual stream entering the layer
    y: ir.Value  # the stream leaving it


def _descends(v: ir.Value | None, target: ir.Value, limit: int = 40) -> bool:
    stack, seen = [v], 0
    while stack and seen < limit:
        v = stack.pop()
        seen += 1
        if v is target:
            return True
        n = v.producer() if v is not None else None
        if n is not None:
            stack.extend(i for i in n.inputs if i is not None and not is_const(i))
    return False


def _single_norm(v: ir.Value) -> ir.Value | None:
    users = consumers(v)
    if len(users) == 1 and (users[0].op_type in NORMS or _is_rmsnorm(users[0])):
        return users[0].outputs[0]
    return None


def layer_of(b: AttentionBlock) -> Layer | str:
    """The layer that attention block ``b`` opens, or why it cannot be delimited."""
    add = b.residual_node
    if b.residual is None or add is None or add.op_type != "Add" or add.domain != "":
        return "the block's residual add is not a plain Add"
    a = add.outputs[0]
    x1 = a
    if b.norm == "post-LN":
        x1 = _single_norm(a)
        if x1 is None:
            return "post-LN block without a single norm after its residual add"
    elif b.norm != "pre-LN":
        return "norm placement unknown (neither post-LN nor pre-LN)"
    for n in consumers(x1):
        if n.op_type != "Add" or n.domain != "" or len(n.inputs) != 2 or any(is_const(i) for i in n.inputs):
            continue
        other = n.inputs[1] if n.inputs[0] is x1 else n.inputs[0]
        if other is x1 or not _descends(other, x1):
            continue
        y = n.outputs[0]
        if b.norm == "post-LN":
            y = _single_norm(y)
            if y is None:
                return "post-LN layer without a single norm after its FFN residual add"
        return Layer(b.index, b, b.residual, y)
    return "no residual add of an FFN follows the attention block"


def find_layers(model: ir.Model, ctx=None) -> tuple[list[Layer], list[Rejection], int]:
    blocks, rejected, seen, _ = find_blocks(model)
    blocks = targets.renumber(blocks, ctx, lambda: _original_blocks(ctx))
    layers = []
    for b in blocks:
        got = layer_of(b)
        if isinstance(got, str):
            rejected.append(Rejection(b.label, got))
        else:
            layers.append(got)
    return layers, rejected, seen


def _original_blocks(ctx):
    orig = getattr(ctx, "original", None)
    return find_blocks(orig)[0] if orig is not None else None


# -------------------------------------------------------------------------------------- statistics
def _btd(a: np.ndarray, feeds: dict) -> np.ndarray:
    if a.ndim == 3:
        return a
    ref = next(iter(feeds.values()))
    return a.reshape(ref.shape[0], ref.shape[1], -1)


def stream_stats(model: ir.Model, pairs: dict[int, tuple[str, str | None]], batches) -> dict[int, dict]:
    """Per index, for (x, y) value names: mean over real tokens of cos(x, y) and of (y - x); for
    (name, None): the mean of that value (a block's contribution)."""

    acc = {i: [0.0, None, 0] for i in pairs}

    def fn(feeds, out):
        for i, (xn, yn) in pairs.items():
            x = _btd(out[xn], feeds).astype(np.float64)
            real = _real(feeds, x.shape)
            a = acc[i]
            if yn is None:
                delta = x
            else:
                y = _btd(out[yn], feeds).astype(np.float64)
                cos = (x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1) + 1e-12)
                a[0] += float(cos[real].sum())
                delta = y - x
            s = delta[real].sum(0)
            a[1] = s if a[1] is None else a[1] + s
            a[2] += int(real.sum())

    names = [n for p in pairs.values() for n in p if n is not None]
    run_batches(ir.to_proto(model), names, batches, fn)
    return {i: {"cosine": round(s / max(n, 1), 6), "mean": (m / max(n, 1)) if m is not None else None}
            for i, (s, m, n) in acc.items()}


def layer_scores(model: ir.Model, batches) -> dict[int, float]:
    """Whole-layer redundancy per layer index: mean cos(stream entering, stream leaving)."""
    layers, _, _ = find_layers(model)
    stats = stream_stats(model, {l.index: (l.x.name, l.y.name) for l in layers}, batches) if layers else {}
    return {i: s["cosine"] for i, s in stats.items()}


# -------------------------------------------------------------------------------------- rewiring
def _const(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    return add_initializer(graph, array, name)


def _redirect(graph: ir.Graph, old: ir.Value, new: ir.Value, tag: str) -> None:
    """Every use of ``old`` (a graph output keeps its name through an Identity) reads ``new``."""
    if old in graph.outputs:
        node = ir.Node("", "Identity", [new], name=f"{tag}_out")
        node.metadata_props[RULE_TAG] = tag
        graph.append(node)
        name = old.name
        old.name = f"{name}__dropped"
        node.outputs[0].name = name
        node.outputs[0].shape, node.outputs[0].type = old.shape, old.type
        new = node.outputs[0]
    ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)


def _add_bias(graph: ir.Graph, x: ir.Value, bias: np.ndarray, tag: str) -> ir.Value:
    c = _const(graph, bias.astype(x.dtype.numpy()), f"{tag}_bias")
    node = ir.Node("", "Add", [x, c], name=f"{tag}_add")
    node.metadata_props[RULE_TAG] = tag
    graph.append(node)
    out = node.outputs[0]
    out.name, out.shape, out.type = f"{tag}_out", x.shape, x.type
    return out


def _drop_attention(model: ir.Model, b: AttentionBlock, bias: np.ndarray | None) -> None:
    g, add = model.graph, b.residual_node
    tag = f"n6_drop_attention{b.index}"
    slot = 0 if add.inputs[0] is b.out_value else 1
    if bias is not None:
        add.replace_input_with(slot, _const(g, bias.astype(b.residual.dtype.numpy()), f"{tag}_bias"))
        add.metadata_props[RULE_TAG] = "attention.drop"
    else:
        _redirect(g, add.outputs[0], b.residual, tag)


def _drop_layer(model: ir.Model, layer: Layer, bias: np.ndarray | None) -> None:
    tag = f"n6_drop_block{layer.index}"
    new = layer.x if bias is None else _add_bias(model.graph, layer.x, bias, tag)
    _redirect(model.graph, layer.y, new, tag)


# -------------------------------------------------------------------------------------- the passes
def _choose(kind: str, arg, candidates: list, scores_fn, ctx, report: KindReport, by: str) -> tuple[list, dict]:
    mode, n = arg
    if mode == "indices":
        targets.refuse_overlap(ctx, n, by)
        return targets.named(f"{kind}=drop", kind, n, candidates, ctx, report, "dropped"), {}
    if not (ctx is not None and ctx.batches):
        raise BadArgumentError(f"{kind}=drop:{n} ranks the blocks by redundancy and needs calibration data "
                               f"(--calibrate DATA); without it name them, e.g. {kind}=drop:@0,3")
    scores = scores_fn()
    free = targets.free(candidates, ctx)
    chosen = sorted(free, key=lambda c: (-scores.get(c.index, -2.0), c.index))[:n]
    if len(chosen) < n:
        report.notes.append(f"asked for {n} blocks, {len(chosen)} can be dropped")
    return chosen, scores


def _mean_bias(ctx, pairs: dict[int, tuple[str, str | None]]) -> dict[int, np.ndarray]:
    if not (ctx is not None and ctx.batches and ctx.original is not None and pairs):
        return {}
    return {i: s["mean"] for i, s in stream_stats(ctx.original, pairs, ctx.batches).items()}


def run_attention(model: ir.Model, option: str, ctx) -> KindReport:
    arg = targets.parse_drop("attention", option)
    blocks, rejected, seen, opaque = find_blocks(model)
    blocks = targets.renumber(blocks, ctx, lambda: _original_blocks(ctx))
    report = KindReport("attention", seen=seen, near_misses=list(rejected))
    for n in opaque:
        report.near_misses.append(Rejection(node_label(n), f"{n.domain}.{n.op_type}: not droppable (not analysed)"))
    ok = []
    for b in blocks:
        if b.residual_node is None or b.residual_node.op_type != "Add" or b.residual_node.domain != "" \
                or b.out_value is None:
            report.near_misses.append(Rejection(b.label, "no plain residual Add after the output projection"))
        else:
            ok.append(b)
    by = f"attention={option}"
    chosen, scores = _choose("attention", arg, ok, lambda: redundancy_scores(ctx.original, ctx.batches),
                             ctx, report, by)
    orig = {b.index: b for b in (_original_blocks(ctx) or [])}
    biases = _mean_bias(ctx, {b.index: (orig[b.index].out_value.name, None) for b in chosen
                              if b.index in orig and orig[b.index].out_value is not None})
    targets.claim(ctx, [b.index for b in chosen], by)
    for b in sorted(chosen, key=lambda b: -b.index):  # last first: earlier blocks' values stay live
        detail = {"index": b.index, "method": "drop", "output": b.out_value.name, "stream": b.residual.name,
                  "bias": b.index in biases}
        if b.index in scores:
            detail["redundancy"] = scores[b.index]
        label = b.label
        _drop_attention(model, b, biases.get(b.index))
        report.sites.append(Site(nodes=[label], rule="attention.drop", detail=detail))
        report.rewritten += 1
    report.sites.sort(key=lambda s: s.detail["index"])
    if chosen and not biases:
        report.notes.append("uncalibrated drop: the block's contribution is removed without a mean bias; "
                            "pass --calibrate DATA to keep its mean")
    return report


def run_block(model: ir.Model, option: str, ctx) -> KindReport:
    arg = targets.parse_drop("block", option)
    layers, rejected, seen = find_layers(model, ctx)
    report = KindReport("block", seen=seen, near_misses=list(rejected))
    by = f"block={option}"

    def scores():
        return layer_scores(ctx.original, ctx.batches)

    chosen, sc = _choose("block", arg, layers, scores, ctx, report, by)
    orig_layers = {l.index: l for l in find_layers(ctx.original)[0]} if ctx is not None and ctx.original is not None \
        and ctx.batches else {}
    biases = _mean_bias(ctx, {l.index: (orig_layers[l.index].x.name, orig_layers[l.index].y.name) for l in chosen
                              if l.index in orig_layers})
    targets.claim(ctx, [l.index for l in chosen], by)
    for l in sorted(chosen, key=lambda l: -l.index):  # last first: layer i+1 enters at layer i's exit
        detail = {"index": l.index, "method": "drop", "enters": l.x.name, "leaves": l.y.name,
                  "bias": l.index in biases}
        if l.index in sc:
            detail["layer_redundancy"] = sc[l.index]
        _drop_layer(model, l, biases.get(l.index))
        report.sites.append(Site(nodes=[l.block.label], rule="block.drop", detail=detail))
        report.rewritten += 1
    report.sites.sort(key=lambda s: s.detail["index"])
    if chosen and not biases:
        report.notes.append("uncalibrated drop: the layer is removed without a mean bias; pass --calibrate DATA to "
                            "keep the stream's mean change")
    return report
