"""Passes on the KV-cache decoder exports (n6onnx.testing.zoo_decoder): the rewritten model keeps the
cache contract (input/output names) and its cached incremental decoding equals its own full run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import n6onnx
from n6onnx.ops import egyptian_attention as ea
from n6onnx.passes.attention import emit
from n6onnx.runtime import InferenceSession
from n6onnx.testing import zoo_decoder as zd


def runner(path, use_library=True):
    s = InferenceSession(str(path), use_library=use_library)
    names = [o.name for o in s.get_outputs()]
    return lambda feeds: dict(zip(names, s.run(None, feeds)))


def assert_incremental_equals_full(path, model, seq=10, chunks=((1,) * 10, (3, 1, 4, 2)), atol=1e-4):
    run = runner(path)
    ids = zd.example_inputs(model, batch=2, seq=seq, seed=11)["input_ids"]
    empty = zd.empty_past(path, 2)
    full = zd.decode(run, model, ids, [seq], past=empty)
    for c in chunks:
        inc = zd.decode(run, model, ids, list(c), past=empty)
        for name, want in full.items():
            assert inc[name].shape == want.shape, name
            err = float(np.abs(inc[name] - want).max(initial=0.0))
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


ATTENTION = [("attention=fftmix:@0", 1), ("attention=fftmix:@0,1", 2), ("attention=egyptian", 2),
             ("attention=egyptian:full", 2)]


def test_egyptian_cache_cut_at_long_context(decoder_export, tmp_path):
    """Past the window the local groups stop growing: 100 tokens decoded one by one equal the full run."""
    src = decoder_export("gpt2")
    out = tmp_path / "r.onnx"
    n6onnx.rewrite(src, out, ["attention=egyptian"])
    full = assert_incremental_equals_full(out, "gpt2", seq=100, chunks=((1,) * 100, (70, 30)))
    # gpt2 kinds [full, full, local, global]: 2 x 100 + 63 + 1 rows instead of 4 x 100
    assert full["present.0.key"].shape == (2, 1, 2 * 100 + emit.WINDOW - 1 + emit.SINKS, zd.HEAD_DIM)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_egyptian_cache_is_one_node_per_layer(decoder_export, tmp_path, model):
    """The cache update and the attention of every kind are one EgyptianAttention node per layer (cache
    mode: packed past in, packed presents out), and its function fallback decodes as the kernel does."""
    src = decoder_export(model)
    out = tmp_path / "r.onnx"
    n6onnx.rewrite(src, out, ["attention=egyptian"])
    m = onnx.load(str(out), load_external_data=False)
    nodes = [n for n in m.graph.node if n.op_type == "EgyptianAttention"]
    assert len(nodes) == zd.LAYERS
    outputs = {o.name for o in m.graph.output}
    for i, n in enumerate(nodes):
        assert len(n.input) == 6 and len(n.output) == 3
        assert list(n.input[4:]) == [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        # the presents are the node's outputs (through at most a renaming Identity)
        producers = {o: n2 for n2 in m.graph.node for o in n2.output}
        for o, name in zip(n.output[1:], (f"present.{i}.key", f"present.{i}.value")):
            assert o == name or (producers[name].op_type == "Identity" and producers[name].input[0] == o)
        assert {f"present.{i}.key", f"present.{i}.value"} <= outputs
    assert {f.overload for f in m.functions if f.name == "EgyptianAttention"} == {"cache_present"}
    ids = zd.example_inputs(model, batch=2, seq=12, seed=5)["input_ids"]
    kernel = zd.decode(runner(out), model, ids, [5, 1, 6], past=zd.empty_past(out, 2))
    fallback = zd.decode(runner(out, use_library=False), model, ids, [5, 1, 6], past=zd.empty_past(out, 2))
    for name, want in kernel.items():
        assert np.abs(fallback[name] - want).max() <= 1e-4, name


@pytest.mark.parametrize("model", zd.MODELS)
@pytest.mark.parametrize(("pass_", "n"), ATTENTION)
def test_causal_attention_on_kv_exports(decoder_export, tmp_path, model, pass_, n):
    src = decoder_export(model)
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, [pass_])
    att = rep.reports["attention"]
    assert att.rewritten == n and not att.near_misses
    assert io_names(out) == io_names(src)  # names never change
    full = assert_incremental_equals_full(out, model, seq=30, chunks=((1,) * 30, (7, 1, 16, 6)))
    # a later token never moves an earlier position
    run = runner(out)
    ids = zd.example_inputs(model, batch=2, seq=30, seed=11)["input_ids"]
    later = ids.copy()
    later[:, -1] = (later[:, -1] + 7) % zd.VOCAB
    moved = zd.decode(run, model, later, [30], past=zd.empty_past(out, 2))["logits"]
    assert np.abs(moved[:, :-1] - full["logits"][:, :-1]).max() == 0.0
    D = zd.HEADS * zd.HEAD_DIM
    for i in range(zd.LAYERS):
        k, v = full[f"present.{i}.key"], full[f"present.{i}.value"]
        if pass_.startswith("attention=fftmix") and (i == 0 or n == 2):
            # FFT-Mix state: the inputs of the current 24-window; the value slot is empty
            assert k.shape == (2, 30 % 24, D) and v.shape == (2, 0, D)
            assert rep.reports["attention"].sites[0].detail["cache"]["present_key"] == "present.0.key"
        elif pass_ == "attention=egyptian":  # per-group cut: full groups all, local last 63, global the sink
            kinds = ea.default_group_kinds(zd.KV_HEADS[model], zd.KV_HEADS[model])
            rows = sum({0: 30, 1: min(30, emit.WINDOW - 1), 2: min(30, emit.SINKS)}[x] for x in kinds)
            assert k.shape == v.shape == (2, 1, rows, zd.HEAD_DIM)
            c = rep.reports["attention"].sites[i].detail["cache"]
            assert c["bytes_per_token"] == 2 * kinds.count(0) * zd.HEAD_DIM * 4
            assert c["bytes_per_token_original"] == 2 * zd.KV_HEADS[model] * zd.HEAD_DIM * 4
        else:  # egyptian:full and untouched layers keep the cache as it is
            assert k.shape == v.shape == (2, zd.KV_HEADS[model], 30, zd.HEAD_DIM)
    if pass_ == "attention=egyptian:full":  # every head full + causal: the original model
        want = zd.decode(runner(src), model, ids, [30])
        for name in want:
            assert np.abs(full[name] - want[name]).max() <= 1e-4, name


@pytest.mark.parametrize("model", ["gpt2", "llama"])
def test_calibrated_fftmix_on_kv_export(decoder_export, tmp_path, model):
    src = decoder_export(model)
    out = tmp_path / "r.onnx"
    _, rep = n6onnx.rewrite(src, out, ["attention=fftmix:@0,1"], calibrate=zd.calibration_npz(model, tmp_path / "c.npz"))
    for s in rep.reports["attention"].sites:
        assert s.detail["causal"] and s.detail["fit"]["rel_err"] < s.detail["fit"]["rel_err_default"]
    assert_incremental_equals_full(out, model, seq=30, chunks=((1,) * 30, (25, 5)))
