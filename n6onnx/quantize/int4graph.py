"""Reading the graph that ``--quantize int4[:BLOCK]`` writes (onnxruntime's ``MatMulNBitsQuantizer``:
symmetric 4-bit, blocks of BLOCK along K, no zero points), for quantization-aware healing.

For every MatMul with a constant weight ``W`` [K, N] it writes ``MatMulNBits(x, W_Q4, W_scales)``
with the MatMul's output: ``W_Q4`` [N, ceil(K / BLOCK), BLOCK / 2] packs two 4-bit values a byte (low
nibble first, stored as value + 8), ``W_scales`` one float per column and block. ``dequantize``
turns such a graph back into the float graph (each weight as its 4-bit values times its scales, under
its own name ``W``), so quantizing the result again with the same block gives the same graph and, for
unchanged weights, the same 4-bit values. Anything else (zero points, a bias or group index input,
other bit widths, mixed block sizes, other quantized ops) is refused by name.

``MatMulNBitsQuantizer`` quantizes MatMul only, so ``split_gemms`` first turns each Gemm with a
constant weight (alpha = beta = 1, no transA: the Linear layers of GPT-2-style exports) into
``MatMul(A, W) -> <Y>_MatMul`` and ``Add(<Y>_MatMul, C) -> Y`` (a transB weight stored transposed as
``<W>_T``), which ``--quantize int4`` then quantizes like any MatMul; ``split_outputs`` gives the
mapping from each Gemm's output to its MatMul's without copying the model.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import BadArgumentError
from . import int8graph

SUFFIX, SCALES = "_Q4", "_scales"


def is_int4(proto: onnx.ModelProto) -> bool:
    return any(n.op_type == "MatMulNBits" for n in proto.graph.node)


def _splittable(proto: onnx.ModelProto, keep=()):
    """The Gemms ``split_gemms`` splits: a constant weight, alpha = beta = 1, no transA, not in ``keep``."""
    keep, inits = set(keep), {t.name for t in proto.graph.initializer}
    for k, n in enumerate(proto.graph.node):
        if n.op_type != "Gemm" or n.domain not in ("", "ai.onnx") or n.input[1] not in inits or n.name in keep:
            continue
        a = _attrs(n)
        if a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0 and not a.get("transA", 0):
            yield k, n, bool(a.get("transB", 0)), len(n.input) > 2 and bool(n.input[2])


def split_outputs(proto: onnx.ModelProto, keep=()) -> dict[str, str]:
    """{Gemm output: the output of the MatMul ``split_gemms`` makes of it}, without copying the model."""
    return {n.output[0]: f"{n.output[0]}_MatMul" if bias else n.output[0] for _, n, _, bias in _splittable(proto, keep)}


def split_gemms(proto: onnx.ModelProto, keep=()) -> tuple[onnx.ModelProto, dict[str, str]]:
    """(a copy of ``proto`` with each Gemm of a constant weight as MatMul + Add, ``split_outputs``).
    Other Gemms, and those named in ``keep`` (excluded from quantization), stay."""
    split = {k: (trans, bias) for k, _, trans, bias in _splittable(proto, keep)}  # by index (protobuf wrappers
    # are made anew at each access, so their ids say nothing)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if not split:
        return out, {}
    inits = {t.name: t for t in proto.graph.initializer}
    nodes, new_w, outputs = [], {}, {}
    for k, n in enumerate(proto.graph.node):
        if k not in split:
            nodes.append(n)
            continue
        trans, bias = split[k]
        w = n.input[1]
        if trans:
            t = f"{w}_T"
            if t not in new_w:
                new_w[t] = numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[w]).T), t)
            w = t
        y = n.output[0]
        mm = f"{y}_MatMul" if bias else y
        name = n.name or y
        nodes.append(onnx.helper.make_node("MatMul", [n.input[0], w], [mm], name=f"{name}_MatMul"))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [mm, n.input[2]], [y], name=f"{name}_Add"))
        outputs[y] = mm
    used = {i for n in proto.graph.node for i in n.input}
    still = {i for n in nodes for i in n.input}
    kept = [t for t in out.graph.initializer if t.name in still or t.name not in used]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept + list(new_w.values()))
    return out, outputs


def _attrs(n: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}


def dequantize(qproto: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """(the float graph that ``--quantize int4:BLOCK`` turned into ``qproto``, "int4:BLOCK"); a copy."""
    other = sorted({n.op_type for n in qproto.graph.node if n.op_type in int8graph.QUANT_OPS} - {"MatMulNBits"})
    if other:
        raise BadArgumentError(f"healing an int4 model: it also has {', '.join(other)}; only the MatMulNBits graph "
                               "that --quantize int4 writes can be quantized again the same way")
    inits = {t.name: t for t in qproto.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(qproto)
    nodes, new_w, drop, blocks = [], [], set(), set()
    for n in qproto.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        a = _attrs(n)
        b_name = n.input[1]
        ok = (a.get("bits", 4) == 4 and len([i for i in n.input if i]) == 3 and b_name.endswith(SUFFIX)
              and b_name in inits and n.input[2] == b_name[: -len(SUFFIX)] + SCALES and n.input[2] in inits)
        if not ok:
            raise BadArgumentError(f"healing an int4 model: {n.name or n.output[0]} is not the symmetric 4-bit "
                                   "MatMulNBits (no zero points, bias or group index) that --quantize int4 writes")
        k, cols, block = int(a["K"]), int(a["N"]), int(a["block_size"])
        blob = numpy_helper.to_array(inits[b_name])
        scales = numpy_helper.to_array(inits[n.input[2]]).astype(np.float32).reshape(cols, -1)
        nib = np.stack([blob & 15, blob >> 4], -1).reshape(cols, scales.shape[1], block).astype(np.float32) - 8
        w = b_name[: -len(SUFFIX)]
        new_w.append(numpy_helper.from_array(
            np.ascontiguousarray((nib * scales[..., None]).reshape(cols, -1)[:, :k].T), w))
        name = n.name[: -len(SUFFIX)] if n.name.endswith(SUFFIX) else n.name
        nodes.append(onnx.helper.make_node("MatMul", [n.input[0], w], list(n.output), name=name))
        drop.update(n.input[1:3])
        blocks.add(block)
    if len(blocks) > 1:
        raise BadArgumentError(f"healing an int4 model: its MatMulNBits use several block sizes {sorted(blocks)}; "
                               "--quantize int4:BLOCK writes one")
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    keep = [t for t in out.graph.initializer if t.name not in drop]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + new_w)
    return out, f"int4:{blocks.pop() if blocks else 32}"
