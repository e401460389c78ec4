"""The heal's loss terms (n6onnx.heal.losses) against independent references: validate's metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from n6onnx.heal import losses
from n6onnx.heal.train import _prepare
from n6onnx.validate import metrics


def test_pooled_loss_is_one_minus_validates_pooled_cosine():
    """``loss="streams+pooled"``: the output term is 1 - cosine of each sample's mean over its real tokens,
    averaged over samples: 1 - validate's mean-pooled embedding cosine (metrics.mean_pool, cosine_rows)."""
    rng = np.random.default_rng(2)
    t = rng.standard_normal((3, 5, 8)).astype(np.float32)
    s = (t + 0.7 * rng.standard_normal(t.shape)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    s[1, 2:] = 100.0  # padding the loss must ignore
    want = 1.0 - metrics.cosine_rows(metrics.mean_pool(t, mask), metrics.mean_pool(s, mask)).mean()
    got = float(losses.pooled(torch.from_numpy(s), _prepare(t, mask.reshape(-1).astype(bool))))
    assert got == pytest.approx(want, rel=1e-5) and got > 0.01
    assert float(losses.pooled(torch.from_numpy(t), _prepare(t, None))) == pytest.approx(0.0, abs=1e-6)


def test_total_adds_the_stream_term_and_the_output_term():
    """``streams+pooled``: the mean of the stream points' relative errors plus the outputs' pooled term;
    ``pooled`` alone: the outputs' only. The relative error is |y - t|^2 / (H var(t)) per real row, averaged."""
    rng = np.random.default_rng(3)
    t = {n: rng.standard_normal((2, 4, 6)).astype(np.float32) for n in ("a", "b", "out")}
    y = {n: torch.from_numpy((v + 0.3 * rng.standard_normal(v.shape)).astype(np.float32)) for n, v in t.items()}
    tgt = {n: _prepare(v, None) for n, v in t.items()}
    rel = [float(np.mean(((y[n].numpy() - t[n]) ** 2).sum(-1) / (6 * t[n].var(-1)))) for n in ("a", "b")]
    pooled = float(losses.pooled(y["out"], tgt["out"]))
    got = float(losses.total(y, tgt, ["a", "b"], ["out"], "streams+pooled"))
    assert got == pytest.approx(np.mean(rel) + pooled, rel=1e-5)
    assert float(losses.total(y, tgt, ["a", "b"], ["out"], "pooled")) == pytest.approx(pooled, rel=1e-6)


def test_relational_loss_adds_the_error_of_the_pairwise_cosines():
    """``loss="streams+relational"``: the pooled term plus sum over sample pairs i < j of (cos(s_i, s_j) -
    cos(t_i, t_j))^2 / pairs, over the variance of the teacher's pairwise cosines, with s, t the samples'
    mean-pooled embeddings (validate's mean_pool, numpy). A student whose embeddings all turn by one rotation
    keeps every pairwise cosine: only its pooled term is left."""
    rng = np.random.default_rng(4)
    t = rng.standard_normal((6, 5, 8)).astype(np.float32)
    s = (t + 0.5 * rng.standard_normal(t.shape)).astype(np.float32)
    mask = np.ones((6, 5), np.int64)
    mask[2, 3:] = 0
    s[2, 3:] = 50.0  # padding the loss must ignore
    ps, pt = metrics.mean_pool(s, mask), metrics.mean_pool(t, mask)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    cs, ct = unit(ps) @ unit(ps).T, unit(pt) @ unit(pt).T
    i, j = np.triu_indices(6, 1)
    want = (1.0 - metrics.cosine_rows(pt, ps).mean()) + np.mean((cs[i, j] - ct[i, j]) ** 2) / np.var(ct[i, j])
    got = float(losses.relational(torch.from_numpy(s), _prepare(t, mask.reshape(-1).astype(bool))))
    assert got == pytest.approx(want, rel=1e-4) and got > float(losses.pooled(torch.from_numpy(s), _prepare(
        t, mask.reshape(-1).astype(bool)))) + 0.01
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    turned = (t @ q.astype(np.float32)).astype(np.float32)  # every pairwise cosine kept, every sample moved
    tgt = _prepare(t, None)
    assert float(losses.relational(torch.from_numpy(turned), tgt)) == pytest.approx(
        float(losses.pooled(torch.from_numpy(turned), tgt)), abs=1e-5)
    total = float(losses.total({"o": torch.from_numpy(s)}, {"o": _prepare(t, mask.reshape(-1).astype(bool))}, [],
                               ["o"], "streams+relational"))
    assert total == pytest.approx(got, rel=1e-6)
