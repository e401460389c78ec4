"""FFTMix and EgyptianAttention kernels of libn6ops_cuda.so on CUDA.

Contract: every contract sample of both ops (OpSpec.samples) x float32/float16, plus larger
cases (several key tiles, head size 128, odd head size, no mask, odd D, long FFTMix, no full head;
the causal mode with grouped-query attention: prefill, a chunk after a cache, decode steps, flash
decoding at contexts up to 5000 keys): numpy reference == function fallback on CUDA (no library,
TF32 off; EgyptianAttention only with a mask, which its function body needs) == our CUDA kernel ==
our CPU kernel, each within the op's tolerance. EgyptianAttention's cache mode (packed past in,
packed presents out): decode steps (Lq 1-3, past 0 to 4095, B 1-2, every kind split, head sizes 20 /
32 / 64 / 128) and longer calls (a prompt, chunks after a past, an odd head size), Y against the
reference on all keys and the presents bit for bit. A cached GPT-2 rewritten with KV groups chosen by
locality (permuted around the cache-mode node) decodes on CUDA as the CPU kernel's full run. Bad shapes and attributes are ORT errors on CUDA; the n6 nodes run on
CUDAExecutionProvider. The cases marked `sanitize` (every kernel instantiation and edge: odd / even
D, L below every window, L = 1, head sizes 4 / 20 / 32 / 64 / 128, no allowed key, no mask) are
the ones tests/cuda/test_memcheck.py re-runs under compute-sanitizer.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY, Sample
from n6onnx.ops.egyptian_attention import default_group_kinds
from n6onnx.ops.egyptian_cache import pack
from n6onnx.testing import zoo_decoder as zd

pytestmark = pytest.mark.cuda

OPS = ("FFTMix", "EgyptianAttention")
DTYPES = ("float32", "float16")
SANITIZE = {"L1", "L5_below_every_window", "L131_D96_threads", "L97_D33_odd", "L10_not_divisible",
            "L5_window4_custom_kinds_mask", "L150_D64_threads", "L300_12x64_mask", "L130_dh128",
            "L77_dh20_nomask", "L200_local_global_only", "causal_decode_step_gqa_sinks4", "causal_chunk_sinks_past_p",
            "causal_L333_gqa_dh64_mask", "causal_chunk130_of_500_dh128", "causal_decode_L700_gqa_nomask",
            "causal_L150_threads", "causal_decode2_dh128_mask", "causal_decode3_dh20_local",
            "causal_decode3_L5000_dh128", "causal_decode2_L1500_mha_dh20", "causal_decode_L3000_g16_dh32",
            "causal_decode2_shrunk_global", "cache_chunk3_short_past", "cache_decode_default_kinds",
            "cache_decode2_B2_L1000_dh128", "cache_decode3_dh20_scalar", "cache_decode_empty_past",
            "cache_chunk5_odd_dh33"}


def extra_samples(op: str, dtype: str) -> list[Sample]:
    rng = np.random.default_rng(7)
    out = []
    if op == "FFTMix":
        for sid, B, L, D in (("L1000_D768", 1, 1000, 768), ("L97_D33_odd", 3, 97, 33)):
            feeds = {"X": rng.normal(0, 1, (B, L, D)).astype(dtype)}
            for w in (6, 12, 24):
                feeds[f"F{w}"] = rng.uniform(-1, 1, (w // 2 + 1, D)).astype(dtype)
            out.append(Sample(sid, feeds))
        return out
    for sid, B, L, H, dh, attrs, mask in (
        ("L300_12x64_mask", 2, 300, 12, 64, {"num_heads": 12}, True),
        ("L130_dh128", 1, 130, 2, 128, {"num_heads": 2, "head_kinds": [0, 1], "window": 20}, True),
        ("L77_dh20_nomask", 2, 77, 3, 20, {"num_heads": 3, "window": 10}, False),
        # no full head (the EgyptianAttention left by attention=egyptian:...:mha): 64-query tiles
        ("L200_local_global_only", 2, 200, 6, 64, {"num_heads": 6, "head_kinds": [1, 1, 1, 1, 2, 2]}, True),
    ):
        feeds = {n: rng.normal(0, 1, (B, L, H * dh)).astype(dtype) for n in ("Q", "K", "V")}
        if mask:
            m = np.ones((B, L), np.int32)
            m[-1, L - L // 3:] = 0
            feeds["key_padding_mask"] = m
        out.append(Sample(sid, feeds, attrs))
    # causal mode with grouped-query attention: several key and query tiles (prefill, a chunk after
    # a cache, decode steps), head sizes 64 / 128, with and without padding
    C = {"causal": 1}
    for sid, B, Lq, Lk, H, Hkv, dh, attrs, mask in (
        ("causal_L333_gqa_dh64_mask", 2, 333, 333, 8, 4, 64, {**C, "num_heads": 8, "kv_heads": 4, "window": 48}, True),
        ("causal_chunk130_of_500_dh128", 1, 130, 500, 4, 2, 128,
         {**C, "num_heads": 4, "kv_heads": 2, "window": 100, "sinks": 4, "head_kinds": [0, 0, 1, 1]}, True),
        ("causal_decode_L700_gqa_nomask", 3, 1, 700, 12, 6, 64, {**C, "num_heads": 12, "kv_heads": 6, "sinks": 2}, False),
        ("causal_L256_full_only", 1, 256, 256, 2, 1, 32, {**C, "num_heads": 2, "kv_heads": 1, "head_kinds": [0, 0]},
         False),
        # the decode kernel (Lq < 4): head size 128 with padding, odd head size 20 with a local window
        ("causal_decode2_dh128_mask", 2, 2, 90, 4, 2, 128, {**C, "num_heads": 4, "kv_heads": 2, "head_kinds": [0, 0, 1, 1],
                                                             "window": 40}, True),
        ("causal_decode3_dh20_local", 1, 3, 50, 3, 1, 20, {**C, "num_heads": 3, "kv_heads": 1, "window": 7,
                                                            "head_kinds": [1, 1, 1]}, False),
        # flash decoding (Lq < 4) at long contexts: keys split over many blocks and merged (a split
        # count that does not divide the keys), every head kind, 1..8 query rows per KV head, head
        # sizes 20 (scalar loads) / 32 / 64 / 128, the truncated caches of a shrunk local / global group
        ("causal_decode_L1024_llama_kinds", 1, 1, 1024, 32, 8, 64, {**C, "num_heads": 32, "kv_heads": 8}, False),
        ("causal_decode_L4096_gqa_mask", 2, 1, 4096, 16, 4, 64, {**C, "num_heads": 16, "kv_heads": 4, "sinks": 2},
         True),
        ("causal_decode3_L5000_dh128", 2, 3, 5000, 8, 2, 128,
         {**C, "num_heads": 8, "kv_heads": 2, "head_kinds": [0] * 4 + [1] * 4, "window": 300}, True),
        ("causal_decode2_L1500_mha_dh20", 1, 2, 1500, 3, 3, 20, {**C, "num_heads": 3, "kv_heads": 3, "sinks": 3}, False),
        ("causal_decode_L3000_g16_dh32", 1, 1, 3000, 16, 1, 32, {**C, "num_heads": 16, "kv_heads": 1,
                                                                 "head_kinds": [0] * 16}, True),
        ("causal_decode_shrunk_local", 1, 1, 64, 8, 2, 64, {**C, "num_heads": 8, "kv_heads": 2, "head_kinds": [1] * 8},
         False),
        ("causal_decode2_shrunk_global", 2, 2, 3, 8, 2, 64, {**C, "num_heads": 8, "kv_heads": 2, "head_kinds": [2] * 8},
         True),
    ):
        feeds = {"Q": rng.normal(0, 1, (B, Lq, H * dh)).astype(dtype)}
        feeds.update({n: rng.normal(0, 1, (B, Lk, Hkv * dh)).astype(dtype) for n in ("K", "V")})
        if mask:
            m = np.ones((B, Lk), np.int32)
            m[-1, : Lk // 5] = 0  # left padding, including the sinks
            feeds["key_padding_mask"] = m
        out.append(Sample(sid, feeds, attrs))
    return out


@functools.lru_cache(maxsize=None)
def samples(op: str, dtype: str) -> dict[str, Sample]:
    return {s.id: s for s in list(REGISTRY[op].samples(dtype)) + extra_samples(op, dtype)}


def sample_model(op: str, sample: Sample) -> bytes:
    return REGISTRY[op].sample_model(sample).SerializeToString()


def contract_cases():
    for op in OPS:
        for dtype in DTYPES:
            for sid in samples(op, dtype):
                marks = [pytest.mark.sanitize] if sid in SANITIZE else []
                yield pytest.param(op, dtype, sid, marks=marks, id=f"{op}-{dtype}-{sid}")


@pytest.mark.parametrize("op,dtype,sid", list(contract_cases()))
def test_contract(target, op, dtype, sid):
    spec, sample = REGISTRY[op], samples(op, dtype)[sid]
    ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
    ref = ref[0] if isinstance(ref, (tuple, list)) else ref  # Y (causal FFTMix's Present: test below)
    fallback = op != "EgyptianAttention" or "key_padding_mask" in sample.feeds  # its body needs the mask
    target.check(sample_model(op, sample), sample.feeds, ref, spec.tolerance(dtype), target.paths(fallback=fallback))


def _qkv(rng, shape):
    return {n: rng.normal(0, 1, shape).astype(np.float32) for n in ("Q", "K", "V")}


BAD = [  # id, feeds, attributes, message
    ("num_heads_not_dividing", _qkv(np.random.default_rng(1), (1, 8, 16)), {"num_heads": 3}, "does not divide"),
    ("head_kinds_length", _qkv(np.random.default_rng(1), (1, 8, 16)), {"num_heads": 4, "head_kinds": [0]},
     "head_kinds must have num_heads=4 values"),
    ("causal_group_mixes_kinds", {"Q": np.ones((1, 8, 16), np.float32), "K": np.ones((1, 8, 8), np.float32),
                                  "V": np.ones((1, 8, 8), np.float32)},
     {"num_heads": 4, "kv_heads": 2, "causal": 1, "head_kinds": [0, 1, 2, 2]}, "KV group 0 mix kinds"),
    ("causal_fewer_keys_than_queries", {"Q": np.ones((1, 8, 16), np.float32), "K": np.ones((1, 7, 16), np.float32),
                                        "V": np.ones((1, 7, 16), np.float32)},
     {"num_heads": 4, "causal": 1}, r"causal=1 needs Lk >= Lq"),
]


@pytest.mark.parametrize("sid,feeds,attrs,message", BAD, ids=[b[0] for b in BAD])
def test_egyptian_bad_input_is_an_error(target, sid, feeds, attrs, message):
    s = target.session(sample_model("EgyptianAttention", Sample(sid, feeds, attrs)), "cuda_kernel", quiet=True)
    with pytest.raises(Exception, match=f"EgyptianAttention: .*{message}"):
        s.run(None, feeds)


def test_egyptian_head_size_above_128_is_an_error_on_cuda(target):
    """dh = 192: refused by the CUDA kernel (the CPU kernel takes it)."""
    feeds = _qkv(np.random.default_rng(1), (1, 4, 192))
    s = target.session(sample_model("EgyptianAttention", Sample("dh192", feeds, {"num_heads": 1})), "cuda_kernel",
                       quiet=True)
    if target.provider == "CPUExecutionProvider":  # dry run: the CPU kernel has no such limit
        assert s.run(None, feeds)[0].shape == (1, 4, 192)
        return
    with pytest.raises(Exception, match="EgyptianAttention: the CUDA kernel takes head sizes up to 128, got 192"):
        s.run(None, feeds)


def test_fftmix_bad_filter_is_an_error(target):
    fx = {"X": np.ones((1, 10, 8), np.float32), "F6": np.ones((4, 8), np.float32),
          "F12": np.ones((7, 4), np.float32), "F24": np.ones((13, 8), np.float32)}
    s = target.session(sample_model("FFTMix", Sample("bad_F12", fx)), "cuda_kernel", quiet=True)
    with pytest.raises(Exception, match=r"FFTMix: F12 must be \[7, 8\]"):
        s.run(None, fx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_placement(placement, op, dtype):
    sample = next(iter(samples(op, dtype).values()))
    placement(sample_model(op, sample), sample.feeds, {op})


@pytest.mark.sanitize
def test_fftmix_causal_incremental_equals_full(target):
    """Causal FFTMix on the CUDA kernel: the full call against the reference, then chunked decoding
    (prompt, single tokens, a chunk across window borders) with Present fed back as Past: every
    chunk's Y equals the full run's rows, and Present equals the reference's."""
    spec = REGISTRY["FFTMix"]
    rng = np.random.default_rng(11)
    B, L, D = 2, 53, 40
    X = rng.normal(0, 1, (B, L, D)).astype(np.float32)
    taps = {f"F{w}": rng.uniform(-1, 1, (w, D)).astype(np.float32) for w in (6, 12, 24)}
    full_ref, _ = spec.reference(X, *taps.values(), causal=1)
    full = Sample("causal_full", {"X": X, **taps}, {"causal": 1})
    got = target.session(sample_model("FFTMix", full), "cuda_kernel", cache=False).run(None, full.feeds)[0]
    np.testing.assert_allclose(got, full_ref, rtol=1e-5, atol=1e-5)
    past, pl = np.zeros((B, 0, D), np.float32), 0
    for n in (7, 1, 1, 20, 1, 23):
        feeds = {"X": X[:, pl:pl + n], **taps, "Past": past, "PastLength": np.array(pl, np.int64)}
        step = Sample(f"causal_step_{pl}", feeds, {"causal": 1})
        y, present = target.session(sample_model("FFTMix", step), "cuda_kernel", cache=False).run(None, feeds)
        want_y, want_present = spec.reference(*[feeds.get(k) for k in spec.inputs], causal=1)
        np.testing.assert_allclose(y, full_ref[:, pl:pl + n], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(present, want_present)
        past, pl = present, pl + n


# ------------------------------------------------------------------ EgyptianAttention cache mode
CACHE_CASES = [  # id, B, Lq, P, H, Hkv, dh, attrs
    ("cache_decode_L4096_llama_kinds", 1, 1, 4095, 32, 8, 64, {"num_heads": 32, "kv_heads": 8}),
    ("cache_decode2_B2_L1000_dh128", 2, 2, 1000, 8, 4, 128, {"num_heads": 8, "kv_heads": 4, "window": 40, "sinks": 2}),
    ("cache_decode3_dh20_scalar", 2, 3, 77, 6, 3, 20, {"num_heads": 6, "kv_heads": 3, "window": 9,
                                                       "head_kinds": [0, 0, 1, 1, 2, 2]}),
    ("cache_decode_empty_past", 2, 1, 0, 8, 4, 64, {"num_heads": 8, "kv_heads": 4}),
    ("cache_decode3_past2_local_global", 1, 3, 2, 8, 2, 32, {"num_heads": 8, "kv_heads": 2, "window": 4, "sinks": 3,
                                                             "head_kinds": [1] * 4 + [2] * 4}),
    ("cache_prefill_L300_empty_past", 2, 300, 0, 8, 4, 64, {"num_heads": 8, "kv_heads": 4, "window": 48}),
    ("cache_chunk70_after_900_dh128", 1, 70, 900, 4, 2, 128, {"num_heads": 4, "kv_heads": 2, "window": 100,
                                                               "sinks": 4, "head_kinds": [0, 0, 2, 2]}),
    ("cache_chunk5_odd_dh33", 2, 5, 50, 3, 3, 33, {"num_heads": 3, "window": 7, "head_kinds": [0, 1, 2]}),
]


def cache_sample(sid: str, dtype: str):
    """(the cache-mode sample, the full-length K / V it packs, the mask): left padding in the last row."""
    return make_cache_sample(*next(c for c in CACHE_CASES if c[0] == sid), dtype)


def make_cache_sample(sid, B, Lq, P, H, Hkv, dh, attrs, dtype):
    attrs = {**attrs, "causal": 1}
    rng = np.random.default_rng(len(sid) + 7 * P + B)
    kinds = attrs.get("head_kinds") or default_group_kinds(H, Hkv)
    groups = [kinds[g * (H // Hkv)] for g in range(Hkv)]
    k, v = (rng.normal(0, 1, (B, P + Lq, Hkv * dh)).astype(dtype) for _ in range(2))
    mask = np.ones((B, P + Lq), np.int32)
    mask[-1, : (P + Lq) // 5] = 0
    w, s = attrs.get("window", 64), attrs.get("sinks", 1)
    feeds = {"Q": rng.normal(0, 1, (B, Lq, H * dh)).astype(dtype), "K": k[:, P:], "V": v[:, P:],
             "key_padding_mask": mask, "PastKey": pack(k[:, :P], groups, w, s), "PastValue": pack(v[:, :P], groups, w, s)}
    return Sample(sid, feeds, attrs), k, v, pack(k, groups, w, s), pack(v, groups, w, s)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sid", [pytest.param(c[0], marks=[pytest.mark.sanitize] if c[0] in SANITIZE else [])
                                 for c in CACHE_CASES])
def test_egyptian_cache_mode(target, sid, dtype):
    """The cache-mode node on CUDA (decode steps read the packed past in place; Lq >= 4 gathers
    full-length K / V first): Y == the plain op's reference on all P + Lq keys, within the op's
    tolerance, and the presents == the packed layout of all positions, bit for bit; the same for
    the function fallback on CUDA and the CPU kernel."""
    spec = REGISTRY["EgyptianAttention"]
    sample, k, v, want_k, want_v = cache_sample(sid, dtype)
    f = sample.feeds
    want_y = spec.reference(f["Q"], k, v, f["key_padding_mask"], **sample.attrs)
    model = sample_model("EgyptianAttention", sample)
    tol = spec.tolerance(dtype)
    for path in (["cuda_kernel"] if target.kernel_only else target.paths()):
        y, pk, pv = target.session(model, path).run(None, f)
        np.testing.assert_allclose(y.astype(np.float64), want_y.astype(np.float64), rtol=tol.rtol, atol=tol.atol,
                                   err_msg=path)
        np.testing.assert_array_equal(pk, want_k, err_msg=path)
        np.testing.assert_array_equal(pv, want_v, err_msg=path)


def test_egyptian_cache_bad_past_is_an_error(target):
    """A packed past of the wrong size for the mask's past length: an ORT error on CUDA, no crash."""
    sample, *_ = cache_sample("cache_decode3_dh20_scalar", "float32")
    feeds = {**sample.feeds, "PastKey": sample.feeds["PastKey"][:, :, 1:], "PastValue": sample.feeds["PastValue"][:, :, 1:]}
    bad = Sample("cache_bad_past", feeds, sample.attrs)
    s = target.session(sample_model("EgyptianAttention", bad), "cuda_kernel", quiet=True)
    with pytest.raises(Exception, match="EgyptianAttention: PastKey and PastValue must be the packed cache"):
        s.run(None, feeds)


@pytest.mark.parametrize("dtype", DTYPES)
def test_egyptian_cache_decode_steps_share_one_session(target, dtype):
    """Decode steps of growing, shrinking and repeated sizes through ONE CUDA session (dynamic
    shapes): the split kernel's per-stream workspace grows and is reused, and its arrival counters
    must be left zero by every launch. Each step == the reference on all keys, the presents == the
    packed layout bit for bit, and a step run again gives the same bits."""
    spec = REGISTRY["EgyptianAttention"]
    attrs = {"num_heads": 8, "kv_heads": 4, "window": 40, "sinks": 2}
    steps = [(1, 1, 100), (4, 2, 3000), (1, 1, 100), (2, 3, 5000), (1, 1, 4095), (4, 2, 3000)]
    first = make_cache_sample("seq", *steps[0][:2], steps[0][2], 8, 4, 64, attrs, dtype)[0]
    model = onnx.load_from_string(sample_model("EgyptianAttention", first))
    for i, vi in enumerate(model.graph.input):
        for j, d in enumerate(vi.type.tensor_type.shape.dim):
            d.dim_param = f"d{i}_{j}"
    sess = target.session(model.SerializeToString(), "cuda_kernel", cache=False)
    tol = spec.tolerance(dtype)
    for B, Lq, P in steps:
        sample, k, v, want_k, want_v = make_cache_sample("seq", B, Lq, P, 8, 4, 64, attrs, dtype)
        f = sample.feeds
        want_y = spec.reference(f["Q"], k, v, f["key_padding_mask"], **sample.attrs)
        y, pk, pv = sess.run(None, f)
        np.testing.assert_allclose(y.astype(np.float64), want_y.astype(np.float64), rtol=tol.rtol, atol=tol.atol,
                                   err_msg=f"B={B} Lq={Lq} P={P}")
        np.testing.assert_array_equal(pk, want_k)
        np.testing.assert_array_equal(pv, want_v)
        y2, _, _ = sess.run(None, f)
        np.testing.assert_array_equal(y2, y, err_msg=f"B={B} Lq={Lq} P={P}: a second run differs")


def test_egyptian_locality_rewrite_decodes_on_cuda(target, decoder_export, tmp_path):
    """A cached GPT-2 rewritten by ``attention=egyptian --calibrate`` whose locality-chosen KV groups are
    not ordered by kind (so the groups are permuted around the cache-mode node by Gathers of columns):
    on CUDA, decoding token by token and in chunks equals the CPU kernel's full run within 1e-4."""
    src = decoder_export("gpt2")
    out = tmp_path / "loc.onnx"
    _, rep = n6onnx.rewrite(src, out, ["attention=egyptian"],
                            calibrate=zd.calibration_npz("gpt2", tmp_path / "cal.npz", batches=2, seq=80))
    orders = [s.detail["cache"]["packed_group_order"] for s in rep.reports["attention"].sites]
    assert any(o != sorted(o) for o in orders), orders  # the permuted case is exercised
    model = out.read_bytes()
    ids = zd.example_inputs("gpt2", batch=2, seq=90, seed=4)["input_ids"]

    def run(path):
        s = target.session(model, path, cache=False)
        names = [o.name for o in s.get_outputs()]
        return lambda feeds: dict(zip(names, s.run(None, feeds)))

    want = zd.decode(run("cpu_kernel"), "gpt2", ids, [90], past=zd.empty_past(out, 2))
    cuda = run("cuda_kernel")
    for chunks in ([1] * 90, [70, 1, 19]):
        got = zd.decode(cuda, "gpt2", ids, chunks, past=zd.empty_past(out, 2))
        for name, w in want.items():
            np.testing.assert_allclose(got[name], w, rtol=1e-4, atol=1e-4, err_msg=f"{name} {chunks[:3]}")
