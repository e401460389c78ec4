"""FFTMix and EgyptianAttention beyond the sampled contract: the numpy references against
independent formulations, the kernels running as one node, bad shapes as ORT errors, the
kernel's optional mask, and the local/global heads at sizes spanning several key blocks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY
from n6onnx.ops.egyptian_attention import default_head_kinds
from n6onnx.ops.fftmix import WINDOWS

FFTMIX = REGISTRY["FFTMix"]
EGY = REGISTRY["EgyptianAttention"]
T = {"float32": onnx.TensorProto.FLOAT, "float16": onnx.TensorProto.FLOAT16}


def _model(spec, inputs: dict, attrs=None, dynamic=False) -> bytes:
    """inputs: name -> (elem_type, shape); dynamic: every dim symbolic."""
    vis = [helper.make_tensor_value_info(n, et, [f"{n}_{i}" for i in range(len(s))] if dynamic else list(s))
           for n, (et, s) in inputs.items()]
    node = helper.make_node(spec.name, list(inputs), ["Y"], domain=DOMAIN, **(attrs or {}))
    first = next(iter(inputs.values()))
    out = helper.make_tensor_value_info("Y", first[0], [None] * len(first[1]))
    g = helper.make_graph([node], "t", vis, [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(18)])
    return m.SerializeToString()


def _session(model: bytes, library=True, profile_dir=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if library:
        so.register_custom_ops_library(str(n6onnx.library_path()))
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "p")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _fftmix_feeds(rng, B, L, D, dtype="float32"):
    feeds = {"X": rng.normal(0, 1, (B, L, D)).astype(dtype)}
    for w in WINDOWS:
        feeds[f"F{w}"] = rng.uniform(-1, 1, (w // 2 + 1, D)).astype(dtype)
    return feeds


def _attn_feeds(rng, B, L, H, dh, dtype="float32", mask=True):
    feeds = {n: rng.normal(0, 1, (B, L, H * dh)).astype(dtype) for n in ("Q", "K", "V")}
    if mask:
        m = np.ones((B, L), np.int32)
        m[:, L - L // 4:] = 0
        feeds["key_padding_mask"] = m
    return feeds


# ------------------------------------------------------------------ references vs independent forms
def _fftmix_circular(X, Fs):
    """Per-channel circular convolution with k_w = irfft(F_w), in float64, written per output."""
    X = X.astype(np.float64)
    B, L, D = X.shape
    out = np.zeros((B, L, 3 * D))
    for s, (w, F) in enumerate(zip(WINDOWS, Fs)):
        if w > L:
            continue
        k = np.fft.irfft(F.astype(np.float64), n=w, axis=0)  # [w, D]
        for i in range(L):
            start = (i // w) * w
            for j in range(start, start + w):
                if j < L:  # padded zeros contribute nothing
                    out[:, i, s * D:(s + 1) * D] += k[(i - j) % w] * X[:, j]
    return out


@pytest.mark.parametrize("L", [1, 5, 6, 13, 24, 50])
def test_fftmix_reference_is_a_circular_convolution(L):
    rng = np.random.default_rng(L)
    f = _fftmix_feeds(rng, 2, L, 7)
    ref = FFTMIX.reference(*f.values())
    np.testing.assert_allclose(ref, _fftmix_circular(f["X"], [f["F6"], f["F12"], f["F24"]]), rtol=1e-5, atol=1e-5)


def _dense_attention(Q, K, V, mask, num_heads, window=64, scale=0.0, head_kinds=None):
    """Dense masked softmax attention per head kind, in float64."""
    B, L, HD = Q.shape
    dh = HD // num_heads
    kinds = head_kinds if head_kinds is not None else default_head_kinds(num_heads)
    q, k, v = (a.astype(np.float64).reshape(B, L, num_heads, dh).transpose(0, 2, 1, 3) for a in (Q, K, V))
    s = q @ k.transpose(0, 1, 3, 2) * (scale or 1 / np.sqrt(dh))
    i, j = np.arange(L)[:, None], np.arange(L)[None, :]
    allowed = np.stack([np.ones((L, L), bool) if kd == 0 else (np.abs(i - j) <= window // 2) if kd == 1
                        else np.broadcast_to((j == 0) | (j == L - 1), (L, L)) for kd in kinds])
    allowed = allowed[None] & (np.ones((B, L), bool) if mask is None else mask != 0)[:, None, None, :]
    s = np.where(allowed, s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    p = np.where(allowed, np.exp(s - np.where(np.isfinite(mx), mx, 0)), 0)
    den = p.sum(-1, keepdims=True)
    p = np.divide(p, den, out=np.zeros_like(p), where=den > 0)
    return (p @ v).transpose(0, 2, 1, 3).reshape(B, L, HD)


@pytest.mark.parametrize("L,attrs", [(1, {"num_heads": 6}), (9, {"num_heads": 12, "window": 4}),
                                     (40, {"num_heads": 3, "window": 10, "scale": 0.2, "head_kinds": [2, 1, 0]})])
def test_egyptian_reference_is_dense_masked_attention(L, attrs):
    rng = np.random.default_rng(L)
    H = attrs["num_heads"]
    f = _attn_feeds(rng, 2, L, H, 4)
    f["key_padding_mask"][1, 0] = 0
    ref = EGY.reference(*f.values(), **attrs)
    np.testing.assert_allclose(ref, _dense_attention(*f.values(), **attrs), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ kernels
def _ops_run(model, feeds, library, tmp_path):
    s = _session(model, library, tmp_path)
    s.run(None, feeds)
    prof = s.end_profiling()
    return {e["args"].get("op_name") for e in json.load(open(prof)) if e.get("cat") == "Node"}


def test_kernels_run_as_one_node(tmp_path):
    rng = np.random.default_rng(0)
    f = _fftmix_feeds(rng, 1, 30, 8)
    m = _model(FFTMIX, {k: (T["float32"], v.shape) for k, v in f.items()})
    assert _ops_run(m, f, True, tmp_path) == {"FFTMix"}
    assert "MatMul" in _ops_run(m, f, False, tmp_path)
    f = _attn_feeds(rng, 1, 30, 6, 4)
    m = _model(EGY, {k: (T["float32"] if k != "key_padding_mask" else onnx.TensorProto.INT32, v.shape)
                     for k, v in f.items()}, {"num_heads": 6})
    assert _ops_run(m, f, True, tmp_path) == {"EgyptianAttention"}
    assert "Softmax" in _ops_run(m, f, False, tmp_path)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_egyptian_kernel_without_mask_and_across_key_blocks(dtype):
    """No mask input (kernels only), L spanning several 64-key blocks, default 6/4/2 heads."""
    rng = np.random.default_rng(1)
    f = _attn_feeds(rng, 2, 200, 12, 8, dtype, mask=False)
    m = _model(EGY, {k: (T[dtype], v.shape) for k, v in f.items()}, {"num_heads": 12, "window": 64})
    y = _session(m).run(None, f)[0]
    ref = EGY.reference(*f.values(), num_heads=12, window=64)
    tol = EGY.tolerance(dtype)
    np.testing.assert_allclose(y.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


def test_fftmix_kernel_dynamic_shapes_and_large_d():
    rng = np.random.default_rng(2)
    f = _fftmix_feeds(rng, 2, 77, 200)
    m = _model(FFTMIX, {k: (T["float32"], v.shape) for k, v in f.items()}, dynamic=True)
    y = _session(m).run(None, f)[0]
    np.testing.assert_allclose(y, FFTMIX.reference(*f.values()), rtol=1e-4, atol=1e-4)


def _expect_ort_error(model, feeds, match):
    s = _session(model)
    with pytest.raises(Exception, match=match):
        s.run(None, feeds)


def test_fftmix_bad_shapes_are_ort_errors():
    rng = np.random.default_rng(3)
    f = _fftmix_feeds(rng, 1, 10, 8)
    m = _model(FFTMIX, {k: (T["float32"], v.shape) for k, v in f.items()}, dynamic=True)
    bad = dict(f, F12=f["F12"][:, :4].copy())
    _expect_ort_error(m, bad, r"F12 must be \[7, 8\]")
    bad = dict(f, F6=f["F6"][:3].copy())
    _expect_ort_error(m, bad, r"F6 must be \[4, 8\]")
    m2 = _model(FFTMIX, {"X": (T["float32"], (10, 8)), **{k: (T["float32"], v.shape) for k, v in f.items() if k != "X"}},
                dynamic=True)
    _expect_ort_error(m2, dict(f, X=f["X"][0]), r"X must be \[B, L, D\]")


def test_egyptian_bad_shapes_and_attributes_are_ort_errors():
    rng = np.random.default_rng(4)
    f = _attn_feeds(rng, 2, 10, 4, 4)
    types = {k: (T["float32"] if k != "key_padding_mask" else onnx.TensorProto.INT32, v.shape) for k, v in f.items()}
    m = _model(EGY, types, {"num_heads": 4}, dynamic=True)
    _expect_ort_error(m, dict(f, key_padding_mask=np.ones((2, 9), np.int32)), r"key_padding_mask must be \[B, Lk\]")
    _expect_ort_error(m, dict(f, K=f["K"][:, :9].copy(), V=f["V"][:, :9].copy(),
                              key_padding_mask=f["key_padding_mask"][:, :9].copy()), "causal=0 needs as many keys as queries")
    _expect_ort_error(m, dict(f, V=f["V"][:, :9].copy()), r"K and V must both be \[B, Lk, kv_heads\*dh\]")
    causal = {"num_heads": 4, "causal": 1}
    _expect_ort_error(_model(EGY, types, causal, dynamic=True), dict(f, Q=f["Q"][:, :9].copy(), K=f["K"][:, :8].copy(),
                      V=f["V"][:, :8].copy(), key_padding_mask=f["key_padding_mask"][:, :8].copy()), "needs Lk >= Lq")
    _expect_ort_error(_model(EGY, types, dict(causal, kv_heads=3), dynamic=True), f, "kv_heads=3 must divide")
    _expect_ort_error(_model(EGY, types, dict(causal, kv_heads=2, head_kinds=[0, 0, 1, 2]), dynamic=True),
                      dict(f, K=f["K"][..., :8].copy(), V=f["V"][..., :8].copy()), "KV group 1 mix kinds")
    _expect_ort_error(_model(EGY, types, dict(causal, causal=2), dynamic=True), f, "causal must be 0 or 1")
    _expect_ort_error(_model(EGY, types, dict(causal, sinks=-1), dynamic=True), f, "sinks must be >= 0")
    _expect_ort_error(_model(EGY, types, {"num_heads": 3}, dynamic=True), f, "does not divide")
    _expect_ort_error(_model(EGY, types, {"num_heads": 4, "head_kinds": [0, 1]}, dynamic=True), f, "head_kinds")
    _expect_ort_error(_model(EGY, types, {"num_heads": 4, "head_kinds": [0, 1, 2, 3]}, dynamic=True), f, "head_kinds")


@pytest.mark.parametrize("opset", [15, 17, 18, 20])
@pytest.mark.parametrize("op", ["FFTMix", "EgyptianAttention"])
def test_function_fallback_at_model_opsets(op, opset):
    """The fallback body imports the model's default opset: it must check and run from opset 15."""
    spec = REGISTRY[op]
    sample = spec.samples("float32")[2]
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in sample.feeds.items()]
    node = helper.make_node(spec.name, list(sample.feeds), ["Y"], domain=DOMAIN, **sample.attrs)
    out = helper.make_tensor_value_info("Y", inputs[0].type.tensor_type.elem_type, [None] * 3)
    m = helper.make_model(helper.make_graph([node], "t", inputs, [out]),
                          opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(opset)])
    onnx.checker.check_model(m, full_check=True)
    y = _session(m.SerializeToString(), library=False).run(None, sample.feeds)[0]
    ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
    tol = spec.tolerance("float32")
    np.testing.assert_allclose(y, ref, rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("L,window", [(128, 64), (192, 10), (64, 200)])
def test_egyptian_local_heads_block_edges(L, window):
    """Local heads whose key blocks start anywhere, L a multiple of the 64-key block, windows
    smaller and larger than L."""
    rng = np.random.default_rng(L)
    f = _attn_feeds(rng, 1, L, 3, 16, mask=False)
    attrs = {"num_heads": 3, "window": window, "head_kinds": [1, 1, 1]}
    m = _model(EGY, {k: (T["float32"], v.shape) for k, v in f.items()}, attrs)
    y = _session(m).run(None, f)[0]
    np.testing.assert_allclose(y, EGY.reference(*f.values(), **attrs), rtol=1e-4, atol=1e-5)
