"""ORT's SkipLayerNormalization or its parts (bench.layernorm): the split graph computes the numpy
reference, a session keeps it split only with ORT's fusion disabled, and bench / tune give the
baseline and the candidate the same form and session options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper

import n6onnx
from n6onnx import io
from n6onnx.bench import baseline, layernorm
from n6onnx.bench.session import SessionConfig
from n6onnx.ops import DOMAIN
from n6onnx.quantize import quantize

B, S, D = 2, 5, 16


def _skip_ln_model(*, bias=True, beta=True, sum_out=False, mean_out=False, opset=20) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"g": rng.normal(1, 0.2, D), "b": rng.normal(0, 0.2, D), "bias": rng.normal(0, 0.5, D)}
    ins = ["x", "skip", "g", "b" if beta else "", "bias" if bias else ""]
    outs = ["y", "mean" if mean_out else "", "", "sum" if sum_out else ""]
    node = h.make_node("SkipLayerNormalization", ins, outs, domain="com.microsoft", epsilon=1e-5, name="sln")
    # a consumer of y (and of mean / sum), as in a real graph
    nodes = [node, h.make_node("Relu", ["y"], ["out"])]
    g_outs = [h.make_tensor_value_info("out", T.FLOAT, [B, S, D])]
    if sum_out:
        nodes.append(h.make_node("Neg", ["sum"], ["neg_sum"]))
        g_outs.append(h.make_tensor_value_info("neg_sum", T.FLOAT, [B, S, D]))
    if mean_out:
        g_outs.append(h.make_tensor_value_info("mean", T.FLOAT, None))
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, [B, S, D]) for n in ("x", "skip")], g_outs,
                         [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.microsoft", 1)])


def _reference(feed, proto, bias=True, beta=True):
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    s = feed["x"].astype(np.float64) + feed["skip"] + (init["bias"] if bias else 0)
    y = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-5) * init["g"] + (init["b"] if beta else 0)
    return np.maximum(y, 0), s


def _feed():
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(B, S, D)).astype(np.float32), "skip": rng.normal(size=(B, S, D)).astype(np.float32)}


def _run(proto, disabled=()):
    kw = {"disabled_optimizers": list(disabled)} if disabled else {}
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"], **kw).run(None, _feed())


@pytest.mark.parametrize("bias,beta,sum_out", [(True, True, False), (False, True, False), (True, False, True)])
def test_the_split_graph_computes_the_reference(bias, beta, sum_out):
    proto = _skip_ln_model(bias=bias, beta=beta, sum_out=sum_out)
    assert layernorm.split(proto) == 1
    onnx.checker.check_model(proto)
    ops = [n.op_type for n in proto.graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 1
    assert ops.count("Add") == (2 if bias else 1)
    got = _run(proto, [layernorm.FUSION])
    ref_y, ref_sum = _reference(_feed(), proto, bias, beta)
    np.testing.assert_allclose(got[0], ref_y, atol=2e-5)
    if sum_out:  # the input_skip_bias_sum output keeps its name and its value
        np.testing.assert_allclose(got[1], -ref_sum, atol=2e-5)


def _rms_model(*, bias=True, opset=20) -> onnx.ModelProto:
    """SkipSimplifiedLayerNormalization (RMSNorm, as fused in Llama-style decoders)."""
    proto = _skip_ln_model(bias=bias, opset=opset)
    n = proto.graph.node[0]
    n.op_type = layernorm.SIMPLIFIED
    ins = list(n.input) + [""] * (5 - len(n.input))
    del n.input[:]
    n.input.extend(ins[:3] + ([ins[4]] if bias else []))  # input, skip, gamma[, bias]: no beta
    return proto


@pytest.mark.parametrize("bias,opset", [(True, 20), (False, 20), (True, 16)])
def test_the_split_rmsnorm_computes_the_reference(bias, opset, tmp_path):
    proto = _rms_model(bias=bias, opset=opset)
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    f = _feed()
    s = f["x"].astype(np.float64) + f["skip"] + (init["bias"] if bias else 0)
    ref = np.maximum(s / np.sqrt((s * s).mean(-1, keepdims=True) + 1e-5) * init["g"], 0)
    np.testing.assert_allclose(_run(proto)[0], ref, atol=2e-5)  # the fused node: the same reference
    assert layernorm.split(proto) == 1  # onnxruntime's SimplifiedLayerNormalization exists at any opset
    ops = [n.op_type for n in proto.graph.node]
    assert layernorm.SIMPLIFIED not in ops and ops.count("SimplifiedLayerNormalization") == 1
    assert ops.count("Add") == (2 if bias else 1)
    np.testing.assert_allclose(_run(proto, [layernorm.FUSION])[0], ref, atol=2e-5)
    io.save(proto, tmp_path / "split.onnx")  # a valid file for onnxruntime, whatever onnx's checker knows
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(tmp_path / "split.onnx"), so, providers=["CPUExecutionProvider"],
                         disabled_optimizers=[layernorm.FUSION])
    ops = {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert layernorm.SIMPLIFIED not in ops and "SimplifiedLayerNormalization" in ops  # the session kept the parts


def test_a_node_whose_statistics_are_used_or_an_old_opset_is_left_alone():
    proto = _skip_ln_model(mean_out=True)
    assert layernorm.count(proto) == 0 and layernorm.split(proto) == 0
    proto = _skip_ln_model(opset=16)  # no LayerNormalization before opset 17
    assert layernorm.split(proto) == 0
    assert [n.op_type for n in proto.graph.node][0] == "SkipLayerNormalization"


def test_only_a_session_with_the_fusion_disabled_keeps_the_split(tmp_path):
    proto = _skip_ln_model()
    layernorm.split(proto)
    path = tmp_path / "split.onnx"
    io.save(proto, path)

    def optimized_ops(disabled):
        so = ort.SessionOptions()
        so.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"],
                             **({"disabled_optimizers": list(disabled)} if disabled else {}))
        return {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}

    assert "SkipLayerNormalization" in optimized_ops(())  # ORT fuses the parts back by default
    ops = optimized_ops([layernorm.FUSION])
    assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops


def test_choose_on_a_fused_model(bert, tmp_path):
    feeds = _bert_feed(bert)
    cfg = SessionConfig("cpu", 0, 1)

    def run(p):
        return cfg.session(p)[0].run(None, feeds)

    fused = baseline.fuse(bert, run, run(bert)).path
    n = layernorm.count(io.load_proto(fused))
    assert n == 4  # two per layer
    c, p = layernorm.choose(fused, cfg, feeds, tmp_path, mode="fused")
    assert (c.form, p, c.disabled_optimizers) == ("fused", fused, ())
    c, p = layernorm.choose(fused, cfg, feeds, tmp_path, mode="split")
    assert c.form == "split" and c.disabled_optimizers == (layernorm.FUSION,) and layernorm.count(io.load_proto(p)) == 0
    c, p = layernorm.choose(fused, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05)
    assert c.mode == "auto" and c.nodes == n and c.speedup["n"] == 2
    assert c.form == ("split" if c.speedup["median"] > layernorm.MARGIN else "fused")
    assert p == (fused if c.form == "fused" else layernorm.split_file(fused, tmp_path))
    # the split runs the fused graph's function (the agreement check inside choose, repeated here)
    split_cfg = SessionConfig("cpu", 0, 1, (layernorm.FUSION,))
    got = split_cfg.session(layernorm.split_file(fused, tmp_path))[0].run(None, feeds)
    assert baseline.outputs_agree(got, run(fused), 1e-5)[0]
    # the unfused export: nothing to split, but its Add + LayerNormalization are parts that a session fuses
    # (unless disabled): the same file is timed with the fusion on and off
    c, p = layernorm.choose(bert, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05)
    assert c.nodes == 0 and p == bert and c.speedup is not None and "already as parts" in c.reason


def test_a_quantized_split_is_judged_against_the_float_model(bert, tmp_path, monkeypatch):
    """Dynamic int8 rounds activations at run time, so a split (whose parts round a few float32 values
    differently) need not agree elementwise with the fused form. Against the float export (onnxruntime
    running it) the true split is as faithful as the fused form, and a split that loses the residual of
    one norm is not."""
    feeds = _bert_feed(bert)
    cfg = SessionConfig("cpu", 0, 1)
    split_cfg = SessionConfig("cpu", 0, 1, (layernorm.FUSION,))
    q = tmp_path / "int8.onnx"
    quantize(bert, q, "int8")
    fused = baseline.fuse(q, cache=tmp_path / "fused").path
    assert layernorm.count(io.load_proto(fused)) == 4
    split = layernorm.split_file(fused, tmp_path)
    checks = [feeds] + baseline.probe_feeds(fused, lambda p: cfg.session(p)[0], like=feeds)
    ref, fused_sess = cfg.session(bert)[0], cfg.session(fused)[0]
    ratio = layernorm.faithfulness(split_cfg.session(split)[0], fused_sess, ref, checks)
    assert ratio is not None and abs(ratio - 1) < layernorm.FAITHFUL - 1

    broken = io.load_proto(split)  # the first norm reads its input without the residual
    skip_add = next(n for n in broken.graph.node if n.name.endswith("/skip_add"))
    norm = next(n for n in broken.graph.node if n.input and n.input[0] == skip_add.output[0])
    norm.input[0] = skip_add.input[0]
    bad = tmp_path / "broken.onnx"
    onnx.save(broken, str(bad))
    assert layernorm.faithfulness(split_cfg.session(bad)[0], fused_sess, ref, checks) > 1.5

    # choose, where the elementwise check fails (as on MiniLM's int8, max abs diff 0.26): without a
    # reference it keeps the fused form; with the float export it times the split (whichever then wins)
    monkeypatch.setattr(baseline, "agreeing_feed", lambda *a: (None, 0.26))
    c, p = layernorm.choose(fused, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05)
    assert (c.form, p, c.speedup) == ("fused", fused, None) and "disagrees" in c.reason
    c, _ = layernorm.choose(fused, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05, reference=bert)
    assert c.speedup is not None and c.speedup["n"] == 2 and "against the float reference" in c.reason, c.reason
    c, _ = layernorm.choose(fused, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05, reference=fused)
    assert c.speedup is None  # a quantized reference is no reference
    monkeypatch.setattr(layernorm, "split_file", lambda *a: bad)  # a split that computes something else
    c, p = layernorm.choose(fused, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05, reference=bert)
    assert (c.form, p, c.speedup) == ("fused", fused, None) and "the fused form's" in c.reason, c.reason
    # a reference that takes an input the feeds lack cannot judge
    assert layernorm.faithfulness(split_cfg.session(split)[0], fused_sess, ref, [{"input_ids": feeds["input_ids"]}]) \
        is None


def _bert_feed(path):
    from n6onnx import feeds as feeds_mod

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return feeds_mod.random_feeds(sess, 1, {d: 4 for d in feeds_mod.dynamic_dims(sess)})[0]


def test_bench_gives_both_variants_the_same_form(bert, bert_phi6):
    rep = n6onnx.bench(bert_phi6, bert, threads=1, seconds=0.3, window=0.1, idle_seconds=0, warmup=0.05,
                       profile_runs=2, layernorm="split")
    j = json.loads(json.dumps(rep.to_json()))
    for k in ("baseline", "candidate"):
        ln = j["settings"]["layernorm"][k]
        assert ln["form"] == "split" and ln["skip_layernorm_nodes"] == 4
        assert j["settings"]["disabled_optimizers"][k] == [layernorm.FUSION]
    for v in (j, j["baseline"]):
        ran = onnx.load(v["ran"])
        assert layernorm.count(ran) == 0 and "LayerNormalization" in {n.op_type for n in ran.graph.node}
        ops = v["session"]["op_time"]["by_op_type_ms"]  # what the session ran, from ORT's profiler
        assert "SkipLayerNormalization" not in ops and "LayerNormalization" in ops
    assert any(n.domain == DOMAIN for n in onnx.load(j["ran"]).graph.node)  # the candidate keeps its n6 nodes
    fused = n6onnx.bench(bert_phi6, bert, threads=1, seconds=0.3, window=0.1, idle_seconds=0, warmup=0.05,
                         profile_runs=2, layernorm="fused").to_json()
    assert fused["settings"]["disabled_optimizers"] == {"baseline": [], "candidate": []}
    assert layernorm.count(onnx.load(fused["ran"])) == 4


def test_bench_runs_each_variant_in_its_own_form(bert, bert_phi6, monkeypatch):
    """auto chooses per variant: when the baseline's parts win and the candidate's fused form does,
    each session runs its own form, with its own session options."""
    choose = layernorm.choose
    fused_baseline = []

    def rigged(path, cfg, feed, workdir=None, **kw):  # the first call is the baseline's
        fused_baseline.append(path)
        return choose(path, cfg, feed, workdir, **{**kw, "mode": "split" if len(fused_baseline) == 1 else "fused"})

    monkeypatch.setattr(layernorm, "choose", rigged)
    j = json.loads(json.dumps(n6onnx.bench(bert_phi6, bert, threads=1, seconds=0.3, window=0.1, idle_seconds=0,
                                           warmup=0.05, profile_runs=2).to_json()))
    assert len(fused_baseline) == 2
    assert j["settings"]["disabled_optimizers"] == {"baseline": [layernorm.FUSION], "candidate": []}
    assert [j["settings"]["layernorm"][k]["form"] for k in ("baseline", "candidate")] == ["split", "fused"]
    base_ops = j["baseline"]["session"]["op_time"]["by_op_type_ms"]
    cand_ops = j["session"]["op_time"]["by_op_type_ms"]
    assert "SkipLayerNormalization" not in base_ops and "LayerNormalization" in base_ops
    assert "SkipLayerNormalization" in cand_ops and layernorm.count(onnx.load(j["ran"])) == 4


def test_bench_refuses_an_unknown_layer_norm_mode(bert, bert_phi6):
    with pytest.raises(n6onnx.N6Error, match="--layernorm"):
        n6onnx.bench(bert_phi6, bert, layernorm="maybe")


def test_a_reused_split_file_is_marked_as_used(bert, tmp_path):
    import os

    fused = baseline.fuse(bert, cache=tmp_path / "fused").path
    out = layernorm.split_file(fused, tmp_path)
    os.utime(out, (1e9, 1e9))
    assert layernorm.split_file(fused, tmp_path) == out and out.stat().st_mtime > 1e9  # prune_cache keeps it longer


def test_choose_on_a_fused_rmsnorm_decoder(decoder_export, tmp_path):
    """A Llama-style decoder fused by onnxscript holds SkipSimplifiedLayerNormalization and onnxruntime's
    SimplifiedLayerNormalization (which onnx's checker does not know): its split runs and agrees."""
    from n6onnx import feeds as feeds_mod

    src = decoder_export("llama", "nokv")
    cfg = SessionConfig("cpu", 0, 1)
    sess = cfg.session(src)[0]
    feed = feeds_mod.random_feeds(sess, 1, {d: 4 for d in feeds_mod.dynamic_dims(sess)})[0]

    def run(p, c=cfg):
        return c.session(p)[0].run(None, feed)

    fused = baseline.fuse(src, run, run(src), cache=tmp_path / "fused").path
    n = layernorm.count(onnx.load(str(fused)))
    assert n >= 2
    c, p = layernorm.choose(fused, cfg, feed, tmp_path, mode="split")
    assert (c.form, c.nodes) == ("split", n)
    split = onnx.load(str(p))
    assert layernorm.count(split) == 0 and layernorm.SIMPLIFIED not in {x.op_type for x in split.graph.node}
    got = run(p, SessionConfig("cpu", 0, 1, (layernorm.FUSION,)))
    assert baseline.outputs_agree(got, run(fused), 1e-5)[0]
    c, _ = layernorm.choose(fused, cfg, feed, tmp_path, rounds=2, block_seconds=0.05)  # auto: checked, then timed
    assert c.mode == "auto" and c.speedup is not None


def test_a_model_already_in_parts_is_timed_with_the_fusion_on_and_off(bert, tmp_path, monkeypatch):
    """A model written split (tune's output in the faster form) has nothing left to split, but a session
    fuses it again unless SkipLayerNormFusion is disabled: its two forms are the same file run with the
    fusion on and off."""
    feeds = _bert_feed(bert)
    cfg = SessionConfig("cpu", 0, 1)
    fused = baseline.fuse(bert, cache=tmp_path / "fused").path
    parts = layernorm.split_file(fused, tmp_path)
    proto = onnx.load(str(parts))
    assert layernorm.count(proto) == 0 and layernorm.has_parts(proto)
    c, p = layernorm.choose(parts, cfg, feeds, tmp_path, mode="split")
    assert (c.form, p, c.disabled_optimizers) == ("split", parts, (layernorm.FUSION,))
    monkeypatch.setattr(layernorm, "MARGIN", 0.0)  # any timing: the parts win
    c, p = layernorm.choose(parts, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05)
    assert (c.form, p, c.disabled_optimizers) == ("split", parts, (layernorm.FUSION,)) and c.speedup is not None
    assert "already as parts" in c.reason
    monkeypatch.setattr(layernorm, "MARGIN", 1e9)  # the fused form wins: the session fuses the file again
    c, p = layernorm.choose(parts, cfg, feeds, tmp_path, rounds=2, block_seconds=0.05)
    assert (c.form, p, c.disabled_optimizers) == ("fused", parts, ())
    unnormed = _skip_ln_model()  # nothing to split and no parts: nothing timed
    unnormed.graph.node[0].op_type = "Relu"
    del unnormed.graph.node[0].input[1:], unnormed.graph.node[0].attribute[:]
    unnormed.graph.node[0].domain = ""
    io.save(unnormed, tmp_path / "plain.onnx")
    assert layernorm.choose(tmp_path / "plain.onnx", cfg, _feed(), tmp_path)[0].reason == "nothing to split"


def test_bench_runs_a_candidate_already_in_parts_split_and_says_so(bert, tmp_path, capsys):
    from n6onnx import console

    parts = layernorm.split_file(baseline.fuse(bert, cache=tmp_path / "fused").path, tmp_path)
    j = json.loads(json.dumps(n6onnx.bench(parts, bert, threads=1, seconds=0.3, window=0.1, idle_seconds=0,
                                           warmup=0.05, profile_runs=2, layernorm="split",
                                           fuse_candidate=False).to_json()))
    ln = j["settings"]["layernorm"]["candidate"]
    assert (ln["form"], ln["skip_layernorm_nodes"]) == ("split", 0)
    assert j["settings"]["disabled_optimizers"]["candidate"] == [layernorm.FUSION]
    assert "SkipLayerNormalization" not in j["session"]["op_time"]["by_op_type_ms"]  # the session kept the parts
    console.bench_human(j)
    assert "candidate layer norms: split" in capsys.readouterr().out.replace("\n", " ")
