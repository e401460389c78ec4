"""EgyptianAttention's causal mode and grouped-query attention (SPEC.md, "Egyptian attention,
causal mode"): the numpy reference against an independent dense formulation, causality,
incremental decoding == one full call, truncated per-kind caches == the full cache, and errors.
Each property is checked on the reference and on ORT running the op (function fallback and the
custom-op kernel)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY
from n6onnx.ops.egyptian_attention import FULL, GLOBAL, LOCAL, default_group_kinds, default_head_kinds

EGY = REGISTRY["EgyptianAttention"]
IMPLS = ["reference", "fallback", "kernel"]


def _run(impl: str, feeds: dict, attrs: dict) -> np.ndarray:
    """Y of one EgyptianAttention call: the numpy reference, or ORT on a one-node model (the function
    fallback without the library, the kernel with it)."""
    if impl == "reference":
        return EGY.reference(*[feeds.get(n) for n in EGY.inputs], **attrs)
    et = helper.np_dtype_to_tensor_dtype(feeds["Q"].dtype)
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), [f"{n}{i}" for i in range(v.ndim)])
           for n, v in feeds.items()]
    node = helper.make_node(EGY.name, list(feeds), ["Y"], domain=DOMAIN, **attrs)
    g = helper.make_graph([node], "t", vis, [helper.make_tensor_value_info("Y", et, [None] * 3)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[EGY.function(18)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    if impl == "kernel":
        so.register_custom_ops_library(str(n6onnx.library_path()))
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def _feeds(rng, B, Lq, Lk, H, Hkv, dh, mask=True):
    f = {"Q": rng.normal(0, 1, (B, Lq, H * dh)).astype(np.float32)}
    f.update({n: rng.normal(0, 1, (B, Lk, Hkv * dh)).astype(np.float32) for n in ("K", "V")})
    m = np.ones((B, Lk), np.int32)
    if mask and B > 1:
        m[1, :3] = 0  # left padding of the second sequence
    f["key_padding_mask"] = m
    return f


def _dense_causal(Q, K, V, mask, *, num_heads, kv_heads, head_kinds, window, sinks, scale=0.0):
    """Dense float64 masked softmax with the contract's allowed-key rules written as matrices."""
    B, Lq, HD = Q.shape
    Lk = K.shape[1]
    H, dh = num_heads, HD // num_heads
    G = H // kv_heads
    q = Q.astype(np.float64).reshape(B, Lq, H, dh).transpose(0, 2, 1, 3)
    k, v = (np.repeat(a.astype(np.float64).reshape(B, Lk, kv_heads, dh), G, axis=2).transpose(0, 2, 1, 3) for a in (K, V))
    s = q @ k.transpose(0, 1, 3, 2) * (scale or 1 / np.sqrt(dh))
    p, j = (Lk - Lq + np.arange(Lq))[:, None], np.arange(Lk)[None, :]
    rules = {FULL: j <= p, LOCAL: (j <= p) & (j > p - window), GLOBAL: ((j < sinks) & (j <= p)) | (j == p)}
    allowed = np.stack([np.broadcast_to(rules[kd], (Lq, Lk)) for kd in head_kinds])[None] & (mask != 0)[:, None, None, :]
    e = np.where(allowed, np.exp(np.where(allowed, s, -np.inf) - np.max(np.where(allowed, s, -1e300), -1, keepdims=True)), 0)
    den = e.sum(-1, keepdims=True)
    prob = np.divide(e, den, out=np.zeros_like(e), where=den > 0)
    return (prob @ v).transpose(0, 2, 1, 3).reshape(B, Lq, HD)


@pytest.mark.parametrize("Lq,Lk,window,sinks", [(16, 16, 4, 1), (1, 23, 6, 4), (5, 19, 30, 2), (3, 4, 2, 4)])
def test_reference_is_the_dense_causal_rule(Lq, Lk, window, sinks):
    rng = np.random.default_rng(Lk)
    H, Hkv = 6, 3
    kinds = [0, 0, 1, 1, 2, 2]
    f = _feeds(rng, 2, Lq, Lk, H, Hkv, 4)
    attrs = dict(num_heads=H, kv_heads=Hkv, head_kinds=kinds, window=window, sinks=sinks)
    got = EGY.reference(*f.values(), causal=1, **attrs)
    np.testing.assert_allclose(got, _dense_causal(*f.values(), **attrs), rtol=1e-5, atol=1e-6)


def test_default_group_kinds():
    assert default_group_kinds(12, 12) == default_head_kinds(12) == [0] * 6 + [1] * 4 + [2] * 2
    # 8 KV groups of 4 query heads: 4 full groups, 2 local, 2 global
    assert default_group_kinds(32, 8) == [0] * 16 + [1] * 8 + [2] * 8
    assert default_group_kinds(12, 6) == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="kv_heads=5 must divide"):
        default_group_kinds(12, 5)


def test_default_kinds_are_per_group_in_the_fallback():
    """The attribute default [-1] with kv_heads: the fallback assigns kinds per group as the reference."""
    rng = np.random.default_rng(9)
    f = _feeds(rng, 1, 12, 12, 12, 6, 4)
    attrs = dict(num_heads=12, kv_heads=6, causal=1, window=3)
    np.testing.assert_allclose(_run("fallback", f, attrs), _run("reference", f, attrs), rtol=1e-4, atol=1e-5)
    ref_explicit = _run("reference", f, dict(attrs, head_kinds=default_group_kinds(12, 6)))
    np.testing.assert_array_equal(_run("reference", f, attrs), ref_explicit)


ATTRS = dict(num_heads=6, kv_heads=3, head_kinds=[0, 0, 1, 1, 2, 2], window=4, sinks=2, causal=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_causality_later_tokens_never_move_earlier_outputs(impl):
    rng = np.random.default_rng(1)
    L, t = 14, 9
    f = _feeds(rng, 2, L, L, 6, 3, 8)
    y = _run(impl, f, ATTRS)
    g = {k: v.copy() for k, v in f.items()}
    for n in ("Q", "K", "V"):
        g[n][:, t:] += rng.normal(0, 3, g[n][:, t:].shape).astype(np.float32)
    y2 = _run(impl, g, ATTRS)
    np.testing.assert_array_equal(y2[:, :t], y[:, :t])  # exactly: no later token takes part
    assert np.abs(y2[:, t:] - y[:, t:]).min() > 0  # and the later outputs did change


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_incremental_decoding_equals_the_full_call(impl, chunk):
    """Decoding chunk by chunk with growing K/V (the past followed by the new tokens) == one full call."""
    rng = np.random.default_rng(2)
    L = 13
    f = _feeds(rng, 2, L, L, 6, 3, 8)
    full = _run(impl, f, ATTRS)
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        step = {"Q": f["Q"][:, s:e], "K": f["K"][:, :e], "V": f["V"][:, :e], "key_padding_mask": f["key_padding_mask"][:, :e]}
        np.testing.assert_allclose(_run(impl, step, ATTRS), full[:, s:e], rtol=0, atol=1e-5)


def _truncated(f, s, e, kind, window, sinks):
    """Per-kind cache at a chunk [s, e): local keeps the last window-1 past keys, global the first
    `sinks`, full everything; the new tokens are appended."""
    idx = np.arange(s)
    if kind == LOCAL:
        idx = idx[max(0, s - (window - 1)):]
    elif kind == GLOBAL:
        idx = idx[:sinks]
    idx = np.concatenate([idx, np.arange(s, e)])
    return {n: f[n][:, idx] for n in ("K", "V")} | {"key_padding_mask": f["key_padding_mask"][:, idx]}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk", [1, 4])
def test_truncated_per_kind_caches_equal_the_full_cache(impl, chunk):
    """A decoder that runs one node per kind, keeping only the keys each kind can see, gets the full
    cache's answer: the saving is real and exact."""
    rng = np.random.default_rng(3)
    L, H, Hkv, dh, window, sinks = 15, 6, 3, 8, 4, 2
    kinds = ATTRS["head_kinds"]
    f = _feeds(rng, 2, L, L, H, Hkv, dh)
    full = _run(impl, f, ATTRS)
    G = H // Hkv
    for s in range(0, L, chunk):
        e = min(L, s + chunk)
        for g in range(Hkv):
            kind = kinds[g * G]
            cache = _truncated({n: f[n][..., g * dh:(g + 1) * dh] if n != "key_padding_mask" else f[n]
                                for n in ("K", "V", "key_padding_mask")}, s, e, kind, window, sinks)
            if kind != FULL:
                assert cache["K"].shape[1] <= e - s + max(window - 1, sinks)
            step = {"Q": f["Q"][:, s:e, g * G * dh:(g + 1) * G * dh]} | cache
            y = _run(impl, step, dict(ATTRS, num_heads=G, kv_heads=1, head_kinds=[kind] * G))
            np.testing.assert_allclose(y, full[:, s:e, g * G * dh:(g + 1) * G * dh], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kwargs,shapes,match", [
    (dict(num_heads=4, kv_heads=3), ((1, 5, 16), (1, 5, 12)), "kv_heads=3 must divide num_heads=4"),
    (dict(num_heads=4, kv_heads=2), ((1, 5, 16), (1, 5, 16)), r"K and V must both be \[B, Lk, kv_heads\*dh\]"),
    (dict(num_heads=4), ((1, 5, 16), (1, 6, 16)), "causal=0 needs as many keys as queries"),
    (dict(num_heads=4, causal=1), ((1, 6, 16), (1, 5, 16)), "causal=1 needs Lk >= Lq"),
    (dict(num_heads=4, causal=2), ((1, 5, 16), (1, 5, 16)), "causal must be 0 or 1"),
    (dict(num_heads=4, causal=1, sinks=-1), ((1, 5, 16), (1, 5, 16)), "sinks must be >= 0"),
    (dict(num_heads=4, kv_heads=2, causal=1, head_kinds=[0, 1, 2, 2]), ((1, 5, 16), (1, 5, 8)),
     r"KV group 0 mix kinds \[0, 1\]"),
    (dict(num_heads=4), ((5, 16), (5, 16)), r"Q must be \[B, Lq, H\*dh\]"),
])
def test_bad_shapes_and_mixed_groups_are_errors(kwargs, shapes, match):
    q, k = shapes
    Q, K = np.zeros(q, np.float32), np.zeros(k, np.float32)
    with pytest.raises(ValueError, match=match):
        EGY.reference(Q, K, K, **kwargs)


def test_mask_shape_follows_the_keys():
    rng = np.random.default_rng(4)
    f = _feeds(rng, 1, 1, 6, 2, 1, 4)
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[B, Lk\] = \[1, 6\]"):
        EGY.reference(f["Q"], f["K"], f["V"], np.ones((1, 1), np.int32), num_heads=2, kv_heads=1, causal=1)


def test_query_with_no_key_outputs_zeros():
    """A decode step whose keys are all padded, and a local head of window 0."""
    rng = np.random.default_rng(5)
    f = _feeds(rng, 1, 1, 5, 2, 2, 4, mask=False)
    f["key_padding_mask"][:] = 0
    for impl in IMPLS:
        assert not _run(impl, f, dict(num_heads=2, causal=1)).any()
    f["key_padding_mask"][:] = 1
    for impl in IMPLS:
        y = _run(impl, f, dict(num_heads=2, causal=1, window=0, head_kinds=[1, 0]))
        assert not y[..., :4].any() and y[..., 4:].any()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("Lq,Lk,window,sinks,mask", [
    (200, 200, 64, 1, False),  # prefill across several 64-key blocks
    (1, 300, 64, 4, True),  # one decode step: 1-row tiles, the local window inside the last blocks
    (3, 300, 100, 2, False),  # a short chunk (fewer queries than a register tile)
    (40, 171, 7, 3, True),  # a chunk spanning query blocks, window smaller than a block
    (33, 33, 0, 0, False),  # window 0: local heads see nothing; sinks 0: global heads see themselves
])
def test_kernel_across_key_blocks(dtype, Lq, Lk, window, sinks, mask):
    rng = np.random.default_rng(Lk + Lq)
    H, Hkv, dh = 8, 4, 16
    f = _feeds(rng, 2, Lq, Lk, H, Hkv, dh, mask=mask)
    f = {k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in f.items()}
    if not mask:
        del f["key_padding_mask"]  # the kernel takes a missing mask
    attrs = dict(num_heads=H, kv_heads=Hkv, head_kinds=[0, 0, 1, 1, 2, 2, 1, 1], window=window, sinks=sinks, causal=1)
    got = _run("kernel", f, attrs)
    ref = EGY.reference(*[f.get(n) for n in EGY.inputs], **attrs)
    tol = EGY.tolerance(dtype)
    assert got.dtype == ref.dtype
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


def _ort_group_query_attention(q, k_new, v_new, past_k, past_v, H, Hkv):
    """onnxruntime's own decoder attention (com.microsoft GroupQueryAttention, CPU): causal, grouped
    query heads, the new tokens appended to a BNSH past cache. An implementation independent of ours."""
    F, dh = TensorProto.FLOAT, q.shape[2] // H
    ins = [helper.make_tensor_value_info(n, F, list(a.shape)) for n, a in
           (("q", q), ("k", k_new), ("v", v_new), ("pk", past_k), ("pv", past_v))]
    ins += [helper.make_tensor_value_info("sl", TensorProto.INT32, [q.shape[0]]),
            helper.make_tensor_value_info("tl", TensorProto.INT32, [])]
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl"], ["y", "pk2", "pv2"],
                            domain="com.microsoft", num_heads=H, kv_num_heads=Hkv)
    outs = [helper.make_tensor_value_info(n, F, None) for n in ("y", "pk2", "pv2")]
    m = helper.make_model(helper.make_graph([node], "gqa", ins, outs), ir_version=10,
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)])
    total = past_k.shape[2] + q.shape[1]
    feeds = {"q": q, "k": k_new, "v": v_new, "pk": past_k, "pv": past_v,
             "sl": np.full(q.shape[0], total - 1, np.int32), "tl": np.array(total, np.int32)}
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("past,Lq", [(0, 9), (37, 1), (20, 5)])
def test_all_full_heads_equal_onnxruntime_group_query_attention(impl, past, Lq):
    """With every head full, causal EgyptianAttention is ordinary causal grouped-query attention:
    it equals ORT's GroupQueryAttention for a prefill, a decode step and a chunk after a cache."""
    rng = np.random.default_rng(past + Lq)
    B, H, Hkv, dh = (1 if past and Lq > 1 else 2), 8, 2, 16  # GQA takes a chunk after a cache for B = 1 only
    f = _feeds(rng, B, Lq, past + Lq, H, Hkv, dh, mask=False)
    bnsh = {n: np.ascontiguousarray(f[n][:, :past].reshape(B, past, Hkv, dh).transpose(0, 2, 1, 3)) for n in "KV"}
    want = _ort_group_query_attention(f["Q"], f["K"][:, past:], f["V"][:, past:], bnsh["K"], bnsh["V"], H, Hkv)
    got = _run(impl, f, dict(num_heads=H, kv_heads=Hkv, causal=1, head_kinds=[FULL] * H))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("L", [3, 40])  # the decode-sized path (K rows) and the tiled path
def test_noncausal_grouped_heads_may_mix_kinds(L):
    """causal=0 takes kv_heads too, and there a KV group may mix kinds."""
    rng = np.random.default_rng(L)
    f = _feeds(rng, 2, L, L, 4, 2, 8)
    attrs = dict(num_heads=4, kv_heads=2, head_kinds=[0, 1, 2, 0], window=2)
    ref = _run("reference", f, attrs)
    for impl in ("fallback", "kernel"):
        np.testing.assert_allclose(_run(impl, f, attrs), ref, rtol=1e-4, atol=1e-5, err_msg=impl)
    kf = {n: np.repeat(f[n].reshape(2, L, 2, 8), 2, axis=2).reshape(2, L, 32) for n in "KV"}
    np.testing.assert_allclose(ref, _run("reference", f | kf, dict(attrs, kv_heads=0)), rtol=1e-6, atol=1e-6)
