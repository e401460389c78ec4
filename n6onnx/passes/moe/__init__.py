"""The ``moe=sparse|egyptian|phi[:DROP]`` passes: replace each detected dense or batched MoE block
(see blocks.py) by one ``n6onnx.MoE`` node.

- ``sparse``: the same function, computed sparsely (each expert on its own tokens only). The
  router MatMul/Gemm and its bias stay ordinary nodes feeding the op's ``logits``; expert weights
  are re-laid out to W1 [E, D, H], W2 [E, H, D] (W3 for SwiGLU); tokens are flattened to [N, D]
  with a Reshape and the output restored to the block's shape. Exact.
- ``egyptian``: as sparse, with routing "egyptian": the router's best three experts get fixed
  weights 1/2, 1/3, 1/6. Changes the function (and runs three experts per token instead of k).
- ``phi[:DROP]``: each expert's hidden units are split into 3 contiguous sub-experts (8 x 4D ->
  24 x 4D/3; H is zero-padded to a multiple of 3, padded units have zero output weights, and b2 is
  shared 1/3 per sub-expert). A token goes to every sub-expert of its selected experts with its
  expert's routing weight (group=3): exact. With DROP > 0 the op drops, per token, the DROP
  selected sub-experts with the smallest routing weight x importance, where importance[e] is the
  mean L2 norm of sub-expert e's output act(x W1_e + b1_e) W2_e + b2_e/3 over the calibration
  tokens routed to its expert (``--calibrate``); without calibration data the importance is the
  weight-norm proxy ||W1_e||_F ||W2_e||_F (reported as uncalibrated).

Before rewriting, every block is checked numerically: its subgraph runs in onnxruntime on random
tokens and must match the n6onnx.MoE reference with the extracted parameters (this also settles
which half of a merged gate/up projection is the gate and whether the top-k weights are
renormalised). A block that does not match is rejected with the error, never rewritten. With
calibration data the report also gives each rewritten block's relative L2 error against the
original block on the calibration tokens, and the expert parameters each token activates.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ... import options
from ...errors import BadArgumentError
from ...findings import KindReport, Rejection, Site
from ..base import Pass
from . import blocks as moe
from .rewrite import PARTS, calibration_tokens, emit, block_params, reference, importance, split, verify

OPTIONS = ("sparse", "egyptian", "phi", "phi:DROP")


def parse(option: str) -> tuple[str, int]:
    mode, _, drop = option.partition(":")
    if mode not in ("sparse", "egyptian", "phi") or (drop and mode != "phi"):
        raise BadArgumentError(f"moe pass needs one of: moe=sparse, moe=egyptian, moe=phi[:DROP] (got moe={option})")
    if not drop:
        return mode, 0
    return mode, options.count("moe=phi:DROP", drop, 0)


def run(model: ir.Model, option: str, ctx) -> KindReport:
    mode, drop = parse(option)
    detected, blocks = moe.blocks(model)
    report = KindReport("moe", seen=detected.seen, near_misses=list(detected.near_misses))
    for s in detected.sites:
        if s.rule.startswith("moe.op."):
            report.near_misses.append(Rejection(s.nodes[0], "already a fused com.microsoft MoE op: left as is"))
    problems = verify(model, blocks)
    todo = []
    for blk, why in zip(blocks, problems):
        if why is None and mode == "egyptian" and blk.experts < 3:
            why = f"egyptian routing needs at least 3 experts (this block has {blk.experts})"
        if why is None and mode == "phi" and drop >= blk.k * PARTS:
            why = f"phi:{drop} would drop every one of the {blk.k * PARTS} sub-experts a token selects"
        if why is not None:
            report.near_misses.append(Rejection(blk.nodes[1], why))
        else:
            todo.append(blk)
    calib = calibration_tokens(ctx, todo) if todo and mode != "sparse" else {}
    if todo and mode != "sparse" and not calib:
        report.notes.append("no calibration data (--calibrate): fidelity on calibration tokens not reported"
                            + ("; sub-expert importance from weight norms, not measured contributions"
                               if mode == "phi" and drop else ""))
    for i, blk in enumerate(todo):
        orig = block_params(blk)
        base = {"k": blk.k, "normalize": blk.normalize, "activation": blk.activation}
        per_expert = blk.expert_params()
        if mode == "sparse":
            params, attrs, active = orig, {"routing": "topk", **base}, blk.k * per_expert
        elif mode == "egyptian":
            params, attrs, active = orig, {"routing": "egyptian", "activation": blk.activation}, 3 * per_expert
        else:
            params = split(orig)
            attrs = {"routing": "topk", **base, "group": PARTS, "drop": drop}
            if drop:
                xs = calib.get(id(blk))
                params["importance"] = importance(params, blk.activation, *(xs or (None, None)), k=blk.k)
            active = (blk.k * PARTS - drop) * per_expert / PARTS  # a sub-expert holds 1/3 of an expert's units
        detail = {**blk.detail(), "mode": mode, "verified_max_abs_err": float(f"{blk.verified_err:.3g}"),
                  "original_active_expert_params_per_token": blk.k * per_expert,
                  "active_expert_params_per_token": int(active),
                  "active_fraction_vs_original": round(active / (blk.k * per_expert), 4)}
        if mode == "phi":
            detail.update(sub_experts=params["W1"].shape[0], sub_hidden=params["W1"].shape[2], drop=drop)
            if drop:
                detail["importance"] = "calibration" if id(blk) in calib else "weight norms (uncalibrated)"
        if id(blk) in calib:
            X, L = calib[id(blk)]
            y0 = reference(blk, X, L, orig, **base)
            y1 = reference(blk, X, L, params, **attrs)
            detail["calibration"] = {"tokens": int(X.shape[0]),
                                     "rel_l2_err": float(f"{np.linalg.norm(y1 - y0) / max(np.linalg.norm(y0), 1e-30):.4g}")}
        rule = f"moe.{blk.form}->MoE.{mode}"
        emit(model.graph, blk, i, params, attrs, rule, option)
        report.sites.append(Site(nodes=blk.nodes, rule=rule, variant=option, detail=detail))
    report.rewritten = len(todo)
    return report


PASS = Pass(
    name="moe", order=40, options=OPTIONS,
    summary="sparse: the analysed MoE block as one n6onnx.MoE op (same routing); egyptian: Egyptian-fraction "
            "routing over 3 experts; phi[:DROP]: each expert split in 3 sub-experts, DROP least important dropped",
    parse=parse, run=run, detect=lambda view: moe.detect(view.model), uses_data=True, docs="docs/passes/moe.md",
)
