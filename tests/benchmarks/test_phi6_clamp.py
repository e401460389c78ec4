"""benchmarks/phi6_clamp.py: its clamp-free copy of a model computes u*u - u + 1 for every BiasPhi6 (equal to the op
inside [-2, 2], the plain parabola outside), and its clamp statistics count the values outside [-2, 2]."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY



@pytest.fixture(scope="module")
def clamp(load_script):
    return load_script("phi6_clamp.py")


def _model(bias: np.ndarray) -> onnx.ModelProto:
    d = len(bias)
    g = helper.make_graph([helper.make_node("Identity", ["X"], ["Z"]),
                           helper.make_node("BiasPhi6", ["Z", "b"], ["Y"], domain=DOMAIN)], "g",
                          [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["n", d])],
                          [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["n", d])],
                          [numpy_helper.from_array(bias.astype(np.float32), "b")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(DOMAIN, 1)])


def _run(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(n6onnx.library_path()))
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]


def test_unclamped_is_the_parabola_and_the_op_inside_the_clamp(clamp):
    bias = np.array([0.5, -0.25, 0.0, 1.0], np.float32)
    m = _model(bias)
    x = np.random.default_rng(0).uniform(-4, 4, (64, 4)).astype(np.float32)
    flat = clamp.unclamped(m)
    assert not any(n.op_type == "BiasPhi6" for n in flat.graph.node)
    assert [n.op_type for n in m.graph.node] == ["Identity", "BiasPhi6"]  # the input model is not modified
    u = x.astype(np.float64) + bias
    np.testing.assert_allclose(_run(flat, x), u * u - u + 1, rtol=1e-5, atol=1e-5)
    inside = np.abs(u) <= 2
    ref = REGISTRY["BiasPhi6"].reference(x, bias)
    np.testing.assert_allclose(_run(flat, x)[inside], ref[inside], rtol=1e-5, atol=1e-5)
    assert np.abs(_run(flat, x)[~inside] - ref[~inside]).min() > 0  # outside, the clamp made a difference


def test_clamp_use_counts_values_outside(clamp):
    bias = np.array([0.0, 1.5], np.float32)
    m = _model(bias)
    x = np.array([[0.0, 0.0], [3.0, 0.4], [-1.0, 0.6], [0.5, -4.0]], np.float32)  # u outside [-2, 2]: col 0 once, col 1 twice
    layers = clamp.clamp_use(m, [{"X": x}])
    (l,) = layers
    assert l["tokens"] == 4 and l["units"] == 2
    assert l["clamped_share"] == pytest.approx(3 / 8)  # 3.0; 2.1 (0.6 + 1.5); -2.5 (-4 + 1.5)
    assert l["units_clamping_1pct"] == 1.0
    assert l["u_min"] == pytest.approx(-2.5) and l["u_max"] == pytest.approx(3.0)
