"""Passes on the KV-cache decoder exports (n6onnx.testing.zoo_decoder): the rewritten model keeps the
cache contract (input/output names) and its cached incremental decoding equals its own full run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import n6onnx
from n6onnx.runtime import InferenceSession
from n6onnx.testing import zoo_decoder as zd


def runner(path):
    s = InferenceSession(str(path))
    names = [o.name for o in s.get_outputs()]
    return lambda feeds: dict(zip(names, s.run(None, feeds)))


def assert_incremental_equals_full(path, model, seq=10, chunks=((1,) * 10, (3, 1, 4, 2)), atol=1e-4):
    run = runner(path)
    ids = zd.example_inputs(model, batch=2, seq=seq, seed=11)["input_ids"]
    full = zd.decode(run, model, ids, [seq])
    for c in chunks:
        inc = zd.decode(run, model, ids, list(c))
        for name, want in full.items():
            err = float(np.abs(inc[name] - want).max())
            assert err <= atol, (name, c, err)
    return full


def io_names(path):
    m = onnx.load(str(path), load_external_data=False)
    return [i.name for i in m.graph.input], [o.name for o in m.graph.output]


@pytest.mark.parametrize(("model", "passes", "kinds"), [
    ("gpt2", ["gelu=phi6"], {"gelu": 2}),                      # gelu_new (tanh form)
    ("gemma", ["gelu=phi6"], {"gelu": 2}),                     # gelu_pytorch_tanh, gated
    ("llama", ["ffn=phi-bottleneck"], {"ffn": 2}),             # SwiGLU FFN
    ("gemma", ["gelu=phi6", "ffn=phi-bottleneck"], {"gelu": 2, "ffn": 2}),  # two calibrated passes chained
    ("qwen2", ["ffn=phi-bottleneck", "gelu=phi6"], {"ffn": 2, "gelu": 0}),
])
def test_gelu_ffn_calibrated_on_kv_exports(decoder_export, tmp_path, model, passes, kinds):
    src = decoder_export(model)
    before = src.read_bytes()
    cal = zd.calibration_npz(model, tmp_path / "cal.npz")
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, passes, calibrate=cal)
    assert {k: rep.reports[k].rewritten for k in kinds} == kinds
    if "gelu" in kinds and kinds["gelu"]:
        assert {s.variant for s in rep.reports["gelu"].sites} == {"tanh"}
        assert rep.calibration is not None and len(rep.calibration.layers) == 2
    assert src.read_bytes() == before
    assert io_names(out) == io_names(src)
    got = assert_incremental_equals_full(out, model)
    # the calibrated model stays close to the original on held-out tokens (not the calibration ones)
    want = zd.decode(runner(src), model, zd.example_inputs(model, batch=2, seq=10, seed=11)["input_ids"], [10])
    rel = np.linalg.norm(got["logits"] - want["logits"]) / np.linalg.norm(want["logits"])
    assert rel < (0.5 if "ffn" in kinds else 0.05), rel
