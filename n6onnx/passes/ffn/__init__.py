"""``--pass ffn=phi-bottleneck[:RATIO]``: cut every FFN's hidden width to round(RATIO * D) units
(default RATIO 4/3), chosen and refitted on calibration data when given (see ``prune``). Detection
reports plain and gated FFNs (``n6onnx.blocks.find_ffn_blocks``) on the copy whose GELUs are
collapsed, so any GELU spelling counts as the activation."""

from __future__ import annotations

import onnx_ir as ir

from ...blocks import find_ffn_blocks
from ... import options
from ...errors import BadArgumentError
from ...findings import KindReport, Rejection, Site
from .. import gelu
from ..base import Inspection, Pass, PassContext, choice_error
from . import prune

OPTIONS = ("phi-bottleneck", "phi-bottleneck:RATIO")


def detect(view: Inspection) -> KindReport:
    work, _ = gelu.collapsed(view)
    blocks, rejected, seen = find_ffn_blocks(work)
    report = KindReport("ffn", seen=seen, near_misses=rejected)
    for b in blocks:
        detail = {"activation": b.kind, "gated": b.gated}
        if b.hidden is not None:
            detail.update(d_model=b.d_model, hidden=b.hidden)
        report.sites.append(Site(nodes=b.labels(), rule="ffn.gated" if b.gated else "ffn.plain", detail=detail))
    return report


def ratio(option: str) -> float:
    """The RATIO of ``phi-bottleneck[:RATIO]`` (4/3 when absent)."""
    if not option.startswith("phi-bottleneck"):
        raise choice_error("ffn", OPTIONS, f"ffn={option}")
    _, _, r = option.partition(":")
    return 4 / 3 if not r else options.ratio("ffn=phi-bottleneck:RATIO", r, 0, 16)


def run(model: ir.Model, option: str, ctx: PassContext) -> KindReport:
    r = ratio(option)
    blocks = prune.map_blocks(model)
    report = KindReport("ffn", seen=len(blocks))
    todo = []
    zero = [b for b in blocks if b.d_model is not None and int(round(r * b.d_model)) < 1]
    if zero:
        raise BadArgumentError(
            f"ffn={option}: {r:.4g} x d_model {zero[0].d_model} rounds to 0 hidden units, which would delete the "
            f"FFN ({len(zero)} block(s)); use a ratio >= {0.5 / zero[0].d_model:.3g}")
    for b in blocks:
        if b.hidden is None or b.d_model is None:
            report.near_misses.append(Rejection(b.act.name, "FFN weight shapes unknown"))
        elif round(r * b.d_model) >= b.hidden:
            report.near_misses.append(Rejection(
                b.act.name, f"hidden width {b.hidden} is already <= {r:.4g} x {b.d_model}: nothing to cut"))
        else:
            todo.append(b)
    before = prune.shapes(model)
    layers = prune.prune(model, todo, r, ctx.original, ctx.batches, refit=ctx.refit, progress=ctx.progress)
    for b, layer in zip(todo, layers):
        report.sites.append(Site(nodes=b.labels(), rule="ffn.phi_bottleneck", detail=layer.to_json()))
    report.rewritten = len(layers)
    if layers:  # hidden widths changed: infer the intermediate shapes again
        prune.reinfer_shapes(model, before, {b.hidden for b in todo})
    if not ctx.batches and layers:
        report.notes.append("uncalibrated: units ranked by weight norms and the down projection not refitted; "
                            "pass --calibrate DATA")
    return report


PASS = Pass(
    name="ffn", order=20, options=OPTIONS,
    summary="phi-bottleneck: keep round(RATIO x d_model) hidden units per FFN (RATIO default 4/3), chosen and "
            "refitted on --calibrate data (weight norms without it)",
    parse=ratio, run=run, detect=detect, uses_data=True, docs="docs/passes/ffn.md",
)
