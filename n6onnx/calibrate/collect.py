"""Intermediate tensors from onnxruntime: the model is run with the wanted values added as graph
outputs, pruned to the nodes they depend on. Token rows where the attention mask is 0 are dropped,
and so are the padding repeats of a last batch (``batches.rows``), so padding takes part in no fit.

Layer-by-layer calibration (``Sweep``) does not re-run the whole prefix for every layer: each step
is fed, as extra graph inputs, the values of a cut point saved by the previous step (a residual
stream upstream of everything the previous step changed), so the rewritten model is run about once
in all instead of once per layer."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ..feeds import input_specs, own_state
from ..runtime import session_for


def with_outputs(proto: onnx.ModelProto, names: Sequence[str], cut: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """A model whose outputs are ``names``, holding only the nodes and initializers they depend on
    (onnxruntime would otherwise still run the whole graph). Values in ``cut`` (name -> an example
    array) become graph inputs of the example's rank and width, other sizes dynamic (batches of a
    dynamic-axes model differ in size): nothing upstream of them is kept."""
    cut = cut or {}
    g = proto.graph
    all_nodes = list(g.node)
    producer = {o: k for k, n in enumerate(all_nodes) for o in n.output}
    needed, stack, keep = set(), list(names), set()
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        if v in cut:
            continue
        k = producer.get(v)
        if k is not None and k not in keep:
            keep.add(k)
            n = all_nodes[k]
            stack.extend(i for i in n.input if i)
            for a in n.attribute:  # values captured by subgraphs
                for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    stack.extend(i for sn in sg.node for i in sn.input if i)
    m = onnx.ModelProto(ir_version=proto.ir_version, producer_name=proto.producer_name,
                        producer_version=proto.producer_version, domain=proto.domain, model_version=proto.model_version)
    m.opset_import.extend(proto.opset_import)
    m.functions.extend(proto.functions)
    m.graph.name = g.name
    m.graph.node.extend(all_nodes[k] for k in sorted(keep))
    m.graph.initializer.extend(t for t in g.initializer if t.name in needed and t.name not in cut)
    m.graph.input.extend(g.input)
    for name, arr in cut.items():
        if any(i.name == name for i in g.input):
            continue
        m.graph.input.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype),
            [f"n6_cut_{k}" for k in range(arr.ndim - 1)] + list(arr.shape[-1:])))
    infos = {vi.name: vi for vi in list(g.value_info) + list(g.output) + list(g.input)}
    for n in names:
        m.graph.output.append(infos[n] if n in infos else onnx.helper.make_empty_tensor_value_info(n))
    return m


def subgraph_proto(model: ir.Model, names: Sequence[str], cut: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """``with_outputs(ir.to_proto(model), names, cut)`` without serialising the tensors it would drop:
    the nodes are converted (small), then only the initializers the kept nodes read. A model being
    calibrated holds its new weights in memory, so a whole-model proto per layer would copy all of
    them each time."""
    g = model.graph
    shell = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name or "",
                            producer_version=model.producer_version or "", domain=model.domain or "",
                            model_version=model.model_version or 0)
    shell.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items())
    shell.functions.extend(ir.serde.serialize_function(f) for f in model.functions.values())
    shell.graph.name = g.name or ""
    shell.graph.node.extend(ir.serde.serialize_node(n) for n in g)
    shell.graph.input.extend(ir.serde.serialize_value(v) for v in g.inputs)
    values = {v.name: v for n in g for v in n.outputs}
    shell.graph.value_info.extend(ir.serde.serialize_value(values[n]) for n in names
                                  if n in values and values[n].type is not None)
    m = with_outputs(shell, names, cut)
    used = {i for n in m.graph.node for i in n.input}
    for n in m.graph.node:  # values captured by subgraphs
        for a in n.attribute:
            for sg in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used.update(i for sn in sg.node for i in sn.input)
    m.graph.initializer.extend(ir.serde.serialize_tensor(v.const_value) for name, v in g.initializers.items()
                               if name in used and name not in (cut or {}) and v.const_value is not None)
    return m


def rows(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[..., H] -> [N, H], keeping only positions whose attention mask is 1 when it lines up."""
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)
    if mask is not None and mask.size == a.shape[0]:
        return a[mask.reshape(-1).astype(bool)]
    return a


def _real_rows(a: np.ndarray, mask: np.ndarray | None, n_real: int | None):
    """Drop the padding repeats of a last batch (rows past ``n_real`` along the batch axis)."""
    if n_real is None or mask is None or mask.ndim < 1 or n_real >= mask.shape[0]:
        return a, mask
    if a.ndim >= 1 and a.shape[0] == mask.shape[0]:
        return a[:n_real], mask[:n_real]
    return a, mask


def uint8_codes(a: np.ndarray) -> tuple[np.ndarray, np.float32, np.float32]:
    """(codes, scale, zero point) of onnxruntime's DynamicQuantizeLinear of ``a``: uint8 with one scale and zero
    point for the whole tensor, from its range widened to hold 0 (rounding half to even, as ORT does); the codes
    as float32 values in 0..255."""
    a = np.asarray(a, np.float32)
    lo, hi = min(0.0, float(a.min())), max(0.0, float(a.max()))
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zp = np.float32(np.clip(np.round(-lo / scale), 0, 255))
    return np.clip(np.round(a / scale) + zp, 0, 255), scale, zp


def dynamic_uint8(a: np.ndarray) -> np.ndarray:
    """``a`` after onnxruntime's DynamicQuantizeLinear and back (``uint8_codes``, dequantized)."""
    q, scale, zp = uint8_codes(a)
    return ((q - zp) * scale).astype(np.float32)


def collect(proto: onnx.ModelProto, names: Sequence[str], batches: Sequence[dict], threads: int | None = None,
            progress=None, *, cut: str | None = None, cut_values: Sequence[np.ndarray] | None = None,
            full: str | Sequence[str] | None = None, rounded: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """{name: [N, H] rows over all batches}. With ``cut``, the model starts at that value, fed with
    ``cut_values[i]`` on batch i. Each value named in ``full`` is also returned per batch,
    unflattened, under the key ``("full", name)``. The rows of the values named in ``rounded`` are
    taken after ``dynamic_uint8`` of each batch's whole tensor (what a dynamically quantized MatMul
    reading it multiplies); their ``full`` values stay unrounded, and the largest uint8 code each of their
    columns reaches over the rows is returned under ``("codes", name)`` ([H], float32)."""
    full = [full] if isinstance(full, str) else list(full or [])
    names = list(dict.fromkeys(list(names) + full))
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT warns about every initializer the pruned graph no longer uses
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle ORT threads would otherwise spin for a while after each run, against the numpy fits
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    example = {cut: cut_values[0]} if cut else None
    sess = session_for(with_outputs(proto, names, example), so, threads=threads)
    specs = input_specs(sess)  # a rewrite may have re-laid out a KV cache: empty pasts follow this model
    out: dict = {n: [] for n in names}
    kept: dict = {n: [] for n in full}
    top: dict = {}
    real = getattr(batches, "rows", None)  # rows of each batch that are real samples (not padding repeats)
    for i, feeds in enumerate(batches):
        mask = feeds.get("attention_mask")
        n_real = real[i] if real is not None else None
        if cut:
            feeds = {**feeds, cut: cut_values[i]}
        res = sess.run(names, own_state(specs, feeds))
        for n, a in zip(names, res):
            if n in kept:
                kept[n].append(a)
            if n not in rounded:
                out[n].append(rows(*_real_rows(a, mask, n_real)))
                continue
            q, scale, zp = uint8_codes(a)
            r = rows(*_real_rows(q, mask, n_real))
            out[n].append(((r - zp) * scale).astype(np.float32))
            if len(r):
                top[n] = np.maximum(top.get(n, 0), r.max(0))
        if progress is not None:
            progress()
    res = {n: np.concatenate(v, 0) for n, v in out.items()}
    res.update({("full", n): v for n, v in kept.items()})
    res.update({("codes", n): np.asarray(v, np.float32) for n, v in top.items()})
    return res


class Sweep:
    """Collect from a model that is being rewritten layer by layer, in graph order.

    ``step(model, names, cut)`` returns the rows of ``names`` from the model as it is now; ``cut``
    names a value that is upstream of everything later steps will change (the residual stream
    entering the current layer). Its values are kept and the next step starts there instead of at
    the graph inputs. The values named in ``full`` are also returned per batch, unflattened, under
    ``("full", name)`` (as ``collect`` does)."""

    def __init__(self, batches: Sequence[dict], threads: int | None = None):
        self.batches, self.threads = batches, threads
        self._cut: str | None = None
        self._values: list[np.ndarray] | None = None

    def step(self, model: ir.Model, names: Sequence[str], cut: str | None, full: Sequence[str] = ()) -> dict:
        example = {self._cut: self._values[0]} if self._cut else None
        proto = subgraph_proto(model, list(dict.fromkeys(list(names) + ([cut] if cut else []) + list(full))), example)
        res = collect(proto, names, self.batches, self.threads,
                      cut=self._cut, cut_values=self._values, full=([cut] if cut else []) + list(full))
        if cut:
            values = res[("full", cut)] if cut in full else res.pop(("full", cut))
        self._cut, self._values = (cut, values) if cut else (None, None)
        return res
