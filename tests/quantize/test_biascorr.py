"""DFQ bias correction after int8 (n6onnx.quantize.biascorr): on inputs with a large mean, the
corrected model's mean output error (against ORT running the float model) shrinks, and no node is
added or removed. The int8 models are measured as an exact int8 kernel (VNNI, AMX, ARM) runs them, on any
CPU (``kernel.exact_products``): a CPU whose kernel clips pair sums adds an input-dependent error that a
mean correction is not made for."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from n6onnx import quantize as Q
from n6onnx.quantize import kernel


def _linear(path, D=16, N=8):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((D, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["m"], name="mm"),
                           helper.make_node("Add", ["m", "b"], ["y"], name="bias")], "lin",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, N])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(path))


def _mean_err(path, ref, xs):
    exact = kernel.exact_products(onnx.load(str(path)))
    s, r = ort.InferenceSession(exact.SerializeToString()), ort.InferenceSession(str(ref))
    return np.abs(np.mean([s.run(None, {"x": x})[0] - r.run(None, {"x": x})[0] for x in xs], axis=(0, 1))).mean()


def test_bias_correction_removes_the_mean_shift(tmp_path):
    _linear(tmp_path / "f.onnx")
    rng = np.random.default_rng(1)
    feeds = [{"x": (4 + rng.standard_normal((32, 16))).astype(np.float32)} for _ in range(8)]
    held = [(4 + rng.standard_normal((32, 16))).astype(np.float32) for _ in range(8)]
    plain = Q.quantize(tmp_path / "f.onnx", tmp_path / "q.onnx", "int8", calibration_feeds=feeds, bias_correction=False)
    corr = Q.quantize(tmp_path / "f.onnx", tmp_path / "c.onnx", "int8", calibration_feeds=feeds, bias_correction=True)
    assert plain.bias_corrected == 0 and corr.bias_corrected == 1
    e_plain, e_corr = _mean_err(tmp_path / "q.onnx", tmp_path / "f.onnx", held), _mean_err(tmp_path / "c.onnx", tmp_path / "f.onnx", held)
    assert e_corr < 0.3 * e_plain, (e_corr, e_plain)
    ops = lambda p: sorted(n.op_type for n in onnx.load(str(p)).graph.node)
    assert ops(tmp_path / "c.onnx") == ops(tmp_path / "q.onnx")
