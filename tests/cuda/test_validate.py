"""``n6onnx validate --provider cuda``: the candidate runs on the CUDA provider (as deployed on a GPU),
the original on the CPU provider; the reported figures equal those computed here from onnxruntime
sessions run directly (CPU float32 reference, CUDA candidate)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import n6onnx

CPU = "CPUExecutionProvider"
pytestmark = pytest.mark.cuda


def _mlp(path) -> None:
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32) / 4, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((64, 8)).astype(np.float32) / 8, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Gelu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["logits"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])], [w1, w2])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), str(path))


def test_validate_runs_the_candidate_on_cuda(target, tmp_path):
    import onnxruntime as ort
    from onnxruntime.transformers.float16 import convert_float_to_float16

    original, fp16 = tmp_path / "mlp.onnx", tmp_path / "mlp-fp16.onnx"
    _mlp(original)
    onnx.save(convert_float_to_float16(onnx.load(str(original)), keep_io_types=True), str(fp16))
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((16, 32)).astype(np.float32)} for _ in range(3)]

    provider = "cpu" if target.provider == CPU else "cuda"  # the CPU in a dry run (conftest)
    rep = n6onnx.validate(original, fp16, feeds=feeds, provider=provider)
    assert rep.providers == {"original": CPU, "candidate": target.provider}

    ref = ort.InferenceSession(str(original), providers=[CPU])
    cand = ort.InferenceSession(str(fp16), providers=target.providers())
    o = np.concatenate([ref.run(None, f)[0] for f in feeds]).astype(np.float64)
    c = np.concatenate([cand.run(None, f)[0] for f in feeds]).astype(np.float64)
    cos = (o * c).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(c, axis=1)
    out = rep.outputs["logits"]
    assert rep.cosine_mean == pytest.approx(cos.mean(), abs=1e-9)
    assert out.max_abs_err == pytest.approx(np.abs(o - c).max(), rel=1e-6)
    assert out.logits["top1_agreement"] == pytest.approx(np.mean(o.argmax(1) == c.argmax(1)), abs=1e-12)
    assert 0 < out.max_abs_err < 0.05  # float16 rounding, not a float32 run
