"""n6onnx.torch: the n6 ops in PyTorch (the n6-native path and the heal student's executor).

- ``n6onnx.torch.functional``: differentiable torch functions with the ONNX ops' semantics, and
  ``OPS`` (ONNX op type -> function).
- ``n6onnx.torch.modules``: an ``nn.Module`` per op, holding its parameters.
- ``n6onnx.torch.export``: export a model built with those modules straight to the n6 custom ops.

Needs PyTorch (the ``heal`` extra: ``pip install 'n6onnx[heal]'``); ``import n6onnx`` alone never
imports torch.
"""

try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("n6onnx.torch needs PyTorch: pip install 'n6onnx[heal]' (torch==2.13.0)") from e

from . import exporting, functional, modules, ops
from .exporting import export
from .functional import OPS
from .modules import FFTMix, EgyptianAttention, MoE, Phi6, ZetaLn2

__all__ = ["OPS", "EgyptianAttention", "FFTMix", "MoE", "Phi6", "ZetaLn2", "export", "exporting", "functional", "modules",
           "ops"]
