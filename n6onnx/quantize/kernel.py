"""What onnxruntime's CPU int8 kernel computes on this machine, measured rather than assumed.

``quantize_dynamic`` and ``quantize_static`` give MatMuls uint8 activations and int8 weights (u8s8). On an
x86 CPU without VNNI (AVX2, or AVX-512 without VNNI) onnxruntime's kernel multiplies them with VPMADDUBSW,
which adds each pair of neighbouring products along K (k = 2j, 2j + 1) into a *saturating* int16 before the
int32 sum: a pair whose sum leaves [-32768, 32767] is clipped there. Where the CPU has VNNI (or AMX, or on
ARM's dot-product kernels) the sum is exact. :func:`pairs_saturate` runs one small ``MatMulInteger`` whose
pairs must saturate and compares it with the exact product, once per process; ``heal.fakequant`` mirrors
the clipping where it happens, so a quantization-aware heal trains against what this CPU computes.
onnxruntime's own remedy on such CPUs is ``reduce_range`` (7-bit weights: a pair then stays below 2^15).
"""

from __future__ import annotations

import functools

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ..errors import N6Error

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
                  f"pairwise saturated ({k // 2 * PAIR_MAX}): its int8 kernel is not one n6onnx knows; heal with "
                  "--heal-int8-kernel exact or saturating (the deployment CPU's) or --no-heal-fake-quant")
