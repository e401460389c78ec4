"""``n6onnx tune``: search pass recipes (with int8 and heal) for the fastest model that keeps a
held-out fidelity; see docs/tune.md."""

from .space import ModelInfo, Recipe
from .stages import HealHook, default_heal, quantize
from .study import Point, TuneReport, pareto, tune

__all__ = ["HealHook", "ModelInfo", "Point", "Recipe", "TuneReport", "default_heal", "pareto", "quantize", "tune"]
