"""Intermediate tensors from onnxruntime: the model is run with the wanted values added as graph
outputs (ORT then prunes everything they do not depend on). Token rows where the attention mask
is 0 are dropped, so padding does not take part in any fit."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx

from ..runtime import InferenceSession


def with_outputs(proto: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``proto`` whose outputs are ``names``, pruned to the nodes they depend on
    (onnxruntime would otherwise still run the whole graph)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    all_nodes = list(m.graph.node)
    producer = {o: k for k, n in enumerate(all_nodes) for o in n.output}
    needed, stack, keep = set(), list(names), set()
    while stack:
        v = stack.pop()
        if v in needed:
            continue
        needed.add(v)
        k = producer.get(v)
        if k is not None and k not in keep:
            keep.add(k)
            n = all_nodes[k]
            stack.extend(i for i in n.input if i)
            for a in n.attribute:  # values captured by subgraphs
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    stack.extend(i for sn in g.node for i in sn.input if i)
    nodes = [all_nodes[k] for k in sorted(keep)]
    inits = [t for t in m.graph.initializer if t.name in needed]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    infos = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    del m.graph.output[:]
    for n in names:
        if n in infos:
            m.graph.output.append(infos[n])
        else:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


def rows(a: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """[..., H] -> [N, H], keeping only positions whose attention mask is 1 when it lines up."""
    a = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)
    if mask is not None and mask.size == a.shape[0]:
        return a[mask.reshape(-1).astype(bool)]
    return a


def collect(proto: onnx.ModelProto, names: Sequence[str], batches: Sequence[dict], threads: int | None = None,
            progress=None) -> dict[str, np.ndarray]:
    names = list(dict.fromkeys(names))
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ORT warns about every initializer the pruned graph no longer uses
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = InferenceSession(with_outputs(proto, names).SerializeToString(), so, threads=threads)
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feeds in batches:
        mask = feeds.get("attention_mask")
        res = sess.run(names, feeds)
        for n, a in zip(names, res):
            out[n].append(rows(a, mask))
        if progress is not None:
            progress()
    return {n: np.concatenate(v, 0) for n, v in out.items()}
