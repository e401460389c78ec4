"""KV-cache plumbing of the causal attention rewrites on cached decoder exports (``docs/decoders.md``).

A cached block reads ``past_key_values.{i}.key/.value`` [B, Hkv, P, dh] and writes
``present.{i}.key/.value`` (the past with the new keys/values appended). Graph input and output
names never change; what they hold may:

* ``attention=egyptian`` keeps the cache as it is (EgyptianAttention's causal mode works in key-index
  space, so the full cache gives the exact answer);
* ``attention=fftmix`` has no keys or values: the layer's ``past_key_values.{i}.key`` carries FFTMix's
  state instead, the inputs of the current 24-window [B, (past length) mod 24, D], and
  ``present.{i}.key`` the state after the call; ``past_key_values.{i}.value`` is unused and
  ``present.{i}.value`` is empty [B, 0, D] (feed it back as the next past value, as before).

The absolute past length FFTMix needs (its windows sit at absolute positions) is the attention mask's
length minus the new tokens': ``attention_mask`` is [B, past + seq] in these exports. Everything else
in the graph that read the past's shape (the causal mask's key range, cache positions) is given the
shape the original past would have had, [B, Hkv, past length, dh].
"""

from __future__ import annotations

import copy

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock
from ...graph import add_initializer, consumers, is_const
from .emit import add_node


def _cache_source(v: ir.Value | None, head_path: set[str], depth: int = 10) -> tuple[str, str | None] | None:
    """(past graph input, present graph output) when ``v`` (the per-head K^T or V of the core) is computed
    by a ``Concat`` of a past graph input with the new keys/values, through head-path ops."""
    for _ in range(depth):
        n = v.producer() if v is not None else None
        if n is None or n.op_type not in head_path:
            return None
        if n.op_type == "Concat":
            past = [i for i in n.inputs if i is not None and i.is_graph_input()]
            if len(past) == 1:
                out = n.outputs[0]
                return past[0].name, out.name if out.is_graph_output() else None
        live = [i for i in n.inputs[:1 if n.op_type in ("Reshape", "Expand", "Unsqueeze", "Squeeze") else None]
                if i is not None and not is_const(i)]
        if len(live) != 1:
            return None
        v = live[0]
    return None


def cache_tensors(kt4: ir.Value | None, v4: ir.Value | None, head_path: set[str]) -> dict[str, str | None] | None:
    """The block's KV cache: past graph inputs and present graph outputs of its keys and values (None:
    no cache). ``head_path``: the ops allowed between the Concat and the core's K^T / V."""
    k, v = _cache_source(kt4, head_path), _cache_source(v4, head_path)
    if k is None and v is None:
        return None
    return {"past_key": k and k[0], "past_value": v and v[0], "present_key": k and k[1],
            "present_value": v and v[1]}


def mask_input(b: AttentionBlock, graph: ir.Graph) -> ir.Value | None:
    """The [B, past + seq] attention-mask graph input of a cached block, or None."""
    if b.mask is None or len(b.mask.inputs) != 1:
        return None
    v = next((x for x in graph.inputs if x.name == b.mask.inputs[0]), None)
    return v if v is not None and v.shape is not None and len(v.shape) == 2 else None


def cache_problem(b: AttentionBlock, graph: ir.Graph) -> str | None:
    """Why FFT-Mix cannot carry its state through this block's cache tensors (None: it can)."""
    c = b.cache
    names = {v.name for v in graph.inputs}
    outs = {v.name for v in graph.outputs}
    if None in (c["past_key"], c["past_value"], c["present_key"], c["present_value"]) \
            or c["past_key"] not in names or c["present_key"] not in outs or c["present_value"] not in outs:
        return f"KV cache tensors not all found as graph inputs/outputs ({c})"
    if mask_input(b, graph) is None:
        return "KV cache without a [batch, past + seq] attention-mask input: the past length is unknown"
    return None


def _graph_value(graph: ir.Graph, name: str, where) -> ir.Value:
    return next(v for v in where if v.name == name)


def past_length(model: ir.Model, b: AttentionBlock, h: ir.Value, memo: dict) -> ir.Value:
    """int64 [1]: attention-mask length minus the new tokens (``memo``: per block, the graph is pruned
    between blocks)."""
    if "past_length" not in memo:
        g = model.graph
        m = mask_input(b, g)
        t = f"n6_cache{b.index}"
        total = add_node(g, "", "Shape", [m], f"{t}_total", [1], ir.DataType.INT64, start=1, end=2)
        # the new tokens' count from a graph input with h's (symbolic) sequence dim (input_ids): Shape(h)
        # could depend on what the redirected past shapes feed, a cycle
        src = next((v for v in g.inputs if v is not m and v.shape is not None and len(v.shape) == 2
                    and h.shape is not None and v.shape[1] == h.shape[1]), h)
        seq = add_node(g, "", "Shape", [src], f"{t}_seq", [1], ir.DataType.INT64, start=1, end=2)
        memo["past_length"] = add_node(g, "", "Sub", [total, seq], f"{t}_past_length", [1], ir.DataType.INT64)
        memo["batch"] = add_node(g, "", "Shape", [m], f"{t}_batch", [1], ir.DataType.INT64, start=0, end=1)
    return memo["past_length"]


def _redirect_shapes(model: ir.Model, past: ir.Value, original_shape, memo: dict) -> None:
    """Shape(past) readers outside the rewritten block get the original past's shape [B, Hkv, P, dh]."""
    g = model.graph
    users = [n for n in consumers(past) if n.op_type == "Shape"]
    if not users:
        return
    dims = []
    for k, d in enumerate(original_shape):
        if k == 0:
            dims.append(memo["batch"])
        elif k == 2:
            dims.append(memo["past_length"])
        else:
            dims.append(add_initializer(g, np.array([int(d)], np.int64), f"{past.name}_n6_dim{k}"))
    full = add_node(g, "", "Concat", dims, f"{past.name}_n6_shape", [len(dims)], ir.DataType.INT64, axis=0)
    for n in users:
        sa, ea = n.attributes.get("start"), n.attributes.get("end")
        start, end = (sa.as_int() if sa is not None else 0), (ea.as_int() if ea is not None else len(dims))
        sl = add_node(g, "", "Slice", [full, add_initializer(g, np.array([start], np.int64), f"{n.name}_n6_s"),
                                       add_initializer(g, np.array([end], np.int64), f"{n.name}_n6_e")],
                      f"{n.name}_n6_shape", None, ir.DataType.INT64)
        ir.convenience.replace_all_uses_with(n.outputs[0], sl)


def _swap_output(graph: ir.Graph, name: str, value: ir.Value) -> None:
    old = _graph_value(graph, name, graph.outputs)
    i = list(graph.outputs).index(old)
    old.name = f"{name}_n6_replaced"
    graph.outputs[i] = value
    value.name = name


def fftmix_inputs(model: ir.Model, b: AttentionBlock, h: ir.Value, memo: dict) -> tuple[ir.Value, ir.Value]:
    """(Past, PastLength) for the FFTMix replacing cached block ``b``: the past key input, re-declared
    as the state [B, state, D], and the absolute past length. The past's other readers (Shape) get the
    original past's shape."""
    g = model.graph
    c = b.cache
    pl = past_length(model, b, h, memo)
    past = _graph_value(g, c["past_key"], g.inputs)
    pastv = _graph_value(g, c["past_value"], g.inputs)
    for v in (past, pastv):
        _redirect_shapes(model, v, list(v.shape), memo)
    D = h.shape[-1]
    past.shape = ir.Shape([h.shape[0], f"{c['past_key']}_state", D])
    pastv.shape = ir.Shape([h.shape[0], f"{c['past_value']}_empty", D])
    return past, pl


def fftmix_outputs(model: ir.Model, b: AttentionBlock, h: ir.Value, present: ir.Value, tag: str) -> None:
    """FFTMix's Present becomes the present key output; the present value output is empty [B, 0, D]."""
    g = model.graph
    c = b.cache
    D = h.shape[-1]
    present.type, present.shape = ir.TensorType(h.dtype), ir.Shape([h.shape[0], f"{c['present_key']}_state", D])
    _swap_output(g, c["present_key"], present)
    empty = add_node(g, "", "Slice", [present, add_initializer(g, np.array([0], np.int64), f"{tag}_zero"),
                                      add_initializer(g, np.array([0], np.int64), f"{tag}_zero_end"),
                                      add_initializer(g, np.array([1], np.int64), f"{tag}_axis1")],
                     f"{tag}_empty_value", [h.shape[0], 0, D], h.dtype)
    _swap_output(g, c["present_value"], empty)


def adapt_feeds(model: ir.Model, batches):
    """Calibration feeds (prefill: every past empty) for ``model`` as it is now: an empty past of a layer
    already rewritten to FFT-Mix becomes the empty state [B, 0, D] its input now declares. Other feeds
    are passed on unchanged; so is everything when nothing changed."""
    declared = {v.name: v.shape for v in model.graph.inputs if v.shape is not None}
    out = copy.copy(batches)
    for k, feeds in enumerate(batches):
        new = dict(feeds)
        for name, a in feeds.items():
            s = declared.get(name)
            if s is not None and a.size == 0 and len(s) != a.ndim and isinstance(s[-1], int):
                new[name] = np.zeros((a.shape[0], 0, s[-1]), a.dtype)
        out[k] = new
    return out
