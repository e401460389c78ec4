"""What onnxruntime's CPU int8 kernel computes on this machine, measured rather than assumed.

``quantize_dynamic`` and ``quantize_static`` give MatMuls uint8 activations and int8 weights (u8s8). On an
x86 CPU without VNNI (AVX2, or AVX-512 without VNNI) onnxruntime's kernel multiplies them with VPMADDUBSW,
which adds each pair of neighbouring products along K (k = 2j, 2j + 1) into a *saturating* int16 before the
int32 sum: a pair whose sum leaves [-32768, 32767] is clipped there. Where the CPU has VNNI (or AMX, or on
ARM's dot-product kernels) the sum is exact. :func:`pairs_saturate` runs one small ``MatMulInteger`` whose
pairs must saturate and compares it with the exact product, once per process; ``heal.fakequant`` mirrors
the clipping where it happens, so a quantization-aware heal trains against what this CPU computes.
onnxruntime's own remedy on such CPUs is ``reduce_range`` (7-bit weights: a pair then stays below 2^15).

Which MatMuls of a quantized model run on that kernel is onnxruntime's choice when it optimises the graph:
a static QDQ MatMul whose bias Add it fuses into a Gemm first runs as a float Gemm of dequantized values
(exact), others as QGemm or QLinearMatMul (u8s8). :func:`integer_weights` reads that from onnxruntime's
own optimised graph.
"""

from __future__ import annotations

import functools
import os
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import N6Error
from ..runtime import session_for

PAIR_MIN, PAIR_MAX = -32768, 32767  # the int16 range VPMADDUBSW saturates to
# |a0 b0 + a1 b1| <= 255 (|b0 + b1|) for same-sign weights (and <= 255 x 128 otherwise): only a pair of int8
# weights whose sum reaches this can saturate, whatever the uint8 activations are
PAIR_WEIGHT_SUM = 129


@functools.lru_cache(maxsize=None)
def pairs_saturate() -> bool:
    """True where onnxruntime's CPU u8s8 integer MatMul clips pair sums to int16 on this machine."""
    import onnxruntime as ort

    m, k, n = 16, 64, 16  # the shape class of a real MatMul (packed B, the blocked kernel), every pair saturating
    a = np.full((m, k), 255, np.uint8)
    b = numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "probe",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [b])
    opsets = [helper.make_opsetid("", 13)]
    # the lowest IR version that opset needs, so an older onnxruntime than this onnx package's loads it too
    model = helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": a})[0]
    exact = k * 255 * 127
    if np.all(y == exact):
        return False
    if np.all(y == k // 2 * PAIR_MAX):
        return True
    raise N6Error(f"onnxruntime's u8s8 MatMulInteger gave {int(y.flat[0])} on this CPU, neither exact ({exact}) nor "
                  f"pairwise saturated ({k // 2 * PAIR_MAX}): its int8 kernel is not one n6onnx knows; name the "
                  "deployment CPU's with --int8-kernel exact or saturating (or heal with --no-heal-fake-quant)")


def kind() -> str:
    """This CPU's u8s8 int8 kernel, as reports name it: "saturating" (pair sums clipped to int16), "exact", or
    "unknown" (a kernel that gives neither: ``pairs_saturate`` raises)."""
    try:
        return "saturating" if pairs_saturate() else "exact"
    except N6Error:
        return "unknown"


# onnxruntime's integer MatMul kernels and the input that holds the constant int8 weight
INTEGER_OPS = {"QGemm": 3, "QLinearMatMul": 3, "MatMulIntegerToFloat": 1, "MatMulInteger": 1,
               "DynamicQuantizeMatMul": 1}


def integer_weights(q: onnx.ModelProto) -> set[str]:
    """The weight initializers of ``q`` that onnxruntime's CPU provider multiplies as integers once it has
    optimised the graph as a deployed session does (ORT_ENABLE_ALL): read from the optimised model it saves."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="n6onnx-fused-") as d:
        path = os.path.join(d, "fused.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3  # not the warning that a fully optimised model is hardware-specific: it is read here
        so.optimized_model_filepath = path
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "fused.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        session_for(q, so, providers=["CPUExecutionProvider"])
        fused = onnx.load(path, load_external_data=False)
    inits = {t.name for t in fused.graph.initializer}
    return {n.input[i] for n in fused.graph.node
            if (i := INTEGER_OPS.get(n.op_type)) is not None and len(n.input) > i and n.input[i] in inits}


def exact_products(q: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the integer model ``q`` that computes what an exact int8 kernel (VNNI, AMX, ARM's dot
    products) computes, on any CPU: every ``MatMulInteger`` becomes the same product of zero-point-shifted
    values in float64 (exact: a sum of up to 2^37 / (255 x 128) such products stays an integer below 2^53), cast
    back to its int32 output. On a CPU whose kernel clips pairs this is the model that a deployment CPU without
    that clipping runs; ``q`` is not modified."""
    nested = [n.name or n.op_type for n in q.graph.node for a in n.attribute
              if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
              and any(m.op_type == "MatMulInteger" for sub in ([a.g] if a.HasField("g") else list(a.graphs))
                      for m in sub.node)]
    nested += [f.name for f in q.functions if any(m.op_type == "MatMulInteger" for m in f.node)]
    if nested:
        raise N6Error(f"exact int8 products: MatMulInteger inside a subgraph or function ({', '.join(nested)}) is not "
                      "supported")
    out = onnx.ModelProto()
    out.CopyFrom(q)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for n in g.node:
        if n.op_type != "MatMulInteger" or n.domain not in ("", "ai.onnx"):
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (4 - len(n.input))
        shifted = []
        if ins[2] in inits and numpy_helper.to_array(inits[ins[2]]).size > 1:
            raise N6Error(f"{n.name or n.output[0]}: a per-row zero point of A is not supported here")
        for side, (x, zp) in enumerate(((ins[0], ins[2]), (ins[1], ins[3]))):
            name = f"{n.output[0]}_exact_{'ab'[side]}"
            if x in inits and (not zp or zp in inits):  # a constant operand: shifted once, here
                v = numpy_helper.to_array(inits[x]).astype(np.float64)
                if zp:  # a scalar, or (B) one per output column: broadcasts along the last axis
                    v = v - numpy_helper.to_array(inits[zp]).astype(np.float64)
                g.initializer.append(numpy_helper.from_array(v, name))
            else:
                nodes.append(helper.make_node("Cast", [x], [name + "_f"], to=TensorProto.DOUBLE))
                cur = name + "_f"
                if zp:
                    nodes.append(helper.make_node("Cast", [zp], [name + "_z"], to=TensorProto.DOUBLE))
                    nodes.append(helper.make_node("Sub", [cur, name + "_z"], [name]))
                else:
                    nodes.append(helper.make_node("Identity", [cur], [name]))
            shifted.append(name)
        y = f"{n.output[0]}_exact"
        nodes.append(helper.make_node("MatMul", shifted, [y], name=f"{n.name}_exact" if n.name else ""))
        nodes.append(helper.make_node("Cast", [y], [n.output[0]], to=TensorProto.INT32))
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in nodes for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]  # the int8 weights now read as float64 copies
    del g.initializer[:]
    g.initializer.extend(kept)
    return out
