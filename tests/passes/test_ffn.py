"""The phi-bottleneck FFN pass: widths, every FFN form (plain, Gemm+Reshape, gated), refit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import n6onnx
from n6onnx.testing import zoo

from ..conftest import CACHE


def _hidden_widths(path):
    m = onnx.load(str(path))
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    return sorted({s[1] if len(s) == 2 else None for s in inits.values() if len(s) == 2})


@pytest.mark.parametrize("model", ["bert", "gpt2", "llama"])
def test_bottleneck_cuts_every_ffn_and_runs(model, zoo_export, token_npz, tmp_path):
    src = zoo_export(model, "dynamo18")
    out = tmp_path / "bn.onnx"
    _, rep = n6onnx.rewrite(src, out, ["ffn=phi-bottleneck"], calibrate=token_npz(model))
    r = rep.reports["ffn"]
    assert r.rewritten == zoo.ARCH_COUNTS[model]["ffn"]
    for site in r.sites:
        assert site.detail["hidden_after"] == round(4 * 64 / 3) and site.detail["hidden_before"] in (256, 256)
        assert site.detail["rel_err"] <= site.detail["rel_err_prior"] + 1e-12  # refit never hurts
    feeds = zoo.example_inputs(model)
    base = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = n6onnx.InferenceSession(out).run(None, feeds)[0]
    assert got.shape == base.shape and np.isfinite(got).all()
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    m = onnx.load(str(out))
    assert any(85 in t.dims for t in m.graph.initializer)


def test_ratio_option_and_nothing_to_cut(zoo_export, token_npz, tmp_path):
    src = zoo_export("bert", "dynamo18")
    _, rep = n6onnx.rewrite(src, tmp_path / "a.onnx", ["ffn=phi-bottleneck:2"])
    assert {s.detail["hidden_after"] for s in rep.reports["ffn"].sites} == {128}
    assert any("uncalibrated" in w for w in rep.warnings)
    _, rep = n6onnx.rewrite(src, tmp_path / "b.onnx", ["ffn=phi-bottleneck:4"], calibrate=token_npz("bert", 2))
    assert rep.rewritten == {"ffn": 0} and all("nothing to cut" in m.reason for m in rep.reports["ffn"].near_misses)


@pytest.mark.parametrize("spec", ["ffn=phi-bottleneck:abc", "ffn=phi-bottleneck:-1", "ffn=wide"])
def test_bad_ratio(spec, zoo_export, tmp_path):
    with pytest.raises(n6onnx.BadArgumentError):
        n6onnx.rewrite(zoo_export("bert", "dynamo18"), tmp_path / "x.onnx", [spec])
    assert not (tmp_path / "x.onnx").exists()


def test_refit_improves_fidelity_over_no_refit(zoo_export, token_npz, tmp_path):
    src = zoo_export("bert", "dynamo18")
    npz = token_npz("bert")
    feeds = zoo.example_inputs("bert")
    base = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    errs = {}
    for refit in (False, True):
        out = tmp_path / f"r{refit}.onnx"
        n6onnx.rewrite(src, out, ["ffn=phi-bottleneck:4/3"], calibrate=npz, refit=refit)
        errs[refit] = np.mean((n6onnx.InferenceSession(out).run(None, feeds)[0] - base) ** 2)
    assert errs[True] < errs[False]


def test_bottleneck_keeps_the_symbolic_dims_that_attention_fusion_needs(tmp_path):
    """Re-inferring the cut widths must not replace a dynamic export's batch / seq dims by ``unk__N``: ORT's
    attention fusion (onnxscript's, as bench fuses its baseline) needs them, and without it the bottlenecked
    MiniLM ran its attention unfused. The recorded shapes must also hold at run time (two lengths, against the
    same graph with every inferred shape stripped)."""
    from onnxscript.rewriter import ort_fusions

    src = zoo.export("minilm", "dynamo20", CACHE, dynamic=True)
    out = tmp_path / "bn.onnx"
    n6onnx.rewrite(src, out, ["ffn=phi-bottleneck:4/3"])

    def fused(path):
        import onnx_ir as ir

        _, counts = ort_fusions.optimize_for_ort(ir.load(str(path)))
        return {k: v for k, v in counts.items() if v}

    want = fused(src)
    assert want.get("sdpa") == 6  # the reference: the original export fuses every attention
    assert fused(out) == want
    bare = onnx.load(str(out))
    del bare.graph.value_info[:]
    for seq in (16, 40):
        feeds = zoo.example_inputs("minilm", 2, seq)
        got = n6onnx.InferenceSession(out).run(None, feeds)[0]
        ref = n6onnx.InferenceSession(bare.SerializeToString()).run(None, feeds)[0]
        np.testing.assert_allclose(got, ref, atol=1e-5)  # the same graph; ORT fuses more where shapes are known


@pytest.mark.parametrize("ratio, width", [("2", 128), ("4/3", 85)])
def test_bottleneck_runs_on_a_dynamic_gpt2(ratio, width, tmp_path):
    """A dynamic-axes GPT-2 export builds its Conv1D Reshapes' shapes at run time (``Concat(Shape(batch),
    Shape(seq), [H])``): the cut width must reach that Concat, or onnxruntime cannot reshape [N, H'] to
    [batch, seq, H]."""
    src = zoo.export("gpt2", "dynamo20", CACHE, dynamic=True)
    before = onnx.load(str(src))
    assert any(n.op_type == "Concat" for n in before.graph.node)  # the runtime-built shapes this test is about
    out = tmp_path / "bn.onnx"
    _, rep = n6onnx.rewrite(src, out, [f"ffn=phi-bottleneck:{ratio}"])
    assert rep.rewritten == {"ffn": zoo.ARCH_COUNTS["gpt2"]["ffn"]}
    assert {s.detail["hidden_after"] for s in rep.reports["ffn"].sites} == {width}
    sess = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    for batch, seq in ((2, 16), (3, 7)):  # two shapes: the Concat must follow the run's batch and seq
        feeds = {"input_ids": np.random.default_rng(batch).integers(0, 100, (batch, seq)).astype(np.int64),
                 "attention_mask": np.ones((batch, seq), np.int64)}
        base = sess.run(None, feeds)[0]
        got = n6onnx.InferenceSession(out).run(None, feeds)[0]
        assert got.shape == base.shape and np.isfinite(got).all()
    # the input model is never modified
    assert len(onnx.load(str(src)).graph.node) == len(before.graph.node)
