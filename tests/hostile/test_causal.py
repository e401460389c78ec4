"""Causality: every attention rewrite of a causal block is causal (FFTMix / EgyptianAttention causal=1)
or refused with a reason in inspect and rewrite; a rewritten decoder's earlier positions never see a
later token."""

from __future__ import annotations

import json

import numpy as np
import pytest

import n6onnx
from n6onnx.testing import zoo
from n6onnx.testing import zoo_decoder as zd
from n6onnx.runtime import InferenceSession

PASSES = ["attention=fftmix:@0", "attention=fftmix:@0,1", "attention=egyptian", "attention=egyptian:full",
          "attention=egyptian:by-index:mha"]


def _run(path, feeds):
    s = InferenceSession(str(path))
    return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]


def _future_invisible(path, feeds, vocab):
    later = {k: v.copy() for k, v in feeds.items()}
    later["input_ids"][:, -1] = (later["input_ids"][:, -1] + 7) % vocab
    a, b = _run(path, feeds), _run(path, later)
    # positions 0..L-2 must not move when only the last token changes; the last one must
    assert np.abs(a[:, :-1] - b[:, :-1]).max() == 0.0
    assert np.abs(a[:, -1] - b[:, -1]).max() > 0.0


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("pass_", PASSES)
def test_causal_rewrite_never_sees_a_later_token(zoo_export, tmp_path, model, pass_):
    src = zoo_export(model, "dynamo20")
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, [pass_])
    att = rep.reports["attention"]
    assert att.rewritten == (1 if pass_.endswith("@0") else 2) and not att.near_misses
    assert all(s.detail["causal"] for s in att.sites)
    feeds = zoo.example_inputs(model, 2, 16)
    _future_invisible(out, feeds, zoo._vocab_size(model))
    if pass_ == "attention=egyptian:full":  # every head full + causal: the original attention
        np.testing.assert_allclose(_run(out, feeds), _run(src, feeds), atol=1e-4)


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_calibrated_causal_fftmix(zoo_export, token_npz, tmp_path, model):
    src = zoo_export(model, "dynamo20")
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, ["attention=fftmix:@0,1"], calibrate=token_npz(model, 12))
    for s in rep.reports["attention"].sites:
        assert s.detail["causal"] and s.detail["fit"]["rel_err"] < s.detail["fit"]["rel_err_default"]
    _future_invisible(out, zoo.example_inputs(model, 2, 16), zoo._vocab_size(model))


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_decoder_nokv_exports_rewritten_causally(decoder_export, tmp_path, model):
    """Dynamic-shape decoder exports compute their causal mask at run time (no constant triangle): it
    is still seen, and the rewrite is causal."""
    src = decoder_export(model, form="nokv")
    for pass_ in ("attention=fftmix:@0,1", "attention=egyptian"):
        out = tmp_path / f"{pass_[10:13]}.onnx"
        _, rep = n6onnx.rewrite(src, out, [pass_])
        assert rep.reports["attention"].rewritten == zd.LAYERS, pass_
        _future_invisible(out, zd.example_inputs(model, batch=2, seq=30, form="nokv"), zd.VOCAB)


def test_inspect_reports_causal_blocks_and_their_cache(decoder_export, hx):
    src = decoder_export("gpt2")
    r = hx.cli("inspect", src, "--json")
    assert r.exit_code == 0, r.output
    att = json.loads(r.output)["attention"]
    assert att["found"] == 2 and not att["notes"]
    assert all(s["mask"]["causal"] and s["cache"]["past_key"].startswith("past_key_values.") for s in att["sites"])
    r = hx.cli("inspect", src)
    assert r.exit_code == 0 and "-> present.1.key/present.1.value" in " ".join(r.output.split()).replace("-> ", "-> ")


def test_encoder_blocks_are_not_called_causal(zoo_export):
    rep = n6onnx.inspect(zoo_export("bert", "dynamo20"))
    assert all("refused" not in s.detail and not (s.detail["mask"] or {}).get("causal") for s in rep.kinds["attention"].sites)
    assert not rep.kinds["attention"].notes


def test_sliding_window_mask_is_refused(decoder_export, tmp_path):
    """Mistral's run-time mask bounds the window from below too (two position comparisons): the causal
    modes implement keys j <= i only, so every attention rewrite refuses it with the reason."""
    src = decoder_export("mistral", form="nokv")
    for s in n6onnx.inspect(src).kinds["attention"].sites:
        assert s.detail["mask"]["causal"] and s.detail["mask"]["plain_causal"] is False
        assert "not plain causal" in s.detail["refused"]
    for pass_ in ("attention=fftmix:@0,1", "attention=egyptian"):
        _, rep = n6onnx.rewrite(src, tmp_path / "r.onnx", [pass_])
        att = rep.reports["attention"]
        assert att.rewritten == 0 and len(att.near_misses) == 2
        assert all("not plain causal" in m.reason for m in att.near_misses)
