"""n6onnx.MoE beyond the sampled contract (tests/ops/test_contract.py): the numpy reference against
an independent float64 loop, the documented tie rule, the kernel really running as one node,
bad inputs as onnxruntime errors, thread-count independence, zero tokens."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY
from n6onnx.ops.moe import EGYPTIAN, make_feeds, route

SPEC = REGISTRY["MoE"]


def _act64(name, h, g):
    if name == "gelu":
        return 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
    if name == "gelu_tanh":
        return 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    if name == "silu":
        return h / (1 + np.exp(-h))
    if name == "swiglu":
        return h / (1 + np.exp(-h)) * g
    if name == "relu":
        return np.maximum(h, 0)
    c = np.clip(h, -2, 2)
    return c * c - c + 1


def _loop64(f, routing="topk", k=2, normalize=1, activation="gelu", group=1, drop=0):
    """Token by token, in float64, straight from the op's definition."""
    x, lg = f["X"].astype(np.float64), f["logits"].astype(np.float64)
    N, G = lg.shape
    y = np.zeros(x.shape)
    for n in range(N):
        order = sorted(range(G), key=lambda g: (-lg[n, g], g))
        if routing == "egyptian":
            sel, w = order[:3], [1 / 2, 1 / 3, 1 / 6]
        else:
            p = np.exp(lg[n] - lg[n].max())
            p /= p.sum()
            sel = order[:k]
            w = [p[g] for g in sel]
            if normalize:
                w = [v / sum(w) for v in w]
        subs = [(g * group + s, wg) for g, wg in zip(sel, w) for s in range(group)]
        if drop:
            imp = f["importance"].astype(np.float64)
            subs = sorted(subs, key=lambda t: (-t[1] * imp[t[0]], t[0]))[: len(subs) - drop]
        for e, we in subs:
            h = x[n] @ f["W1"][e].astype(np.float64) + (f["b1"][e] if "b1" in f else 0)
            g = x[n] @ f["W3"][e].astype(np.float64) if "W3" in f else None
            o = _act64(activation, h, g) @ f["W2"][e].astype(np.float64) + (f["b2"][e] if "b2" in f else 0)
            y[n] += we * o
    return y


CONFIGS = [
    {"k": 2},
    {"k": 3, "normalize": 0, "activation": "gelu_tanh"},
    {"routing": "egyptian", "activation": "phi6"},
    {"k": 1, "activation": "relu"},
    {"activation": "swiglu", "k": 2},
    {"routing": "egyptian", "group": 3, "drop": 4, "activation": "silu"},
    {"k": 2, "group": 2, "drop": 1},
]


@pytest.mark.parametrize("attrs", CONFIGS, ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
def test_reference_matches_an_independent_loop(attrs):
    group = attrs.get("group", 1)
    f = make_feeds(np.random.default_rng(3), 9, 12, 10, 5, group, "float32", w3=attrs.get("activation") == "swiglu",
                   importance=attrs.get("drop", 0) > 0)
    got = SPEC.reference(*[f.get(n) for n in SPEC.inputs], **attrs)
    np.testing.assert_allclose(got, _loop64(f, **attrs), rtol=2e-5, atol=2e-5)


def test_tie_rule_lower_index_first():
    # all four logits equal: top-2 are groups 0 and 1, with the same weight
    w = route(np.zeros((1, 4), np.float32), k=2)
    np.testing.assert_array_equal(w, [[0.5, 0.5, 0, 0]])
    # ties among the best: egyptian gives 1/2, 1/3, 1/6 to the tied groups by index
    w = route(np.array([[0.0, 3.0, 1.0, 3.0, 3.0]], np.float32), routing="egyptian")
    np.testing.assert_array_equal(w, [[0, EGYPTIAN[0], 0, EGYPTIAN[1], EGYPTIAN[2]]])
    # drop ties (equal weight * importance): the higher expert index is dropped
    w = route(np.zeros((1, 3), np.float32), k=1, group=3, drop=1, importance=np.ones(9, np.float32))
    np.testing.assert_array_equal(w, [[1, 1, 0, 0, 0, 0, 0, 0, 0]])
    # an underflowed softmax weight is still "selected" (ranking uses the logits)
    w = route(np.array([[0.0, -200.0, -300.0]], np.float32), k=2, normalize=0)
    assert w[0, 0] == 1 and w[0, 1] == 0 and w[0, 2] == 0


def _model(feeds, attrs, dynamic=False) -> bytes:
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            [None] * v.ndim if dynamic else list(v.shape)) for k, v in feeds.items()]
    names = [n if n in feeds else "" for n in SPEC.inputs]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("MoE", names, ["Y"], domain=DOMAIN, name="moe", **attrs)
    g = helper.make_graph([node], "moe", inputs, [helper.make_tensor_value_info("Y", inputs[0].type.tensor_type.elem_type,
                                                                                [None, None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[SPEC.function(18)])
    return m.SerializeToString()


def _session(model, library=True, threads=2, profile=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if library:
        assert n6onnx.library_path() is not None, "the custom-op library was not built"
        so.register_custom_ops_library(str(n6onnx.library_path()))
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def test_kernel_really_runs(tmp_path):
    """With the library the node runs as one custom kernel; without it, as the function's ops."""
    f = make_feeds(np.random.default_rng(0), 16, 8, 12, 4, 1, "float32")
    for library in (True, False):
        s = _session(_model(f, {}), library, profile=str(tmp_path / "p"))
        s.run(None, f)
        ops = {e["args"].get("op_name") for e in json.load(open(s.end_profiling())) if e.get("cat") == "Node"}
        if library:
            assert ops == {"MoE"}, ops
        else:
            assert "MoE" not in ops and "MatMul" in ops, ops


BAD = [
    ("egyptian_G2", (4, 8, 6, 2, 1), {"routing": "egyptian"}, {}, "G >= 3"),
    ("swiglu_no_W3", (4, 8, 6, 4, 1), {"activation": "swiglu"}, {}, "needs the gate weights W3"),
    ("drop_no_importance", (4, 8, 6, 4, 2), {"group": 2, "drop": 1}, {}, "needs the importance"),
    ("drop_too_large", (4, 8, 6, 4, 2), {"group": 2, "drop": 4}, {"importance": True}, "drop must be"),
    ("k_above_G", (4, 8, 6, 4, 1), {"k": 5}, {}, "k must be in"),
    ("unknown_activation", (4, 8, 6, 4, 1), {"activation": "tanh"}, {}, "unknown activation"),
    ("unknown_routing", (4, 8, 6, 4, 1), {"routing": "hash"}, {}, "unknown routing"),
    ("group_mismatch", (4, 8, 6, 4, 1), {"group": 2}, {}, "need E = G"),
    ("W2_shape", (4, 8, 6, 4, 1), {}, {"W2": (4, 6, 7)}, "W2 must be"),
    ("b1_shape", (4, 8, 6, 4, 1), {}, {"b1": (4, 5)}, "b1 must be"),
]


@pytest.mark.parametrize("name,dims,attrs,change,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_an_ort_error(name, dims, attrs, change, msg):
    f = make_feeds(np.random.default_rng(2), *dims, "float32", importance=bool(change.pop("importance", False)))
    for k, shape in change.items():
        f[k] = np.ones(shape, np.float32)
    s = _session(_model(f, attrs, dynamic=True))
    with pytest.raises(Exception, match=msg):
        s.run(None, f)
    with pytest.raises(ValueError):  # the reference refuses it too
        SPEC.reference(*[f.get(n) for n in SPEC.inputs], **attrs)


def test_fallback_rejects_unknown_strings():
    f = make_feeds(np.random.default_rng(2), 4, 8, 6, 4, 1, "float32")
    for attrs in ({"activation": "tanh"}, {"routing": "hash"}):
        with pytest.raises(Exception):
            _session(_model(f, attrs), library=False).run(None, f)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_threads_do_not_change_the_result(dtype):
    f = make_feeds(np.random.default_rng(5), 257, 48, 40, 6, 2, dtype, w3=True, importance=True)
    attrs = {"k": 3, "group": 2, "drop": 2, "activation": "swiglu"}
    m = _model(f, attrs)
    y1 = _session(m, threads=1).run(None, f)[0]
    y2 = _session(m, threads=2).run(None, f)[0]
    np.testing.assert_array_equal(y1, y2)
    ref = SPEC.reference(*[f.get(n) for n in SPEC.inputs], **attrs)
    tol = SPEC.tolerance(dtype)
    np.testing.assert_allclose(y1.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


def test_zero_tokens():
    f = make_feeds(np.random.default_rng(0), 0, 8, 6, 4, 1, "float32")
    y = _session(_model(f, {}, dynamic=True)).run(None, f)[0]
    assert y.shape == (0, 8) and y.dtype == np.float32


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_several_k_blocks(dtype):
    """Reductions longer than the kernel's K block (256): D = 520, H = 300."""
    f = make_feeds(np.random.default_rng(8), 20, 520, 300, 4, 1, dtype)
    y = _session(_model(f, {"k": 2})).run(None, f)[0]
    ref = SPEC.reference(*[f.get(n) for n in SPEC.inputs], k=2)
    tol = SPEC.tolerance(dtype)
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("isa", ["generic", "avx2"])
def test_lower_isa_paths(isa, monkeypatch, tmp_path):
    """The scalar and AVX2 GEMM paths (ISA chosen once per process: run in a subprocess)."""
    import subprocess
    import sys

    code = (
        "import numpy as np, sys; sys.path.insert(0, %r); from test_moe import _model, _session, SPEC, make_feeds\n"
        "f = make_feeds(np.random.default_rng(4), 70, 300, 72, 4, 1, 'float32', w3=True)\n"
        "a = {'activation': 'swiglu', 'k': 2}\n"
        "y = _session(_model(f, a)).run(None, f)[0]\n"
        "r = SPEC.reference(*[f.get(n) for n in SPEC.inputs], **a)\n"
        "np.testing.assert_allclose(y, r, rtol=1e-4, atol=1e-4)\n" % os.path.dirname(__file__)
    )
    # The child must load the same library as this process (from the repo root, `python -c` would
    # import the source tree, which has no built library): pass it explicitly, run elsewhere.
    env = dict(os.environ, N6ONNX_ISA=isa, N6ONNX_LIBRARY=str(n6onnx.library_path()))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
