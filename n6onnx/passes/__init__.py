"""Rewrite passes (one file each) and the ``--pass KIND=OPTION`` parser."""

from __future__ import annotations

import dataclasses
from typing import Callable

import onnx_ir as ir

from ..errors import BadArgumentError
from . import attention, drop, gelu, targets
from ._common import KindReport, Rejection, Site


@dataclasses.dataclass(frozen=True)
class PassSpec:
    kind: str
    option: str

    def __str__(self) -> str:
        return f"{self.kind}={self.option}"


@dataclasses.dataclass
class PassContext:
    """What data-driven passes may use: the canonical original model and calibration feeds."""

    original: ir.Model | None = None
    batches: list | None = None
    refit: bool = True
    progress: Callable[[str], None] | None = None  # told a label per layer while calibrating
    # attention/block passes: block anchors before the first of them, and blocks taken (see targets)
    anchors: list[str] | None = None
    claimed: dict[int, str] = dataclasses.field(default_factory=dict)


def _ffn(model: ir.Model, option: str, ctx: PassContext) -> KindReport:
    from ..calibrate import bottleneck

    ratio = _ratio(option)
    blocks = bottleneck.map_blocks(model)
    report = KindReport("ffn", seen=len(blocks))
    todo = []
    for b in blocks:
        if b.hidden is None or b.d_model is None:
            report.near_misses.append(Rejection(b.act.name, "FFN weight shapes unknown"))
        elif round(ratio * b.d_model) >= b.hidden:
            report.near_misses.append(Rejection(
                b.act.name, f"hidden width {b.hidden} is already <= {ratio:.4g} x {b.d_model}: nothing to cut"))
        else:
            todo.append(b)
    layers = bottleneck.prune(model, todo, ratio, ctx.original, ctx.batches, refit=ctx.refit, progress=ctx.progress)
    for b, layer in zip(todo, layers):
        report.sites.append(Site(nodes=b.labels(), rule="ffn.phi_bottleneck", detail=layer.to_json()))
    report.rewritten = len(layers)
    if layers:  # hidden widths changed: infer the intermediate shapes again
        from onnx_ir.passes.common import ShapeInferencePass

        bottleneck.forget_shapes(model)
        ShapeInferencePass()(model)
    if not ctx.batches and layers:
        report.notes.append("uncalibrated: units ranked by weight norms and the down projection not refitted; "
                            "pass --calibrate DATA")
    return report


def _ratio(option: str) -> float:
    _, _, r = option.partition(":")
    if not r:
        return 4 / 3
    try:
        num, _, den = r.partition("/")
        value = float(num) / float(den or 1)
    except ValueError:
        raise BadArgumentError(f"ffn=phi-bottleneck:RATIO needs a number such as 4/3 or 2 (got {r!r})") from None
    if not 0 < value <= 16:
        raise BadArgumentError(f"ffn=phi-bottleneck:RATIO must be in (0, 16] (got {r!r})")
    return value


# kind -> (allowed options, runner(model, option, context) -> KindReport)
PASSES: dict[str, tuple[tuple[str, ...], Callable[[ir.Model, str, PassContext], KindReport]]] = {
    "gelu": (tuple(gelu.TARGETS), lambda model, option, ctx: gelu.run(model, option)),
    "ffn": (("phi-bottleneck", "phi-bottleneck:RATIO"), _ffn),
    "attention": (("fftmix[:LAYERS]", "egyptian[:HEADS][:CORE]", *drop.OPTIONS),
                  lambda model, option, ctx: (drop.run_attention if option.startswith("drop")
                                              else attention.run)(model, option, ctx)),
    "moe": (("sparse", "egyptian", "phi", "phi:DROP"), lambda model, option, ctx: _moe().run(model, option, ctx)),
    "block": (drop.OPTIONS, drop.run_block),
}
# passes whose result depends on calibration data
DATA_PASSES = {"ffn", "attention", "moe", "block"}


def _moe():
    from . import moe_rewrite  # imports onnxruntime: only when the pass runs

    return moe_rewrite


def parse(spec: str) -> PassSpec:
    kind, sep, option = spec.partition("=")
    kind, option = kind.strip(), option.strip()
    if kind not in PASSES:
        raise BadArgumentError(
            f"unknown pass {spec!r}; known passes: "
            + ", ".join(f"{k}={'|'.join(v[0])}" for k, v in PASSES.items())
        )
    options = PASSES[kind][0]
    if kind in ("attention", "block") and option.startswith("drop"):
        targets.parse_drop(kind, option)
        return PassSpec(kind, option)
    if kind == "attention":
        try:
            attention.parse_option(option)
        except BadArgumentError as e:
            raise BadArgumentError(f"{e}; known passes: "
                                   + ", ".join(f"{k}={'|'.join(v[0])}" for k, v in PASSES.items())) from None
        return PassSpec(kind, option)
    if kind == "moe":
        _moe().parse(option)
        return PassSpec(kind, option)
    if kind == "ffn" and option.startswith("phi-bottleneck"):
        _ratio(option)
        return PassSpec(kind, option)
    if not sep or option not in options:
        raise BadArgumentError(f"pass {kind!r} needs one of: {', '.join(f'{kind}={o}' for o in options)} (got {spec!r})")
    return PassSpec(kind, option)


def run(model: ir.Model, spec: PassSpec, ctx: PassContext | None = None) -> KindReport:
    return PASSES[spec.kind][1](model, spec.option, ctx or PassContext())
