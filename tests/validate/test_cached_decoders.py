"""validate (and calibrated passes chained after an attention rewrite) on KV-cache decoder exports whose
rewrite re-laid out the cache (docs/decoders.md): each model gets its own empty past, the logits are
compared, the re-laid-out presents are reported as not compared, and a non-empty past is refused."""

from __future__ import annotations

import numpy as np
import pytest

import n6onnx
from n6onnx.errors import BadArgumentError
from n6onnx.feeds import load_npz
from n6onnx.runtime import InferenceSession
from n6onnx.testing import zoo_decoder as zd


def _max_logit_err(src, out, cal) -> float:
    """The independent reference: both models run by onnxruntime, each from its own empty past."""
    a, b = InferenceSession(str(src)), InferenceSession(str(out))
    err = 0.0
    for fd in load_npz(cal):
        tokens = {k: v for k, v in fd.items() if not k.startswith("past_key_values.")}
        batch = tokens["input_ids"].shape[0]
        la = a.run(["logits"], {**tokens, **zd.empty_past(src, batch)})[0]
        lb = b.run(["logits"], {**tokens, **zd.empty_past(out, batch)})[0]
        err = max(err, float(np.abs(la - lb).max()))
    return err


@pytest.mark.parametrize(("passes", "kinds", "relaid"), [
    (["attention=fftmix:@0", "gelu=phi6"], {"attention": 1, "gelu": 2}, [0]),  # calibrated pass after fftmix
    (["attention=egyptian"], {"attention": 2}, [0, 1]),
])
def test_validate_rewritten_cache(decoder_export, tmp_path, passes, kinds, relaid):
    src = decoder_export("gpt2")
    cal = zd.calibration_npz("gpt2", tmp_path / "cal.npz")
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, passes, calibrate=cal)
    assert {k: rep.reports[k].rewritten for k in kinds} == kinds
    v = n6onnx.validate(src, out, feeds=cal)
    skipped = {f"present.{i}.{kv}" for i in relaid for kv in ("key", "value")}
    assert set(v.outputs) == {"logits", *(set(zd.present_names()) - skipped)}
    for name in skipped:
        assert any(n.startswith(f"{name}: not compared") for n in v.notes), (name, v.notes)
    want = _max_logit_err(src, out, cal)
    assert want > 0 and v.outputs["logits"].max_abs_err == pytest.approx(want, rel=1e-6)

    past = tmp_path / "past.npz"  # a decode step's feeds: the past is not empty
    feeds = zd.example_inputs("gpt2", batch=2, seq=2, past=3)
    np.savez(past, **feeds)
    with pytest.raises(BadArgumentError, match="empty past"):
        n6onnx.validate(src, out, feeds=str(past))
