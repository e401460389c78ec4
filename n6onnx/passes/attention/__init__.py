"""``--pass attention=fftmix[:LAYERS]`` and ``--pass attention=egyptian[:HEADS]``.

fftmix LAYERS: ``auto`` (default) = ``auto:N`` with N = max(1, blocks // 3): the N blocks with the
highest redundancy score on the calibration data; ``N`` (a bare count): the N most redundant;
``I,J,...`` (block indices in graph order, 0-based; a single one as ``@I`` or ``I,``). Counts and
auto need calibration data (they rank blocks); indices work without it.

The replacement: FFTMix(h) -> MatMul(3D -> D) -> Add(bias) takes the place of everything from the
Q/K/V projections through the output projection and its bias; h is the input the Q/K/V
projections read (post-LN BERT/MiniLM: the block input, which is also the residual; pre-LN
GPT-2/ViT/Llama: the normalised stream, the norm stays). The residual add and the norms stay.
Fitted as described in ``n6onnx.calibrate.attention``. Uncalibrated default: filters = window
means at all three scales and the projection = the block's own value-output map W_V W_O / 3 per
scale (bias b_V W_O + b_O): uniform attention inside each window, averaged over the scales.

egyptian HEADS: ``locality`` (default with calibration data): per head, the attention mass on keys
{0, L-1} and within the window (|i - j| <= window/2) measured on the calibration data; the heads
with the most mass on {0, L-1} become global, the most local of the rest local, keeping the
reference's counts (H/2 full, H/3 local, the rest global); ``by-index`` (the default without
data): as the reference, first H/2 full, next H/3 local, the rest global; ``full``: every head
full (a plumbing check: reproduces the original). Causal blocks: kinds per KV group, the counts of
``default_group_kinds``; ``locality`` chooses the groups by the causal masses (on the last window
keys; on the sinks + own key), ``calibrate.attention.causal_locality`` / ``assign_groups``.
Weights are kept; the Q.K^T -> scale/mask -> softmax -> .V core becomes EgyptianAttention on
[B, L, H*dh] tensors, with the attention mask as key_padding_mask int32.
"""

from __future__ import annotations

import onnx_ir as ir

from ...errors import BadArgumentError
from ...findings import KindReport, Rejection
from ...graph import default_opset, node_label
from ..base import Pass
from . import egyptian, fftmix
from .blocks import detect, find_blocks
from ...options import count, is_count
from .. import targets
from ..block import drop
from .emit import fallback_problem
from .fftmix import redundancy_scores


def parse_option(option: str):
    method, _, arg = option.partition(":")
    if method == "fftmix":
        if arg in ("", "auto"):
            return method, ("auto", None)
        if arg.startswith("auto:"):
            return method, ("auto", count("attention=fftmix:auto:N", arg[5:], 1))
        if is_count(arg):
            return method, ("count", count("attention=fftmix:N", arg, 1))
        body = arg[1:] if arg.startswith("@") else arg
        parts = [p for p in body.split(",") if p.strip()]
        if parts and all(is_count(p) for p in parts) and ("," in arg or arg.startswith("@")):
            return method, ("indices", sorted({int(p) for p in parts}))
        raise BadArgumentError(f"attention=fftmix:LAYERS: LAYERS is auto, auto:N, a count N, or block indices "
                               f"I,J (a single index as @I) (got {arg!r})")
    if method == "egyptian":
        heads, core = None, "fused"
        for part in arg.split(":") if arg else []:
            if part in ("locality", "by-index", "full") and heads is None:
                heads = part
            elif part in ("fused", "mha") and core == "fused":
                core = part
            else:
                raise BadArgumentError(f"attention=egyptian[:HEADS][:CORE]: HEADS is locality, by-index or full, "
                                       f"CORE is fused or mha (got {arg!r})")
        return method, (heads, core)
    raise BadArgumentError(f"pass attention needs fftmix[:LAYERS] or egyptian[:HEADS][:CORE] (got {option!r})")


def parse(option: str):
    """``drop:...`` (see ``block.drop``) or the fftmix/egyptian grammar of ``parse_option``."""
    return targets.parse_drop("attention", option) if option.startswith("drop") else parse_option(option)


def run(model: ir.Model, option: str, ctx) -> KindReport:
    if option.startswith("drop"):
        return drop.run_attention(model, option, ctx)
    method, arg = parse_option(option)
    blocks, rejected, seen, opaque = find_blocks(model)
    blocks = targets.renumber(blocks, ctx, lambda: find_blocks(ctx.original)[0] if ctx.original is not None else None)
    if method == "fftmix" and arg[0] == "indices":
        targets.refuse_overlap(ctx, arg[1], f"attention={option}")
    blocks = targets.free(blocks, ctx)
    report = KindReport("attention", seen=seen, near_misses=list(rejected))
    for n in opaque:
        report.near_misses.append(Rejection(node_label(n), f"{n.domain}.{n.op_type}: not rewritable (not analysed)"))
    g = model.graph
    reasons = {b.index: (fftmix.fftmix_reason if method == "fftmix" else egyptian.egyptian_reason)(b, g) for b in blocks}
    opset = default_opset(model)
    problem = fallback_problem("FFTMix" if method == "fftmix" else "EgyptianAttention", opset)
    if problem:
        reasons = {i: r or problem for i, r in reasons.items()}
    for b in blocks:
        if reasons[b.index]:
            report.near_misses.append(Rejection(b.label, reasons[b.index]))
    ok = [b for b in blocks if not reasons[b.index]]
    if method == "fftmix":
        fftmix.run(model, ok, arg, ctx, report)
    else:
        egyptian.run(model, ok, arg, ctx, report)
    targets.claim(ctx, [s.detail["index"] for s in report.sites if "index" in s.detail], f"attention={option}")
    return report


PASS = Pass(
    name="attention", order=30, options=("fftmix[:LAYERS]", "egyptian[:HEADS][:CORE]", *drop.OPTIONS),
    summary="fftmix: the most redundant attention blocks become FFTMix + Linear fitted on --calibrate data "
            "(LAYERS: auto, auto:N, N, or indices I,J / @I); egyptian: full/local/global heads as "
            "EgyptianAttention (HEADS: locality, by-index, full; CORE: fused or mha); drop: remove the N most "
            "redundant blocks (drop:N, needs --calibrate) or the named ones (drop:@I,J), the residual passing through "
            "with the block's mean contribution as a bias",
    parse=parse, run=run, repeatable=True, detect=lambda view: detect(view.model), uses_data=True,
    docs="docs/passes/attention.md",
)
