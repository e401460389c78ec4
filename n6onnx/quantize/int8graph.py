"""Reading the graph that ``--quantize int8`` writes (onnxruntime's ``quantize_dynamic``, QInt8
weights per channel, QOperator format), for quantization-aware healing.

For every MatMul with a constant weight (and every Gemm, first turned into MatMul + Add),
``quantize_dynamic`` writes

    x -> DynamicQuantizeLinear -> (x_q, x_scale, x_zp)            (one per activation, shared)
    MatMulInteger(x_q, W_quantized, x_zp, W_zero_point) -> Cast(float) -> Mul(., x_scale * W_scale) -> Y

with ``W_quantized`` int8, ``W_scale`` one float per output column (``W_zero_point`` 0), and the
output ``Y`` under the MatMul's own name. ``quantized_matmuls`` finds, from the float model and its
quantized version, which MatMuls were replaced (keyed by output name: the student quantizes exactly
those; excluded nodes and MatMuls of two activations stay float). ``dequantize`` turns such a graph
back into the float graph the quantizer read (each weight as ``(W_quantized - W_zero_point) *
W_scale`` under its own name), so quantizing the result again reproduces the same graph and, for
unchanged weights, the same int8 values. Other quantized formats (static QDQ, int4 MatMulNBits,
per-tensor weights, onnxruntime's fused contrib ops) are refused by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BadArgumentError
from ..graph import proto_consumers

# quantized ops this module cannot turn back into the float graph, and what writes them
UNSUPPORTED = {
    "QuantizeLinear": "static QDQ int8 (--quantize int8:static) or a quantized Gather",
    "DequantizeLinear": "static QDQ int8 (--quantize int8:static) or a quantized Gather",
    "MatMulNBits": "weight-only int4 (--quantize int4)",
    "QLinearMatMul": "static QOperator int8", "QGemm": "static QOperator int8",
    "QAttention": "onnxruntime's quantized Attention", "DynamicQuantizeMatMul": "onnxruntime's fused int8 MatMul",
    "MatMulIntegerToFloat": "onnxruntime's fused int8 MatMul", "ConvInteger": "int8 Conv",
    "DynamicQuantizeLSTM": "int8 LSTM", "QLinearConv": "static QOperator int8",
}
QUANT_OPS = set(UNSUPPORTED) | {"DynamicQuantizeLinear", "MatMulInteger"}


def is_quantized(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in QUANT_OPS for n in proto.graph.node)


def _site(m: onnx.NodeProto, producer: dict, users: dict, inits: dict) -> dict | None:
    """The pieces of one quantized MatMul (see the module docstring), or None if ``m`` is not one."""
    if len(m.input) != 4 or not m.input[1].endswith("_quantized"):
        return None
    w = m.input[1][: -len("_quantized")]
    dql = producer.get(m.input[0])
    cast = users.get(m.output[0], [])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(cast) != 1 or cast[0].op_type != "Cast":
        return None
    mul = users.get(cast[0].output[0], [])
    if len(mul) != 1 or mul[0].op_type != "Mul":
        return None
    scales = producer.get(next((i for i in mul[0].input if i != cast[0].output[0]), ""))
    if scales is None or scales.op_type != "Mul" or sorted(scales.input) != sorted([dql.output[1], f"{w}_scale"]):
        return None
    if not {m.input[1], f"{w}_scale", m.input[3]} <= set(inits) or m.input[3] != f"{w}_zero_point":
        return None
    return {"node": m, "dql": dql, "cast": cast[0], "mul": mul[0], "scales": scales, "weight": w,
            "x": dql.input[0], "y": mul[0].output[0]}


def _sites(proto: onnx.ModelProto) -> list[dict]:
    producer = {o: n for n in proto.graph.node for o in n.output}
    users = proto_consumers(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    return [s for n in proto.graph.node if n.op_type == "MatMulInteger"
            for s in [_site(n, producer, users, inits)] if s is not None]


def quantized_matmuls(fproto: onnx.ModelProto, qproto: onnx.ModelProto) -> dict[str, bool]:
    """{output name of a float MatMul or Gemm of ``fproto``: True (weights per channel) / False (per
    tensor)} for every one that ``qproto`` (the quantizer's output for ``fproto``) replaced. The
    quantizer turns a Gemm (alpha = beta = 1, no transA) into a MatMul on the (transposed) weight,
    whose output is the Gemm's, or ``<output>_MatMul`` followed by the bias Add."""
    fout = {n.output[0]: n for n in fproto.graph.node if n.op_type in ("MatMul", "Gemm")}
    finit = {t.name: t for t in fproto.graph.initializer}
    qinit = {t.name: t for t in qproto.graph.initializer}
    out = {}
    for s in _sites(qproto):
        y, w = s["y"], s["weight"]
        f = fout.get(y)
        if f is None and y.endswith("_MatMul"):
            f = fout.get(y[: -len("_MatMul")])
            f = f if f is not None and f.op_type == "Gemm" and len(f.input) > 2 and f.input[2] else None
        if f is None or f.input[1] not in finit:
            continue
        trans = f.op_type == "Gemm" and any(a.name == "transB" and a.i for a in f.attribute)
        if w != f.input[1] and not (trans and w.startswith(f"{f.input[1]}_Transposed")):
            continue
        n_out = finit[f.input[1]].dims[0 if trans else -1]
        out[f.output[0]] = int(np.prod(qinit[f"{w}_scale"].dims, dtype=np.int64)) == n_out and n_out > 1
    return out


def dequantize(qproto: onnx.ModelProto) -> onnx.ModelProto:
    """The float graph that ``--quantize int8`` turned into ``qproto`` (a copy; ``qproto`` is not
    modified). Raises BadArgumentError, naming the ops, for any quantized format other than it."""
    bad = sorted({n.op_type for n in qproto.graph.node if n.op_type in UNSUPPORTED})
    if bad:
        kinds = sorted({UNSUPPORTED[b] for b in bad})
        raise BadArgumentError(
            f"healing a quantized model supports the dynamic int8 that --quantize int8 writes (DynamicQuantizeLinear "
            f"-> MatMulInteger, weights per channel) and the MatMulNBits of --quantize int4; this model has "
            f"{', '.join(bad)} ({'; '.join(kinds)}): heal "
            "the float model with `n6onnx rewrite --quantize MODE --heal` instead")
    sites = _sites(qproto)
    stray = [n.name or n.output[0] for n in qproto.graph.node if n.op_type == "MatMulInteger"]
    if len(stray) != len(sites):
        raise BadArgumentError(f"healing a quantized model: {len(stray) - len(sites)} MatMulInteger node(s) are not in "
                               "the form --quantize int8 writes (DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul)")
    out = onnx.ModelProto()
    out.CopyFrom(qproto)
    inits = {t.name: t for t in out.graph.initializer}
    drop_nodes: set[int] = set()
    replace: dict[int, onnx.NodeProto] = {}
    drop_inits: set[str] = set()
    index = {id(n): k for k, n in enumerate(qproto.graph.node)}
    new_w = []
    for s in sites:
        w = s["weight"]
        q = numpy_helper.to_array(inits[f"{w}_quantized"]).astype(np.float32)
        scale = numpy_helper.to_array(inits[f"{w}_scale"]).astype(np.float32)
        zp = numpy_helper.to_array(inits[f"{w}_zero_point"]).astype(np.float32)
        if q.ndim != 2 or scale.size != q.shape[1] or q.shape[1] == 1:
            raise BadArgumentError(f"healing a quantized model: weight {w} is quantized per tensor; only the per-channel "
                                   "int8 of --quantize int8 can be quantized again the same way")
        new_w.append(numpy_helper.from_array((q - zp) * scale, w))
        name = s["node"].name[: -len("_quant")] if s["node"].name.endswith("_quant") else s["node"].name
        replace[index[id(s["node"])]] = onnx.helper.make_node("MatMul", [s["x"], w], [s["y"]], name=name)
        drop_nodes.update(index[id(s[k])] for k in ("cast", "mul", "scales"))
        drop_inits.update({f"{w}_quantized", f"{w}_scale", f"{w}_zero_point"})
    nodes = [replace.get(k, n) for k, n in enumerate(qproto.graph.node) if k not in drop_nodes]
    used = {i for n in nodes for i in n.input}
    nodes = [n for n in nodes if n.op_type != "DynamicQuantizeLinear" or any(o in used for o in n.output)]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    keep = [t for t in out.graph.initializer if t.name not in drop_inits]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + new_w)
    names = {o for n in nodes for o in n.output}
    keep_vi = [v for v in out.graph.value_info if v.name in names]
    del out.graph.value_info[:]
    out.graph.value_info.extend(keep_vi)
    return out


def structure(proto: onnx.ModelProto) -> list[tuple]:
    """The node structure (op, domain, inputs, outputs) in graph order: what re-quantizing must keep."""
    return [(n.op_type, n.domain, tuple(n.input), tuple(n.output)) for n in proto.graph.node]
