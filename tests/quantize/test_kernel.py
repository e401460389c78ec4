"""n6onnx.quantize.kernel: the probe of what onnxruntime's CPU u8s8 integer MatMul computes here. On random
uint8 x int8 operands of a real MatMul's size, onnxruntime equals the exact product where the probe says the
kernel does not clip, and the numpy reference of VPMADDUBSW (each pair of neighbouring products along K
clipped to int16, then summed) where it says it does; the two differ on these operands, so the probe's answer
is checked, whichever CPU runs the test."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from n6onnx.quantize import kernel


def pair_clipped(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a [M, K] uint8 @ b [K, N] int8 with each pair (2j, 2j + 1) of products clipped to int16 (K even)."""
    m, k = a.shape
    p = a.astype(np.int64).reshape(m, k // 2, 2, 1) * b.astype(np.int64).reshape(1, k // 2, 2, -1)
    return np.clip(p.sum(2), kernel.PAIR_MIN, kernel.PAIR_MAX).sum(1)


def test_onnxruntime_computes_what_the_probe_says():
    rng = np.random.default_rng(0)
    m, k, n = 64, 384, 96
    a = rng.integers(0, 256, (m, k)).astype(np.uint8)
    b = rng.integers(-127, 128, (k, n)).astype(np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], [numpy_helper.from_array(b, "b")])
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    y = sess.run(None, {"a": a})[0]
    exact, clipped = a.astype(np.int64) @ b.astype(np.int64), pair_clipped(a, b)
    assert not np.array_equal(exact, clipped)  # these operands tell the two kernels apart
    np.testing.assert_array_equal(y, clipped if kernel.pairs_saturate() else exact)


def test_an_unknown_kernel_is_a_clear_error(monkeypatch):
    """A CPU whose kernel gives neither the exact nor the pair-clipped probe result gets an N6Error that names
    the way out (a named kernel), not a crash or a wrong guess."""
    import pytest

    from n6onnx.errors import N6Error

    class Odd:  # a kernel that computes something else
        def __init__(self, *a, **k):
            pass

        def run(self, _outputs, feeds):
            return [np.full((feeds["a"].shape[0], 16), 7, np.int32)]

    kernel.pairs_saturate.cache_clear()
    monkeypatch.setattr(ort, "InferenceSession", Odd)
    try:
        with pytest.raises(N6Error, match="--int8-kernel exact or saturating"):
            kernel.pairs_saturate()
    finally:
        kernel.pairs_saturate.cache_clear()


def test_the_probe_loads_on_an_older_onnxruntime(monkeypatch):
    """The probe model carries the lowest IR version its opset needs, not this onnx package's newest (IR 14 here):
    an onnxruntime older than the onnx package (the GPU machine's reads IR <= 13) refused it, and every int8
    heal failed there before any work."""
    import onnx

    seen = []
    real = ort.InferenceSession

    def spy(model_bytes, *a, **k):
        seen.append(onnx.load_from_string(model_bytes))
        return real(model_bytes, *a, **k)

    kernel.pairs_saturate.cache_clear()
    monkeypatch.setattr(ort, "InferenceSession", spy)
    try:
        kernel.pairs_saturate()
    finally:
        kernel.pairs_saturate.cache_clear()
    (probe,) = seen
    assert probe.ir_version == 7  # what opset 13 needs (onnx's table); onnxruntime >= 1.3 reads it


def test_integer_weights_are_those_onnxruntime_multiplies_as_integers(zoo_export):
    """``integer_weights`` reads onnxruntime's optimised graph: every weight of the dynamic int8 model runs on
    an integer kernel; in the static QDQ model the MatMuls that onnxruntime fuses with their bias into a
    float Gemm first (10 of this BERT's 12) do not, the others (QGemm) do; a float model has none."""
    from n6onnx import feeds as F
    from n6onnx import io
    from n6onnx.quantize import quantize_proto
    from n6onnx.runtime import session_for

    proto = io.load_proto(zoo_export("bert", "dynamo20"))
    dyn = quantize_proto(proto, "int8")[1]
    quantized = {t.name for t in dyn.graph.initializer if t.name.endswith("_quantized")}
    assert quantized and kernel.integer_weights(dyn) == quantized
    cal = F.random_feeds(session_for(proto), 4, seed=10)
    static = quantize_proto(proto, "int8:static", calibration_feeds=cal)[1]
    weights = {n.input[0] for n in static.graph.node if n.op_type == "DequantizeLinear"
               and n.input[0].endswith("_quantized")}
    found = kernel.integer_weights(static)
    assert found and found < weights, (found, weights)
    assert kernel.integer_weights(proto) == set()


def test_kind_names_what_the_probe_found(monkeypatch):
    """``kind`` (bench's hardware record): the probe's answer by name, "unknown" where the probe refuses."""
    assert kernel.kind() == ("saturating" if kernel.pairs_saturate() else "exact")

    def unknown():
        raise kernel.N6Error("neither")
    monkeypatch.setattr(kernel, "pairs_saturate", unknown)
    assert kernel.kind() == "unknown"


def test_exact_products_computes_the_exact_int8_product_on_any_cpu():
    """``exact_products`` replaces MatMulInteger with the same product in float64: on saturating operands it
    equals the exact integer product (numpy, int64) wherever it runs, with constant and run-time zero points,
    per column on B; onnxruntime's own kernel on the original graph clips where the probe says it does."""
    rng = np.random.default_rng(1)
    m, k, n = 32, 384, 48
    a = rng.integers(180, 256, (m, k)).astype(np.uint8)  # high bytes and large same-sign weights: pairs leave int16
    b = rng.integers(90, 128, (k, n)).astype(np.int8) * np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    bz = rng.integers(-3, 4, n).astype(np.int8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"], name="mmi")], "g",
                          [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k]),
                           helper.make_tensor_value_info("az", TensorProto.UINT8, [])],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
                          [numpy_helper.from_array(b, "b"), numpy_helper.from_array(bz, "bz")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    az = np.array(7, np.uint8)
    want = (a.astype(np.int64) - 7) @ (b.astype(np.int64) - bz.astype(np.int64))
    twin = kernel.exact_products(model)
    assert [x.op_type for x in model.graph.node] == ["MatMulInteger"]  # the input is not modified
    assert "MatMulInteger" not in [x.op_type for x in twin.graph.node]
    y = ort.InferenceSession(twin.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"a": a, "az": az})[0]
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, want)
    stock = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"a": a, "az": az})[0]
    assert np.array_equal(stock, want) != kernel.pairs_saturate()


def test_exact_products_refuses_a_matmulinteger_it_cannot_reach():
    """A MatMulInteger inside a subgraph (If branch) would be left on this CPU's kernel: refused by name."""
    import pytest

    inner = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y_in"], name="inner_mmi")], "then", [],
                              [helper.make_tensor_value_info("y_in", TensorProto.INT32, [2, 2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], name="branch", then_branch=inner, else_branch=inner)],
                          "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in
                                (("c", TensorProto.BOOL, []), ("a", TensorProto.UINT8, [2, 2]))],
                          [helper.make_tensor_value_info("y", TensorProto.INT32, [2, 2])],
                          [numpy_helper.from_array(np.ones((2, 2), np.int8), "b")])
    with pytest.raises(kernel.N6Error, match="subgraph or function.*branch"):
        kernel.exact_products(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]))
