"""FFTMix causal mode: the numpy reference against a direct per-position form, causality,
incremental (Present fed back as Past) == one full call for the reference, the function
fallback and the kernel, and bad shapes as errors."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY, Sample
from n6onnx.ops.fftmix import WINDOWS

from ..conftest import missing

FFTMIX = REGISTRY["FFTMix"]


def _taps(rng, D):
    return [rng.uniform(-1, 1, (w, D)).astype(np.float32) for w in WINDOWS]


def _direct(X, taps, start=0):
    """y_w[a] = sum over the window's earlier positions, written per output in float64; X holds
    positions start .. start + L - 1 and start is a multiple of 24."""
    B, L, D = X.shape
    out = np.zeros((B, L, 3 * D))
    for s, (w, k) in enumerate(zip(WINDOWS, taps)):
        for t in range(L):
            a = start + t
            for j in range(w * (a // w), a + 1):
                out[:, t, s * D:(s + 1) * D] += k[a - j].astype(np.float64) * X[:, j - start].astype(np.float64)
    return out


@pytest.mark.parametrize("L,start", [(1, 0), (5, 0), (30, 0), (50, 48)])
def test_reference_is_the_direct_one_sided_convolution(L, start):
    rng = np.random.default_rng(L)
    X = rng.normal(0, 1, (2, L, 5)).astype(np.float32)
    taps = _taps(rng, 5)
    y, present = FFTMIX.reference(X, *taps, None, np.array(start, np.int64) if start else None, causal=1)
    np.testing.assert_allclose(y, _direct(X, taps, start), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(present, X[:, L - (start + L) % 24:])


def test_reference_is_causal():
    """Perturbing token t changes no output before t, exactly."""
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (1, 40, 6)).astype(np.float32)
    taps = _taps(rng, 6)
    y0, _ = FFTMIX.reference(X, *taps, causal=1)
    for t in (0, 17, 23, 24, 39):
        X2 = X.copy()
        X2[:, t] += 3.0
        y1, _ = FFTMIX.reference(X2, *taps, causal=1)
        np.testing.assert_array_equal(y1[:, :t], y0[:, :t])
        assert np.abs(y1[:, t] - y0[:, t]).max() > 0


def _session(spec, feeds, attrs, library):
    m = spec.sample_model(Sample("causal", feeds, attrs), outputs=2)  # Y and Present
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if library:
        so.register_custom_ops_library(str(n6onnx.library_path()))
    try:
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except ort.capi.onnxruntime_pybind11_state.InvalidGraph as e:
        if library and "not in range" in str(e):
            missing(f"the custom-op library {n6onnx.library_path()} predates causal FFTMix: rebuild it")
        raise


def _reference_run(feeds):
    return FFTMIX.reference(*[feeds.get(n) for n in FFTMIX.inputs], causal=1)


def _ort_run(library):
    def run(feeds):
        return _session(FFTMIX, feeds, {"causal": 1}, library).run(None, feeds)
    return run


@pytest.mark.parametrize("impl", ["reference", "fallback", "kernel"])
@pytest.mark.parametrize("chunks", [[1] * 30, [7, 1, 1, 13, 1, 5, 2], [24, 1, 29, 3]], ids=["tokens", "mixed", "aligned"])
def test_incremental_equals_full(impl, chunks):
    """Feeding Present back as Past with PastLength advancing == one full-sequence call."""
    run = {"reference": _reference_run, "fallback": _ort_run(False), "kernel": _ort_run(True)}[impl]
    rng = np.random.default_rng(len(chunks))
    L = sum(chunks)
    X = rng.normal(0, 1, (2, L, 9)).astype(np.float32)
    taps = dict(zip(("F6", "F12", "F24"), _taps(rng, 9)))
    full, full_present = run({"X": X, **taps})
    np.testing.assert_allclose(full, _reference_run({"X": X, **taps})[0], rtol=1e-5, atol=1e-5)
    ys, past, pos = [], None, 0
    for n in chunks:
        feeds = {"X": X[:, pos:pos + n].copy(), **taps}
        if past is not None:
            feeds.update(Past=past, PastLength=np.array(pos, np.int64))
        y, past = run(feeds)
        assert past.shape == (2, (pos + n) % 24, 9)
        ys.append(y)
        pos += n
    np.testing.assert_allclose(np.concatenate(ys, axis=1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(past, full_present)


@pytest.mark.parametrize("impl", ["fallback", "kernel"])
def test_ort_is_causal(impl):
    rng = np.random.default_rng(2)
    X = rng.normal(0, 1, (1, 30, 4)).astype(np.float32)
    taps = dict(zip(("F6", "F12", "F24"), _taps(rng, 4)))
    run = _ort_run(impl == "kernel")
    y0 = run({"X": X, **taps})[0]
    X2 = X.copy()
    X2[:, 20] += 5.0
    y1 = run({"X": X2, **taps})[0]
    np.testing.assert_array_equal(y1[:, :20], y0[:, :20])


@pytest.mark.parametrize("change,match", [
    (dict(F12=np.zeros((7, 4), np.float32)), r"F12 must be the taps \[12, 4\]"),
    (dict(Past=np.zeros((1, 3, 4), np.float32)), r"Past must be \[2, P, 4\]"),
    (dict(Past=np.zeros((2, 3, 5), np.float32)), r"Past must be \[2, P, 4\]"),
    (dict(Past=np.zeros((2, 3, 4), np.float32), PastLength=np.array(5, np.int64)), "PastLength mod 24 <= P"),
    (dict(Past=np.zeros((2, 6, 4), np.float32), PastLength=np.array(5, np.int64)), "P <= PastLength"),
    (dict(PastLength=np.array(30, np.int64)), "PastLength mod 24 <= P"),
    (dict(PastLength=np.array([1, 2], np.int64)), "PastLength must be an int64 scalar"),
])
def test_reference_bad_shapes(change, match):
    rng = np.random.default_rng(3)
    feeds = {"X": rng.normal(0, 1, (2, 3, 4)).astype(np.float32), **dict(zip(("F6", "F12", "F24"), _taps(rng, 4)))}
    feeds.update(change)
    with pytest.raises(ValueError, match=match):
        _reference_run(feeds)


def test_reference_modes():
    rng = np.random.default_rng(4)
    X = rng.normal(0, 1, (1, 3, 4)).astype(np.float32)
    F = [rng.uniform(-1, 1, (w // 2 + 1, 4)).astype(np.float32) for w in WINDOWS]
    with pytest.raises(ValueError, match="need causal=1"):
        FFTMIX.reference(X, *F, np.zeros((1, 0, 4), np.float32))
    with pytest.raises(ValueError, match="causal must be 0 or 1"):
        FFTMIX.reference(X, *F, causal=2)


@pytest.mark.parametrize("change,match", [
    (dict(F12=np.zeros((7, 4), np.float32)), r"F12 must be the taps \[12, 4\]"),
    (dict(Past=np.zeros((1, 3, 4), np.float32), PastLength=np.array(3, np.int64)), r"Past must be \[2, P, 4\]"),
    (dict(Past=np.zeros((2, 3, 4), np.float32), PastLength=np.array(5, np.int64)), "PastLength mod 24 <= P"),
    (dict(Past=np.zeros((2, 0, 4), np.float32), PastLength=np.array([1, 2], np.int64)), "PastLength must be an int64"),
    (dict(PastLength=np.array(24, np.int64)), "PastLength without Past is not supported by the kernel"),
])
def test_kernel_bad_shapes_are_ort_errors(change, match):
    rng = np.random.default_rng(5)
    feeds = {"X": rng.normal(0, 1, (2, 3, 4)).astype(np.float32), **dict(zip(("F6", "F12", "F24"), _taps(rng, 4)))}
    feeds.update(change)
    s = _session(FFTMIX, feeds, {"causal": 1}, library=True)
    with pytest.raises(Exception, match=match):
        s.run(None, feeds)


def test_kernel_refuses_past_without_causal():
    rng = np.random.default_rng(6)
    feeds = {"X": rng.normal(0, 1, (1, 3, 4)).astype(np.float32),
             **{f"F{w}": rng.uniform(-1, 1, (w // 2 + 1, 4)).astype(np.float32) for w in WINDOWS},
             "Past": np.zeros((1, 0, 4), np.float32)}
    inputs = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, ["d"] * v.ndim) for k, v in feeds.items()]
    node = helper.make_node("FFTMix", list(feeds), ["Y"], domain=DOMAIN)
    m = helper.make_model(helper.make_graph([node], "t", inputs, [helper.make_tensor_value_info("Y", 1, [None] * 3)]),
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(n6onnx.library_path()))
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="need causal=1"):
        s.run(None, feeds)
