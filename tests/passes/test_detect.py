"""inspect on real exported models: exact counts per architecture and exporter, plus hand-built
com.microsoft / opset-23 forms."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import n6onnx
from n6onnx.testing import zoo



@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("model", zoo.MODELS)
def test_inspect_counts_exactly(model, exporter, zoo_export):
    rep = n6onnx.inspect(zoo_export(model, exporter))
    got = {k: rep.kinds[k].found for k in zoo.ARCH_COUNTS[model]}
    assert got == zoo.ARCH_COUNTS[model]
    # every GELU is matched by a rule and reported with the nodes it covers
    for site in rep.kinds["gelu"].sites:
        assert site.nodes and site.rule.startswith("gelu.")
        assert site.variant == ("tanh" if model in ("gpt2", "geglu") else "erf")
    if model in ("minilm", "bert", "gpt2", "vit"):
        assert not rep.kinds["gelu"].near_misses
        assert {s.detail["hidden"] for s in rep.kinds["ffn"].sites} == {1536 if model == "minilm" else 256}
    if model == "llama":
        assert all(s.detail["gated"] and s.detail["activation"] == "silu" for s in rep.kinds["ffn"].sites)
        # SiLU's sigmoids are seen and explained, not silently skipped
        assert all("SiLU" in m.reason for m in rep.kinds["gelu"].near_misses)
    if model == "geglu":
        assert all(s.detail["gated"] and s.detail["activation"] == "gelu_tanh" for s in rep.kinds["ffn"].sites)
    if model == "mixtral":
        assert all(s.detail["top_k"] == 2 and s.detail["experts"] == 4 for s in rep.kinds["moe"].sites)
        # the router softmax is not an attention block, and says why
        assert any("router" in m.reason for m in rep.kinds["attention"].near_misses)


def _single_op_model(op_type, domain, inputs, attrs=None, opset=18, extra_inits=()):
    vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
    node = helper.make_node(op_type, [n for n, _ in inputs] + [i.name for i in extra_inits], ["y"], domain=domain, name="op", **(attrs or {}))
    g = helper.make_graph([node], "g", vis, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(extra_inits))
    ops = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(g, opset_imports=ops)


@pytest.mark.parametrize(
    "op_type,domain,opset,inputs,attrs",
    [
        ("Attention", "", 23, [("q", [1, 4, 8, 16]), ("k", [1, 4, 8, 16]), ("v", [1, 4, 8, 16])], {}),
        ("MultiHeadAttention", "com.microsoft", 18, [("q", [1, 8, 64]), ("k", [1, 8, 64]), ("v", [1, 8, 64])], {"num_heads": 4}),
        ("Attention", "com.microsoft", 18, [("x", [1, 8, 64]), ("w", [64, 192])], {"num_heads": 4}),
    ],
)
def test_fused_attention_ops(op_type, domain, opset, inputs, attrs):
    rep = n6onnx.inspect(_single_op_model(op_type, domain, inputs, attrs, opset))
    assert rep.kinds["attention"].found == 1
    assert rep.kinds["attention"].sites[0].rule.endswith(op_type)


def test_com_microsoft_moe():
    E, D, F = 4, 8, 16
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((E, F, D)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((E, D, F)).astype(np.float32), "w2")]
    m = _single_op_model("MoE", "com.microsoft", [("x", [6, D]), ("router", [6, E])], {"k": 2}, extra_inits=inits)
    rep = n6onnx.inspect(m)
    assert rep.kinds["moe"].found == 1 and rep.kinds["moe"].sites[0].rule == "moe.op.MoE"


@pytest.mark.parametrize("model", ["gpt2", "llama", "qwen2", "gemma"])
def test_decoder_kv_export_blocks_report_their_cache(decoder_export, model):
    from n6onnx.testing import zoo_decoder as zd

    rep = n6onnx.inspect(decoder_export(model))
    sites = rep.kinds["attention"].sites
    assert len(sites) == zd.LAYERS
    for i, s in enumerate(sites):
        d = s.detail
        assert (d["heads"], d["kv_heads"], d["head_size"]) == (zd.HEADS, zd.KV_HEADS[model], zd.HEAD_DIM)
        assert d["cache"] == {"past_key": f"past_key_values.{i}.key", "past_value": f"past_key_values.{i}.value",
                              "present_key": f"present.{i}.key", "present_value": f"present.{i}.value"}
        assert d["mask"]["causal"]  # computed at run time from position ranges, not a constant
    # the same model without a cache: same blocks, no cache tensors, still causal
    for s in n6onnx.inspect(decoder_export(model, form="nokv")).kinds["attention"].sites:
        assert "cache" not in s.detail and s.detail["mask"]["causal"]
    assert {s.detail["gated"] for s in rep.kinds["ffn"].sites} == {model != "gpt2"}
