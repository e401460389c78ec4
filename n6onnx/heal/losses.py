"""The heal's loss terms (``HealConfig.loss``), on the teacher's values as ``Targets`` prepares them: a
target [rows, H], the per-row weights (real rows / (H var), the rows' share of the loss) and its shape."""

from __future__ import annotations

import torch


def rel_err(y: torch.Tensor, target: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean over (real) rows of |y - t|^2 / (H var(t)) along the last axis (a weighted sum: no
    gather of the real rows, whose backward is a slow scatter)."""
    tt, w = target[0], target[1]
    d = y.reshape(tt.shape).float() - tt
    return (d.pow(2).sum(1) * w).sum()


def total(out: dict, tgt: dict, streams, outputs, kind: str) -> torch.Tensor:
    """The loss ``kind`` (``HealConfig.loss``) of one batch: the stream points' term and / or the outputs'."""
    terms = []
    if ("+" in kind or kind == "streams") and streams:
        terms.append(torch.stack([rel_err(out[n], tgt[n]) for n in streams]).mean())
    if kind != "streams" or not streams:
        err = {"kl": kl, "pooled": pooled, "relational": relational}.get(kind.rpartition("+")[2], rel_err)
        terms.append(torch.stack([err(out[n], tgt[n]) for n in outputs if n in tgt]).mean())
    return sum(terms)


def kl(y: torch.Tensor, target: tuple) -> torch.Tensor:
    """Mean over (real) rows of KL(softmax(teacher) || softmax(student)) along the last axis: the
    distillation loss of a language model's logits (``loss`` ``kl`` / ``streams+kl``)."""
    tt, w = target[0], target[1]
    keep = (w > 0).float()
    lq = torch.log_softmax(y.reshape(tt.shape).float(), -1)
    lp = torch.log_softmax(tt, -1)
    return ((lp.exp() * (lp - lq)).sum(1) * keep).sum() / keep.sum().clamp_min(1.0)


def pooled(y: torch.Tensor, target: tuple) -> torch.Tensor:
    """Mean over samples of 1 - cosine(mean-pooled student, mean-pooled teacher): for a [B, L, H] output
    (token embeddings) pooled over its real tokens (the rows of weight > 0), what a sentence-embedding
    user compares (``loss`` ``pooled`` / ``streams+pooled``); another output's samples are flattened."""
    if len(target[2]) != 3:
        return rel_err(y, target)
    return _one_minus_cos(*_pool(y, target))


def relational(y: torch.Tensor, target: tuple) -> torch.Tensor:
    """``pooled`` plus the error of the batch's similarity structure: the squared difference between the
    student's and the teacher's pairwise cosines of the samples' mean-pooled embeddings (the samples of one
    batch, every pair once), over the variance of the teacher's (``loss`` ``relational`` /
    ``streams+relational``). Nearest-neighbour agreement is decided by those cosines, so this term weighs an
    embedding's error by how much it moves the sample against the others, not in every direction alike."""
    if len(target[2]) != 3 or target[2][0] < 3:
        return pooled(y, target)
    ys, ts = _pool(y, target)
    ny, nt = torch.nn.functional.normalize(ys, dim=1), torch.nn.functional.normalize(ts, dim=1)
    i, j = torch.triu_indices(len(ys), len(ys), 1, device=ys.device)
    sy, st = (ny @ ny.T)[i, j], (nt @ nt.T)[i, j]
    return _one_minus_cos(ys, ts) + (sy - st).pow(2).mean() / st.var(correction=0).clamp_min(1e-6)


def _one_minus_cos(ys: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """Mean over samples of 1 - cosine(ys, ts) ([B, H] each): the pooled term."""
    return (1.0 - torch.nn.functional.cosine_similarity(ys, ts, dim=1, eps=1e-12)).mean()


def _pool(y: torch.Tensor, target: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The student's and the teacher's [B, L, H] output summed over each sample's real tokens
    (the rows of weight > 0): [B, H] each, the direction of the mean."""
    tt, w, shape = target
    keep = (w > 0).float().reshape(shape[0], shape[1], 1)
    return (y.reshape(shape).float() * keep).sum(1), (tt.reshape(shape) * keep).sum(1)
