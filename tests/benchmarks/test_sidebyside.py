"""benchmarks/_sidebyside.py, the side-by-side measurement of combined.py, int8_guard.py, quantize_modes.py and
tune_minilm.py: every variant gets a block in every round, and each ratio is the reference's time over the
variant's, so a variant that does many times the work of the reference reads as well below 1x (a ratio taken
the wrong way round, or blocks paired across variants wrongly, would not)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sbs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("n6_bench_sidebyside", ROOT / "benchmarks" / "_sidebyside.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


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
