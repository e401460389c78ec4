"""Distillation of a rewritten model towards the original (the teacher, run by onnxruntime).

The student is the rewritten graph in torch (``heal.executor``), starting from the closed-form
calibrated weights. Only the ``trainable`` initializers move (``heal.targets``).

Parametrisation (``param``): calibration folds leave badly scaled weights (W1 columns of norm
0.02, W2 rows of norm 400 in MiniLM), and Adam's step is an absolute size per element, so a
plain Adam changes tiny entries by a large fraction of themselves while large ones barely move:
the model falls first. ``"relative"`` (default) trains U with W = r * U, r_ij = rms(row i) *
rms(col j) / rms(W) (the rank-one magnitude of W: exact for diag(p) A diag(q)), per-tensor rms
for vectors, so each Adam step changes every entry by about ``lr`` of its typical size. ``"raw"``
is plain Adam on the weights, kept for comparison.

Phases (``local``): first block-local reconstruction for that share of the budget. Default
(``local_mode="parallel"``): every block holding a trained weight runs from the teacher's residual
stream at its input (the executor's ``inject``; blocks without one do not run) and is trained towards
the teacher's stream at its
output, with the loss's weighting, at ``local_lr``; then global distillation (below) at ``lr``,
from the best weights so far, to fix the drift the blocks' errors accumulate. Each phase has a
fresh Adam and its own warm-up (``local_lr_start``: the block-local step grows from there instead,
doubling after each check that does not fall). ``"sequential"``: the blocks one after another in
graph order, each for an equal part of the share, on the student's own stream at its input, only its
own weights moving; a block is kept only as far as a held-out check did not fall (``local_output``
adds the model outputs to its loss). Between the phases (``refit``, default "phase"), the trained output
projections are refitted in closed form, in graph order, on the student's own stream
(``heal.refit``): that restores the upstream compensation of calibration's sequential fit, which
block-local training (from the teacher's input) undoes; the refitted weights are checked on
held-out data and kept if best.

Loss (``loss``): per token, the squared error of each stream point divided by the variance of the
original stream at that token (calibration's 1/var weight: what the next LayerNorm divides by),
averaged over real tokens and stream points (``"streams"``), plus the same on the model outputs
(``"streams+output"``, default), or the outputs alone (``"output"``); ``"streams+kl"`` / ``"kl"``
take the KL divergence of the outputs' softmax instead (a language model's logits), ``"streams+pooled"`` /
``"pooled"`` 1 - cosine of the mean-pooled outputs (a sentence embedding), ``"streams+relational"`` /
``"relational"`` that plus the error of the pairwise cosines between a batch's samples; the terms are in
``heal.losses``.

Quantization-aware (``quantize`` "int8", "int8:static" or "int4[:BLOCK]" with ``fake_quant``): the
student runs every MatMul that ``--quantize`` will quantize with fake-quantized weights and activations
(``heal.fakequant``: onnxruntime's grids, straight-through backward; a static plan's activation ranges
come from ``quant_feeds``, the data the write-out calibrates on), so the loss, the held-out fidelity and
the best-weights rule all see the quantized model; the weights (and biases) of those MatMuls train as well.

Safety: part of DATA is held out. Held-out fidelity (top-1 agreement for [B, L, V] logits, mean-pooled cosine
for an embedding output, else per-sample cosine of the first output) is measured at the start and every ``eval_every``
steps; a drop below the best so far by more than ``backtrack`` restores the best weights and
halves the learning rate. The best evaluated weights are returned, so the result is never worse
on held-out data than the calibrated start."""

from __future__ import annotations

import dataclasses
import time
from typing import Sequence

import numpy as np
import onnx_ir as ir
import torch

from .. import feeds as feeds_mod
from ..errors import BadArgumentError
from ..validate import metrics
from . import executor, fakequant, losses, ranges, refit, targets
from .config import HealConfig

@dataclasses.dataclass
class HealReport:
    train_samples: int
    heldout_samples: int
    trainable: int  # number of tensors
    trainable_values: int
    steps: int
    seconds: float
    start: float  # held-out fidelity of the calibrated start
    best: float
    lowest: float  # lowest held-out fidelity at any evaluation
    stopped: str
    config: dict
    # [step, seconds, fidelity, mean train loss, phase, backtrack margin, step size] (the start: the first three)
    curve: list = dataclasses.field(default_factory=list)
    fake_quantized: int = 0  # MatMul/Gemm nodes run fake-quantized (as --quantize will run them) in the student
    # int8:static with HealConfig.ranges: {activation tensor: (scale, zero point)} the student ended with (trained
    # where a check improved, else calibration's), which QuantizeLinear gets on write-out
    ranges: dict | None = None
    # dynamic int8 under fake quantization: the products the student mirrored, "exact" or "saturating" (pair sums
    # clipped to int16: config int8_kernel, or with "auto" this CPU's kernel)
    int8_kernel: str | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("seconds", "start", "best", "lowest"):
            d[k] = round(d[k], 6 if k != "seconds" else 2)
        return d


def _scale(w: torch.Tensor, param: str) -> torch.Tensor:
    if param == "raw":
        return torch.ones_like(w)
    total = w.pow(2).mean().sqrt().clamp_min(1e-12)
    if w.dim() == 2:
        r = w.pow(2).mean(1, keepdim=True).sqrt() * w.pow(2).mean(0, keepdim=True).sqrt() / total
        return r.clamp_min(1e-3 * total)
    return torch.full_like(w, float(total))


def _bias_scale(b: torch.Tensor, w: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A bias moves its unit's pre-activation, whose spread is about the norm of the unit's weight
    column (inputs come out of a LayerNorm): a change is measured against that, not against the
    bias itself. After a calibration fold a unit with a small weight column has a large
    downstream gain, so its bias must move in correspondingly small steps."""
    col = (w.T if transposed else w).pow(2).sum(0).sqrt()
    if col.shape != b.shape:
        return torch.full_like(b, float(b.pow(2).mean().sqrt().clamp_min(1e-12)))
    return col.clamp_min(1e-3 * float(col.mean()) + 1e-12)


def _adam(u: dict, lr: float) -> torch.optim.Optimizer:
    """Adam over the reparametrised tensors; the fused kernel (one pass over all tensors) is ~10x
    faster on CPU than the per-tensor loop that torch picks by default for CPU tensors."""
    return torch.optim.Adam(list(u.values()), lr=lr, fused=True)


def _input_means(student, batches, idx, weights: dict, most: int = 4) -> dict[str, torch.Tensor]:
    """{weight: mean over real tokens of its projection's input} on up to ``most`` training batches."""
    if not weights:
        return {}
    names = sorted({x for _, x in weights.values()})
    sums, count = {}, 0
    with torch.inference_mode():
        for k in idx[:most]:
            out = student(batches[k], names)
            for n in names:
                a = out[n]
                keep = _mask_rows(batches[k], tuple(a.shape))
                a = a.reshape(-1, a.shape[-1])
                if keep is not None:
                    a = a[torch.from_numpy(keep).to(a.device)]
                sums[n] = sums.get(n, 0) + a.sum(0).double()
                if n == names[0]:
                    count += a.shape[0]
    return {w: (sums[x] / max(count, 1)).float() for w, (_, x) in weights.items()}


def _mask_rows(feeds: dict, shape) -> np.ndarray | None:
    m = feeds.get("attention_mask")
    if m is None or len(shape) < 2 or tuple(m.shape) != tuple(shape[:2]):
        return None
    return np.asarray(m).reshape(-1).astype(bool)


class Targets:
    """The teacher's values of one batch as float32 tensors with the per-row 1/(H var) weights of
    the loss, prepared once per batch (cached next to the teacher's own cache, at the teacher's
    dtype: float16 stream points stay float16 there and are widened on each use)."""

    def __init__(self, teacher, feeds_of, device: torch.device | str = "cpu"):
        self.teacher, self.feeds_of, self.device = teacher, feeds_of, torch.device(device)
        self.cache: dict[int, dict] = {}

    def __call__(self, k: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, tuple]]:
        out = self.cache.get(k)
        if out is None:
            feeds = self.feeds_of(k)
            out = {}
            for n, t in self.teacher(k, feeds).items():
                if np.issubdtype(t.dtype, np.floating):
                    out[n] = _prepare(t, _mask_rows(feeds, t.shape), self.device)
            if k in self.teacher.cache:  # kept while the teacher keeps it (its memory budget): shares its arrays
                self.cache[k] = out
        return {n: (tt.float(), w, shape) for n, (tt, w, shape) in out.items()}  # float32: no copy, float16: one


def _prepare(t: np.ndarray, keep: np.ndarray | None,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(target as [rows, H], weight per row = keep / (H var(row) * real rows), the target's shape):
    the loss is then sum over rows of weight * |y - t|^2 summed along H."""
    h = t.shape[-1] if t.ndim else 1
    keep_dtype = np.float16 if t.dtype == np.float16 else np.float32  # float16: kept so (Targets widens it per use)
    tt = torch.from_numpy(np.ascontiguousarray(t, dtype=keep_dtype)).reshape(-1, h).to(device)
    t32 = tt.float()
    var = t32.var(1, unbiased=False) if h > 1 else t32.pow(2).mean(1)
    var = var.clamp_min(1e-6 * float(var.mean()) + 1e-30)
    w = 1.0 / (h * var)
    if keep is not None:
        k = torch.from_numpy(keep.astype(np.float32)).to(device)
        w = w * k / k.sum().clamp_min(1.0)
    else:
        w = w / tt.shape[0]
    return tt, w, tuple(t.shape)


def fidelity(teacher_out: np.ndarray, student_out: np.ndarray, feeds: dict, rows: int, name: str = "") -> np.ndarray:
    """Per-sample fidelity of one batch: for a language model's [B, L, V] logits (``validate``'s rule:
    ``metrics.looks_like_logits``) the share of (real) positions whose argmax agrees, validate's top-1
    agreement; else mean-pooled cosine for [B, L, H] with an attention mask, else the cosine of each
    sample's flattened output.
    (Mean-pooled cosine of a decoder's logits saturates: 0.999999 while top-1 agreement is 0.96.)"""
    m = feeds.get("attention_mask")
    t, s = teacher_out[:rows], student_out[:rows]
    masked = t.ndim == 3 and m is not None and tuple(m.shape) == t.shape[:2]
    if t.ndim == 3 and metrics.looks_like_logits(name, t.shape, t.dtype):
        same = metrics.top1_rows(t, s).astype(np.float64)
        w = np.asarray(m[:rows], np.float64) if masked else np.ones_like(same)
        return (same * w).sum(1) / np.maximum(w.sum(1), 1.0)
    if masked:
        return metrics.cosine_rows(metrics.mean_pool(t, m[:rows]), metrics.mean_pool(s, m[:rows]))
    return metrics.per_sample_cosine(t, s)


def split(batches: Sequence[dict], holdout: float, most: int = 16) -> tuple[list[int], list[int]]:
    """Batch indices (train, held-out): the last ``holdout`` share of DATA (at least one batch, at
    most ``most``) is held out."""
    n = len(batches)
    if n < 2:
        raise BadArgumentError(f"healing needs at least 2 batches of DATA (one is held out); got {n}")
    k = min(max(1, int(round(n * holdout))), n - 1, most)
    return list(range(n - k)), list(range(n - k, n))


def heal(model: ir.Model, original: ir.Model, batches, config: HealConfig | None = None,
         progress: bool = False, quant_feeds=None) -> HealReport:
    """Train ``model``'s trainable initializers towards ``original`` on ``batches``; write the best
    values back into ``model`` (same initializer names, same nodes). Returns the report.
    ``quant_feeds``: the calibration feeds ``--quantize int8:static`` will use on write-out (default:
    the first 32 batches)."""
    cfg = config or HealConfig()  # its values are checked when it is made (HealConfig.__post_init__)
    device = check_device(cfg.device)
    t0 = time.perf_counter()
    proto = ir.to_proto(model)
    executor.check_supported(proto)  # before any work
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    oproto = ir.to_proto(original)
    # quantization-aware: the student runs the MatMuls that --quantize quantizes as the quantized model
    # will, and their weights (whose rounding is part of the error) train too
    fq = {}
    if cfg.fake_quant and cfg.quantize is not None:
        qfeeds = quant_feeds if quant_feeds is not None else [batches[k] for k in range(min(32, len(batches)))]
        fq = fakequant.plan(proto, cfg.quantize, qfeeds if cfg.quantize == "int8:static" else None,
                            {"auto": None, "exact": False, "saturating": True}[cfg.int8_kernel])
    names = targets.trainable(oproto, proto, cfg.train)
    if fq:
        names = sorted(set(names) | set(fakequant.trainable(proto, fq)))
    if not names:
        names = targets.trainable(oproto, proto, "neighbours")
    if not names:
        raise BadArgumentError("heal: the rewritten model has no float initializer near a rewritten block to train")
    streams = targets.stream_points(original, proto) if "+" in cfg.loss or cfg.loss == "streams" or cfg.local > 0 \
        else []
    # a present whose layout the rewrite changed (a re-laid-out KV cache) is no target
    moved = set(feeds_mod.relaid(feeds_mod.proto_input_specs(oproto, outputs=True),
                                 feeds_mod.proto_input_specs(proto, outputs=True)))
    outputs = [o.name for o in proto.graph.output if o.name not in moved]
    student = executor.GraphModule(proto).to_device(device)
    teacher = targets.Teacher(original, streams + outputs, cfg.threads, cfg.cache_bytes,
                              half=[n for n in streams if n not in outputs] if cfg.cache_dtype == "float16" else ())
    prepared = Targets(teacher, lambda k: batches[k], device)
    student.fake_quant = fq  # the MatMuls --quantize quantizes run fake-quantized
    student.set_train_dtype(cfg.train_dtype)  # bfloat16: the training forward under bf16 autocast
    train_idx, held_idx = split(batches, cfg.holdout, cfg.holdout_batches)
    rows = getattr(batches, "rows", None) or [len(next(iter(b.values()))) for b in batches]

    w0 = {n: student.parameter(n).detach().clone() for n in names}
    scale = {n: _scale(w, cfg.param) for n, w in w0.items()}
    partners = targets.bias_partners(proto, names) if cfg.param == "relative" else {}
    # centring: b = b' - mu W for each trained (W, b) pair, mu the mean input of the projection, so
    # a change of W moves only the varying part of its output (the constant part is b's)
    mu = _input_means(student, batches, train_idx, {w: (tr, x) for b, (w, tr, x) in partners.items() if w in w0})
    for b, (w, tr, _) in partners.items():
        scale[b] = _bias_scale(w0[b], w0[w] if w in w0 else student.parameter(w).detach(), tr)
    centred = {b: (w, tr) for b, (w, tr, _) in partners.items() if w in mu and mu[w].shape[-1] == (
        w0[w].shape[1] if tr else w0[w].shape[0]) and (w0[w].shape[0] if tr else w0[w].shape[1]) == w0[b].shape[-1]}

    def offset(b: str, w: torch.Tensor) -> torch.Tensor:
        return mu[centred[b][0]] @ (w.T if centred[b][1] else w)

    init = {n: w0[n] + offset(n, w0[centred[n][0]]) if n in centred else w0[n] for n in names}
    u = {n: torch.nn.Parameter(init[n] / scale[n]) for n in names}

    def values(uu=None):
        uu = u if uu is None else uu
        v = {n: scale[n] * uu[n] for n in names}
        for b in centred:
            v[b] = v[b] - offset(b, v[centred[b][0]])
        return v

    def evaluate(uu=None) -> np.ndarray:
        """Per-sample held-out fidelity (the held-out set is fixed: checks are paired sample by sample)."""
        fids = []
        with torch.inference_mode():
            vals = values(uu)
            for k in held_idx:
                out = student(batches[k], outputs[:1], vals)[outputs[0]].cpu().numpy()
                fids.append(fidelity(teacher(k, batches[k])[outputs[0]], out, batches[k], rows[k], outputs[0]))
        return np.concatenate(fids)

    writers = refit.writers(proto, names, streams) if cfg.refit != "none" else []
    # the weights a held-out check sees (and that are kept as the best): the live ones, or with cfg.ema their
    # exponential moving average over the steps (Polyak averaging: the steps' noise averages out)
    ema = {n: p.detach().clone() for n, p in u.items()} if cfg.ema else None

    def watched() -> dict:
        return ema if ema is not None else u

    def snapshot() -> dict:
        return {n: p.detach().clone() for n, p in watched().items()}

    def restore(saved: dict) -> None:
        _restore(u, saved)
        if ema is not None:
            _restore(ema, saved)

    def refitted() -> dict:
        """The checked weights with every writer refitted in sequence on the student's own stream (as u)."""
        with torch.no_grad():
            # within the budget: a refit still running when only one held-out check's time is left stops
            # after its current projection (the later ones keep their trained values)
            vals = refit.refit(student, writers, {n: v.detach() for n, v in values(watched()).items()}, batches,
                               train_idx, lambda k: teacher(k, batches[k]), _mask_rows, cfg.refit_rows,
                               deadline=end - t_check)
            for b in centred:
                vals[b] = vals[b] + offset(b, vals[centred[b][0]])
            return {n: (vals[n] / scale[n]).clone() for n in names}

    t_check = time.perf_counter()
    best_vec = evaluate()
    t_check = time.perf_counter() - t_check  # the time of one held-out check
    start = float(best_vec.mean())
    best, best_u, lowest = start, {n: p.detach().clone() for n, p in u.items()}, start
    curve = [[0, round(time.perf_counter() - t0, 2), round(start, 6)]]
    rng = np.random.default_rng(cfg.seed)
    order: list[int] = []
    step, stopped, run_loss = 0, "budget", []
    # phases: block-local reconstruction (each block from the teacher's input, to the teacher's
    # output), then global distillation (the whole student, streams + output) for the drift
    local = targets.local_targets(proto, streams, outputs, names) if cfg.local > 0 and streams else []
    # int8:static: the last cfg.ranges of the budget trains the activation ranges, the weights frozen (heal.ranges)
    static = cfg.ranges if getattr(fq, "tensors", None) else 0.0
    share = cfg.local * (1 - static) if local else 0.0  # of the whole budget
    end = t0 + cfg.minutes * 60 * (1 - static)
    # sequential: one sub-phase per block, in graph order, each an equal part of the local share
    blocks = [b for b in targets.local_blocks(proto, streams, outputs, names) if b[2]] \
        if share > 0 and cfg.local_mode == "sequential" else [None]
    phases = [("local", t0 + share * cfg.minutes * 60 * (j + 1) / len(blocks),
               None if cfg.steps is None else round(share * cfg.steps * (j + 1) / len(blocks)),
               cfg.local_lr or cfg.lr, b) for j, b in enumerate(blocks)] if share > 0 and blocks else []
    phases.append(("global", end, None if cfg.steps is None else round(cfg.steps * (1 - static)), cfg.lr, None))
    bar = _Bar(progress, cfg.minutes * 60, cfg.steps, start)
    try:
        with bar:
            for phase, deadline, last, lr0, block in phases:
                lr, first = lr0, step
                if step:  # a new phase starts from the best weights so far, with a fresh optimizer
                    restore(best_u)  # (a block whose training no check kept is left as it was)
                trained = u if block is None else {n: u[n] for n in block[2]}
                opt = _adam(trained, lr)
                refits = phase == "local" and cfg.refit == "eval" and writers and block is None
                every = cfg.local_eval_every if refits else cfg.eval_every
                # the warm-up is shared out among the blocks as the budget is
                warmup = cfg.warmup if block is None else max(1, cfg.warmup // len(blocks))
                # adaptive step (parallel block-local phase): from local_lr_start up to the phase's step
                adaptive = phase == "local" and block is None and cfg.local_lr_start is not None and \
                    cfg.local_lr_start < lr0
                top, floor_lr, streak, floor_hits = lr0, lr0 / 64, 0, 0
                if adaptive:  # the small first step is the warm-up
                    lr, warmup, floor_lr = cfg.local_lr_start, 1, cfg.local_lr_start / 64

                def interval() -> int:
                    """Steps to the next check: ``every``, or with the adaptive step about every * lr / top
                    (at least every / 8): each check interval moves the weights about equally far."""
                    return max(1, every // 8, min(every, round(every * lr / lr0))) if adaptive else every

                next_check = step + interval()
                while True:
                    if last is not None and step >= last:
                        stopped = "steps"
                        break
                    if time.perf_counter() >= deadline:
                        stopped = "budget"
                        break
                    if not order:
                        order = list(rng.permutation(train_idx))
                    k = int(order.pop())
                    tgt = prepared(k)
                    if block is not None:  # this block alone, on the student's own (committed) stream
                        with torch.no_grad():
                            inject = student(batches[k], block[1], values()) if block[1] else None
                        out = student(batches[k], [block[0]] + (outputs if cfg.local_output else []), values(), inject)
                        loss = losses.total(out, tgt, [block[0]], outputs, cfg.loss) if cfg.local_output else \
                            losses.rel_err(out[block[0]], tgt[block[0]])
                    elif phase == "local" and cfg.local_input == "teacher":
                        inject = {n: tgt[n][0].reshape(tgt[n][2]) for n in streams}
                        out = student(batches[k], local, values(), inject)
                        loss = torch.stack([losses.rel_err(out[n], tgt[n]) for n in local]).mean()
                    elif phase == "local":
                        out = student(batches[k], local, values(), cut=streams)
                        loss = torch.stack([losses.rel_err(out[n], tgt[n]) for n in local]).mean()
                    else:
                        out = student(batches[k], streams + outputs, values())
                        loss = losses.total(out, tgt, streams, outputs, cfg.loss)
                    for g in opt.param_groups:
                        g["lr"] = lr * _ramp(step - first, cfg.prime, warmup)
                    opt.zero_grad(set_to_none=True)
                    run_loss.append(float(loss.detach()))
                    loss.backward()
                    opt.step()
                    if ema is not None:
                        with torch.no_grad():
                            for n, p in trained.items():  # (the others equal their average: restore syncs)
                                ema[n].lerp_(p, 1.0 - cfg.ema)
                    step += 1
                    if step >= next_check:
                        # the model checked (and kept if best): the watched weights (live, or with cfg.ema their
                        # average), or in the block-local phase with refit "eval", those with the sequential refit
                        cand = refitted() if refits else None
                        vec = evaluate(cand or watched())
                        fid, margin = float(vec.mean()), backtrack_margin(cfg, vec, best_vec)
                        lowest = min(lowest, fid)
                        curve.append([step, round(time.perf_counter() - t0, 2), round(fid, 6),
                                      float(np.mean(run_loss)), phase, round(margin, 6), lr])
                        run_loss = []
                        fell = fid < best - margin
                        if fid > best:
                            best, best_vec, best_u = fid, vec, cand or snapshot()
                        if adaptive and not fell:  # bold driver: a check that does not fall doubles the step
                            streak += 1
                            if lr >= top and streak >= 4:  # the ceiling a fall set rises after 4 safe checks
                                top, streak = min(2 * top, lr0), 0
                            lr = min(2 * lr, top)
                        if fell:
                            restore(best_u)
                            if not adaptive:  # (adaptive: Adam's moments are kept: a fresh Adam's first
                                opt = _adam(trained, lr)  # step moves every entry by the full step)
                            lr *= 0.5
                            if lr < floor_lr:
                                lr, floor_hits = floor_lr, floor_hits + 1
                                if floor_hits >= cfg.floor_falls:
                                    stopped = "converged"
                                    break
                            top, streak = lr, 0  # the step that fell is not taken again until 4 safe checks
                        bar.update(time.perf_counter() - t0, step, fid, best)
                        next_check = step + interval()
                if block is not None and curve[-1][0] != step:  # the block's closing check: kept if best
                    vec = evaluate(watched())
                    fid = float(vec.mean())
                    lowest = min(lowest, fid)
                    curve.append([step, round(time.perf_counter() - t0, 2), round(fid, 6),
                                  float(np.mean(run_loss)) if run_loss else None, phase, None, lr])
                    run_loss = []
                    if fid > best:
                        best, best_vec, best_u = fid, vec, snapshot()
                checked = refits and curve[-1][0] == step  # the last check was of this refitted candidate
                last_local = phase == "local" and (block is None or block is blocks[-1])
                if last_local and writers and not checked:  # restore the upstream compensation (heal.refit)
                    cand = refitted()
                    vec = evaluate(cand)
                    fid = float(vec.mean())
                    lowest = min(lowest, fid)
                    curve.append([step, round(time.perf_counter() - t0, 2), round(fid, 6), None, "refit", None, None])
                    if fid > best:
                        best, best_vec, best_u = fid, vec, cand
                    bar.update(time.perf_counter() - t0, step, fid, best)
            if static:  # the ranges train last, on the best weights (frozen)
                restore(best_u)
                frozen = {n: v.detach() for n, v in values(best_u).items()}

                def range_loss() -> torch.Tensor:
                    nonlocal order
                    if not order:
                        order = list(rng.permutation(train_idx))
                    k = int(order.pop())
                    return losses.total(student(batches[k], streams + outputs, frozen), prepared(k), streams, outputs,
                                        cfg.loss)

                s0 = step
                _, best_vec, taken, rows_r = ranges.train(
                    fq, range_loss, lambda: evaluate(best_u), best_vec, t0 + cfg.minutes * 60, lr=cfg.ranges_lr,
                    every=cfg.eval_every, margin=lambda v, b: backtrack_margin(cfg, v, b), warmup=cfg.warmup, device=device,
                    steps=None if cfg.steps is None else cfg.steps - step,
                    on_check=lambda st, f, b: bar.update(time.perf_counter() - t0, s0 + st, f, max(b, best)))
                step += taken
                curve += [[s0 + r[0], round(r[1] - t0, 2), r[2], r[3], "ranges", r[4], r[5]] for r in rows_r]
                lowest = min([lowest] + [r[2] for r in rows_r])
                best = max(best, float(best_vec.mean()))
    except KeyboardInterrupt:
        stopped = "interrupted"
    with torch.no_grad():
        for n, p in u.items():
            p.copy_(best_u[n])
        final = {n: v.cpu().numpy() for n, v in values().items()}  # the graph's own values (centring undone)
        if best <= start:  # nothing beat the start: write it back bit for bit (the reparametrisation's round
            final = {n: w0[n].cpu().numpy() for n in names}  # trip moves values by float rounding, and int8 re-rounds them)
    write_back(model, final)
    # the ranges the student ended with (the plan holds the best ones, also after an interrupt)
    static_ranges = dict(fq.tensors) if cfg.ranges and getattr(fq, "tensors", None) else None
    n_values = int(sum(v.size for v in final.values()))
    return HealReport(int(sum(rows[k] for k in train_idx)), int(sum(rows[k] for k in held_idx)),
                      len(names), n_values, step, time.perf_counter() - t0, start, best, lowest, stopped,
                      dataclasses.asdict(cfg), curve, len(fq),
                      None if static_ranges is None else {n: (float(sc), int(z)) for n, (sc, z) in static_ranges.items()},
                      fakequant.products(fq))


def check_device(name: str) -> torch.device:
    """``HealConfig.device`` as a torch device, refused clearly when this torch cannot use it."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise BadArgumentError(f"heal: device must be cpu or a CUDA device such as cuda or cuda:1, not {name!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise BadArgumentError(f"heal: device must be cpu or a CUDA device such as cuda or cuda:1, not {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadArgumentError(f"heal: device {name!r} asked for, but this torch ({torch.__version__}) sees no CUDA "
                               "device; heal on cpu, or install a CUDA build of torch")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise BadArgumentError(f"heal: device {name!r} asked for, but torch sees {torch.cuda.device_count()} CUDA "
                               "device(s)")
    return dev


def backtrack_margin(cfg: HealConfig, vec: np.ndarray, best: np.ndarray) -> float:
    """How far a held-out check (per-sample fidelities ``vec``) may lie below the best check (``best``, the
    same samples) before it counts as a fall: ``cfg.backtrack``, or with "auto" the check's own noise,
    max(floor, z * sd(d) / sqrt(n)) over the paired differences d = vec - best: a check is a fall only when
    its mean is below the best by more than z standard errors of that paired difference."""
    if cfg.backtrack != "auto":
        return float(cfg.backtrack)
    d = vec.astype(np.float64) - best.astype(np.float64)
    se = float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else 0.0
    return float(max(cfg.backtrack_floor, cfg.backtrack_z * se))


def _ramp(s: int, prime: int, warmup: int) -> float:
    """The learning-rate factor at step ``s`` of a phase: 0 for ``prime`` steps (Adam gathers its
    moments: a first step then moves each entry by its mean gradient over its noise, not by a full
    ``lr`` whatever the noise), then a linear warm-up over ``warmup`` steps."""
    return 0.0 if s < prime else min(1.0, (s - prime + 1) / max(warmup, 1))


def _restore(u: dict, saved: dict) -> None:
    with torch.no_grad():
        for n, p in u.items():
            p.copy_(saved[n])


def write_back(model: ir.Model, values: dict[str, np.ndarray]) -> None:
    """Store trained values in the initializers of the same names (dtype kept)."""
    inits = model.graph.initializers
    for name, arr in values.items():
        v = inits[name]
        dtype = v.const_value.numpy().dtype
        v.const_value = ir.tensor(np.ascontiguousarray(arr).astype(dtype), name=name)


class _Bar:
    """A rich progress bar over the time budget (or the step count) with the held-out fidelity."""

    def __init__(self, enabled: bool, seconds: float, steps: int | None, start: float):
        self.enabled, self.seconds, self.steps, self.start = enabled, seconds, steps, start
        self.p = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("healing"), BarColumn(), TimeElapsedColumn(), TextColumn("ETA"),
                              TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True),
                              transient=False)
            self.p.__enter__()
            total = self.steps if self.steps is not None else self.seconds
            self.task = self.p.add_task("heal", total=total, info=f"held-out fidelity {self.start:.5f} (start)")
        return self

    def update(self, elapsed: float, step: int, fid: float, best: float) -> None:
        if self.p is not None:
            done = step if self.steps is not None else min(elapsed, self.seconds)
            self.p.update(self.task, completed=done,
                          info=f"step {step}: held-out fidelity {fid:.5f} (start {self.start:.5f}, best {best:.5f})")

    def __exit__(self, *exc):
        if self.p is not None:
            self.p.__exit__(*exc)
        return False
