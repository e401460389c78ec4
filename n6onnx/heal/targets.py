"""What healing trains and what it matches.

- ``stream_points``: the residual stream after each block, as values that exist under the same
  name in the original and the rewritten graph. It is the input of every LayerNormalization
  (post-LN: the sum after a block's residual add; pre-LN: the stream entering the next block)
  plus the residual add after each FFN that calibration fits (``calibrate`` uses the same
  ``blocks.find_ffn_blocks`` correspondence), so RMSNorm models are covered too.
- ``trainable``: by default the initializers of the rewritten blocks (float tensors that the
  rewrite created or changed); ``"neighbours"`` adds the LayerNorms and projections next to a
  rewritten node; ``"all"`` every float initializer of rank >= 1.
- ``local_targets``: the blocks for block-local reconstruction (each stream point computed from
  the teacher's previous stream points, as the executor's ``inject`` runs it).
- ``Teacher``: the original model in onnxruntime with the stream points as extra outputs (the
  pruned graph of ``calibrate.collect.with_outputs``), cached per batch up to a byte budget and
  recomputed beyond it, so memory stays bounded for big models; stream points can be kept in float16."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
import onnx_ir as ir

from ..calibrate import collect
import onnxruntime as ort

from ..ops import DOMAIN, REGISTRY
from ..runtime import session_for
from ..blocks import find_ffn_blocks
from .executor import needed

_PROJ = {"MatMul", "Gemm", "Add", "LayerNormalization", "Mul", "Conv"}


def _order(proto: onnx.ModelProto) -> dict[str, int]:
    return {o: k for k, n in enumerate(proto.graph.node) for o in n.output}


def stream_points(original: ir.Model, rewritten: onnx.ModelProto) -> list[str]:
    """Residual-stream values present in both graphs, in graph order (see the module docstring)."""
    oproto = ir.to_proto(original)
    names = {n.input[0] for n in oproto.graph.node if n.op_type == "LayerNormalization" and n.domain in ("", "ai.onnx")}
    blocks, _, _ = find_ffn_blocks(original)
    for b in blocks:
        if b.residual is None:
            continue
        for user, _ in b.out.uses():
            if user.op_type == "Add" and any(v is b.residual for v in user.inputs):
                names.add(user.outputs[0].name)
    order = _order(oproto)
    present = _order(rewritten)
    outs = {o.name for o in rewritten.graph.output}
    return sorted((n for n in names if n in order and n in present and n not in outs), key=order.get)


def local_targets(proto: onnx.ModelProto, streams: Sequence[str], outputs: Sequence[str],
                  names: Sequence[str]) -> list[str]:
    """The stream points and outputs whose block (what computes them from the previous stream
    points) holds a trainable initializer: the targets of block-local reconstruction, in order."""
    train, cut = set(names), set(streams)
    return [n for n in list(streams) + list(outputs) if needed(proto.graph, [n], cut) & train]


def local_blocks(proto: onnx.ModelProto, streams: Sequence[str], outputs: Sequence[str],
                 names: Sequence[str]) -> list[tuple[str, list[str], list[str]]]:
    """The blocks of sequential block-local reconstruction, in graph order: (target, the stream
    points its block reads, the trainable initializers it holds), for every target of
    ``local_targets``."""
    train, cut = set(names), set(streams)
    nodes = list(proto.graph.node)
    out = []
    for t in local_targets(proto, streams, outputs, names):
        need = needed(proto.graph, [t], cut - {t})
        reads = {i for n in nodes if any(o in need for o in n.output) for i in n.input}
        out.append((t, [s for s in streams if s != t and s in reads], sorted(need & train)))
    return out


def _floats(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in proto.graph.initializer
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
            and len(t.dims) >= 1}


def trainable(original: onnx.ModelProto, rewritten: onnx.ModelProto, which: str = "rewritten") -> list[str]:
    """Names of the initializers to train (see the module docstring). Frozen: everything else."""
    floats = _floats(rewritten)
    for name in _selecting_only(rewritten):
        floats.pop(name, None)
    if which == "all":
        return sorted(floats)
    orig = {t.name: t for t in original.graph.initializer}
    changed = set()
    for name, t in floats.items():
        o = orig.get(name)
        if o is None or o.dims != t.dims or not np.array_equal(onnx.numpy_helper.to_array(o),
                                                              onnx.numpy_helper.to_array(t)):
            changed.add(name)
    if which == "rewritten" and changed:
        return sorted(changed)
    # neighbours: initializers of projections / norms within a few hops of a rewritten node
    nodes = list(rewritten.graph.node)
    consumers: dict[str, list[int]] = {}
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    for k, n in enumerate(nodes):
        for i in n.input:
            consumers.setdefault(i, []).append(k)
    seeds = {k for k, n in enumerate(nodes) if n.domain == DOMAIN or any(i in changed for i in n.input)}
    near, frontier = set(seeds), set(seeds)
    for _ in range(4):
        nxt = set()
        for k in frontier:
            for o in nodes[k].output:
                nxt.update(consumers.get(o, ()))
            nxt.update(producer[i] for i in nodes[k].input if i in producer)
        frontier = nxt - near
        near |= nxt
    out = set(changed)
    for k in near:
        if nodes[k].op_type in _PROJ:
            out.update(i for i in nodes[k].input if i in floats)
    return sorted(out)


def _selecting_only(proto: onnx.ModelProto) -> set[str]:
    """Initializers that every reader takes at an n6 op's selecting (non-differentiable) input."""
    selecting, other = set(), set()
    for n in proto.graph.node:
        spec = REGISTRY.get(n.op_type) if n.domain == DOMAIN else None
        fixed = {k for k, name in enumerate(spec.inputs) if name in spec.selecting_inputs} if spec else set()
        for k, i in enumerate(n.input):
            (selecting if k in fixed else other).add(i)
    return selecting - other


def bias_partners(proto: onnx.ModelProto, names: Sequence[str]) -> dict[str, tuple[str, bool, str]]:
    """{bias name: (weight name, transposed, projection input name)} for each bias in ``names``
    added to a projection's output (Add after MatMul, Gemm's C, or an n6 Bias* activation's bias)."""
    want = set(names)
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name for t in proto.graph.initializer}
    out = {}
    for n in proto.graph.node:
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2] in want and n.input[1] in inits:
            tb = any(a.name == "transB" and a.i for a in n.attribute)
            out[n.input[2]] = (n.input[1], tb, n.input[0])
            continue
        if not (n.op_type == "Add" or n.domain == DOMAIN and n.op_type.startswith("Bias")):
            continue
        for i, b in enumerate(n.input[:2]):
            other = producer.get(n.input[1 - i])
            if b in want and other is not None and other.op_type == "MatMul" and other.input[1] in inits:
                out[b] = (other.input[1], False, other.input[0])
    return out


_F16_MAX = float(np.finfo(np.float16).max)


def compact(a: np.ndarray) -> np.ndarray:
    """``a`` rounded to float16 when it is float32 and every value is finite and within float16's range
    (relative rounding <= 2^-11), else ``a`` itself."""
    if a.dtype != np.float32 or not a.size:
        return a
    m = float(np.abs(a).max())
    return a.astype(np.float16) if np.isfinite(m) and m < _F16_MAX else a


class Teacher:
    """The original model's stream points and outputs per batch (numpy; the names in ``half`` as float16
    where they fit, see ``compact``: half the memory, so twice the batches stay cached)."""

    def __init__(self, original: ir.Model, names: Sequence[str], threads: int | None = None,
                 cache_bytes: int = 1 << 30, half: Sequence[str] = ()):
        self.names = list(names)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = session_for(collect.with_outputs(ir.to_proto(original), self.names), so, threads=threads)
        self.cache: dict[int, dict] = {}
        self.budget = cache_bytes
        self.used = 0
        self.half = set(half)

    def __call__(self, key: int, feeds: dict) -> dict[str, np.ndarray]:
        """The values of batch ``key``: the same whether they come from the cache or are recomputed
        (the names in ``half`` are rounded either way)."""
        if key in self.cache:
            return self.cache[key]
        res = {n: compact(a) if n in self.half else a for n, a in zip(self.names, self.session.run(self.names, feeds))}
        size = sum(a.nbytes for a in res.values())
        if self.used + size <= self.budget:
            self.cache[key] = res
            self.used += size
        return res
