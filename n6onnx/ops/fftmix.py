"""FFTMix(X, F6, F12, F24 [, Past, PastLength]) -> Y [B, L, 3D] [, Present]: the FFT-Mix token mixer
(SPEC.md, "Attention replacements"); attribute causal (int, default 0).

causal=0 (the default): the mode below. Past, PastLength and Present are not allowed.

For each window w in (6, 12, 24): zero-pad X at the sequence end to a multiple of w, cut into
non-overlapping windows, rfft along the window's token axis, multiply by the real filter F_w
([w//2+1, D]), irfft of length w, crop to L. Scale s fills channels [s*D, (s+1)*D) of Y. A window
longer than the sequence (w > L) is skipped: its channels are zero.

Equivalently, per channel, a circular convolution inside each window with the symmetric kernel
k_w = irfft(F_w, n=w): y[i] = sum_j k_w[(i - j) mod w] x[j]. The function fallback uses that form
as a batched MatMul with the [D, w, w] circulant built from F_w inside the body (no DFT op: ORT's
CPU DFT is slow and the CUDA provider has none).

causal=1 (for decoders; SPEC.md, "FFT-Mix, causal mode"): F_w are one-sided TAPS [w, D]; k_w[d]
weights the token d places back. Positions are absolute: X[:, t] is at a = PastLength + t, and
windows are cut by absolute position, start(a) = w * floor(a / w). For every scale (none is
skipped): y_w[a] = sum_{d=0}^{a - start(a)} k_w[d] x[a - d], where x before PastLength comes from
Past [B, P, D] (its rows are positions PastLength - P .. PastLength - 1). PastLength: optional
int64 scalar or [1], default P (0 without Past); PastLength mod 24 <= P <= PastLength is required
(Past must hold the current 24-window). Optional output Present [B, (PastLength + L) mod 24, D]:
the inputs of the current, incomplete 24-window, i.e. the next call's Past. Feeding Present back
as Past with PastLength advanced by L equals one full-sequence call. Details: fftmix_causal.py.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import fftmix_causal
from ._spec import BodyBuilder, OpSpec, Sample, Tolerance, as_compute

WINDOWS = (6, 12, 24)


def _check(X, Fs):
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"FFTMix: X must be [B, L, D], got shape {X.shape}")
    D = X.shape[2]
    for w, F in zip(WINDOWS, Fs):
        if np.asarray(F).shape != (w // 2 + 1, D):
            raise ValueError(f"FFTMix: F{w} must be [{w // 2 + 1}, {D}], got shape {np.asarray(F).shape}")
    return X


def reference(X, F6, F12, F24, Past=None, PastLength=None, causal=0):
    """SPEC.md's definition, with numpy's rfft/irfft per window, in float32 storage (numpy's
    pocketfft computes float32 inputs in float32). causal=1: (Y, Present), fftmix_causal.py."""
    if causal not in (0, 1):
        raise ValueError(f"FFTMix: causal must be 0 or 1, got {causal}")
    if causal:
        return fftmix_causal.reference(X, F6, F12, F24, Past, PastLength)
    if Past is not None or PastLength is not None:
        raise ValueError("FFTMix: Past and PastLength need causal=1")
    X = _check(X, (F6, F12, F24))
    B, L, D = X.shape
    x = as_compute(X)
    y = np.zeros((B, L, 3 * D), np.float32)
    for s, (w, F) in enumerate(zip(WINDOWS, (F6, F12, F24))):
        if w > L:
            continue
        n = -(-L // w)
        xp = np.zeros((B, n * w, D), np.float32)
        xp[:, :L] = x
        spec = np.fft.rfft(xp.reshape(B, n, w, D), axis=2)
        yw = np.fft.irfft(spec * as_compute(F)[None, None], n=w, axis=2)
        y[:, :, s * D:(s + 1) * D] = yw.reshape(B, n * w, D)[:, :L]
    return y.astype(X.dtype)


def irfft_matrix(w: int) -> np.ndarray:
    """C [w, w//2+1] with irfft(F, n=w) == C @ F for a real F (imaginary parts are zero)."""
    t = np.arange(w)[:, None]
    m = np.arange(w // 2 + 1)[None, :]
    c = np.where((m == 0) | (2 * m == w), 1.0, 2.0)
    return c * np.cos(2 * np.pi * m * t / w) / w


def circulant_matrix(w: int) -> np.ndarray:
    """G [w*w, w//2+1]: row (j*w + i) gives k_w[(i - j) mod w] = irfft(F_w)[(i - j) mod w]."""
    C = irfft_matrix(w)
    i = np.arange(w)[None, :]
    j = np.arange(w)[:, None]
    return C[((i - j) % w).reshape(-1)]


def _ints(b: BodyBuilder, values) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value_ints=[int(v) for v in values]))
    return name


def _tensor(b: BodyBuilder, array: np.ndarray) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name)))
    return name


def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    b = BodyBuilder("FFTMix")
    X, Fs = inputs[0], inputs[1:4]
    xf = b.to_float(X)
    L = b.op("Shape", X, start=1, end=2)  # [1] int64
    batch = b.op("Shape", X, start=0, end=1)
    chans = b.op("Shape", X, start=2, end=3)
    zero1 = _ints(b, [0])
    minus1 = _ints(b, [-1])
    scales = []
    for w, F in zip(WINDOWS, Fs):
        wc = _ints(b, [w])
        # circulant^T [D, w(j), w(i)] = k_w[(i - j) mod w] per channel, built from F_w
        kk = b.op("MatMul", _tensor(b, circulant_matrix(w).astype(np.float32)), b.to_float(F))  # [w*w, D]
        mt = b.op("Reshape", b.op("Transpose", kk, perm=[1, 0]), _ints(b, [0, w, w]))
        pad = b.op("Mod", b.op("Sub", wc, b.op("Mod", L, wc)), wc)
        # pads of every axis (no Pad `axes` input: that needs opset 18; the body runs from opset 15)
        xp = b.op("Pad", xf, b.op("Concat", _ints(b, [0, 0, 0, 0]), pad, zero1, axis=0), b.const(0.0))
        xw = b.op("Transpose", b.op("Reshape", xp, _ints(b, [-1, w, 0])), perm=[2, 0, 1])  # [D, B*n, w]
        yw = b.op("Transpose", b.op("MatMul", xw, mt), perm=[1, 2, 0])  # [B*n, w, D]
        y = b.op("Reshape", yw, b.op("Concat", batch, minus1, chans, axis=0))
        y = b.op("Slice", y, zero1, L, _ints(b, [1]))
        # w > L: the scale is skipped (zeros); computed on one zero-padded window, then masked
        keep = b.op("Cast", b.op("GreaterOrEqual", L, wc), to=onnx.TensorProto.FLOAT)
        scales.append(b.op("Mul", y, keep))
    b.op("CastLike", b.op("Concat", *scales, axis=2), X, out=outputs[0])
    return b.nodes


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(6)
    cases = [  # id, B, L, D
        ("L1", 1, 1, 4),
        ("L5_below_every_window", 2, 5, 3),
        ("L10_not_divisible", 2, 10, 8),
        ("L30_partial_last_windows", 1, 30, 16),
        ("L48_divisible", 3, 48, 5),
        ("L131_D96_threads", 2, 131, 96),
    ]
    out = []
    for sid, B, L, D in cases:
        feeds = {"X": rng.normal(0, 1, (B, L, D)).astype(dtype)}
        for w in WINDOWS:
            feeds[f"F{w}"] = rng.uniform(-1, 1, (w // 2 + 1, D)).astype(dtype)
        out.append(Sample(sid, feeds))
    return out + fftmix_causal.samples(dtype)


FFTMIX = OpSpec(
    name="FFTMix",
    inputs=("X", "F6", "F12", "F24", "Past", "PastLength"),
    outputs=("Y", "Present"),
    body_outputs=("Y",),
    dtypes=("float32", "float16"),
    reference=reference,
    body=body,
    tolerances={
        # sums of <= 24 products of O(1) values, computed in a different order (FFT vs direct)
        "float32": Tolerance(rtol=1e-4, atol=1e-4),
        # one rounding to float16 of values up to ~10, plus fp16 inputs: 1-2 fp16 ulps
        "float16": Tolerance(rtol=4e-3, atol=4e-3),
    },
    doc=__doc__,
    samples=samples,
    attributes=("causal",),
    attribute_defaults={"causal": 0},
    overloads=fftmix_causal.OVERLOADS,
    choose_overload=fftmix_causal.choose_overload,
)
