"""The baseline really is fused (counted), a crashing optimizer is recorded not fatal, and a
rewritten candidate keeps its n6 nodes through the fusions."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from n6onnx.testing import zoo
from n6onnx import io
from n6onnx.bench import baseline
from n6onnx.quantize import quantize


def _runner(name):
    feeds = zoo.example_inputs(name)

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)

    return run


@pytest.mark.parametrize("name", ["bert", "minilm"])
def test_bert_like_baselines_are_fused(zoo_export, name):
    path = zoo_export(name, "dynamo18")
    run = _runner(name)
    res = baseline.fuse(path, run, run(path))
    layers = {"bert": 2, "minilm": 6}[name]
    assert res.chosen != "none"
    fused = baseline.count_ops(onnx.load(str(res.path)))
    assert fused == res.fused
    # every layer: attention, two skip-layer-norms, a fused GELU
    assert fused.get("Attention", 0) + fused.get("MultiHeadAttention", 0) == layers
    assert fused.get("SkipLayerNormalization", 0) == 2 * layers
    assert fused.get("BiasGelu", 0) + fused.get("Gelu", 0) + fused.get("FastGelu", 0) == layers
    assert res.original.fused_total == 0
    assert {a.optimizer for a in res.attempts} == set(baseline.OPTIMIZERS)
    chosen = next(a for a in res.attempts if a.optimizer == res.chosen)
    assert chosen.fused_total == max(a.fused_total for a in res.attempts if a.ok)
    assert chosen.max_abs_diff is not None and chosen.max_abs_diff < 1e-3
    j = res.to_json()
    assert j["fused_ops"] == sum(fused.values()) and len(j["attempts"]) == 3


def test_a_crashing_optimizer_is_recorded(bert, monkeypatch, tmp_path):
    def boom(proto, **_):
        raise RuntimeError("optimizer exploded")

    monkeypatch.setitem(baseline._STEPS, "onnxscript", (boom,))
    run = _runner("bert")
    res = baseline.fuse(bert, run, run(bert), optimizers=("onnxscript", "ort_transformers"), cache=tmp_path)
    by = {a.optimizer: a for a in res.attempts}
    assert "optimizer exploded" in by["onnxscript"].error and by["onnxscript"].path is None
    assert by["ort_transformers"].ok and res.chosen == "ort_transformers"


def test_wrong_outputs_are_rejected(bert, tmp_path):
    run = _runner("bert")
    bad_ref = [r + 1.0 for r in run(bert)]
    res = baseline.fuse(bert, run, bad_ref, optimizers=("ort_transformers",), cache=tmp_path)
    assert res.chosen == "none" and res.path == bert
    assert "differ" in res.attempts[0].error


def test_candidate_keeps_its_n6_nodes(bert_phi6):
    import n6onnx

    feeds = zoo.example_inputs("bert")

    def run(path):
        return n6onnx.InferenceSession(str(path)).run(None, feeds)

    res = baseline.fuse(bert_phi6, run, run(bert_phi6))
    assert res.chosen != "none"
    fused = onnx.load(str(res.path))
    assert baseline.count_ops(fused, "n6onnx") == baseline.count_ops(onnx.load(str(bert_phi6)), "n6onnx") != {}
    assert {f.name for f in fused.functions} >= set(baseline.count_ops(fused, "n6onnx"))
    assert res.fused.get("Attention", 0) == 2


def test_inferred_arguments(zoo_export):
    assert baseline.infer_heads_hidden(onnx.load(str(zoo_export("minilm", "dynamo18")))) == (12, 384)
    assert baseline.infer_model_type(onnx.load(str(zoo_export("vit", "dynamo18")))) == "vit"
    assert baseline.infer_model_type(onnx.load(str(zoo_export("gpt2", "dynamo18")))) == "gpt2"
    assert baseline.infer_model_type(onnx.load(str(zoo_export("bert", "dynamo18")))) == "bert"


def test_outputs_agree():
    a = np.ones((2, 3), np.float32)
    assert baseline.outputs_agree([a], [a + 1e-5], 1e-3)[0]
    assert not baseline.outputs_agree([a], [a + 1], 1e-3)[0]
    assert not baseline.outputs_agree([a], [np.ones((3, 2), np.float32)], 1e-3)[0]


def test_fusing_an_int8_graph_gives_a_valid_model(bert, tmp_path):
    """onnxruntime.transformers on a quantize_dynamic graph (no contrib op yet) adds com.microsoft nodes;
    the result must import that domain, or onnx (and n6onnx.io) refuses it though onnxruntime runs it."""
    q = tmp_path / "q.onnx"
    quantize(bert, q, "int8")
    run = _runner("bert")
    res = baseline.fuse(q, run, run(q), optimizers=("ort_transformers",), cache=tmp_path)
    assert res.chosen == "ort_transformers", res.attempts[0].error
    p = io.load_proto(res.path)  # onnx's checker
    assert any(n.domain == "com.microsoft" for n in p.graph.node)
    assert sum(n.op_type == "MatMulInteger" for n in p.graph.node) > 0  # fusion leaves the int8 MatMuls


def test_a_quantized_graph_may_agree_on_a_probe_feed(bert, tmp_path):
    """Dynamic int8 jumps where a rounding flips, so a fusion of a quantized graph that disagrees on the
    first feed is accepted when it agrees on one of the probe feeds, and says which; one that agrees on
    none is rejected, the error naming the probes."""
    q = tmp_path / "q.onnx"
    quantize(bert, q, "int8")
    run = _runner("bert")
    ref = run(q)
    bad = [r + 1.0 for r in ref]
    res = baseline.fuse(q, run, bad, optimizers=("ort_transformers",), cache=tmp_path / "a",
                        probes=[(run, bad), (run, ref)])
    assert res.chosen == "ort_transformers" and res.attempts[0].probe == 2, res.attempts[0].error
    res = baseline.fuse(q, run, bad, optimizers=("ort_transformers",), cache=tmp_path / "b", probes=[(run, bad)])
    assert res.chosen == "none" and "each of 1 probe feeds" in res.attempts[0].error


def test_a_quantized_fusion_that_agrees_on_no_feed_is_kept_when_faithful(bert, tmp_path):
    """Where every feed disagrees (int8 roundings flip), ``faithful`` decides: a fusion it accepts is kept
    (probe -1) and one it refuses is rejected, each asked about the fused file; the cache keeps the two
    apart."""
    q = tmp_path / "q.onnx"
    quantize(bert, q, "int8")
    run = _runner("bert")
    bad = [r + 1.0 for r in run(q)]
    asked = []
    res = baseline.fuse(q, run, bad, optimizers=("ort_transformers",), cache=tmp_path / "c", probes=[(run, bad)],
                        faithful=lambda p: asked.append(pathlib.Path(p)) or True)
    assert res.chosen == "ort_transformers" and res.attempts[0].probe == -1, res.attempts[0].error
    assert asked == [pathlib.Path(res.path)]
    res = baseline.fuse(q, run, bad, optimizers=("ort_transformers",), cache=tmp_path / "c", probes=[(run, bad)],
                        faithful=lambda p: False)
    assert res.chosen == "none" and "each of 1 probe feeds" in res.attempts[0].error


def test_tune_fuses_an_int8_graph_by_its_fidelity_to_the_float_original(bert, tmp_path, monkeypatch):
    """tune.measure.fuse with the float ``reference`` hands fuse a ``faithful`` that compares the fused file's
    error against the reference with the unfused graph's (bench.layernorm.faithfulness): the unfused graph
    itself is exactly as faithful (ratio 1), a graph that adds 1 to every output is not."""
    from n6onnx.bench.session import SessionConfig
    from n6onnx.tune import measure

    q = tmp_path / "q.onnx"
    quantize(bert, q, "int8")
    seen = {}
    real = baseline.fuse

    def spy(*args, **kw):
        seen["faithful"] = kw.get("faithful")
        return real(*args, **kw)

    monkeypatch.setattr(baseline, "fuse", spy)
    measure.fuse(q, SessionConfig("cpu", 0, 1), tmp_path / "f", reference=bert)
    assert seen["faithful"] is not None and seen["faithful"](q)
    shifted = tmp_path / "shifted.onnx"
    proto = io.load_proto(q)
    for o in proto.graph.output:
        node = onnx.helper.make_node("Add", [o.name + "_in", "one"], [o.name])
        for n in proto.graph.node:
            n.output[:] = [o.name + "_in" if x == o.name else x for x in n.output]
            n.input[:] = [o.name + "_in" if x == o.name else x for x in n.input]
        proto.graph.node.append(node)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((), np.float32), "one"))
    io.save(proto, shifted)
    assert not seen["faithful"](shifted)
    measure.fuse(q, SessionConfig("cpu", 0, 1), tmp_path / "g")  # no reference: the probes alone, as before
    assert seen["faithful"] is None


def test_tune_checks_a_quantized_graph_on_probe_feeds(bert, tmp_path, monkeypatch):
    from n6onnx.bench.session import SessionConfig
    from n6onnx.tune import measure

    seen = {}
    real = baseline.fuse

    def spy(path, run, ref, **kw):
        seen[pathlib.Path(path).name] = [r(path)[0].shape for r, _ in kw["probes"]]
        return real(path, run, ref, **kw)

    monkeypatch.setattr(baseline, "fuse", spy)
    q = tmp_path / "q.onnx"
    quantize(bert, q, "int8")
    cfg = SessionConfig("cpu", 0, 1)
    measure.fuse(bert, cfg, tmp_path / "c")
    measure.fuse(q, cfg, tmp_path / "c")
    assert seen[bert.name] == [] and len(seen["q.onnx"]) == baseline.PROBES


def test_the_cache_is_bounded_oldest_entry_first_never_a_recent_one(tmp_path):
    import os
    import time

    def entry(key: str, sizes: list[int], age: float) -> list[pathlib.Path]:
        files = [tmp_path / f"{key}{suffix}" for suffix in (".json", "-onnxscript.onnx", "-onnxscript.onnx.data")]
        for f, n in zip(files, sizes):
            f.write_bytes(b"x" * n)
            os.utime(f, (time.time() - age, time.time() - age))
        return files[:len(sizes)]

    old = entry("a" * 24, [10, 500, 500], 3 * 86400)
    older = entry("b" * 24, [10, 400], 5 * 86400)
    mid = entry("c" * 24, [10, 300], 2 * 86400)
    fresh = entry("d" * 24, [10, 2000], 60)  # used a minute ago: kept, even over the bound
    removed = baseline.prune_cache(tmp_path, max_bytes=2500)
    assert removed == ["b" * 24, "a" * 24]  # used longest ago first, until the cache fits
    assert not any(f.exists() for f in older + old)
    assert all(f.exists() for f in mid + fresh)
    assert baseline.prune_cache(tmp_path, max_bytes=100) == ["c" * 24]  # the fresh entry stays
    assert all(f.exists() for f in fresh)
    baseline.touch(*mid)  # a cache hit: nothing to touch any more, no error
    assert baseline.prune_cache(tmp_path / "missing", max_bytes=0) == []


def test_probes_take_their_shapes_from_the_feed(decoder_export, tmp_path):
    """A KV-cache decoder's attention mask spans past + new tokens: probes with every dynamic dimension 2 are
    invalid inputs there (onnxruntime's index error). With ``like`` (the feed the check runs on) the probes
    have its shapes and run; `bench` of an int8 KV export against its original completes."""
    from click.testing import CliRunner

    from n6onnx.cli import main
    from n6onnx.testing import zoo_decoder as zd

    src = decoder_export("gpt2")
    q = tmp_path / "q.onnx"
    quantize(src, q, "int8")
    data = zd.calibration_npz("gpt2", tmp_path / "d.npz", batches=1)
    feed = {k.split("/")[0]: v for k, v in np.load(data).items()}
    opener = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])  # noqa: E731
    probes = baseline.quantized_probes(q, opener, n=2, like=feed)
    assert len(probes) == 2 and [a.shape for a in probes[0][1]] == [a.shape for a in opener(q).run(None, feed)]
    r = CliRunner().invoke(main, ["bench", str(q), "--baseline", str(src), "--feeds", str(data), "--seconds", "3",
                                  "--window", "0.5", "--idle-seconds", "0", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output[-1500:]
