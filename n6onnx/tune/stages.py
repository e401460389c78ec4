"""The stages a recipe runs after the passes: int8 quantization and (optionally) healing.

Quantization goes through ONE adapter, ``quantize``: the ``n6onnx.quantize`` stage when this
installation has it, else onnxruntime's ``quantize_dynamic`` (QInt8, per channel), which is the
stage's ``int8`` mode. Healing is a hook (``HealHook``): a callable the caller supplies (the
``n6onnx.heal`` stage when it exists); without one, heal is not a dimension of the search.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Protocol

from ..errors import N6Error
from ..quantize import quantize as quantize_stage

QUANT_MODES = ("int8",)


class HealHook(Protocol):
    def __call__(self, model: pathlib.Path, out: pathlib.Path, *, original: pathlib.Path,
                 calibrate: pathlib.Path, tokenizer: str | None) -> None:
        """Write a healed version of ``model`` (a rewrite of ``original``) to ``out``, training on the
        fit part of the data only (``calibrate``)."""


def quantize(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "int8") -> None:
    """Quantize ``src`` into ``dst`` (``int8``: dynamic, per channel)."""
    if mode not in QUANT_MODES:
        raise N6Error(f"unknown quantization mode {mode!r} (known: {', '.join(QUANT_MODES)})")
    quantize_stage(src, dst, mode)


def default_heal() -> HealHook | None:
    """``n6onnx.heal``'s hook when this installation has one (a ``tune_hook`` callable), else None."""
    try:
        from .. import heal  # needs torch (the heal extra): only when tune is asked to heal
    except ImportError:
        return None
    hook = getattr(heal, "tune_hook", None)
    return hook if callable(hook) else None


def split(lines: list, holdout: float) -> tuple[list, list]:
    """Deterministic fit / held-out split: every k-th item (k = round(1 / holdout)) is held out."""
    if not 0 < holdout < 1:
        raise N6Error(f"the held-out fraction must be in (0, 1), got {holdout:g}")
    k = max(2, round(1 / holdout))
    held = [x for i, x in enumerate(lines) if i % k == k - 1]
    fit = [x for i, x in enumerate(lines) if i % k != k - 1]
    return fit, held


Progress = Callable[[str], None]
