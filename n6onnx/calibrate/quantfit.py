"""Why calibrated Phi6 broke under int8, and the fix: centre the activation before the down projection.

The calibrated swap emits P_j = Phi6(a_j z_j + c_j) and folds alpha_j into row j of the down
projection W2. Phi6 never drops below 0.75 (its minimum) and the fit parks many units on one arm
of the parabola, so a unit's signal is a small deviation on a large offset: on all-MiniLM-L6-v2,
E[P^2] is 3-26 while the per-unit spread is 0.1-0.4; and near-linear units use a sliver of the
curve with a large alpha (W2 row norms up to 411, median 0.46).

onnxruntime's int8 quantizers round W2 (one step per tensor, or per output column, set by the
largest entry). The product's error is P @ dW: it multiplies the rounding error by P itself,
offset included, so most of it is a systematic shift mean(P) @ dW that is added to every token.
Measured per FFN on MiniLM (error variance / output variance, 64 held-out sentences):

    quantizing the activation (uint8, per tensor)       1e-4 .. 6e-3
    quantizing W2 per column                            0.04 .. 2.3
    quantizing W2 per column, mean(P) @ dW removed      0.001 .. 0.007
    quantizing W2 per tensor                            2.8 .. 273
    quantizing W2 per tensor, mean(P) @ dW removed      0.02 .. 0.14

So the collapse is the weights times the offset, not the activation's own quantization.

The fix: the graph subtracts the calibration mean m of P before W2 (one Add of a constant vector
per FFN, a negligible cost next to the MatMul) and m @ W2 is folded back into W2's bias, so the
float model is unchanged while W2 now multiplies a centred signal: any int8 quantizer's W2 error
then only meets the unit's deviation. Every MatMul stays quantizable.

Second limit, after centring: the fit's near-linear units use a sliver of Phi6 with a large alpha,
so W2 has a few rows up to ~400x the median norm; each per-column int8 step is set by them and the
other units get their rounding error (held-out per-channel int8 0.952). ``balance_scales`` scales
each centred unit by t_j and W2's row by 1/t_j (one constant Mul per FFN, exact in float), the
SmoothQuant rebalance; with migration strength 0.8 per-channel int8 reaches 0.984.

Third limit, per-tensor int8 only (held-out 0.678 after the two fixes above): the fit folds its
per-unit input gain a_j into W1's columns, and Phi6's near-linear units need a tiny a_j (about
half of MiniLM's units have column ranges 10 to 100x below the largest), so one per-tensor step
rounds them away (quantizing every MatMul but W1 per tensor: 0.983). The clamp of Phi6 to [-2, 2]
rules out moving the gain into the activation's own parametrisation, so ``up_scale``: W1's
columns are stored at equal ranges and the gain is a constant Mul between the up projection and
the activation (tagged ``UPSCALE_TAG``; ``blocks`` keeps it in the FFN). See ``calibrate_swap``
for the measured effect of each fix and ``outliers`` for the units split out of W2.

Fourth limit, x86 CPUs without VNNI (AVX2): onnxruntime's u8s8 kernel adds each pair of neighbouring
products into a saturating int16 (``quantize.kernel``), so a pair of large same-sign weights clips when both
of its uint8 activation bytes are high. A byte is high where a value lies far above the tensor's minimum:
DynamicQuantizeLinear maps [min(0, lo), max(0, hi)] onto 0..255. GELU's output sits just above its small
negative minimum (bytes near 2 on MiniLM), so the original never clips; a centred unit whose long tail is
negative puts the bulk of its values at the top of the range. The detour of MiniLM's outlier units had
bytes of 240-255 and clipped 12-46% of its pairs, and stock per-channel int8 of the calibrated model
collapsed to cosine 0.08 on such a CPU. ``orientation`` flips each unit (its scale and its W2 row, exact in
float) so that its longer tail is positive, the bulk sits low in the byte range and no byte of the bulk
reaches the range where pairs clip; the range itself shrinks too (the long tails all on one side).
"""

from __future__ import annotations

import numpy as np


def activation_mean(Y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The (row-weighted) mean of the activation's calibration output Y [N, H], per unit [H]."""
    Y = np.asarray(Y, np.float64)
    if weights is None:
        return Y.mean(0).astype(np.float32)
    w = np.asarray(weights, np.float64)
    return ((w @ Y) / w.sum()).astype(np.float32)


def offset_ratio(P: np.ndarray) -> np.ndarray:
    """Per unit, E[P^2] / var(P) of an activation's output P [N, H]: how many times the power of the
    signal the int8 weight-rounding error of the next MatMul is multiplied by (1 for a centred unit)."""
    P = np.asarray(P, np.float64)
    return (P * P).mean(0) / np.maximum(P.var(0), 1e-30)


def orientation(Xc: np.ndarray) -> np.ndarray:
    """Per unit of a centred activation Xc [N, H], +1 where its largest value is at least as far from 0 as
    its smallest, else -1 (float32): the sign that puts each unit's longer tail on the positive side, so the
    bulk of a per-tensor uint8 quantization's bytes stays low (see the module's fourth limit)."""
    Xc = np.asarray(Xc, np.float64)
    return np.where(Xc.max(0) >= -Xc.min(0), 1.0, -1.0).astype(np.float32)


def balance_scales(Xc: np.ndarray, W: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """Per unit scale t [H] for X' = Xc * t and W' = W / t[:, None] (X' @ W' == Xc @ W), SmoothQuant's
    balance (Xiao et al. 2023) with migration strength ``strength``: t_j = max|W_j|^(1-s) / max|X_j|^s.

    The fit leaves near-linear units with a tiny deviation and a huge down-projection row (up to ~400x
    the median on MiniLM); per-column int8 steps are set by those rows, so every other unit gets their
    rounding error. With s = 0.5 a unit's activation and weight ranges become equal; larger s moves
    more of the range into the activation (quantized per tensor, uint8, where it costs less for
    per-channel weights: on MiniLM s = 0.8 is best per channel, 0.5 per tensor)."""
    wmax = np.abs(np.asarray(W, np.float64)).max(1)
    xmax = np.abs(np.asarray(Xc, np.float64)).max(0)
    ok = (wmax > 0) & (xmax > 0)
    t = np.ones_like(wmax)
    t[ok] = wmax[ok] ** (1 - strength) / xmax[ok] ** strength
    return t.astype(np.float32)
