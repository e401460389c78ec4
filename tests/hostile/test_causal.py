"""Causality: every attention rewrite refuses a block with a causal mask (no causal mode yet), says
why in inspect and rewrite, and the rewritten decoder's earlier positions never see a later token."""

from __future__ import annotations

import json

import numpy as np
import pytest

import n6onnx
from n6onnx.testing import zoo
from n6onnx.runtime import InferenceSession

PASSES = ["attention=fftmix:@0", "attention=fftmix:@0,1", "attention=egyptian", "attention=egyptian:full"]


def _run(path, feeds):
    s = InferenceSession(str(path))
    return s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})[0]


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("pass_", PASSES)
def test_causal_block_refused_and_future_token_invisible(zoo_export, tmp_path, model, pass_):
    src = zoo_export(model, "dynamo20")
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, [pass_])
    att = rep.reports["attention"]
    assert att.rewritten == 0
    assert att.near_misses and all("causal mask" in m.reason for m in att.near_misses)
    feeds = zoo.example_inputs(model, 2, 16)
    later = {k: v.copy() for k, v in feeds.items()}
    later["input_ids"][:, -1] = (later["input_ids"][:, -1] + 7) % zoo._vocab_size(model)
    a, b = _run(out, feeds), _run(out, later)
    # positions 0..14 must not move when only token 15 changes; the last one must
    assert np.abs(a[:, :-1] - b[:, :-1]).max() == 0.0
    assert np.abs(a[:, -1] - b[:, -1]).max() > 0.0


def test_inspect_says_why_causal_blocks_are_refused(zoo_export, hx):
    src = zoo_export("gpt2", "dynamo20")
    r = hx.cli("inspect", src, "--json")
    assert r.exit_code == 0, r.output
    att = json.loads(r.output)["attention"]
    assert att["found"] == 2 and all("causal mask" in s["refused"] for s in att["sites"])
    assert len(att["notes"]) == 2
    r = hx.cli("inspect", src)
    assert r.exit_code == 0 and "causal mask" in r.output


def test_encoder_blocks_are_not_called_causal(zoo_export):
    rep = n6onnx.inspect(zoo_export("bert", "dynamo20"))
    assert all("refused" not in s.detail for s in rep.kinds["attention"].sites)
    assert not rep.kinds["attention"].notes


@pytest.mark.parametrize("model", ["gpt2", "llama"])
@pytest.mark.parametrize("form", ["kv", "nokv"])
def test_decoder_exports_refused_too(decoder_export, tmp_path, model, form):
    """Dynamic-shape decoder exports compute their causal mask at run time (no constant triangle): the
    attention rewrites still see it and refuse, and the output is unchanged."""
    from n6onnx.testing import zoo_decoder as zd

    src = decoder_export(model, form=form)
    out = tmp_path / "r.onnx"
    for pass_ in PASSES:
        _, rep = n6onnx.rewrite(src, out, [pass_])
        att = rep.reports["attention"]
        assert att.rewritten == 0 and all("causal mask" in m.reason for m in att.near_misses), pass_
    feeds = zd.example_inputs(model, batch=2, seq=6, past=3 if form == "kv" else 0, form=form)
    s0, s1 = InferenceSession(str(src)), InferenceSession(str(out))
    np.testing.assert_array_equal(s0.run(None, feeds)[0], s1.run(None, feeds)[0])
