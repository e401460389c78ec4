"""tune's reduced-precision stages (n6onnx.tune.stages): fp16, the CUDA provider's, against the float32
model run by onnxruntime; unknown modes are refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from n6onnx import feeds as feeds_mod
from n6onnx import vocab
from n6onnx.errors import N6Error
from n6onnx.tune import stages


def test_fp16_stage_converts_weights_and_keeps_float32_io(zoo_export, tmp_path):
    """The fused-graph converter's output: float16 weights, float32 inputs and outputs, the same outputs as
    the float32 model within float16 rounding (onnxruntime's CPU provider runs it through its casts)."""
    src = zoo_export("bert", "dynamo20")
    dst = tmp_path / "fp16.onnx"
    stages.quantize(src, dst, "fp16")
    m = onnx.load(str(dst))
    kinds = {t.data_type for t in m.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    assert kinds == {onnx.TensorProto.FLOAT16}
    assert [o.type.tensor_type.elem_type for o in m.graph.output] == \
        [o.type.tensor_type.elem_type for o in onnx.load(str(src)).graph.output]
    a, b = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (src, dst))
    feeds = feeds_mod.random_feeds(a, 1, {}, id_high=vocab.bounds(src))[0]
    ya, yb = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert yb.dtype == np.float32
    err = np.abs(ya - yb).max() / np.abs(ya).max()
    assert 0 < err < 2e-2  # rounded to float16, not a float32 run


def test_fp16_has_one_graph_order_and_unknown_modes_are_refused(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    out = stages.quantize_both_orders(src, src, lambda p: p, tmp_path, "fp16", "fp16")
    assert list(out) == [stages.FUSED_FIRST] and out[stages.FUSED_FIRST].is_file()
    with pytest.raises(N6Error, match="unknown quantization mode 'int3'"):
        stages.quantize(src, tmp_path / "x.onnx", "int3")
    assert stages.STAGE == {"cpu": "int8", "cuda": "fp16"}


def test_fp16_of_a_rewrite_still_runs_on_stock_onnxruntime(zoo_export, tmp_path):
    """An n6 node's model-local function is its fallback: after the float16 conversion a gelu=phi6 rewrite
    still runs without the n6onnx library, and agrees with the float32 rewrite within float16 rounding."""
    import n6onnx

    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "phi6.onnx", ["gelu=phi6"])
    stages.quantize(tmp_path / "phi6.onnx", tmp_path / "phi6-fp16.onnx", "fp16")
    assert any(n.domain == "n6onnx" for n in onnx.load(str(tmp_path / "phi6-fp16.onnx")).graph.node)
    a, b = (ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"])  # no library registered
            for p in ("phi6.onnx", "phi6-fp16.onnx"))
    feeds = feeds_mod.random_feeds(a, 1, {}, id_high=vocab.bounds(src))[0]
    ya, yb = a.run(None, feeds)[0], b.run(None, feeds)[0]
    assert 0 < np.abs(ya - yb).max() / np.abs(ya).max() < 2e-2


def test_the_int4_stage_is_fitted_to_its_rounding(zoo_export, tmp_path):
    """int4 with fit feeds: the weights are refitted and GPTQ-rounded onto MatMulNBits' grid (quantize.qfit),
    so on feeds the fit never saw the result is closer to the float model than the plain rounding; the same
    nodes either way."""
    from n6onnx.calibrate import load_batches
    from n6onnx.testing import zoo

    src = zoo_export("bert", "dynamo20")
    fit = load_batches(str(zoo.calibration_npz("bert", tmp_path / "fit.npz", batches=8)), onnx.load(str(src)))
    stages.quantize(src, tmp_path / "plain.onnx", "int4")
    stages.quantize(src, tmp_path / "fit.onnx", "int4", fit)
    plain, fitted = (onnx.load(str(tmp_path / p)) for p in ("plain.onnx", "fit.onnx"))
    assert [n.op_type for n in plain.graph.node] == [n.op_type for n in fitted.graph.node]
    assert sum(n.op_type == "MatMulNBits" for n in fitted.graph.node) > 0
    s0, s1, s2 = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                  for p in (src, tmp_path / "plain.onnx", tmp_path / "fit.onnx"))
    err = {1: 0.0, 2: 0.0}
    for f in feeds_mod.random_feeds(s0, 4, {}, seed=7, id_high=vocab.bounds(src)):
        y = s0.run(None, f)[0]
        err[1] += float(((s1.run(None, f)[0] - y) ** 2).mean())
        err[2] += float(((s2.run(None, f)[0] - y) ** 2).mean())
    assert err[2] < err[1]
