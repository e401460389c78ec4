"""Property-based (hypothesis) graphs around GELU, FFN and attention shapes. Every rewrite either
leaves the graph's function unchanged, or changes exactly the declared sites, and then the output
equals the op's reference (Phi6 from SPEC.md, computed here in numpy) within its tolerance. A
non-GELU expression that gets rewritten, or a causal block that gets rewritten, is a silent wrong
model and fails the property."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import n6onnx
from n6onnx.runtime import InferenceSession

FUZZ = settings(max_examples=12, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _c(name, value):
    return helper.make_tensor(name, TensorProto.FLOAT, [], [float(value)])


def _model(nodes, inits, shape, outputs=("y",)):
    g = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    return onnx.shape_inference.infer_shapes(m)


def _gelu_graph(form, perturb, extra_use, bias):
    """z = x (+ bias); y = GELU(z) in the given form; ``perturb`` breaks one constant; ``extra_use``
    also outputs an intermediate of the expression."""
    nodes, inits, z = [], [], "x"
    if bias is not None:
        inits.append(_c("bias", bias))
        nodes.append(helper.make_node("Add", ["x", "bias"], ["z"]))
        z = "z"
    inter = None
    if form == "op":
        nodes.append(helper.make_node("Gelu", [z], ["y"]))
    elif form == "erf":
        inits += [_c("sqrt2", 1.2 if perturb else math.sqrt(2)), _c("one", 1.0), _c("half", 0.5)]
        nodes += [helper.make_node("Div", [z, "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", [z, "p"], ["m"]),
                  helper.make_node("Mul", ["m", "half"], ["y"])]
        inter = "e"
    elif form == "tanh":
        inits += [_c("k", 0.7978845608028654 * (1.3 if perturb else 1)), _c("a", 0.044715), _c("one", 1.0),
                  _c("half", 0.5), _c("three", 3.0)]
        nodes += [helper.make_node("Pow", [z, "three"], ["c3"]), helper.make_node("Mul", ["c3", "a"], ["c3a"]),
                  helper.make_node("Add", [z, "c3a"], ["s"]), helper.make_node("Mul", ["s", "k"], ["sk"]),
                  helper.make_node("Tanh", ["sk"], ["t"]), helper.make_node("Add", ["t", "one"], ["p"]),
                  helper.make_node("Mul", [z, "p"], ["m"]), helper.make_node("Mul", ["m", "half"], ["y"])]
        inter = "t"
    else:  # silu: x * sigmoid(x), a near-miss, never GELU
        nodes += [helper.make_node("Sigmoid", [z], ["sg"]), helper.make_node("Mul", [z, "sg"], ["y"])]
        inter = "sg"
    outputs = ("y", inter) if extra_use and inter else ("y",)
    return nodes, inits, outputs


def _phi6(x):
    c = np.clip(x.astype(np.float64), -2.0, 2.0)
    return c * c - c + 1.0


def _run(model_or_path, x):
    s = InferenceSession(model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString())
    return s.run(None, {"x": x})


@FUZZ
@given(form=st.sampled_from(["op", "erf", "tanh", "silu"]), perturb=st.booleans(), extra_use=st.booleans(),
       bias=st.one_of(st.none(), st.floats(-2, 2, allow_nan=False, width=32)),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_gelu_matcher_property(tmp_path_factory, form, perturb, extra_use, bias, shape, seed):
    nodes, inits, outputs = _gelu_graph(form, perturb, extra_use, bias)
    m = _model(nodes, inits, shape, outputs)
    x = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)
    ref = _run(m, x)
    out = tmp_path_factory.mktemp("g") / "o.onnx"
    _, rep = n6onnx.rewrite(m, out, ["gelu=phi6"])
    got = _run(str(out), x)
    is_gelu = form in ("op", "erf", "tanh") and not (perturb and form != "op")
    rewritten = rep.rewritten["gelu"]
    if rewritten:
        assert is_gelu and not (extra_use and form != "op"), "a non-GELU (or a shared intermediate) was rewritten"
        assert rewritten == 1 and len(rep.reports["gelu"].sites) == 1
        z = x + (np.float32(bias) if bias is not None else 0)
        np.testing.assert_allclose(got[0], _phi6(z), rtol=1e-5, atol=1e-5)
    else:
        assert not is_gelu or (extra_use and form != "op"), f"a plain GELU ({form}) was not rewritten"
        for a, b in zip(ref, got):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert rep.reports["gelu"].near_misses or form == "silu" or rep.reports["gelu"].seen == 0


def _ffn_graph(D, H, residual, rng):
    def t(name, a):
        return onnx.numpy_helper.from_array(a.astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Gelu", ["h1"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["o0"]),
             helper.make_node("Add", ["o0", "b2"], ["o1" if residual else "y"])]
    if residual:
        nodes.append(helper.make_node("Add", ["x", "o1"], ["y"]))
    inits = [t("w1", rng.standard_normal((D, H)) / math.sqrt(D)), t("b1", rng.standard_normal(H) * 0.1),
             t("w2", rng.standard_normal((H, D)) / math.sqrt(H)), t("b2", rng.standard_normal(D) * 0.1)]
    return nodes, inits


@FUZZ
@given(D=st.integers(2, 12), H=st.integers(2, 24), residual=st.booleans(), ratio=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       seed=st.integers(0, 2**16))
def test_ffn_matcher_property(tmp_path_factory, D, H, residual, ratio, seed):
    rng = np.random.default_rng(seed)
    nodes, inits = _ffn_graph(D, H, residual, rng)
    m = _model(nodes, inits, [2, 3, D])
    x = rng.standard_normal((2, 3, D)).astype(np.float32)
    ref = _run(m, x)[0]
    rep = n6onnx.inspect(m)
    assert rep.kinds["ffn"].found == 1 and rep.kinds["gelu"].found == 1
    out = tmp_path_factory.mktemp("f") / "o.onnx"
    k = int(round(ratio * D))
    _, rw = n6onnx.rewrite(m, out, [f"ffn=phi-bottleneck:{ratio}"])
    got = _run(str(out), x)[0]
    shapes = {tuple(t.dims) for t in onnx.load(str(out)).graph.initializer}
    if k >= H:  # nothing to cut: the same function
        assert rw.rewritten["ffn"] == 0 and rw.reports["ffn"].near_misses
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)
    else:  # the declared cut: the hidden width is now k, the rest of the graph as it was
        assert rw.rewritten["ffn"] == 1 and rw.reports["ffn"].sites
        assert (D, k) in shapes and (k, D) in shapes and (D, H) not in shapes and (H, D) not in shapes
        assert got.shape == ref.shape and np.all(np.isfinite(got))


def _attention_graph(L, D, causal, rng):
    """One-head self-attention over [1, L, D]: softmax(x Wq (x Wk)^T * s [+ causal mask]) x Wv Wo + bo + x."""
    def t(name, a):
        return onnx.numpy_helper.from_array(np.asarray(a, np.float32), name)

    inits = [t(n, rng.standard_normal((D, D)) / math.sqrt(D)) for n in ("wq", "wk", "wv", "wo")]
    inits += [t("bo", rng.standard_normal(D) * 0.1), t("scale", 1 / math.sqrt(D))]
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
             helper.make_node("MatMul", ["x", "wv"], ["v"]), helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s1"])]
    scores = "s1"
    if causal:
        inits.append(t("causal", np.triu(np.full((L, L), -1e4), 1)))
        nodes.append(helper.make_node("Add", ["s1", "causal"], ["s2"]))
        scores = "s2"
    nodes += [helper.make_node("Softmax", [scores], ["p"], axis=-1), helper.make_node("MatMul", ["p", "v"], ["a"]),
              helper.make_node("MatMul", ["a", "wo"], ["o0"]), helper.make_node("Add", ["o0", "bo"], ["o1"]),
              helper.make_node("Add", ["x", "o1"], ["y"])]
    return nodes, inits


@FUZZ
@given(L=st.integers(2, 9), D=st.sampled_from([4, 8]), causal=st.booleans(),
       spec=st.sampled_from(["attention=fftmix:@0", "attention=egyptian:full"]), seed=st.integers(0, 2**16))
def test_attention_matcher_property(tmp_path_factory, L, D, causal, spec, seed):
    rng = np.random.default_rng(seed)
    nodes, inits = _attention_graph(L, D, causal, rng)
    m = _model(nodes, inits, [1, L, D])
    x = rng.standard_normal((1, L, D)).astype(np.float32)
    ref = _run(m, x)[0]
    blocks = n6onnx.inspect(m).kinds["attention"]
    out = tmp_path_factory.mktemp("a") / "o.onnx"
    _, rw = n6onnx.rewrite(m, out, [spec])
    got = _run(str(out), x)[0]
    if causal:  # rewritten in the op's causal mode: an earlier position never sees a later token
        assert blocks.found == 1
        assert rw.rewritten["attention"] == 1 or (spec.endswith("full") and rw.reports["attention"].near_misses)
        assert all(s.detail["causal"] for s in rw.reports["attention"].sites)
        if spec.endswith("full") and rw.rewritten["attention"]:
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
        later = x.copy()
        later[0, -1] += 1.0
        moved = np.abs(_run(str(out), later)[0][0, :-1] - got[0, :-1]).max()
        assert moved == 0.0, "an earlier position saw a later token"
    elif rw.rewritten["attention"] and spec.endswith("full"):  # every head full: reproduces the original
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    else:
        assert got.shape == ref.shape and np.all(np.isfinite(got))
