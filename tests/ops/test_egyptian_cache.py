"""EgyptianAttention's cache mode (n6onnx/ops/egyptian_cache.py): the node appends the new keys /
values to its own packed cache. Checked against the plain op on the full-length keys (an
independent formulation: no packing), token-by-token decoding from an empty past == one full call,
the presents == the packed layout of all positions, and bad shapes are one-line errors (the
reference's ValueError, an ORT error from the kernel: no crash). Each on the reference, the
function fallback and the CPU kernel."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY
from n6onnx.ops.egyptian_attention import default_group_kinds
from n6onnx.ops.egyptian_cache import FULL, GLOBAL, pack

EGY = REGISTRY["EgyptianAttention"]
IMPLS = ["reference", "fallback", "kernel"]


def _run(impl: str, feeds: dict, attrs: dict, presents: bool = True):
    """(Y, PresentKey, PresentValue) (or (Y,)) of one cache-mode call."""
    if impl == "reference":
        out = EGY.reference(*[feeds.get(n) for n in EGY.inputs], **attrs)
        return out if presents else out[:1]
    outs = ["Y", "PresentKey", "PresentValue"] if presents else ["Y"]
    names = [n if n in feeds else "" for n in EGY.inputs]
    vis = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), [f"{n}{i}" for i in range(v.ndim)])
           for n, v in feeds.items()]
    node = helper.make_node(EGY.name, names, outs, domain=DOMAIN, **attrs)
    node.overload = EGY.overload_for(attrs, frozenset(feeds) | frozenset(outs))
    et = helper.np_dtype_to_tensor_dtype(feeds["Q"].dtype)
    g = helper.make_graph([node], "t", vis, [helper.make_tensor_value_info(o, et, None) for o in outs])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[EGY.function(18, node.overload)], ir_version=10)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    if impl == "kernel":
        so.register_custom_ops_library(str(n6onnx.library_path()))
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _problem(seed, B, L, H, Hkv, dh, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 1, (B, L, H * dh)).astype(dtype)
    k, v = (rng.normal(0, 1, (B, L, Hkv * dh)).astype(dtype) for _ in range(2))
    mask = np.ones((B, L), np.int32)
    mask[0, :3] = 0  # left padding of the first row, the sink included
    return q, k, v, mask


KINDS = [  # attrs: head kinds by KV group (ordered full, local, global)
    {"num_heads": 8, "kv_heads": 4, "window": 5, "sinks": 2},  # default split: full, full, local, global
    {"num_heads": 6, "kv_heads": 3, "window": 4, "sinks": 1, "head_kinds": [1, 1, 1, 1, 2, 2]},
    {"num_heads": 3, "kv_heads": 3, "window": 7, "sinks": 3, "head_kinds": [0, 1, 2], "scale": 0.3},
]


def _groups(attrs):
    H, Hkv = attrs["num_heads"], attrs["kv_heads"]
    kinds = attrs.get("head_kinds") or default_group_kinds(H, Hkv)
    return [kinds[g * (H // Hkv)] for g in range(Hkv)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("attrs", KINDS, ids=["default", "local_global", "mha"])
@pytest.mark.parametrize("P,Lq", [(0, 1), (0, 6), (9, 1), (9, 3), (2, 2), (20, 5)])
@pytest.mark.parametrize("B", [1, 2])
def test_cache_call_equals_the_plain_op_on_all_keys(impl, attrs, P, Lq, B):
    """One cache-mode call (packed past of P positions + Lq new) == the plain causal op on all P + Lq
    keys; the presents == the packed layout of all P + Lq positions."""
    attrs = {**attrs, "causal": 1}
    dh, groups = 4, _groups(attrs)
    q, k, v, mask = _problem(P * 10 + Lq, B, P + Lq, attrs["num_heads"], attrs["kv_heads"], dh)
    want = EGY.reference(q[:, P:], k, v, mask, **attrs)
    w, s = attrs["window"], attrs["sinks"]
    feeds = {"Q": q[:, P:], "K": k[:, P:], "V": v[:, P:], "key_padding_mask": mask,
             "PastKey": pack(k[:, :P], groups, w, s), "PastValue": pack(v[:, :P], groups, w, s)}
    y, pk, pv = _run(impl, feeds, attrs)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pk, pack(k, groups, w, s))
    np.testing.assert_array_equal(pv, pack(v, groups, w, s))


@pytest.mark.parametrize("impl", ["fallback", "kernel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_decoding_token_by_token_equals_the_full_call(impl, dtype):
    """Feeding each step's presents back as the next past, from an empty past, in steps of 1..4 tokens,
    past the local window: every step's Y == the plain op on all keys."""
    attrs = {"num_heads": 8, "kv_heads": 4, "window": 6, "sinks": 2, "causal": 1}
    groups, dh, L = _groups(attrs), 8, 23
    q, k, v, mask = _problem(3, 2, L, 8, 4, dh, dtype)
    want = EGY.reference(q, k, v, mask, **attrs)
    pk = pv = np.zeros((2, 1, 0, dh), dtype)
    t = 0
    for n in [1, 4, 1, 1, 3, 2, 1, 1, 4, 1, 1, 1, 2]:
        feeds = {"Q": q[:, t:t + n], "K": k[:, t:t + n], "V": v[:, t:t + n], "key_padding_mask": mask[:, :t + n],
                 "PastKey": pk, "PastValue": pv}
        y, pk, pv = _run(impl, feeds, attrs)
        tol = EGY.tolerance(dtype)
        np.testing.assert_allclose(y.astype(np.float32), want[:, t:t + n].astype(np.float32), rtol=tol.rtol,
                                   atol=tol.atol)
        t += n
    assert t == L
    np.testing.assert_array_equal(pk, pack(k, groups, 6, 2))


@pytest.mark.parametrize("impl", ["fallback", "kernel"])
def test_without_present_outputs(impl):
    """Y alone (the presents not requested): the "cache" overload and the kernel's optional outputs."""
    attrs = {**KINDS[0], "causal": 1}
    q, k, v, mask = _problem(5, 2, 12, 8, 4, 4)
    groups = _groups(attrs)
    feeds = {"Q": q[:, 10:], "K": k[:, 10:], "V": v[:, 10:], "key_padding_mask": mask,
             "PastKey": pack(k[:, :10], groups, 5, 2), "PastValue": pack(v[:, :10], groups, 5, 2)}
    (y,) = _run(impl, feeds, attrs, presents=False)
    np.testing.assert_allclose(y, EGY.reference(q[:, 10:], k, v, mask, **attrs), rtol=1e-5, atol=1e-5)


def _bad(case):
    attrs = {"num_heads": 4, "kv_heads": 2, "window": 4, "sinks": 1, "causal": 1}
    q, k, v, mask = _problem(1, 1, 6, 4, 2, 4)
    groups = [FULL, GLOBAL]  # default_group_kinds(4, 2)
    feeds = {"Q": q[:, 5:], "K": k[:, 5:], "V": v[:, 5:], "key_padding_mask": mask,
             "PastKey": pack(k[:, :5], groups, 4, 1), "PastValue": pack(v[:, :5], groups, 4, 1)}
    if case == "past_rows":
        feeds["PastKey"] = feeds["PastValue"] = feeds["PastKey"][:, :, 1:]
    elif case == "unordered_groups":
        attrs["head_kinds"] = [1, 1, 0, 0]
    elif case == "noncausal":
        attrs["causal"] = 0
    elif case == "new_rows_only":
        feeds["K"], feeds["V"] = k, v
    elif case == "past_value_missing":
        del feeds["PastValue"]
    return feeds, attrs


BAD = [("past_rows", "must be the packed cache"), ("unordered_groups", "ordered full, local, global"),
       ("noncausal", "causal=1"), ("new_rows_only", "new tokens only"), ("past_value_missing", "go together")]


@pytest.mark.parametrize("case,match", BAD, ids=[c for c, _ in BAD])
def test_bad_cache_inputs_are_one_line_errors(case, match):
    feeds, attrs = _bad(case)
    with pytest.raises(ValueError, match=match):
        EGY.reference(*[feeds.get(n) for n in EGY.inputs], **attrs)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match=match):
        _run("kernel", feeds, attrs, presents=case != "past_value_missing")


def test_kernel_refuses_a_missing_mask_in_cache_mode():
    """The past length comes from the mask: without it the kernel answers an error (no crash)."""
    feeds, attrs = _bad("none")
    del feeds["key_padding_mask"]
    with pytest.raises(ValueError, match="key_padding_mask"):
        EGY.reference(*[feeds.get(n) for n in EGY.inputs], **attrs)
    with pytest.raises(ort.capi.onnxruntime_pybind11_state.Fail, match="key_padding_mask"):
        _run("kernel", feeds, attrs)
