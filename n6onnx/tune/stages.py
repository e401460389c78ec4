"""The stages a recipe runs after the passes: reduced precision and (optionally) healing.

Reduced precision goes through ONE adapter, ``quantize``: on the CPU by default the ``n6onnx.quantize`` stage
``int8`` (dynamic, per channel); on CUDA (``tune --provider cuda``) by default ``fp16``, onnxruntime's float16
converter on the fused graph (``onnxruntime.transformers.float16``; inputs and outputs stay float32), where int8
does not pay; ``tune --stage int4`` searches weight-only 4-bit instead (MatMulNBits, block 32), with n6onnx's int4
fit on the fit part of DATA (``quantize.qfit``, as ``rewrite --quantize int4 --calibrate``), for the machines
where MatMulNBits pays. Healing is a hook (``HealHook``): ``default_heal`` wraps ``n6onnx.heal``'s
public entry point when torch is installed; without one, heal is not a dimension of the search
and the report says why.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable, Protocol

from .. import io
from ..errors import N6Error
from ..feeds import parse_dims
from ..quantize import qfit, quantize_proto
from ..quantize import quantize as quantize_stage

QUANT_MODES = ("int8", "int4", "fp16")
#: the reduced-precision stage tune searches on each provider by default (``tune --stage`` picks another)
STAGE = {"cpu": "int8", "cuda": "fp16"}
#: the stages a tune heal trains against (``heal.fakequant``); fp16 is healed in float
FAKE_QUANT_MODES = ("int8", "int4")


class HealHook(Protocol):
    def __call__(self, model: pathlib.Path, out: pathlib.Path, *, original: pathlib.Path,
                 calibrate: pathlib.Path, tokenizer: str | None, minutes: float,
                 quantize: str | None) -> object | None:
        """Write a healed version of ``model`` (a float rewrite of ``original``) to ``out`` (float weights),
        training on the fit part of the data only (``calibrate``) for at most ``minutes``. ``quantize``
        (``"int8"``, ``"int4"`` or None): the quantization tune applies to ``out`` next (``quantize`` below,
        before fusion): heal against it (fake quantization), or in float when None. May return a
        ``heal.train.HealReport``; its steps, fake-quantized MatMul count and fidelities go in the report."""


def quantize(src: str | os.PathLike, dst: str | os.PathLike, mode: str = "int8", fit=None) -> None:
    """Quantize ``src`` into ``dst`` (``int8``: dynamic, per channel; ``int4``: MatMulNBits, block 32; ``fp16``:
    float16, a fused ``src``). ``fit`` (feed batches): int4 only, fit the weights to the int4 path on them first
    (``quantize.qfit``, the refit + GPTQ rounding of ``rewrite --quantize int4 --calibrate``); a healed recipe
    passes None (the heal trained against the plain rounding)."""
    if mode not in QUANT_MODES:
        raise N6Error(f"unknown quantization mode {mode!r} (known: {', '.join(QUANT_MODES)})")
    if mode == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        io.save(convert_float_to_float16(io.load_proto(src), keep_io_types=True), dst)
        return
    if mode == "int4" and fit is not None:
        proto, _ = qfit.fit_quantized(io.load_proto(src), fit, mode=mode)
        io.save(quantize_proto(proto, mode)[1], dst)
        return
    quantize_stage(src, dst, mode)


FUSED_FIRST, QUANTIZED_FIRST = "fused, then quantized", "quantized, then fused"


def quantize_both_orders(src: pathlib.Path, fused: pathlib.Path, fuse: Callable[[pathlib.Path], pathlib.Path],
                         work: pathlib.Path, mode: str = "int8", stem: str = "int8", fit=None) -> dict[str, pathlib.Path]:
    """``src`` quantized in both graph orders: ``fused`` (ORT's fused ``src``) quantized (FUSED_FIRST: a fused
    attention keeps its Q/K/V projections float), and ``src`` quantized, then fused by ``fuse``
    (QUANTIZED_FIRST: every MatMul quantized, what ``quantize_dynamic`` on an export gives). Which is faster
    depends on the machine, so both are measured wherever int8 is a reference. ``fp16``: the fused graph
    converted only (onnxruntime's fusions work on float32 graphs). ``fit``: as for ``quantize``."""
    a, b = work / f"{stem}-fused-first.onnx", work / f"{stem}-quantized-first.onnx"
    quantize(fused, a, mode, fit)
    if mode == "fp16":
        return {FUSED_FIRST: a}
    quantize(src, b, mode, fit)
    return {FUSED_FIRST: a, QUANTIZED_FIRST: fuse(b)}


def describe(stage: str, graph: str) -> str:
    """How tune built the ``stage`` recipes (the report's setting), ``graph``: the anchor's graph order."""
    if stage == "fp16":
        return ("fp16: onnxruntime's float16 converter on the fused graph (inputs and outputs float32); healed fp16 "
                "recipes: healed in float, fused, converted")
    how = ("dynamic, per channel" if stage == "int8" else
           "MatMulNBits, block 32, fitted to its rounding on calibration's part of the fit data (quantize.qfit)")
    return (f"n6onnx.tune.stages.quantize ({stage}: {how}); the {stage} reference: the faster of the original fused "
            f"then quantized (a fused attention's projections stay float) and quantized then fused (every MatMul "
            f"{stage}), both measured; unhealed {stage} recipes: built in the reference's order ({graph}); healed "
            f"{stage} recipes: healed under fake quantization (n6onnx.heal, as rewrite --quantize {stage} --heal; "
            f"{'' if stage == 'int8' else 'not fitted: '}the heal trained against the plain rounding), quantized, then "
            f"fused (fusion leaves the {stage} MatMuls the heal trained against)")


def default_heal(*, dims=None, threads: int | None = None, steps: int | None = None,
                 device: str = "cpu") -> tuple[HealHook | None, str | None]:
    """A hook over ``n6onnx.heal``'s public entry point (``heal.run.heal_file``), or (None, why) when
    this installation cannot heal (torch, the ``heal`` extra, is missing). With ``quantize="int8"``
    the heal trains against the int8 path as ``rewrite --quantize int8 --heal`` does
    (``HealConfig.quantize``: fake quantization, straight-through); ``steps`` caps each heal. ``device``: where
    the student trains (``HealConfig.device``; ``tune --provider cuda`` asks for its GPU): a CUDA device that this
    torch cannot use falls back to the CPU."""
    try:
        from ..heal import run as heal_run  # needs torch (the heal extra): only when tune may heal
    except ImportError as e:
        return None, f"healing skipped: the heal extra (torch) is not installed ({e})"
    dims = parse_dims(dims)
    if device != "cpu":
        try:
            heal_run.check_device(device)
        except N6Error:
            device = "cpu"  # a CPU build of torch on a GPU machine: heal on the CPU, as without --provider cuda

    def hook(model, out, *, original, calibrate, tokenizer, minutes, quantize=None):
        if quantize is not None and quantize not in FAKE_QUANT_MODES:
            raise N6Error(f"healing cannot train against {quantize!r} (it trains against {', '.join(FAKE_QUANT_MODES)})")
        cfg = heal_run.HealConfig(minutes=minutes, steps=steps, threads=threads, quantize=quantize, device=device)
        return heal_run.heal_file(model, original, calibrate, out, tokenizer=tokenizer, dims=dims, config=cfg)

    return hook, None


def split(lines: list, holdout: float) -> tuple[list, list]:
    """Deterministic fit / held-out split: every k-th item (k = round(1 / holdout)) is held out."""
    if not 0 < holdout < 1:
        raise N6Error(f"the held-out fraction must be in (0, 1), got {holdout:g}")
    k = max(2, round(1 / holdout))
    held = [x for i, x in enumerate(lines) if i % k == k - 1]
    fit = [x for i, x in enumerate(lines) if i % k != k - 1]
    return fit, held


Progress = Callable[[str], None]
