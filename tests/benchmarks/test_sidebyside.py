"""benchmarks/_sidebyside.py, the side-by-side measurement of combined.py, headline.py, int8_guard.py, moe_int8.py,
quantize_modes.py, quantize_nbits8.py and tune_minilm.py: every variant gets a block in every round, and each
ratio is the reference's time over the variant's, so a variant that does many times the work of the reference
reads as well below 1x (a ratio taken the wrong way round, or blocks paired across variants wrongly, would not);
the int8 reference points are onnxruntime's own quantizer's models, and the faster is the anchor."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper



@pytest.fixture(scope="module")
def sbs(load_script):
    return load_script("_sidebyside.py")


def _chain(path: pathlib.Path, n: int, rows=64) -> pathlib.Path:
    """x [rows, 256] through n MatMuls with one 256 x 256 weight (each keeps the size, so n is the work)."""
    w = numpy_helper.from_array((np.random.default_rng(0).standard_normal((256, 256)) / 16).astype(np.float32), "w")
    nodes, prev = [], "x"
    for i in range(n):
        nodes.append(helper.make_node("MatMul", [prev, "w"], [f"h{i}"]))
        prev = f"h{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"]))
    g = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 256])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_ratios_point_the_right_way_and_every_variant_runs_every_round(sbs, tmp_path):
    one, many = _chain(tmp_path / "one.onnx", 1), _chain(tmp_path / "many.onnx", 24)
    res = sbs.side_by_side({"one": one, "many": many, "one_again": one}, one, None, threads=1, dims={},
                           seconds=0.9, block_seconds=0.15, warmup=0.1, layernorm="auto")
    v = res["variants"]
    assert set(v) == {"one", "many", "one_again"}
    assert all(x["fidelity"] is None for x in v.values())  # no held-out text: no fidelity
    assert v["one"]["speedup_vs_one"]["median"] == pytest.approx(1.0)  # the reference against itself
    # 24x the MatMuls: far slower than the reference and than the reference's copy, measured either way
    assert v["many"]["speedup_vs_one"]["median"] < 0.5
    assert v["many"]["speedup_vs_one_again"]["median"] < 0.5
    assert v["one_again"]["speedup_vs_many"]["median"] > 2.0
    assert v["many"]["latency_ms"]["median"] > 2 * v["one"]["latency_ms"]["median"]
    rounds = max(3, round(0.9 / 0.15))
    assert all(x["speedup_vs_one"]["n"] == rounds for x in v.values())  # one block of each variant per round
    assert f"{rounds} rounds" in res["method"]["timing"] and res["method"]["feed_shapes"] == {"x": [64, 256]}


def test_a_given_feed_is_what_is_timed(sbs, tmp_path):
    """``feed`` (a language model's ids must stay inside its vocabulary) replaces the random feeds of ``dims``."""
    one = _chain(tmp_path / "dyn.onnx", 1, rows="n")
    feed = {"x": np.ones((8, 256), np.float32)}
    res = sbs.side_by_side({"one": one}, one, None, threads=1, dims={"n": 3}, seconds=0.3, block_seconds=0.1,
                           warmup=0.05, layernorm="auto", feed=feed)
    assert res["method"]["feed_shapes"] == {"x": [8, 256]}
    res = sbs.side_by_side({"one": one}, one, None, threads=1, dims={"n": 3}, seconds=0.3, block_seconds=0.1,
                           warmup=0.05, layernorm="auto")
    assert res["method"]["feed_shapes"] == {"x": [3, 256]}


def test_int8_reference_points_are_ort_int8_in_both_orders_and_the_faster_is_the_anchor(sbs, tmp_path):
    """``int8_variants``: fp32 fused, and onnxruntime's stock per-channel int8 in both graph orders (integer
    MatMuls, the outputs of onnxruntime's own quantize_dynamic of the original); ``int8_anchor`` picks the one with the lower median latency."""
    import onnxruntime as ort

    from n6onnx.bench.session import SessionConfig

    src = _chain(tmp_path / "chain.onnx", 3)
    variants, fuse, _ = sbs.int8_variants(src, SessionConfig("cpu", 0, 1), tmp_path / "work")
    assert set(variants) == {"fp32", "int8", "int8_first"}
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(tmp_path / "stock.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    ref = ort.InferenceSession(str(tmp_path / "stock.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    for name in sbs.INT8:
        ops = {n.op_type for n in onnx.load(str(variants[name])).graph.node}
        assert not ops & {"MatMul"} and ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}, ops
        y = ort.InferenceSession(str(variants[name]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())  # the stock quantizer's model
    assert fuse(src).exists()
    runs = {"int8": {"latency_ms": {"median": 2.0}}, "int8_first": {"latency_ms": {"median": 1.5}}}
    assert sbs.int8_anchor(runs) == "int8_first"
    runs["int8"]["latency_ms"]["median"] = 1.0
    assert sbs.int8_anchor(runs) == "int8"
