"""GPTQ rounding onto onnxruntime's per-channel int8 grid (Frantar et al. 2022, "GPTQ: Accurate
Post-Training Quantization for Generative Pre-trained Transformers"), numpy only.

``--quantize int8`` is onnxruntime's ``quantize_dynamic`` with QInt8 weights per channel: for a MatMul
weight W [K, N] each output column n gets the symmetric scale ``s_n = 2 max_k |W_kn| / 254`` and
``q = clip(round(W / s), -127, 127)`` (round to nearest). The grid is computed here by onnxruntime's
own ``quant_utils.quantize_data``, column by column, so it is the quantizer's rule, not a copy of it.

Round to nearest minimises each weight's own error. What matters is the layer's output error on its
inputs X: ``||X (W - Q)||^2``. GPTQ rounds the input rows of W one at a time and spreads each row's
rounding error over the rows not yet rounded, weighted by the inverse Hessian ``H = X^T X`` (the
Optimal Brain Surgeon update), so later rows compensate for earlier ones. Here the rows are visited
in order of decreasing ``diag(H)`` (GPTQ's act-order), in blocks of 128 (its lazy batch update), with
1% of the mean diagonal as damping.

Staying on onnxruntime's grid: the emitted weights are ``q * s`` with the scale ``s`` that
onnxruntime will compute from them, so ``quantize_dynamic`` rounds every value to itself. The
largest-magnitude entry of each column is pinned at ``+-127 s`` (no update moves it; every other
entry is clipped to +-127), so each column's max |w|, hence its scale, is the one onnxruntime
computes; ``s`` is taken as the fixed point of onnxruntime's scale rule (``127 s`` -> ``s``), which
the float32 round trip can otherwise move by one ulp. ``gptq_round`` checks the result against
``ort_grid`` and falls back to round to nearest for any column that would not reproduce.

For a u8s8 kernel that adds each pair of neighbouring products (inputs 2j, 2j + 1) into a saturating int16
(x86 without VNNI, ``kernel``), ``pair_codes`` bounds every same-sign weight pair so that its sum stays inside
int16 beside the largest uint8 activation codes of its two inputs: the row rounded second is clipped to
``pair_limit``, and that clip's error is spread over the later rows like any rounding error.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from onnxruntime.quantization.quant_utils import quantize_data

from .kernel import PAIR_MAX

QMAX = 127
BLOCK = 128
DAMP = 0.01


def ort_grid(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 [K, N], scale float32 [N]) of W [K, N] as ``quantize_dynamic`` (QInt8, per channel)
    quantizes a MatMul weight: onnxruntime's ``quantize_data``, symmetric, one output column at a time."""
    W = np.asarray(W, np.float32)
    q = np.empty(W.shape, np.int8)
    s = np.empty(W.shape[1], np.float32)
    for n in range(W.shape[1]):
        _, sc, qc = quantize_data(np.ascontiguousarray(W[:, n]), TensorProto.INT8, True)
        q[:, n] = np.asarray(qc).reshape(-1)
        s[n] = np.float32(sc)
    return q, s


def fixed_scale(s: np.ndarray) -> np.ndarray:
    """The scale onnxruntime computes for a column whose largest |value| is ``127 s``, iterated to its
    fixed point (usually ``s`` itself, at most an ulp or two away)."""
    s = np.asarray(s, np.float32)
    for _ in range(8):
        nxt = ort_grid((np.float32(QMAX) * s)[None, :])[1]
        if np.array_equal(nxt, s):
            break
        s = nxt
    return s


def round_to_nearest(W: np.ndarray) -> np.ndarray:
    """What ``quantize_dynamic`` makes of W, dequantized: ``q * s`` (float32)."""
    q, s = ort_grid(W)
    return q.astype(np.float32) * s


def gptq_round(W: np.ndarray, H: np.ndarray, *, damp: float = DAMP, block: int = BLOCK,
               act_order: bool = True, pair_codes: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """W [K, N] (MatMul orientation: K inputs, N outputs) rounded by GPTQ against ``H`` = X^T X [K, K]
    of its calibration inputs, onto the grid onnxruntime's per-channel int8 will compute for the result.
    With ``pair_codes`` [K] (the largest uint8 activation code of each input), every pair of rows (2j, 2j + 1)
    is kept inside the int16 that a saturating u8s8 kernel sums it in (``pair_limit``).
    Returns (the dequantized weights ``q * s``, float32, which ``quantize_dynamic`` reproduces bit for
    bit; how many columns fell back to round to nearest)."""
    W = W0 = np.asarray(W, np.float64)
    K, N = W.shape
    H = np.array(H, np.float64)
    if H.shape != (K, K):
        raise ValueError(f"gptq_round: H is {H.shape}, expected ({K}, {K})")
    s = fixed_scale(ort_grid(W.astype(np.float32))[1]).astype(np.float64)
    cols = np.arange(N)
    top = np.abs(W).argmax(0)
    pin = np.zeros((K, N), bool)
    pin[top, cols] = True
    pin_q = np.zeros((K, N))
    pin_q[top, cols] = np.sign(W[top, cols]) * QMAX
    out = _obs_round(W, H, pin, pin_q, np.broadcast_to(s[None, :], (K, N)), -QMAX, QMAX, damp, block, act_order,
                     pair_codes)
    deq = out.astype(np.float32) * s.astype(np.float32)
    q_ort, s_ort = ort_grid(deq)
    bad = ~(np.all(q_ort.astype(np.float64) == out, axis=0) & (s_ort == s.astype(np.float32)))
    if bad.any():  # not reproduced by onnxruntime: those columns are rounded to nearest
        deq[:, bad] = round_to_nearest(W0[:, bad])
    return deq, int(bad.sum())


# ---------------------------------------------------------------- int4: MatMulNBits' block grid

INT4_MIN, INT4_MAX = -8, 7


def int4_grid(W: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(q [K, N] in [-8, 7], scale [K, N]: each entry's block scale, float32) of W [K, N] as onnxruntime's
    MatMulNBits quantizer (symmetric) rounds it: per output column, blocks of ``block`` rows along K, the
    block's largest-magnitude entry maps to -8 (scale = that entry / -8); an all-zero block has scale 0."""
    W = np.asarray(W, np.float32)
    K, N = W.shape
    S = np.empty((K, N), np.float32)
    for b0 in range(0, K, block):
        b = W[b0:b0 + block]
        top = np.abs(b).argmax(0)
        S[b0:b0 + block] = b[top, np.arange(N)] / np.float32(-8)
    safe = np.where(S != 0, S, np.float32(1))
    q = np.where(S != 0, np.clip(np.round(W / safe), INT4_MIN, INT4_MAX), 0)
    return q.astype(np.int8), S


def gptq_round_int4(W: np.ndarray, H: np.ndarray, block: int, *, damp: float = DAMP, lazy: int = BLOCK,
                    act_order: bool = True) -> tuple[np.ndarray, int]:
    """W [K, N] rounded by GPTQ against ``H`` = X^T X [K, K] onto the grid that onnxruntime's MatMulNBits
    quantizer (symmetric, blocks of ``block`` along K) computes for the result: the grid of W itself
    (static groups: each block's scale is its round-to-nearest scale, and its largest-magnitude entry is
    pinned at -8, so the scale reproduces), every other entry clipped to [-8, 7]. Rows are visited in
    order of decreasing diag(H) (act-order; each row keeps its own block's scale), with lazy batch
    updates of ``lazy`` rows. Returns (the dequantized weights ``q * scale``, float32, which the
    quantizer reproduces bit for bit; how many columns fell back to round to nearest)."""
    W0 = np.asarray(W, np.float32)
    K, N = W0.shape
    H = np.array(H, np.float64)
    if H.shape != (K, K):
        raise ValueError(f"gptq_round_int4: H is {H.shape}, expected ({K}, {K})")
    q0, S32 = int4_grid(W0, block)
    S = S32.astype(np.float64)
    pin = np.zeros((K, N), bool)
    for b0 in range(0, K, block):
        top = np.abs(W0[b0:b0 + block]).argmax(0)
        pin[b0 + top, np.arange(N)] = True
    pin |= S == 0  # an all-zero block stays zero
    pin_q = np.where(pin, q0, 0).astype(np.float64)
    out = _obs_round(W0.astype(np.float64), H, pin, pin_q, S, INT4_MIN, INT4_MAX, damp, lazy, act_order)
    deq = out.astype(np.float32) * S32
    q_ort, s_ort = int4_grid(deq, block)
    bad = ~(np.all(q_ort.astype(np.float64) == out, axis=0) & np.all(s_ort == S32, axis=0))
    if bad.any():  # not reproduced by the quantizer: those columns are rounded to nearest
        deq[:, bad] = q0[:, bad].astype(np.float32) * S32[:, bad]
    return deq, int(bad.sum())


def pair_limit(codes: np.ndarray, partner: np.ndarray, partner_codes: np.ndarray) -> np.ndarray:
    """The largest |q| an int8 weight may take beside a same-sign ``partner`` weight so that no pair sum
    ``a q + a' partner`` with uint8 codes a <= ``codes``, a' <= ``partner_codes`` leaves int16 (``PAIR_MAX``):
    the bound that keeps onnxruntime's saturating u8s8 kernel (x86 without VNNI, ``kernel``) exact."""
    room = PAIR_MAX - np.asarray(partner_codes, np.float64) * np.abs(partner)
    return np.where(codes > 0, np.floor(room / np.maximum(codes, 1)), np.inf)


def unsafe_pairs(q: np.ndarray, codes: np.ndarray) -> int:
    """How many same-sign weight pairs (rows 2j, 2j + 1) of the int8 levels ``q`` [K, N] can leave int16 beside
    uint8 activation codes up to ``codes`` [K]: the pairs a saturating u8s8 kernel may clip."""
    K = q.shape[0] // 2 * 2
    q = np.asarray(q, np.float64)
    c = np.asarray(codes, np.float64)[:K, None]
    a, b = q[0:K:2], q[1:K:2]
    return int(np.sum((a * b > 0) & (c[0::2] * np.abs(a) + c[1::2] * np.abs(b) > PAIR_MAX)))


def _obs_round(W: np.ndarray, H: np.ndarray, pin: np.ndarray, pin_q: np.ndarray, S: np.ndarray, qmin: int, qmax: int,
               damp: float, lazy: int, act_order: bool, pair_codes: np.ndarray | None = None) -> np.ndarray:
    """GPTQ's core, shared by both grids: the integer levels [K, N] (float64, no -0.0) of W [K, N] rounded row by
    row against H [K, K] (damped; dead inputs get 1) on the per-entry scales ``S`` within [qmin, qmax]; ``pin``
    entries are held at ``pin_q`` (never moved by an update). Rows in order of decreasing diag(H) with
    ``act_order``, lazy batch updates of ``lazy`` rows. With ``pair_codes`` [K], a row whose pair partner (row
    2j <-> 2j + 1, in the original order) is rounded or pinned already is clipped to ``pair_limit`` beside it,
    so the rounding error of the clip is spread over the rows after it like any other."""
    K, N = W.shape
    H = np.array(H, np.float64)
    W = np.array(W, np.float64)
    S = np.asarray(S, np.float64)
    safe = np.where(S != 0, S, 1.0)
    pin_w = pin_q * S
    W[pin] = pin_w[pin]  # on the grid already: never moved
    dead = np.diag(H) <= 0
    H[dead, dead] = 1.0
    H[np.diag_indices(K)] += damp * float(np.mean(np.diag(H)))
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(K)
    W, pin, pin_q, pin_w, S, safe = W[perm], pin[perm], pin_q[perm], pin_w[perm], S[perm], safe[perm]
    H = H[perm][:, perm]
    # U upper triangular with H^-1 = U^T U: row k of U is the OBS update of the rows after k
    U = np.linalg.cholesky(np.linalg.inv(H)).T
    Q = np.zeros((K, N))
    pos = np.argsort(perm)  # where each original row is visited
    codes = None if pair_codes is None else np.asarray(pair_codes, np.float64)[perm]
    for b0 in range(0, K, lazy):
        b1 = min(b0 + lazy, K)
        Wb = W[b0:b1].copy()
        err = np.zeros_like(Wb)
        for i in range(b1 - b0):
            k = b0 + i
            q = np.where(pin[k], pin_q[k], np.clip(np.round(Wb[i] / safe[k]), qmin, qmax))
            j = pos[perm[k] ^ 1] if codes is not None and (perm[k] ^ 1) < K else None
            if j is not None:  # the partner's levels as far as they are fixed: rounded, or pinned
                qp = Q[j] if j < k else np.where(pin[j], pin_q[j], 0.0)
                lim = pair_limit(codes[k], qp, codes[j])
                over = (q * qp > 0) & (np.abs(q) > lim) & ~pin[k]
                q = np.where(over, np.sign(q) * lim, q)
            Q[k] = q
            e = (Wb[i] - q * S[k]) / U[k, k]
            err[i] = e
            rest = Wb[i + 1:]
            rest -= np.outer(U[k, k + 1:b1], e)
            np.copyto(rest, pin_w[k + 1:b1], where=pin[k + 1:b1])
        if b1 < K:
            W[b1:] -= U[b0:b1, b1:].T @ err
            np.copyto(W[b1:], pin_w[b1:], where=pin[b1:])
    out = np.empty((K, N))
    out[perm] = Q + 0.0  # no -0.0: onnxruntime's int8 0 dequantizes to +0.0
    return out
