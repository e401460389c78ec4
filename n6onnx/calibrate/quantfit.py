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
