"""Decoder zoo exports (KV cache and no cache) against the transformers models, and cached incremental
decoding against the full-sequence run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from n6onnx.runtime import InferenceSession
from n6onnx.testing import zoo_decoder as zd


def _session(path):
    s = InferenceSession(str(path))
    names = [o.name for o in s.get_outputs()]
    return lambda feeds: dict(zip(names, s.run(None, feeds)))


def _close(got, want, atol=1e-4):
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= atol, float(np.abs(got - want).max())


@pytest.mark.parametrize("model", zd.MODELS)
def test_kv_export_contract_and_reference(decoder_export, model):
    path = decoder_export(model)
    m = onnx.load(str(path))
    ins = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
    outs = [o.name for o in m.graph.output]
    assert list(ins) == zd.input_names("kv") and outs == zd.output_names("kv")
    assert ins["past_key_values.0.key"] == ["batch", zd.KV_HEADS[model], "past", zd.HEAD_DIM]
    assert ins["input_ids"] == ["batch", "seq"]
    run = _session(path)
    # the merged form: prefill (past 0) and decode steps (past > 0, one token and a chunk) on one graph
    for past, seq in ((0, 7), (5, 1), (4, 3)):
        feeds = zd.example_inputs(model, batch=2, seq=seq, past=past, seed=past + seq)
        got, want = run(feeds), zd.run_torch(model, feeds)
        for name in zd.output_names("kv"):
            _close(got[name], want[name])
        assert got["present.1.value"].shape[2] == past + seq


@pytest.mark.parametrize("model", zd.MODELS)
def test_nokv_export_matches_transformers(decoder_export, model):
    path = decoder_export(model, form="nokv")
    run = _session(path)
    feeds = zd.example_inputs(model, batch=2, seq=9, form="nokv", seed=3)
    _close(run(feeds)["logits"], zd.run_torch(model, feeds, form="nokv")["logits"])


@pytest.mark.parametrize("model", zd.MODELS)
def test_token_by_token_equals_full_run(decoder_export, model):
    kv, nokv = _session(decoder_export(model)), _session(decoder_export(model, form="nokv"))
    ids = zd.example_inputs(model, batch=2, seq=10, seed=7)["input_ids"]
    full = zd.decode(kv, model, ids, [10])
    for chunks in ([1] * 10, [4, 1, 3, 2]):
        inc = zd.decode(kv, model, ids, chunks)
        for name in full:
            _close(inc[name], full[name])
    nk = zd.example_inputs(model, batch=2, seq=10, form="nokv", seed=7)
    _close(nokv(nk)["logits"], full["logits"])


def test_opset18_export(decoder_export):
    path = decoder_export("llama", exporter="dynamo18")
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 18
    run = _session(path)
    ids = zd.example_inputs("llama", batch=1, seq=6, seed=2)["input_ids"]
    _close(zd.decode(run, "llama", ids, [1] * 6)["logits"], zd.decode(run, "llama", ids, [6])["logits"])


def test_bad_names_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown decoder zoo model"):
        zd.export("bert", tmp_path)
    with pytest.raises(ValueError, match="unknown form"):
        zd.example_inputs("llama", form="merged")
    with pytest.raises(ValueError, match="do not sum"):
        zd.decode(lambda f: f, "llama", np.zeros((1, 3), np.int64), [1, 1])
