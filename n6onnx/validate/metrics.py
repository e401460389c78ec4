"""Pure numpy metrics for comparing a candidate model's outputs with the original's.

Conventions: ``orig`` / ``cand`` are arrays of the same shape whose axis 0 is the sample axis.
Everything is computed in float64. NaN in either array propagates into the metric (a gate on a
NaN metric fails).

Definitions
-----------
- ``max_abs_err``: ``max |c - o|`` over all elements.
- ``max_rel_err``: ``max |c - o| / max(|o|, REL_FLOOR)`` over all elements (elementwise; large where
  the original is near zero and the candidate is not). ``rel_l2_err``: ``||c - o||_2 / ||o||_2``
  over the whole output (robust to near-zero elements).
- Per-sample cosine: the cosine of the flattened per-sample tensors (``[N, ...] -> [N, D]``). Two
  all-zero vectors have cosine 1; one all-zero vector against a non-zero one has cosine 0.
- Mean pooling: ``sum_l h[n, l] * mask[n, l] / max(sum_l mask[n, l], 1)`` (sentence-transformers).
- Nearest-neighbour agreement: for each sample ``i`` (of ``N >= 2``), its nearest neighbour by
  cosine similarity among the other samples is computed from the original's embeddings and from
  the candidate's; they agree when they are the same sample, or when the candidate's choice is as
  near to ``i`` by the *original's* embeddings as the original's choice (within ``NN_TIE`` cosine;
  exact duplicates make ties). The result is the fraction of samples that agree.
- Logits: see :func:`looks_like_logits`. Top-1 agreement: the fraction of rows (samples, or
  sample positions for ``[B, L, C]``) whose argmax over the last axis is the same.
  KL divergence: ``KL(softmax(o) || softmax(c))`` in nats, per row, averaged over rows.
  Rows can be weighted by a 0/1 mask (padding positions excluded).
- Accuracy: the fraction of samples whose argmax over ``[N, C]`` logits equals the integer label.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

REL_FLOOR = 1e-6
NN_TIE = 1e-6
_EMBED_NAME = re.compile(r"embed|pool|sentence|feature|hidden", re.IGNORECASE)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _check_same_shape(orig: np.ndarray, cand: np.ndarray) -> None:
    if np.shape(orig) != np.shape(cand):
        raise ValueError(f"shape mismatch: original {np.shape(orig)} vs candidate {np.shape(cand)}")


def _nanmax(x: np.ndarray) -> float:
    if x.size == 0:
        return 0.0
    return float(np.nan if np.isnan(x).any() else x.max())


def max_abs_err(orig, cand) -> float:
    """``max |c - o|`` (0 for empty arrays; NaN if any element is NaN)."""
    _check_same_shape(orig, cand)
    return _nanmax(np.abs(_f64(cand) - _f64(orig)))


def max_rel_err(orig, cand, floor: float = REL_FLOOR) -> float:
    """``max |c - o| / max(|o|, floor)`` elementwise."""
    _check_same_shape(orig, cand)
    o = _f64(orig)
    return _nanmax(np.abs(_f64(cand) - o) / np.maximum(np.abs(o), floor))


def rel_l2_err(orig, cand) -> float:
    """``||c - o||_2 / ||o||_2`` (0 when both are zero, inf when only the original is)."""
    _check_same_shape(orig, cand)
    o = _f64(orig)
    num = float(np.sqrt(np.sum((_f64(cand) - o) ** 2)))
    den = float(np.sqrt(np.sum(o ** 2)))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def cosine_rows(a, b) -> np.ndarray:
    """Row-wise cosine of two ``[N, D]`` arrays (zero-vector rules in the module docstring)."""
    a, b = _f64(a), _f64(b)
    _check_same_shape(a, b)
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    dot = np.sum(a * b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    za, zb = na == 0, nb == 0
    cos = np.where(za & zb, 1.0, np.where(za | zb, 0.0, cos))
    return np.clip(cos, -1.0, 1.0)  # NaN stays NaN


def per_sample_cosine(orig, cand) -> np.ndarray:
    """Cosine of each sample's flattened tensor: ``[N, ...] -> [N]``.

    Rank 0 and rank 1 arrays are one vector (a cosine between scalars would only be a sign)."""
    o, c = _f64(orig), _f64(cand)
    _check_same_shape(o, c)
    if o.ndim == 0:
        o, c = o.reshape(1, 1), c.reshape(1, 1)
    elif o.ndim == 1:
        o, c = o.reshape(1, -1), c.reshape(1, -1)
    return cosine_rows(o.reshape(o.shape[0], -1), c.reshape(c.shape[0], -1))


def mean_pool(hidden, mask) -> np.ndarray:
    """Masked mean over axis 1: ``[N, L, H]`` with ``[N, L]`` -> ``[N, H]``."""
    h = _f64(hidden)
    m = _f64(mask)
    if h.ndim != 3 or m.shape != h.shape[:2]:
        raise ValueError(f"mean_pool needs hidden [N, L, H] and mask [N, L]; got {h.shape} and {m.shape}")
    m = m[..., None]
    return (h * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)


def nearest_neighbours(emb, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(nn, unit)``: the index of each row's nearest other row by cosine similarity, and the rows
    scaled to unit norm. Needs ``N >= 2``; works in chunks so no ``[N, N]`` matrix is held."""
    e = _f64(emb)
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"nearest neighbours need [N, D] with N >= 2; got {e.shape}")
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    u = e / np.where(norms == 0, 1.0, norms)
    nn = np.empty(e.shape[0], dtype=np.int64)
    for s in range(0, e.shape[0], chunk):
        sim = u[s : s + chunk] @ u.T
        idx = np.arange(s, min(s + chunk, e.shape[0]))
        sim[idx - s, idx] = -np.inf
        sim = np.where(np.isnan(sim), -np.inf, sim)
        nn[s : s + chunk] = np.argmax(sim, axis=1)
    return nn, u


def nn_agreement_per_sample(orig_emb, cand_emb, tie: float = NN_TIE) -> np.ndarray:
    """Bool per sample: does the candidate pick the same nearest neighbour (ties by the original allowed)?"""
    _check_same_shape(orig_emb, cand_emb)
    nn_o, u_o = nearest_neighbours(orig_emb)
    nn_c, _ = nearest_neighbours(cand_emb)
    rows = np.arange(len(nn_o))
    s_best = np.sum(u_o[rows] * u_o[nn_o], axis=1)
    s_cand = np.sum(u_o[rows] * u_o[nn_c], axis=1)
    return (nn_o == nn_c) | (s_cand >= s_best - tie)


def nn_agreement(orig_emb, cand_emb) -> float | None:
    """Fraction of samples whose nearest neighbour agrees (None when there are fewer than 2)."""
    if np.shape(orig_emb)[0] < 2:
        return None
    return float(np.mean(nn_agreement_per_sample(orig_emb, cand_emb)))


def looks_like_logits(name: str, shape: Sequence, dtype) -> bool:
    """The rule for "looks like logits".

    A floating-point output whose last dimension is at least 2 and that is either
    - rank 2 (``[B, C]``), unless its name says it is an embedding (contains ``embed``, ``pool``,
      ``sentence``, ``feature`` or ``hidden``, case-insensitive), or
    - rank 3 (``[B, L, C]``) with ``logit`` in its name (case-insensitive).
    """
    if not np.issubdtype(np.dtype(dtype), np.floating) or len(shape) not in (2, 3):
        return False
    last = shape[-1]
    if not isinstance(last, (int, np.integer)) or last < 2:
        return False
    if len(shape) == 3:
        return "logit" in name.lower()
    return "logit" in name.lower() or not _EMBED_NAME.search(name)


def looks_like_pooled_embedding(name: str, shape: Sequence, dtype) -> bool:
    """A floating-point ``[B, H]`` output named like an embedding (see :func:`looks_like_logits`)."""
    return (np.issubdtype(np.dtype(dtype), np.floating) and len(shape) == 2
            and "logit" not in name.lower() and bool(_EMBED_NAME.search(name)))


def log_softmax(x, axis: int = -1) -> np.ndarray:
    x = _f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def softmax(x, axis: int = -1) -> np.ndarray:
    return np.exp(log_softmax(x, axis))


def kl_rows(orig_logits, cand_logits) -> np.ndarray:
    """``KL(softmax(o) || softmax(c))`` per row (over the last axis), in nats; shape ``logits.shape[:-1]``."""
    _check_same_shape(orig_logits, cand_logits)
    lp = log_softmax(orig_logits)
    lq = log_softmax(cand_logits)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.maximum(terms.sum(axis=-1), 0.0)


def top1_rows(orig_logits, cand_logits) -> np.ndarray:
    """Bool per row: same argmax over the last axis."""
    _check_same_shape(orig_logits, cand_logits)
    return np.argmax(_f64(orig_logits), axis=-1) == np.argmax(_f64(cand_logits), axis=-1)


def _masked_mean(values: np.ndarray, mask) -> float:
    v = _f64(values)
    if mask is None:
        return float(v.mean()) if v.size else float("nan")
    w = _f64(mask)
    if w.shape != v.shape:
        raise ValueError(f"mask shape {w.shape} does not match rows {v.shape}")
    total = w.sum()
    return float((v * w).sum() / total) if total else float("nan")


def kl_divergence(orig_logits, cand_logits, mask=None) -> float:
    """Mean ``KL(softmax(o) || softmax(c))`` over rows (weighted by ``mask`` when given)."""
    return _masked_mean(kl_rows(orig_logits, cand_logits), mask)


def top1_agreement(orig_logits, cand_logits, mask=None) -> float:
    """Fraction of rows with the same argmax (weighted by ``mask`` when given)."""
    return _masked_mean(top1_rows(orig_logits, cand_logits), mask)


def accuracy(logits, labels) -> float:
    """Fraction of samples whose argmax over ``[N, C]`` logits equals the label."""
    lg = _f64(logits)
    lb = np.asarray(labels)
    if lg.ndim != 2 or lb.shape != (lg.shape[0],):
        raise ValueError(f"accuracy needs logits [N, C] and labels [N]; got {lg.shape} and {lb.shape}")
    return float(np.mean(np.argmax(lg, axis=-1) == lb)) if lb.size else float("nan")
