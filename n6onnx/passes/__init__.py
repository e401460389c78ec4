"""Rewrite passes (one file each) and the ``--pass KIND=OPTION`` parser."""

from __future__ import annotations

import dataclasses
from typing import Callable

import onnx_ir as ir

from ..errors import BadArgumentError
from . import attention, gelu
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


def _ffn(model: ir.Model, option: str, ctx: PassContext) -> KindReport:
    from ..calibrate import bottleneck

    ratio = _ratio(option)
    blocks = bottleneck.map_blocks(model)
    report = KindReport("ffn", seen=len(blocks))
    todo = []
    zero = [b for b in blocks if b.d_model is not None and int(round(ratio * b.d_model)) < 1]
    if zero:
        raise BadArgumentError(
            f"ffn=phi-bottleneck:{option.partition(':')[2]}: {ratio:.4g} x d_model {zero[0].d_model} rounds to 0 hidden "
            f"units, which would delete the FFN ({len(zero)} block(s)); use a ratio >= {0.5 / zero[0].d_model:.3g}")
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
    from ..options import ratio

    _, _, r = option.partition(":")
    return 4 / 3 if not r else ratio("ffn=phi-bottleneck:RATIO", r, 0, 16)


# kind -> (allowed options, runner(model, option, context) -> KindReport)
PASSES: dict[str, tuple[tuple[str, ...], Callable[[ir.Model, str, PassContext], KindReport]]] = {
    "gelu": (tuple(gelu.TARGETS), lambda model, option, ctx: gelu.run(model, option)),
    "ffn": (("phi-bottleneck", "phi-bottleneck:RATIO"), _ffn),
    "attention": (("fftmix[:LAYERS]", "egyptian[:HEADS][:CORE]"), lambda model, option, ctx: attention.run(model, option, ctx)),
    "moe": (("sparse", "egyptian", "phi", "phi:DROP"), lambda model, option, ctx: _moe().run(model, option, ctx)),
}
# passes whose result depends on calibration data
DATA_PASSES = {"ffn", "attention", "moe"}


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


def plan(specs: list[PassSpec]) -> list[PassSpec]:
    """One pass per kind. Two passes of a kind that would rewrite the same sites are refused (the
    second would find nothing left and report 0 while the model holds the first's rewrites); passes
    on disjoint sites (``attention=fftmix`` with disjoint block indices) are merged into one run, so
    block indices keep meaning the original model's blocks and the report counts both."""
    by_kind: dict[str, list[PassSpec]] = {}
    for sp in specs:
        by_kind.setdefault(sp.kind, []).append(sp)
    out = []
    for kind, group in by_kind.items():
        if len(group) == 1:
            out.append(group[0])
            continue
        parsed = [attention.parse_option(sp.option) if kind == "attention" else None for sp in group]
        if kind == "attention" and all(m == "fftmix" and a[0] == "indices" for m, a in parsed):
            seen: set[int] = set()
            for sp, (_, (_, idx)) in zip(group, parsed):
                if seen & set(idx):
                    raise BadArgumentError(
                        f"--pass {sp} targets attention block(s) {sorted(seen & set(idx))} that an earlier "
                        "--pass already rewrites; give each block once")
                seen |= set(idx)
            out.append(PassSpec(kind, "fftmix:" + ",".join(str(i) for i in sorted(seen)) + ","))
            continue
        raise BadArgumentError(
            f"--pass {group[0]} and --pass {group[1]} would rewrite the same {kind} sites (each rewrites every "
            f"{kind} site it can); give one {kind} pass")
    return out


def run(model: ir.Model, spec: PassSpec, ctx: PassContext | None = None) -> KindReport:
    return PASSES[spec.kind][1](model, spec.option, ctx or PassContext())
