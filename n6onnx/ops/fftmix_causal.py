"""FFTMix causal mode (attribute causal=1; SPEC.md, "FFT-Mix, causal mode"): numpy reference, the
function-fallback bodies and the contract samples. The op's contract is in fftmix.py's docstring.

Per scale w in (6, 12, 24) and channel: a one-sided convolution with the taps k_w [w, D] inside
each non-overlapping window of ABSOLUTE positions (a = PastLength + t; window start(a) =
w * floor(a / w)): y_w[a] = sum_{d=0}^{a - start(a)} k_w[d] x[a - d], the inputs before
PastLength coming from Past. Present holds the inputs of the current, incomplete 24-window.

Fallback: the last r = PastLength mod 24 rows of Past are put in front of X, so the sequence
starts at 24 * floor(PastLength / 24), a window start of every scale; each scale then pads the
end to whole windows and applies the lower-triangular Toeplitz [w, w] of each channel as one
batched MatMul. An unbound input may only appear in an optional slot of a body op (onnxruntime
rejects the graph otherwise, even inside an If branch that never runs) and a node must list every
output of its function, so the modes are ONNX function overloads: "" (causal=0, outputs Y) and
"causal[_past][_present]" (with Past bound; with the output Present).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._spec import BodyBuilder, Sample, as_compute

WINDOWS = (6, 12, 24)
BLOCK = 24  # the largest window; a multiple of every window


def past_length(Past, PastLength) -> int:
    if PastLength is None:
        return 0 if Past is None else int(np.asarray(Past).shape[1])
    pl = np.asarray(PastLength)
    if pl.dtype != np.int64 or pl.size != 1 or pl.ndim > 1:
        raise ValueError(f"FFTMix: PastLength must be an int64 scalar or [1], got {pl.dtype} shape {pl.shape}")
    return int(pl.reshape(-1)[0])


def check(X, Fs, Past, PastLength) -> tuple[np.ndarray, int]:
    """Shapes of a causal call; returns (X, PastLength). ValueError naming the shapes."""
    X = np.asarray(X)
    if X.ndim != 3:
        raise ValueError(f"FFTMix: X must be [B, L, D], got shape {X.shape}")
    B, _, D = X.shape
    for w, F in zip(WINDOWS, Fs):
        if np.asarray(F).shape != (w, D):
            raise ValueError(f"FFTMix: causal F{w} must be the taps [{w}, {D}], got shape {np.asarray(F).shape}")
    P = 0
    if Past is not None:
        ps = np.asarray(Past).shape
        if len(ps) != 3 or ps[0] != B or ps[2] != D:
            raise ValueError(f"FFTMix: Past must be [{B}, P, {D}] for X of shape {X.shape}, got shape {ps}")
        P = ps[1]
    pl = past_length(Past, PastLength)
    if pl < 0 or P > pl or P < pl % BLOCK:
        raise ValueError(f"FFTMix: Past [B, P={P}, D] must hold the current 24-window's inputs: "
                         f"need PastLength mod 24 <= P <= PastLength, PastLength={pl}")
    return X, pl


def reference(X, F6, F12, F24, Past=None, PastLength=None):
    """(Y [B, L, 3D], Present [B, (PastLength + L) mod 24, D]), computed per output in float32."""
    X, pl = check(X, (F6, F12, F24), Past, PastLength)
    B, L, D = X.shape
    P = 0 if Past is None else np.asarray(Past).shape[1]
    xx = np.concatenate([as_compute(Past) if Past is not None else np.zeros((B, 0, D), np.float32),
                         as_compute(X)], axis=1)  # positions pl - P .. pl + L - 1
    a = pl + np.arange(L)  # absolute positions of the outputs
    y = np.zeros((B, L, 3 * D), np.float32)
    for s, (w, F) in enumerate(zip(WINDOWS, (F6, F12, F24))):
        k = as_compute(F)
        back = a - w * (a // w)  # how far back the window starts
        for d in range(w):
            on = back >= d
            y[:, on, s * D:(s + 1) * D] += k[d] * xx[:, (a - d)[on] - (pl - P)]
    keep = (pl + L) % BLOCK
    present = xx[:, xx.shape[1] - keep:]
    return y.astype(X.dtype), present.astype(X.dtype)


def toeplitz_selector(w: int) -> np.ndarray:
    """G [w*w, w]: row (j*w + i) selects tap i - j when i >= j (else zero): G @ k_w is the lower-
    triangular Toeplitz M[j, i] = k_w[i - j] flattened, so y[i] = sum_j x[j] M[j, i]."""
    G = np.zeros((w * w, w), np.float32)
    for j in range(w):
        for i in range(j, w):
            G[j * w + i, i - j] = 1.0
    return G


def overload_name(has_past: bool, has_present: bool) -> str:
    return "causal" + ("_past" if has_past else "") + ("_present" if has_present else "")


def choose_overload(attrs: dict, bound: frozenset) -> str:
    """The fallback overload of a node: bound holds its bound input and output names."""
    if not attrs.get("causal", 0):
        return ""
    return overload_name("Past" in bound, "Present" in bound)


def _ints(b: BodyBuilder, values) -> str:
    return b.op("Constant", value_ints=[int(v) for v in values])


def _body(has_past: bool, has_present: bool):
    def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
        b = BodyBuilder("FFTMixCausal")
        X, Fs, Past, PastLength = inputs[0], inputs[1:4], inputs[4], inputs[5]
        xf = b.to_float(X)
        L = b.op("Shape", X, start=1, end=2)  # [1] int64
        zero1, one1, blk = _ints(b, [0]), _ints(b, [1]), _ints(b, [BLOCK])
        # PastLength or -1 when unbound: Clip's min is an optional input
        given = b.op("Reshape", b.op("Clip", b.op("Constant", value_int=-1), PastLength), one1)
        if has_past:
            P = b.op("Shape", Past, start=1, end=2)
            pl = b.op("Where", b.op("Less", given, zero1), P, given)
            r = b.op("Mod", pl, blk)
            seq = b.op("Concat", b.op("Slice", b.to_float(Past), b.op("Sub", P, r), P, one1), xf, axis=1)
        else:
            pl = b.op("Max", given, zero1)
            r = zero1  # PastLength is a multiple of 24 without Past
            seq = xf
        n = b.op("Add", r, L)
        batch = b.op("Shape", X, start=0, end=1)
        chans = b.op("Shape", X, start=2, end=3)
        scales = []
        for w, F in zip(WINDOWS, Fs):
            wc = _ints(b, [w])
            kk = b.op("MatMul", b.op("Constant", value=numpy_helper.from_array(toeplitz_selector(w))), b.to_float(F))
            mt = b.op("Reshape", b.op("Transpose", kk, perm=[1, 0]), _ints(b, [0, w, w]))  # [D, j, i]
            pad = b.op("Mod", b.op("Sub", wc, b.op("Mod", n, wc)), wc)
            xp = b.op("Pad", seq, b.op("Concat", _ints(b, [0, 0, 0, 0]), pad, zero1, axis=0), b.const(0.0))
            xw = b.op("Transpose", b.op("Reshape", xp, _ints(b, [-1, w, 0])), perm=[2, 0, 1])  # [D, B*n, w]
            yw = b.op("Transpose", b.op("MatMul", xw, mt), perm=[1, 2, 0])  # [B*n, w, D]
            y = b.op("Reshape", yw, b.op("Concat", batch, _ints(b, [-1]), chans, axis=0))
            scales.append(b.op("Slice", y, r, n, one1))
        b.op("CastLike", b.op("Concat", *scales, axis=2), X, out=outputs[0])
        if has_present:
            keep = b.op("Mod", b.op("Add", pl, L), blk)
            b.op("CastLike", b.op("Slice", seq, b.op("Sub", n, keep), n, one1), X, out=outputs[1])
        return b.nodes

    return body


OVERLOADS = {overload_name(p, q): (_body(p, q), ("Y", "Present") if q else ("Y",))
             for p in (False, True) for q in (False, True)}


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(12)
    cases = [  # id, B, L, D, P (None: no Past), PastLength (None: not bound)
        ("causal_L1", 1, 1, 4, None, None),
        ("causal_L30", 2, 30, 8, None, None),
        ("causal_L50_D40_after_48", 1, 50, 40, 0, 48),
        ("causal_decode_L1_phase5", 2, 1, 8, 5, None),
        ("causal_decode_L1_phase23", 1, 1, 16, 23, 71),
        ("causal_chunk_L7_phase10_longer_past", 2, 7, 8, 30, 34),
        ("causal_L40_phase17", 1, 40, 24, 17, 17),
        ("causal_L3_empty_past_aligned", 1, 3, 4, 0, 24),
    ]
    out = []
    for sid, B, L, D, P, pl in cases:
        feeds = {"X": rng.normal(0, 1, (B, L, D)).astype(dtype)}
        for w in WINDOWS:
            feeds[f"F{w}"] = rng.uniform(-1, 1, (w, D)).astype(dtype)
        if P is not None:
            feeds["Past"] = rng.normal(0, 1, (B, P, D)).astype(dtype)
        if pl is not None:
            feeds["PastLength"] = np.array([pl] if pl % 2 else pl, np.int64)  # [1] and scalar
        out.append(Sample(sid, feeds, {"causal": 1}))
    return out

