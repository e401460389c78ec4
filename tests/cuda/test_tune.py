"""``n6onnx tune --provider cuda``: recipes timed on the CUDA provider against ORT's best fp32 original there,
float16 (the fused graph converted) as the reduced-precision stage instead of int8, fidelity measured on CUDA
(an independent onnxruntime CUDA run of the written model agrees), energy from NVML. In a dry run
(N6ONNX_CUDA_DRY_RUN=1, conftest) the same flow runs on the CPU provider with float16 as its stage."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from n6onnx.testing import zoo
from n6onnx.tune import stages
from n6onnx.tune.study import tune

pytestmark = pytest.mark.cuda
CPU = "CPUExecutionProvider"


def test_tune_on_cuda_searches_float16(target, zoo_export, tmp_path, monkeypatch):
    dry = target.provider == CPU
    provider = "cpu" if dry else "cuda"
    if dry:  # the CPU provider stands in for CUDA: give it CUDA's stage
        monkeypatch.setitem(stages.STAGE, "cpu", "fp16")
    src = zoo_export("bert", "dynamo20")
    data = zoo.calibration_npz("bert", tmp_path / "data.npz")
    rep = tune(src, tmp_path / "out.onnx", calibrate=data, min_cosine=0.9, trials=3, provider=provider,
               minutes=3, seconds_per_trial=1.0, block_seconds=0.25, heal=None)
    assert [(p.role, p.graph) for p in rep.references] == [("fp32", ""), ("fp16", stages.FUSED_FIRST)]
    assert rep.setting["provider"] == provider and rep.setting["stage"] == "fp16"
    assert rep.setting["energy"].startswith("estimated" if dry else "measured")  # NVML on CUDA
    assert all(p.recipe.quantize in (None, "fp16") for p in rep.trials)
    assert rep.chosen is not None and rep.chosen.speedup
    measured = [p for p in rep.references + rep.trials if p.fidelity]
    assert measured and {p.fidelity["provider"] for p in measured} == {target.provider}  # fidelity where it is timed
    # the chosen model's fidelity as an independent CUDA run sees it: held-out batches 3 and 7 (every 4th)
    d = np.load(data)
    held = [{n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")} for k in (3, 7)]
    so = ort.SessionOptions()
    so.register_custom_ops_library(target.cuda_lib)
    cand = ort.InferenceSession(str(tmp_path / "out.onnx"), so, providers=target.providers())
    ref = ort.InferenceSession(str(src), providers=[CPU])
    o = np.concatenate([ref.run(None, f)[0] for f in held]).astype(np.float64)
    c = np.concatenate([cand.run(None, f)[0] for f in held]).astype(np.float64)
    m = np.concatenate([f["attention_mask"] for f in held]).astype(np.float64)[..., None]
    po, pc = (o * m).sum(1) / m.sum(1), (c * m).sum(1) / m.sum(1)
    cos = (po * pc).sum(1) / np.linalg.norm(po, axis=1) / np.linalg.norm(pc, axis=1)
    assert rep.chosen.cosine == pytest.approx(cos.mean(), abs=1e-4)  # float16 kernels of the fused or split form
    if rep.chosen.recipe.quantize == "fp16":
        init = {t.data_type for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
        assert onnx.TensorProto.FLOAT16 in init


def test_int8_on_cuda_is_measured_and_explained(target, zoo_export, tmp_path):
    """``--stage int8 --provider cuda``: onnxruntime's CUDA provider has no dynamic int8 kernels, so the int8
    reference runs its quantized MatMuls on the CPU and is slower than fp32 on the GPU; tune measures that and its
    note says why. (Dry run: the CPU provider, where int8 is the default stage and no such note is given.)"""
    dry = target.provider == CPU
    src = zoo_export("bert", "dynamo20")
    data = zoo.calibration_npz("bert", tmp_path / "data.npz")
    rep = tune(src, None, calibrate=data, min_cosine=0.9, trials=1, provider="cpu" if dry else "cuda",
               stage="int8", minutes=2, seconds_per_trial=1.0, block_seconds=0.25, heal=None)
    assert rep.setting["stage"] == "int8" and [p.role for p in rep.references][:2] == ["fp32", "int8"]
    noted = any("no kernels for dynamic int8" in n for n in rep.notes)
    assert noted != dry
    if not dry:
        int8 = [p for p in rep.references if p.role == "int8"]
        assert int8 and all(p.speedup < 1 for p in int8)  # the CPU round trip: slower than fp32 there


def test_a_float16_rewrite_runs_on_stock_onnxruntime_cuda(target, zoo_export, tmp_path):
    """What `tune --provider cuda` writes may carry n6 nodes in float16: without the n6onnx library, their
    model-local fallback functions run on the CUDA provider in float16, within float16 rounding of the float32
    rewrite on the CPU."""
    import n6onnx
    from n6onnx import feeds as feeds_mod, vocab

    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "phi6.onnx", ["gelu=phi6"])
    stages.quantize(tmp_path / "phi6.onnx", tmp_path / "phi6-fp16.onnx", "fp16")
    half = onnx.load(str(tmp_path / "phi6-fp16.onnx"))
    assert any(n.domain == "n6onnx" for n in half.graph.node)
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in half.graph.initializer}
    a = ort.InferenceSession(str(tmp_path / "phi6.onnx"), providers=[CPU])
    b = ort.InferenceSession(str(tmp_path / "phi6-fp16.onnx"), providers=target.providers())  # no library
    assert b.get_providers()[0] == target.provider
    feeds = feeds_mod.random_feeds(a, 2, {}, id_high=vocab.bounds(src))
    for f in feeds:
        ya, yb = a.run(None, f)[0], b.run(None, f)[0]
        assert 0 < np.abs(ya - yb).max() / np.abs(ya).max() < 2e-2
