"""The phi-bottleneck FFN rewrite: structured pruning of FFN hidden units to round(RATIO * D).

With calibration data, units are chosen by greedy forward selection (``fit.greedy_units``) of
those that best explain the FFN's output, rows weighted by 1/var of the residual stream (see
``calibrate.stream_weights``). The ``select="energy"`` alternative ranks units by the energy they
put into the FFN output,
Var(h_j) * |W2_j|^2 (h_j the activation output, W2_j the unit's outgoing weights): a unit's mean
contribution is constant and moves into the down bias for free, so only its variance is lost when
it is removed. Without calibration data the rank is |W1_j| * |W2_j| (weights only) and nothing is
refitted. Gated FFNs cut their gate and up projections together. The down projection and its
bias are then refitted by ridge least squares against the original model, layer by layer, with
inputs from the already-pruned prefix (see ``calibrate``).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from ...blocks import FFNBlock, Projection, find_ffn_blocks, residual_of
from ...calibrate import (_bias_slot, _insert_add, _np, _set_input, collect, fit, layer_target, original_streams,
                          stream_weights, weighted_mse, weighted_var)
from ...graph import consumers
from .. import gelu


@dataclasses.dataclass
class PrunedLayer:
    block: str
    hidden_before: int
    hidden_after: int
    kept_energy: float | None  # share of the units' output energy kept (calibration data only)
    rel_err_prior: float | None
    rel_err: float | None
    ridge: float | None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _cut_weight(graph: ir.Graph, proj: Projection, keep: np.ndarray, axis_hidden: str, tag: str) -> None:
    """Keep hidden units ``keep`` of a projection. axis_hidden: 'out' (up/gate) or 'in' (down)."""
    w = _np(proj.weight)
    ax = {("out", False): 1, ("out", True): 0, ("in", False): 0, ("in", True): 1}[(axis_hidden, proj.transposed)]
    cut = np.ascontiguousarray(np.take(w, keep, axis=ax))
    del w  # no view of the old weight left: _set_input can unmap it
    _set_input(graph, proj.node, 1, cut, f"{proj.weight.name}_{tag}")


def _fix_reshapes(graph: ir.Graph, proj: Projection, old: int, new: int) -> None:
    """GPT-2-style Reshape around a Gemm carries the hidden width in its shape: a constant (a static
    export), or the last constant part of a Concat of runtime sizes (a dynamic-axes export:
    ``Concat(Shape(batch), Shape(seq), [H])``). The Concat is copied for this Reshape, so another
    Reshape reading the same shape keeps the old width."""
    for n in proj.nodes:
        if n.op_type != "Reshape" or len(n.inputs) < 2 or n.inputs[1] is None:
            continue
        s = ir.convenience.get_const_tensor(n.inputs[1])
        if s is not None:
            arr = s.numpy().copy()
            if arr.size and arr[-1] == old:
                arr[-1] = new
                _set_input(graph, n, 1, arr, f"{n.inputs[1].name}_n6cut")
            continue
        cat = n.inputs[1].producer()
        if cat is None or cat.op_type != "Concat" or not cat.inputs or cat.inputs[-1] is None:
            continue
        tail = ir.convenience.get_const_tensor(cat.inputs[-1])
        if tail is None or not tail.numpy().size or tail.numpy().reshape(-1)[-1] != old:
            continue
        arr = tail.numpy().reshape(-1).copy()
        arr[-1] = new
        tag = f"{n.outputs[0].name}_shape_n6cut"  # the Reshape's output name is unique (SSA)
        copy = ir.Node("", "Concat", list(cat.inputs), attributes=list(cat.attributes.values()),
                       name=tag, num_outputs=1)
        copy.outputs[0].name = tag
        copy.outputs[0].dtype = n.inputs[1].dtype
        copy.outputs[0].shape = n.inputs[1].shape
        graph.insert_before(n, copy)
        n.replace_input_with(1, copy.outputs[0])
        _set_input(graph, copy, len(cat.inputs) - 1, arr, f"{cat.inputs[-1].name}_n6cut")
        if not cat.outputs[0].uses() and not cat.outputs[0].is_graph_output():
            graph.remove(cat, safe=True)


def prune(model: ir.Model, blocks: Sequence[FFNBlock], ratio: float, original: ir.Model | None,
          batches: Sequence[dict] | None, *, refit: bool = True, threads: int | None = None,
          select: str = "greedy", progress=None) -> list[PrunedLayer]:
    """Cut ``blocks`` to round(ratio * D) hidden units (see the module docstring). ``progress``: an
    optional callable given a label per FFN while calibration data is used."""
    graph = model.graph
    orig = None
    if not blocks:
        return []
    if batches:
        orig = original_streams(original, blocks, batches, threads)
    layers = []
    sweep = collect.Sweep(batches, threads) if orig is not None else None
    for i, b in enumerate(blocks):
        if progress and orig is not None:
            progress(f"FFN {i + 1}/{len(blocks)} ({b.act.name or b.down.node.name})")
        H, D = b.hidden, b.d_model
        k = int(round(ratio * D))
        w2 = _np(b.down.weight).astype(np.float32)
        w2 = w2.T if b.down.transposed else w2  # [H, D]
        dslot = _bias_slot(b.down)
        b2 = _np(dslot[0].inputs[dslot[1]]).astype(np.float32) if dslot else np.zeros(w2.shape[1], np.float32)
        hname = b.down.node.inputs[0].name
        cur = None
        target = None
        if orig is not None:
            res = b.residual.name if b.residual is not None else None
            cur = sweep.step(model, [hname] + ([res] if res else []), res)
            h = cur[hname]
            energy = h.var(0) * (w2 * w2).sum(1)
            target = layer_target(orig, cur, b)
            wts = stream_weights(orig, b)
            keep = (fit.greedy_units(h, target, k, weights=wts) if select == "greedy"
                    else np.sort(np.argsort(-energy, kind="stable")[:k]))
        else:
            w1 = _np(b.up.weight).astype(np.float32)
            w1 = w1 if b.up.transposed else w1.T  # [H, D]
            energy = np.linalg.norm(w1, axis=1) * np.linalg.norm(w2, axis=1)
            keep = np.sort(np.argsort(-energy, kind="stable")[:k])
        drop = np.setdiff1d(np.arange(H), keep)
        kept_share = float(energy[keep].sum() / max(energy.sum(), 1e-30)) if orig is not None else None
        # cut the up (and gate) side
        for proj, act_bias_node in ((b.up, b.act), (b.gate, None)):
            if proj is None:
                continue
            _cut_weight(graph, proj, keep, "out", "n6cut")
            slot = _bias_slot(proj, act_bias_node)
            if slot is not None:
                bias = _np(slot[0].inputs[slot[1]])
                _set_input(graph, slot[0], slot[1], np.ascontiguousarray(bias[keep]), f"{slot[0].inputs[slot[1]].name}_n6cut")
            _fix_reshapes(graph, proj, H, k)
        for node in b.pre_shift + b.shift:  # a calibrated block's per-unit constants around the activation
            si = next(i for i, v in enumerate(node.inputs) if ir.convenience.get_const_tensor(v) is not None)
            sv = _np(node.inputs[si])
            if sv.ndim and sv.shape[-1] == H:
                _set_input(graph, node, si, np.ascontiguousarray(sv[..., keep]), f"{node.inputs[si].name}_n6cut")
        _fix_reshapes(graph, b.down, H, k)
        # the down side: prior = kept rows, dropped units' mean contribution moved into the bias
        w2_prior = w2[keep]
        b2_prior = b2 + (cur[hname][:, drop].mean(0) @ w2[drop] if cur is not None else 0)
        rel_prior = rel = lam = None
        w2_new, b2_new = w2_prior, b2_prior
        if cur is not None:
            var = weighted_var(target, wts)
            hk = cur[hname][:, keep]
            if refit:
                rf = fit.ridge_refit(hk, target, w2_prior, b2_prior, weights=wts)
                w2_new, b2_new, lam = rf.W, rf.b, rf.lam
                rel_prior, rel = rf.err_prior / var, rf.err / var
            else:
                rel_prior = rel = weighted_mse(hk @ w2_prior + b2_prior - target, wts) / var
        wd = _np(b.down.weight).dtype
        _set_input(graph, b.down.node, 1, np.ascontiguousarray((w2_new.T if b.down.transposed else w2_new).astype(wd)),
                   f"{b.down.weight.name}_n6cut")
        if dslot is not None:
            _set_input(graph, dslot[0], dslot[1], b2_new.astype(wd), f"{dslot[0].inputs[dslot[1]].name}_n6cut")
        elif np.any(b2_new != 0):
            _insert_add(graph, b.down.node.outputs[0], b2_new.astype(wd), f"{b.down.node.name}_n6cut_bias")
        layers.append(PrunedLayer(b.act.name or b.down.node.name, int(H), k, kept_share, rel_prior, rel, lam))
        forget_shapes(model)  # widths changed; later collections must not trust stale value_info
    return layers


def forget_shapes(model: ir.Model) -> None:
    outputs = {id(v) for v in model.graph.outputs}
    for node in model.graph.all_nodes():
        for v in node.outputs:
            if id(v) not in outputs:
                v.shape = None


def shapes(model: ir.Model) -> dict[str, ir.Shape]:
    """{value name: shape} of every node output with a known shape."""
    return {v.name: v.shape for n in model.graph.all_nodes() for v in n.outputs if v.name and v.shape is not None}


def reinfer_shapes(model: ir.Model, before: dict[str, ir.Shape], widths: set[int]) -> None:
    """Infer every node output's shape again after hidden widths changed, keeping the symbolic dims of ``before``.

    ONNX's inference from the graph inputs loses an exporter's symbolic dims across broadcasts (MiniLM's
    ``batch`` + the position slice's unknown dims give ``unk__2``), and onnxruntime's attention fusions need
    Q, K and V to agree on them: without this a bottlenecked MiniLM ran its attention unfused (+10 ms of the
    int8 model's 36 ms on 2 threads, benchmarks/op_breakdown.py). So where the inference now gives a symbolic
    dim, the earlier dim is kept: its name, or its size unless that size is a multiple of one of ``widths``
    (the hidden widths the pass cut, alone or fused with a gate, which the inference may not have reached).
    A dim inferred as a number keeps it."""
    forget_shapes(model)
    ShapeInferencePass()(model)
    for node in model.graph.all_nodes():
        for v in node.outputs:
            old = before.get(v.name)
            if old is None or v.shape is None or len(old) != len(v.shape):
                continue
            dims = [d if isinstance(d, int) or (isinstance(o, int) and any(o % w == 0 for w in widths)) else o
                    for d, o in zip(v.shape.dims, old.dims)]
            v.shape = ir.Shape(dims)


def map_blocks(model: ir.Model) -> list[FFNBlock]:
    """FFN blocks of ``model`` found on a copy whose GELUs are collapsed, mapped back by node name."""
    work = ir.from_proto(ir.to_proto(model))
    gelu.run(work, "phi6")
    found, _, _ = find_ffn_blocks(work)
    real = {n.name: n for n in model.graph}

    def proj(p: Projection | None) -> Projection | None:
        if p is None:
            return None
        node = real[p.node.name]
        bias_add = real[p.bias_add.name] if p.bias_add is not None else None
        users = consumers(node.outputs[0])
        if bias_add is None and node.op_type == "MatMul" and len(users) == 1 and users[0].op_type == "Add" \
                and sum(ir.convenience.get_const_tensor(i) is not None for i in users[0].inputs) == 1:
            bias_add = users[0]  # in the collapsed copy this bias was fused into the activation
        bias = None
        if bias_add is not None:
            bias = next(i for i in bias_add.inputs if ir.convenience.get_const_tensor(i) is not None)
        elif node.op_type == "Gemm" and len(node.inputs) > 2:
            bias = node.inputs[2]
        return Projection(node, node.inputs[1], bias, bias_add, [real[n.name] for n in p.nodes])

    out = []
    for b in found:
        act = real.get(b.act.name)
        if act is None:  # the activation was collapsed in the copy: use the down projection's input producer
            act = real[b.down.node.name].inputs[0].producer() or real[b.down.node.name]
        up = proj(b.up)
        if act.domain == "n6onnx" and act.op_type.startswith("Bias"):
            up.bias = act.inputs[1]
        down = proj(b.down)
        out_v = real[b.down.nodes[-1].name].outputs[0]
        residual = residual_of(out_v)
        out.append(FFNBlock(act, b.kind, b.act_labels, real[b.up.node.name].inputs[0], up, down, out_v, residual,
                                gated=b.gated, gate=proj(b.gate),
                                gate_mul=real[b.gate_mul.name] if b.gate_mul is not None else None,
                                shift=[real[n.name] for n in b.shift],
                                pre_shift=[real[n.name] for n in b.pre_shift]))
    return out
