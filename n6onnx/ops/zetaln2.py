"""ZetaLn2: y = x*x - (5/6)*x + 25/144 = (x - 5/12)^2, unclamped."""

import numpy as np

from ._spec import BodyBuilder, make_activation_pair

_SHIFT = 5.0 / 12.0


def _np(x: np.ndarray) -> np.ndarray:
    d = x - np.float32(_SHIFT)
    d *= d
    return d


def _onnx(b: BodyBuilder, x: str) -> str:
    d = b.op("Sub", x, b.const(_SHIFT))
    return b.op("Mul", d, d)


ZETALN2, BIAS_ZETALN2 = make_activation_pair(
    "ZetaLn2", _np, _onnx, doc="ZetaLn2: y = (x - 5/12)^2 (computed in float32)."
)
