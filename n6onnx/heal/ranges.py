"""The last phase of a static int8 heal (``--quantize int8:static``): the activation ranges train.

A QDQ graph rounds each quantized activation with one fixed (scale, zero point), set by a MinMax
calibration: the whole observed range, outliers included, so most values get few of the 256 steps.
After the weights have healed (against those ranges), this phase freezes them and trains every range
(``fakequant.LearnedRange``: a log-gain on the scale and a real zero point, straight-through rounding,
LSQ+) on the heal's own loss, checking the held-out fidelity as the weight phases do and keeping the
best check. The written model's QuantizeLinear nodes then get the trained ranges
(``quantize_proto(..., ranges=)``, onnxruntime's ``TensorQuantOverrides``), so the written model
computes what the last check measured.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from . import fakequant

ZP_STEPS = 20.0


def train(plan: fakequant.Plan, loss_of: Callable[[], torch.Tensor], check: Callable[[], np.ndarray],
          best_vec: np.ndarray, deadline: float, *, lr: float, every: int, margin: Callable, warmup: int = 0,
          steps: int | None = None, device=None, on_check: Callable | None = None) -> tuple[dict, np.ndarray, int, list]:
    """Train ``plan.tensors``' ranges until ``deadline`` (or ``steps``). ``loss_of()``: the loss of the next
    training batch through the plan; ``check()``: per-sample held-out fidelity; ``best_vec``: the check of
    the start (the ranges as calibrated). Returns ({tensor: (scale, zero point)} of the best check, its
    per-sample fidelity, steps taken, curve rows [step, perf_counter, fidelity, mean loss, margin, lr]). The plan is left
    holding the best ranges as fixed values."""
    start = dict(plan.tensors)
    learned = {n: fakequant.LearnedRange(s, z, device) for n, (s, z) in start.items()}
    plan.tensors.update(learned)
    # a zero point lives in uint8 steps: its step is ZP_STEPS times the log-gain's
    groups = [{"params": [r.log_gain for r in learned.values()], "base": 1.0},
              {"params": [r.zero_point for r in learned.values()], "base": ZP_STEPS}]

    def adam():
        return torch.optim.Adam([dict(g, lr=lr * g["base"]) for g in groups])

    opt = adam()
    best, best_ranges = float(best_vec.mean()), dict(start)
    step, rows, losses = 0, [], []

    def checkpoint() -> None:
        """A held-out check: kept if best; a fall restores the best ranges and halves the step."""
        nonlocal best, best_vec, best_ranges, lr, opt, losses
        vec = check()
        fid, m = float(vec.mean()), margin(vec, best_vec)
        rows.append([step, time.perf_counter(), round(fid, 6), float(np.mean(losses)), round(m, 6), lr])
        losses = []
        if fid > best:
            best, best_vec, best_ranges = fid, vec, {n: r.value() for n, r in learned.items()}
        elif fid < best - m:
            with torch.no_grad():
                for n, r in learned.items():
                    s, z = best_ranges[n]
                    r.log_gain.fill_(float(np.log(np.float64(s) / r.scale0)))
                    r.zero_point.fill_(float(z))
            lr *= 0.5
            opt = adam()
        if on_check is not None:
            on_check(step, fid, best)

    try:
        while (steps is None or step < steps) and time.perf_counter() < deadline:
            for g in opt.param_groups:
                g["lr"] = g["base"] * lr * min(1.0, (step + 1) / max(warmup, 1))  # linear warm-up
            opt.zero_grad(set_to_none=True)
            loss = loss_of()
            losses.append(float(loss.detach()))
            loss.backward()
            opt.step()
            step += 1
            if step % every == 0:
                checkpoint()
        if losses:  # the steps since the last check: a closing check (kept if best)
            checkpoint()
    finally:
        plan.tensors.update(best_ranges)
    return best_ranges, best_vec, step, rows
