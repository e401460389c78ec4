"""Phi6 ("Phi6Simple" in the reference): c = clamp(x, -2, 2); y = c*c - c + 1."""

import numpy as np

from ._spec import BodyBuilder, make_activation_pair


def _np(x: np.ndarray) -> np.ndarray:
    c = np.clip(x, np.float32(-2.0), np.float32(2.0))
    y = c * c  # (c*c - c) + 1, in place: the same float32 operations as the kernel and the ONNX body
    y -= c
    y += np.float32(1.0)
    return y


def _onnx(b: BodyBuilder, x: str) -> str:
    c = b.op("Clip", x, b.const(-2.0), b.const(2.0))
    return b.op("Add", b.op("Sub", b.op("Mul", c, c), c), b.const(1.0))


PHI6, BIAS_PHI6 = make_activation_pair(
    "Phi6", _np, _onnx, doc="Phi6: c = clamp(x, -2, 2); y = c*c - c + 1 (computed in float32)."
)
