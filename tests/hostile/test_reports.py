"""Reports tell the truth: duplicate passes, a ratio that would delete the FFN, a GELU inside a
control-flow body, the library status, and the demo's bench figures."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import n6onnx
from n6onnx import demo
from n6onnx.testing import zoo
from n6onnx._library import library_status
from n6onnx.errors import BadArgumentError
from n6onnx.runtime import InferenceSession


@pytest.mark.parametrize("ratio", ["0.001", "1/1000", "1e-9"])
def test_ratio_that_rounds_to_zero_units_is_refused(zoo_export, tmp_path, hx, ratio):
    src = zoo_export("bert", "dynamo20")  # d_model 32: ratio * 32 rounds to 0
    r = hx.cli("rewrite", src, "-o", tmp_path / "o.onnx", "--pass", f"ffn=phi-bottleneck:{ratio}")
    hx.clean(r, "rounds to 0 hidden units")
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("a,b", [("gelu=phi6", "gelu=zetaln2"), ("gelu=phi6", "gelu=phi6"),
                                 ("ffn=phi-bottleneck", "ffn=phi-bottleneck:2"),
                                 ("attention=egyptian", "attention=fftmix:@0"),
                                 ("attention=fftmix:@0", "attention=fftmix:0,1")])
def test_duplicate_passes_on_the_same_sites_are_refused(zoo_export, tmp_path, hx, a, b):
    src = zoo_export("bert", "dynamo20")
    hx.clean(hx.cli("rewrite", src, "-o", tmp_path / "o.onnx", "--pass", a, "--pass", b), "give")
    assert not (tmp_path / "o.onnx").exists()


def test_disjoint_attention_passes_both_apply_and_are_counted(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["attention=fftmix:@1", "attention=fftmix:@0"])
    assert rep.rewritten["attention"] == 2 and sorted(s.detail["index"] for s in rep.reports["attention"].sites) == [0, 1]
    m = onnx.load(str(tmp_path / "o.onnx"))
    assert sum(n.op_type == "FFTMix" for n in m.graph.node) == 2
    assert rep.passes == ["attention=fftmix:@1", "attention=fftmix:@0"]


def test_gelu_kinds_count_what_the_model_holds(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=zetaln2", "ffn=phi-bottleneck:2"])
    m = onnx.load(str(tmp_path / "o.onnx"))
    held = sum(n.domain == "ai.n6onnx" or n.op_type.endswith("ZetaLn2") for n in m.graph.node
               if "ZetaLn2" in n.op_type)
    assert rep.rewritten["gelu"] == held == 2


def _gelu_in_if(path):
    """y = If(cond, then: Gelu(x), else: x): the GELU lives in a subgraph."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    then = helper.make_graph([helper.make_node("Gelu", ["x"], ["t"])], "then", [],
                             [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2, 4])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                          [x, helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_gelu_inside_an_if_body_gets_the_right_near_miss(tmp_path):
    src = _gelu_in_if(tmp_path / "if.onnx")
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=phi6"])
    g = rep.reports["gelu"]
    assert g.rewritten == 0 and len(g.near_misses) == 1
    assert "control-flow subgraph" in g.near_misses[0].reason
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
    a = InferenceSession(str(src)).run(None, {"x": x, "c": np.array(True)})[0]
    b = InferenceSession(str(tmp_path / "o.onnx")).run(None, {"x": x, "c": np.array(True)})[0]
    np.testing.assert_array_equal(a, b)  # left as it was


def test_library_status_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("N6ONNX_LIBRARY", str(tmp_path / "missing.so"))
    path, why = library_status()
    assert path is None and "names no file" in why and n6onnx.library_path() is None
    monkeypatch.delenv("N6ONNX_LIBRARY")
    path, why = library_status()
    assert (path is None) == ("function fallbacks" in why)


def test_bench_without_library_says_so(zoo_export, tmp_path, monkeypatch):
    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "p.onnx", ["gelu=phi6"])
    monkeypatch.setenv("N6ONNX_LIBRARY", str(tmp_path / "missing.so"))
    b = n6onnx.bench(tmp_path / "p.onnx", seconds=0.3, window=0.1, warmup=0.0, idle_seconds=0.0).to_json()
    assert b["session"]["custom_op_library"] is None
    assert any("no n6 custom-op library was registered" in w for w in b["warnings"])
    assert "registered for both" not in b["method"]


def test_demo_bench_line_names_each_statistic():
    b = {"latency_ms": {"p50": 80.2}, "baseline": {"latency_ms": {"p50": 162.5}},
         "ratio": {"latency_p50": {"median": 1.067, "q1": 1.01, "q3": 1.1}},
         "energy": {"joules_per_inference": 0.5, "method": "estimated"}}
    line = demo.bench_line("phi6", b)
    assert "pooled p50" in line and "per interleaved block pair" in line and "disagree" in line
    b["latency_ms"]["p50"] = 152.0
    assert "disagree" not in demo.bench_line("phi6", b)
