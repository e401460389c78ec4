"""Attention detection details and the attention=fftmix / attention=egyptian passes, checked against
ORT running the original model."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import n6onnx
from n6onnx import io
from n6onnx.passes.attention.blocks import find_blocks
from n6onnx.testing import zoo
from n6onnx.errors import N6Error

from ..conftest import CACHE, missing

HEADS, HEAD_SIZE = 4, 16  # the tiny zoo configs (hidden 64, 4 heads); minilm: 12 x 32


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _sites(path):
    return [s.detail for s in n6onnx.inspect(path).kinds["attention"].sites]


@pytest.fixture(scope="session")
def opset23_bert():
    """The zoo BERT exported at opset 23 (standard Attention op), cached beside the zoo models."""
    path = CACHE / f"bert-dynamo23-b2-s16-v{zoo.ZOO_VERSION}.onnx"
    if not path.is_file():
        zoo._OPSET["dynamo23"] = 23
        try:
            zoo._export_uncached("bert", "dynamo23", path, batch=2, seq=16)
        finally:
            zoo._OPSET.pop("dynamo23")
    return path


@pytest.fixture(scope="session")
def ms_fused(zoo_export):
    """com.microsoft Attention (BERT) and MultiHeadAttention (GPT-2) from onnxscript's ORT fusions."""
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    out = {}
    for model in ("bert", "gpt2"):
        path = CACHE / f"{model}-dynamo18-msfused-v{zoo.ZOO_VERSION}.onnx"
        if not path.is_file():
            m, _ = ort_fusions.optimize_for_ort(ir.load(zoo_export(model, "dynamo18")))
            ir.save(m, path)
        out[model] = path
    return out


@pytest.mark.parametrize("model,exporter", [("bert", "dynamo18"), ("bert", "dynamo20"), ("bert", "torchscript"),
                                            ("gpt2", "torchscript"), ("vit", "dynamo20"), ("llama", "dynamo18"),
                                            ("llama", "torchscript"), ("minilm", "dynamo18")])
def test_detection_details(model, exporter, zoo_export):
    sites = _sites(zoo_export(model, exporter))
    assert len(sites) == zoo.ARCH_COUNTS[model]["attention"]
    heads, dh = (12, 32) if model == "minilm" else (HEADS, HEAD_SIZE)
    for i, d in enumerate(sites):
        assert d["index"] == i and d["form"] == "matmul_softmax_matmul"
        assert (d["heads"], d["head_size"]) == (heads, dh)
        assert d["kv_heads"] == (2 if model == "llama" else heads)  # grouped-query: 2 kv heads
        assert d["scale"] == pytest.approx(1 / np.sqrt(dh), rel=1e-6)
        assert d["q"] and d["k"] and d["v"] and d["output_projection"] and d["residual"]
        assert d["packed_qkv"] == (model == "gpt2")
        assert d["norm"] == ("post-LN" if model in ("bert", "minilm") else "pre-LN")
        if model == "vit":
            assert d["mask"] is None
        else:
            assert d["mask"]["inputs"] == ["attention_mask"]
            assert d["mask"]["causal"] == (model in ("gpt2", "llama"))
        if model == "llama":
            assert d["q"]["rotary"] and d["k"]["rotary"]


def test_detection_fused_forms(opset23_bert, ms_fused):
    for path, form in ((opset23_bert, "onnx.Attention"), (ms_fused["bert"], "com.microsoft.Attention"),
                       (ms_fused["gpt2"], "com.microsoft.MultiHeadAttention")):
        sites = _sites(path)
        assert len(sites) == 2, path
        for d in sites:
            assert d["form"] == form
            assert (d["heads"], d["head_size"], d["kv_heads"]) == (HEADS, HEAD_SIZE, HEADS)
            assert d["scale"] == pytest.approx(0.25)
            assert d["mask"]["inputs"] == ["attention_mask"]
            assert d["output_projection"] and d["residual"]
            assert d["q"] and d["v"]
        assert all(d["packed_qkv"] for d in sites) == (form != "onnx.Attention")


def _npz(path: pathlib.Path, n: int, seed: int, model: str = "bert") -> pathlib.Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for k in range(n):
        f = zoo.example_inputs(model, 2, 16)
        f["input_ids"] = rng.integers(1, 1000, size=(2, 16), dtype=np.int64)
        for name, a in f.items():
            arrays[f"{name}/{k}"] = a
    np.savez(path, **arrays)
    return path


def _error(src, cand, batches):
    feeds = np.load(batches)
    errs = []
    for k in range(len(feeds.files) // 3):
        f = {n: feeds[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")}
        errs.append(np.mean((_run(src, f) - _run(cand, f)) ** 2))
    return float(np.mean(errs))


def test_fftmix_fitted_beats_uncalibrated(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo18")
    calib, held = _npz(tmp_path / "calib.npz", 48, 1), _npz(tmp_path / "held.npz", 8, 2)
    _, plain = n6onnx.rewrite(src, tmp_path / "plain.onnx", ["attention=fftmix:@1"])
    _, fitted = n6onnx.rewrite(src, tmp_path / "fit.onnx", ["attention=fftmix:@1"], calibrate=calib)
    assert plain.rewritten == fitted.rewritten == {"attention": 1}
    assert any("uncalibrated" in w for w in plain.warnings)
    site = fitted.reports["attention"].sites[0].detail
    assert site["index"] == 1 and site["fit"]["rel_err"] < site["fit"]["rel_err_default"]
    e_plain, e_fit = _error(src, tmp_path / "plain.onnx", held), _error(src, tmp_path / "fit.onnx", held)
    assert e_fit < 0.5 * e_plain, (e_fit, e_plain)
    # auto: ranks by redundancy (needs data) and rewrites max(1, 2 // 3) = 1 block
    _, auto = n6onnx.rewrite(src, tmp_path / "auto.onnx", ["attention=fftmix"], calibrate=calib)
    assert auto.rewritten == {"attention": 1}
    assert auto.reports["attention"].sites[0].detail["redundancy"] is not None
    with pytest.raises(N6Error, match="calibration data"):
        n6onnx.rewrite(src, tmp_path / "x.onnx", ["attention=fftmix:2"])


@pytest.mark.parametrize("exporter", ["dynamo18", "torchscript", "opset23"])
def test_egyptian_full_is_exact_and_default_differs(exporter, zoo_export, opset23_bert, tmp_path):
    src = opset23_bert if exporter == "opset23" else zoo_export("bert", exporter)
    feeds = zoo.example_inputs("bert", 2, 16)
    ref = _run(src, feeds)
    _, rep = n6onnx.rewrite(src, tmp_path / "full.onnx", ["attention=egyptian:full"])
    assert rep.rewritten == {"attention": 2}
    np.testing.assert_allclose(_run(tmp_path / "full.onnx", feeds), ref, rtol=1e-5, atol=1e-5)
    _, rep = n6onnx.rewrite(src, tmp_path / "idx.onnx", ["attention=egyptian"])
    kinds = [s.detail["head_kinds"] for s in rep.reports["attention"].sites]
    assert kinds == [[0, 0, 1, 2]] * 2  # no data: by index (4 heads: 2 full, 1 local, 1 global)
    got = _run(tmp_path / "idx.onnx", feeds)
    assert np.all(np.isfinite(got)) and np.abs(got - ref).max() > 1e-3


def test_egyptian_locality_and_rejections(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo18")
    calib = _npz(tmp_path / "calib.npz", 4, 1)
    _, rep = n6onnx.rewrite(src, tmp_path / "loc.onnx", ["attention=egyptian"], calibrate=calib)
    for s in rep.reports["attention"].sites:
        d = s.detail
        assert d["assignment"] == "locality" and sorted(d["head_kinds"]) == [0, 0, 1, 2]
        g = d["locality"]["global"]
        assert g[d["head_kinds"].index(2)] == max(g)  # the global head has the most mass on keys {0, L-1}
    # causal models get the causal mode, kinds per KV group by the causal locality (window / sinks + own key),
    # the by-index counts kept (tests/passes/test_decoder_locality.py checks the masses and the choice)
    _, rep = n6onnx.rewrite(zoo_export("gpt2", "dynamo18"), tmp_path / "g.onnx", ["attention=egyptian"],
                            calibrate=_npz(tmp_path / "g.npz", 4, 1, "gpt2"))
    assert rep.rewritten == {"attention": 2}
    for s in rep.reports["attention"].sites:
        d = s.detail
        assert d["causal"] and d["assignment"] == "locality" and sorted(d["head_kinds"]) == [0, 0, 1, 2]
        assert d["locality"]["per"] == "kv group" and len(d["locality"]["global"]) == d["kv_heads"]


def test_vit_no_mask_and_library(zoo_export, tmp_path):
    from n6onnx import runtime
    from n6onnx._library import library_path

    src = zoo_export("vit", "dynamo18")
    feeds = zoo.example_inputs("vit", 2)
    _, rep = n6onnx.rewrite(src, tmp_path / "e.onnx", ["attention=egyptian:full"])  # no mask: all-ones mask fed
    assert rep.rewritten == {"attention": 2}
    np.testing.assert_allclose(_run(tmp_path / "e.onnx", feeds), _run(src, feeds), rtol=1e-5, atol=1e-5)
    _, rep = n6onnx.rewrite(src, tmp_path / "v.onnx", ["attention=fftmix:@1"])  # pre-LN: h is the normed stream
    assert rep.rewritten == {"attention": 1} and rep.reports["attention"].sites[0].detail["norm"] == "pre-LN"
    got = _run(tmp_path / "v.onnx", feeds)
    assert got.shape == _run(src, feeds).shape and np.all(np.isfinite(got))
    lib = library_path()
    if lib is None:
        missing("no n6 custom-op library (N6ONNX_LIBRARY unset, none installed): kernels not checked")
    # ops the library lacks run as their function fallback; either way the results must agree
    for name in ("v.onnx", "e.onnx"):
        sess = runtime.InferenceSession(str(tmp_path / name))
        np.testing.assert_allclose(sess.run(None, feeds)[0], _run(tmp_path / name, feeds), rtol=1e-4, atol=1e-4)
    bert = zoo_export("bert", "dynamo18")
    bf = zoo.example_inputs("bert", 2, 16)
    n6onnx.rewrite(bert, tmp_path / "b.onnx", ["attention=egyptian:by-index"])  # masked, mixed head kinds
    got = runtime.InferenceSession(str(tmp_path / "b.onnx")).run(None, bf)[0]
    np.testing.assert_allclose(got, _run(tmp_path / "b.onnx", bf), rtol=1e-4, atol=1e-4)


def test_cli_rewrite_and_inspect(zoo_export, tmp_path):
    from click.testing import CliRunner

    from n6onnx.cli import main

    src = str(zoo_export("bert", "torchscript"))
    calib = _npz(tmp_path / "calib.npz", 4, 1)
    r = CliRunner().invoke(main, ["rewrite", src, "-o", str(tmp_path / "o.onnx"), "--pass", "attention=egyptian:by-index",
                                  "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["rewritten"] == {"attention": 2}
    r = CliRunner().invoke(main, ["rewrite", src, "-o", str(tmp_path / "o.onnx"), "--pass", "attention=fftmix:x"])
    assert r.exit_code == 2 and "LAYERS" in r.output
    r = CliRunner().invoke(main, ["inspect", src, "--calibrate", str(calib), "--json"])
    assert r.exit_code == 0, r.output
    scores = [s["redundancy"] for s in json.loads(r.output)["attention"]["sites"]]
    assert len(scores) == 2 and all(-1 <= x <= 1 for x in scores)


def test_fftmix_opset17_runs_or_says_why(zoo_export, tmp_path):
    """TorchScript exports are opset 17: the pass either rewrites (and the model runs) or rejects
    every block because the FFTMix fallback is not valid at that opset."""
    src = zoo_export("bert", "torchscript")
    _, rep = n6onnx.rewrite(src, tmp_path / "t.onnx", ["attention=fftmix:@0"])
    if rep.rewritten["attention"]:
        feeds = zoo.example_inputs("bert", 2, 16)
        assert _run(tmp_path / "t.onnx", feeds).shape == _run(src, feeds).shape
    else:
        assert all("opset 17" in m.reason for m in rep.reports["attention"].near_misses)


def _split_model(B, L, H, dh, kinds, masked, skip=None, dtype=None, extra=()):
    """One EgyptianAttention node whose output is the graph output, split by split_full_heads."""
    import onnx_ir as ir

    from n6onnx.passes.attention.heads import split_full_heads
    from n6onnx.passes.finalize import finalize

    D = H * dh
    dtype = dtype or ir.DataType.FLOAT
    ins = [ir.Value(name=n, shape=ir.Shape([B, L, D]), type=ir.TensorType(dtype)) for n in "QKV"]
    if masked:
        ins.append(ir.Value(name="M", shape=ir.Shape([B, L]), type=ir.TensorType(ir.DataType.INT32)))
    node = ir.Node("n6onnx", "EgyptianAttention", ins, name="egy", attributes=[
        ir.AttrInt64("num_heads", H), ir.AttrInt64("window", 4), ir.AttrInt64s("head_kinds", kinds),
        *(ir.AttrInt64(k, v) for k, v in extra)])
    y = node.outputs[0]
    y.name, y.shape, y.type = "Y", ir.Shape([B, L, D]), ir.TensorType(dtype)
    m = ir.Model(ir.Graph(ins, [y], nodes=[node], opset_imports={"": 18, "n6onnx": 1}), ir_version=10)
    split = split_full_heads(m, skip)
    finalize(m)
    return m, split


@pytest.mark.parametrize("kinds,masked,skip", [([0, 0, 1, 2], True, True), ([1, 0, 2, 0, 1, 0], True, True),
                                               ([1, 0, 2, 0, 1, 0], True, None), ([2, 0, 1], False, None),
                                               ([0, 0, 0], True, None)])
def test_split_full_heads_matches_the_reference(kinds, masked, skip, tmp_path):
    """The mha core (full heads through com.microsoft.MultiHeadAttention, Slices or Gathers of the
    heads, outputs put back in head order) equals the numpy reference of EgyptianAttention."""
    import onnx_ir as ir

    from n6onnx.ops import REGISTRY

    B, L, dh = 2, 11, 8
    m, split = _split_model(B, L, len(kinds), dh, kinds, masked, skip)
    ops = sorted(n.op_type for n in m.graph)
    if all(k == 0 for k in kinds):  # nothing to split: the node stays whole
        assert split == [] and ops == ["EgyptianAttention"]
        return
    assert split == ["egy"] and ops.count("EgyptianAttention") == 1
    egy = next(n for n in m.graph if n.op_type == "EgyptianAttention")
    assert list(egy.attributes["head_kinds"].as_ints()) == [k for k in kinds if k]
    # masked, with skip: an If runs MultiHeadAttention without the mask when it is all ones (ORT's
    # fast CUDA kernels take no 2-D mask), with it otherwise; float32 by default: the mask always
    iffed = bool(masked and skip)
    mhas = [n for n in m.graph.all_nodes() if n.op_type == "MultiHeadAttention"]
    assert ("If" in ops) == iffed
    assert sorted(len(n.inputs) for n in mhas) == ([3, 5] if iffed else [5] if masked else [3])
    assert all(n.attributes["num_heads"].as_int() == kinds.count(0) for n in mhas)
    assert m.graph.outputs[0].name == "Y"
    rng = np.random.default_rng(3)
    feeds = {n: rng.normal(0, 1, (B, L, len(kinds) * dh)).astype(np.float32) for n in "QKV"}
    ir.save(m, tmp_path / "s.onnx")
    for padded in ([True, False] if masked else [False]):
        if masked:
            feeds["M"] = np.ones((B, L), np.int32)
            if padded:
                feeds["M"][1, 7:] = 0
        got = _run(tmp_path / "s.onnx", feeds)
        ref = REGISTRY["EgyptianAttention"].reference(feeds["Q"], feeds["K"], feeds["V"], feeds.get("M"),
                                                      num_heads=len(kinds), window=4, head_kinds=kinds)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("extra", [[("causal", 1)], [("kv_heads", 2)]])
def test_split_full_heads_leaves_causal_and_grouped_nodes_whole(extra):
    """MultiHeadAttention is neither causal nor grouped-query: such nodes are not split."""
    m, split = _split_model(1, 8, 4, 4, [0, 0, 1, 1], True, None, None, extra)
    assert split == [] and [n.op_type for n in m.graph] == ["EgyptianAttention"]


def test_split_full_heads_skips_all_ones_masks_by_default_in_half_precision():
    import onnx_ir as ir

    for dtype, want in ((ir.DataType.FLOAT16, True), (ir.DataType.BFLOAT16, True), (ir.DataType.FLOAT, False)):
        m, _ = _split_model(1, 8, 3, 4, [0, 1, 0], True, None, dtype)
        assert ("If" in [n.op_type for n in m.graph]) == want, dtype


def test_egyptian_mha_core_on_exported_models(zoo_export, tmp_path):
    """attention=egyptian:...:mha gives the fused core's outputs on exported models (masked BERT with
    by-index and locality kinds, ViT without a mask), and says so in the report."""
    from click.testing import CliRunner

    from n6onnx.cli import main
    from n6onnx.errors import BadArgumentError

    bert = zoo_export("bert", "dynamo18")
    feeds = zoo.example_inputs("bert", 2, 16)
    calib = _npz(tmp_path / "calib.npz", 4, 1)
    for heads, cal in (("by-index", None), ("locality", calib)):
        n6onnx.rewrite(bert, tmp_path / "f.onnx", [f"attention=egyptian:{heads}"], calibrate=cal)
        _, rep = n6onnx.rewrite(bert, tmp_path / "m.onnx", [f"attention=egyptian:{heads}:mha"], calibrate=cal)
        assert rep.rewritten == {"attention": 2}
        assert all(s.detail["core"] == "mha" for s in rep.reports["attention"].sites)
        ops = [n.op_type for n in n6onnx.io.load(tmp_path / "m.onnx").graph.all_nodes()]
        assert ops.count("MultiHeadAttention") == 2 and ops.count("EgyptianAttention") == 2  # float32: no If
        assert feeds["attention_mask"].min() == 0  # padded: the masked branch; then all ones: the other
        for f in (feeds, {**feeds, "attention_mask": np.ones_like(feeds["attention_mask"])}):
            np.testing.assert_allclose(_run(tmp_path / "m.onnx", f), _run(tmp_path / "f.onnx", f), rtol=1e-5, atol=1e-5)
    vit = zoo_export("vit", "dynamo18")
    vf = zoo.example_inputs("vit", 2)
    n6onnx.rewrite(vit, tmp_path / "vf.onnx", ["attention=egyptian"])
    n6onnx.rewrite(vit, tmp_path / "vm.onnx", ["attention=egyptian:mha"])
    np.testing.assert_allclose(_run(tmp_path / "vm.onnx", vf), _run(tmp_path / "vf.onnx", vf), rtol=1e-5, atol=1e-5)
    _, rep = n6onnx.rewrite(vit, tmp_path / "vx.onnx", ["attention=egyptian:full:mha"])  # nothing to split: said
    assert all(s.detail["core"] == "fused" for s in rep.reports["attention"].sites)
    assert any("mha core was not applied (every head is full)" in n for n in rep.reports["attention"].notes)
    for bad in ("egyptian:mha:mha", "egyptian:by-index:locality", "egyptian:flash"):
        with pytest.raises(BadArgumentError, match="CORE"):
            n6onnx.rewrite(bert, tmp_path / "x.onnx", [f"attention={bad}"])
    r = CliRunner().invoke(main, ["rewrite", str(bert), "-o", str(tmp_path / "c.onnx"), "--pass",
                                  "attention=egyptian:by-index:mha"])
    assert r.exit_code == 0 and "MultiHeadAttention" in r.output, r.output


def _constant_mask_model(src, path, mask):
    """``src`` with its attention_mask input replaced by the constant ``mask`` (as an export without a
    mask input has: the additive mask is then computed from constants only)."""
    import onnx

    m = onnx.load(str(src))
    inp = next(i for i in m.graph.input if i.name == "attention_mask")
    m.graph.input.remove(inp)
    m.graph.initializer.append(onnx.numpy_helper.from_array(mask.astype(np.int64), "attention_mask"))
    onnx.save(m, str(path))
    return path


def test_constant_all_zero_mask_is_no_mask(zoo_export, tmp_path):
    feeds = zoo.example_inputs("bert", 2, 16)
    feeds.pop("attention_mask")
    ones = _constant_mask_model(zoo_export("bert", "dynamo18"), tmp_path / "ones.onnx", np.ones((2, 16)))
    ref = _run(ones, feeds)
    _, rep = n6onnx.rewrite(ones, tmp_path / "full.onnx", ["attention=egyptian:full"])
    assert rep.rewritten == {"attention": 2}, rep.reports["attention"].near_misses
    np.testing.assert_allclose(_run(tmp_path / "full.onnx", feeds), ref, rtol=1e-5, atol=1e-5)
    for core in ("fused", "mha"):
        _, rep = n6onnx.rewrite(ones, tmp_path / f"{core}.onnx", [f"attention=egyptian:by-index:{core}"])
        assert rep.rewritten == {"attention": 2}
    np.testing.assert_allclose(_run(tmp_path / "mha.onnx", feeds), _run(tmp_path / "fused.onnx", feeds),
                               rtol=1e-5, atol=1e-5)
    # a constant mask that does mask a key is not dropped: the block is left alone, with the reason
    pad = np.ones((2, 16))
    pad[1, -3:] = 0
    padded = _constant_mask_model(zoo_export("bert", "dynamo18"), tmp_path / "pad.onnx", pad)
    _, rep = n6onnx.rewrite(padded, tmp_path / "p.onnx", ["attention=egyptian:full"])
    assert rep.rewritten == {"attention": 0}
    assert [m.reason for m in rep.reports["attention"].near_misses] == \
        ["constant additive attention mask or bias that is not known to be all zero: EgyptianAttention takes only a "
         "[batch, seq] key-padding mask input"] * 2


def test_heads_known_when_batch_and_seq_are_symbolic(zoo_export):
    """A dynamic-axes export gives Q as [batch, H, seq, dh] with symbolic batch/seq: the head count
    and size come from the static dimensions (they were reported unknown before)."""
    m = io.load(zoo_export("bert", "dynamo20"))
    for b in find_blocks(m)[0]:
        h, dh = b.heads, b.head_size
        b.q4.shape = ir.Shape(["batch", h, "seq", dh])
    again = find_blocks(m)[0]
    assert again and all((b.heads, b.head_size) == (HEADS, HEAD_SIZE) for b in again)


def test_egyptian_full_on_a_dynamic_shape_export(tmp_path):
    """Symbolic batch/sequence dims: the head merge is verified structurally and the mask's shape-only
    inputs (input_ids via Shape) do not count; every head full reproduces the original at two lengths."""
    src = zoo.export("minilm", "dynamo20", CACHE, dynamic=True)
    _, rep = n6onnx.rewrite(src, tmp_path / "e.onnx", ["attention=egyptian:full"])
    assert rep.rewritten == {"attention": 6}
    for seq in (16, 40):
        feeds = zoo.example_inputs("minilm", 2, seq)
        np.testing.assert_allclose(_run(tmp_path / "e.onnx", feeds), _run(src, feeds), atol=1e-4)
