"""Closed-form fitting used by calibration (numpy only).

- ``fit_affine_activation``: per channel j, the (a, c, alpha, beta) that make
  alpha * act(a * z + c) + beta closest (least squares) to a target g(z) on calibration data.
  (alpha, beta) are closed form for each (a, c); (a, c) come from a coarse grid in standardised
  units, then two rounds of local refinement, all vectorised over channels.
- ``ridge_refit``: the projection W, b minimising ||Y W + b - T||^2 + lam ||W - W0||^2, i.e. ridge
  regression shrunk towards the prior weights W0, with lam chosen on a held-out split. Because the
  prior is feasible, the refit never has a larger calibration error than the prior.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

Act = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass
class AffineFit:
    a: np.ndarray
    c: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    r2: np.ndarray  # per-channel fraction of the target's variance explained

    def apply(self, act: Act, z: np.ndarray) -> np.ndarray:
        return self.alpha * act(self.a * z + self.c) + self.beta


def _score(act: Act, t: np.ndarray, gc: np.ndarray, vg: np.ndarray, s, o, w: np.ndarray):
    """For u = s*t + o (per-channel s, o): closed-form alpha and the R^2 of the weighted least
    squares fit alpha * act(u) + beta ~ g. gc: g centred by its weighted mean; vg: its weighted
    variance; w: [N] row weights summing to 1. Returns (r2, alpha, mean of act(u)).

    act(u) is shifted by act(o) before the moments are taken (float32 sums of a near-constant
    feature would cancel badly), and the moments are weighted sums done as BLAS products."""
    o = np.broadcast_to(np.asarray(o, np.float32), (t.shape[1],))
    p = act((t * s + o).astype(np.float32, copy=False))
    shift = act(o)
    p -= shift
    pm = w @ p
    cov = w @ (p * gc)
    p *= p
    vp = np.maximum(w @ p - pm * pm, 0.0)
    alpha = np.where(vp > 1e-12, cov / np.maximum(vp, 1e-12), 0.0)
    r2 = np.where((vp > 1e-12) & (vg > 1e-12), cov * cov / np.maximum(vp * vg, 1e-24), 0.0)
    return r2, alpha, pm + shift


def _refine(act: Act, t, gc, vg, bs, bo, w, rounds: int = 5, step_s: float = 0.2, step_o: float = 0.2):
    """Local pattern search around per-channel (scale, offset), halving the steps each round."""
    best = _score(act, t, gc, vg, bs, bo, w)[0]
    for _ in range(rounds):
        cs, co = bs.copy(), bo.copy()
        for ds in (-1, 0, 1):
            for do in (-1, 0, 1):
                if ds == do == 0:
                    continue
                s = cs * (1 + ds * step_s)
                o = co + do * step_o
                r2 = _score(act, t, gc, vg, s, o, w)[0]
                better = r2 > best
                best = np.where(better, r2, best)
                bs = np.where(better, s, bs).astype(np.float32)
                bo = np.where(better, o, bo).astype(np.float32)
        step_s, step_o = step_s / 2, step_o / 2
    return best, bs, bo


def fit_affine_activation(z: np.ndarray, g: np.ndarray, act: Act, *, weights: np.ndarray | None = None,
                          max_rows: int = 2048, seed: int = 0) -> AffineFit:
    """z: [N, H]; g: [N, H] or a function of z (then evaluated on the sampled rows only);
    weights: optional [N] row weights (weighted least squares; R^2 is then weighted too).
    Returns per-channel (a, c, alpha, beta) for alpha*act(a*z+c)+beta ~ g."""
    z = np.asarray(z, np.float32)
    rng = np.random.default_rng(seed)
    if z.shape[0] > max_rows:
        idx = np.sort(rng.choice(z.shape[0], max_rows, replace=False))
        z = z[idx]
        g = g if callable(g) else np.asarray(g)[idx]
        weights = None if weights is None else np.asarray(weights)[idx]
    g = np.asarray(g(z) if callable(g) else g, np.float32)
    n = len(z)
    w = np.full(n, 1.0 / n) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    w = w.astype(np.float32)
    mu = z.mean(0)
    sd = z.std(0) + 1e-6
    t = (z - mu) / sd
    gm = w @ g
    gc = g - gm
    vg = w @ (gc * gc)
    def subset(m):  # every k-th row: spread over the whole sample (rows come sequence by sequence)
        rows = slice(None, None, max(1, n // m))
        ws = w[rows] / w[rows].sum()
        gs = g[rows] - ws @ g[rows]
        return (t[rows], gs, ws @ (gs * gs)), ws

    sub, wsub = subset(256)
    H = z.shape[1]
    grid = [(s, o) for s in (-2.0, -1.4, -1.0, -0.7, -0.5, -0.3, 0.3, 0.5, 0.7, 1.0, 1.4, 2.0)
            for o in np.linspace(-2.0, 2.5, 13)]
    # small scales with a clamp point (u = -2 or u = 2) at standardised position t0: near a clamp
    # the activation is a hinge (flat on one side, almost linear on the other), a ReLU-like unit
    # that the grid above cannot reach (for z ~ N(0, 1), GELU is fitted best there)
    grid += [(s, u0 - s * t0) for s in (-0.2, -0.1, -0.05, 0.05, 0.1, 0.2) for u0 in (-2.0, 2.0)
             for t0 in np.linspace(-2.5, 2.5, 11)]
    coarse = np.stack([_score(act, *sub, np.float32(s), np.float32(o), wsub)[0] for s, o in grid])  # [G, H]
    best = np.full(H, -1.0)
    bs = np.ones(H, np.float32)
    bo = np.zeros(H, np.float32)
    # refine the three best coarse points of each channel (one start can sit in a local optimum):
    # four rounds of pattern search on a subsample, then the best start on all rows
    mid, wmid = subset(1024)
    for rank in range(3):
        pick = np.argsort(-coarse, axis=0, kind="stable")[rank]
        cs = np.array([grid[i][0] for i in pick], np.float32)
        co = np.array([grid[i][1] for i in pick], np.float32)
        r2, cs, co = _refine(act, *mid, cs, co, wmid, rounds=4)
        better = r2 > best
        best = np.where(better, r2, best)
        bs = np.where(better, cs, bs).astype(np.float32)
        bo = np.where(better, co, bo).astype(np.float32)
    _, bs, bo = _refine(act, t, gc, vg, bs, bo, w, rounds=2, step_s=0.0125, step_o=0.0125)
    r2, alpha, pmean = _score(act, t, gc, vg, bs, bo, w)
    beta = gm - alpha * pmean
    a = bs / sd
    c = bo - bs * mu / sd
    return AffineFit(a.astype(np.float32), c.astype(np.float32), alpha.astype(np.float32),
                     beta.astype(np.float32), r2.astype(np.float32))


@dataclasses.dataclass
class RidgeFit:
    W: np.ndarray
    b: np.ndarray
    lam: float
    err_prior: float  # calibration mean squared error of the prior (W0, b0)
    err: float  # calibration mean squared error of the refit
    err_held: float | None = None  # error on the held-out rows at the chosen lam (fit without them)


def ridge_refit(Y: np.ndarray, T: np.ndarray, W0: np.ndarray, b0: np.ndarray, *, weights: np.ndarray | None = None,
                lams=(1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0), holdout: float = 0.2, seed: int = 0,
                standardize: bool = True, held: np.ndarray | None = None, default_lam: float | None = None) -> RidgeFit:
    """Refit W [H, D], b [D] for Y [N, H] -> T [N, D], shrunk towards (W0, b0).

    With ``weights`` [N] the squared errors of the rows are weighted (normalised to mean 1), i.e.
    min sum_t w_t ||y_t W + b - t_t||^2 + lam sum_j s_j^2 ||W_j - W0_j||^2, s_j the spread of feature
    j (``standardize``; 1 otherwise), so the fit does not depend on the scale of a feature. lam is
    relative to the mean eigenvalue of the standardised centred Gram matrix and is chosen on held-out
    runs of rows, or on the rows where ``held`` is True (one eigendecomposition serves every
    candidate); without enough rows for that, lam = ``default_lam`` (default: the largest). The N x H products run in float32 on data centred
    by its (weighted) mean (BLAS sgemm); everything H x H is float64. Errors are weighted means."""
    Y = np.asarray(Y, np.float32)
    T = np.asarray(T, np.float32)
    W0 = np.asarray(W0, np.float64)
    b0 = np.asarray(b0, np.float64)
    n = len(Y)
    w = np.ones(n) if weights is None else np.asarray(weights, np.float64) * (n / np.sum(weights))
    sw = np.sqrt(w).astype(np.float32)[:, None]
    ym = (w @ Y.astype(np.float64)) / n
    tm = (w @ T.astype(np.float64)) / n
    # rows centred by the weighted mean and scaled by sqrt(w): plain least squares from here on
    Yc = (Y - ym.astype(np.float32)) * sw
    # what W0 leaves unexplained, centred: the regression target of the correction W - W0
    R = (T - tm.astype(np.float32)) * sw - Yc @ W0.astype(np.float32)
    H = Y.shape[1]
    # fewer rows than features (LLM widths, short calibration sets): every H x H quantity is X^T X for
    # an [rows, H] X, and the ridge solve runs on the rows' kernel X X^T instead (the same solution:
    # (X^T X + mu I)^-1 X^T E = X^T (X X^T + mu I)^-1 E), O(N^2 H) instead of O(H^3)
    dual = n < H
    if dual:
        S = C = None
        diag = np.einsum("ij,ij->j", Yc, Yc, dtype=np.float64)
    else:
        S = (Yc.T @ Yc).astype(np.float64)
        C = (Yc.T @ R).astype(np.float64)
        diag = np.diag(S)
    # the penalty acts on standardised features (lam * sum_j var_j |W_j - W0_j|^2), so that a
    # feature with a small spread (and a large coefficient) is not frozen at its prior
    sd = np.sqrt(np.maximum(diag / n, 0.0))
    inv = np.ones(H)
    if standardize:  # a constant feature keeps its prior coefficient
        inv = np.where(sd > 1e-12 * max(sd.max(), 1e-30), 1.0 / np.maximum(sd, 1e-300), 0.0)
    best_lam = lams[-1] if default_lam is None else default_lam
    err_held = None
    if held is not None:
        va = np.flatnonzero(held)
        n_val = len(va) if n - len(va) > H // 4 else 0
    else:
        n_val = int(n * holdout) if n >= 50 else 0
        # held out: contiguous runs of rows (rows come sequence by sequence, and the tokens of one
        # sequence are alike: a random split by rows would leak and pick too weak a ridge)
        chunks = np.array_split(np.arange(n), 10)
        pick = np.random.default_rng(seed).choice(10, max(1, round(10 * holdout)), replace=False)
        va = np.sort(np.concatenate([chunks[i] for i in pick]))
    if n_val:
        n_val = len(va)
        Yv, Rv, swv = Yc[va], R[va], sw[va]
        # train split, re-centred on its own weighted mean m + d (rows u = sqrt(w)(y - m)):
        # sum w (y - m - d)(y - m - d)^T = S_tr - W_tr d d^T, d = sum sqrt(w) u / W_tr
        sws = sw[:, 0].astype(np.float64)
        w_tr = float(w.sum() - w[va].sum())
        d = (sws @ Yc - sws[va] @ Yv) / w_tr
        e = (sws @ R - sws[va] @ Rv) / w_tr
        if dual:  # the train rows themselves: G = X^T X, rhs0 = X^T E
            tr = np.setdiff1d(np.arange(n), va)
            X = (Yc[tr] - sws[tr, None] * d) * inv
            E = R[tr] - sws[tr, None] * e
            evals, V = np.linalg.eigh(X @ X.T)
            scale = evals.sum() / H + 1e-12
            VE = V.T @ E
            KV = (((Yv - swv * d) * inv) @ X.T) @ V  # validation rows against the train rows
            solve = lambda lam: KV @ (VE / (evals + lam * scale)[:, None])
        else:
            Sv = (Yv.T @ Yv).astype(np.float64)
            Cv = (Yv.T @ Rv).astype(np.float64)
            G = (S - Sv - w_tr * np.outer(d, d)) * np.outer(inv, inv)
            rhs0 = (C - Cv - w_tr * np.outer(d, e)) * inv[:, None]
            evals, Q = np.linalg.eigh(G)
            rhs = Q.T @ rhs0
            scale = np.trace(G) / len(G) + 1e-12
            Yvd = Yv - swv * d.astype(np.float32)

            def solve(lam):
                dW = inv[:, None] * (Q @ (rhs / (evals + lam * scale)[:, None]))
                return Yvd @ dW.astype(np.float32)
        scores = {}
        for lam in lams:
            pred = solve(lam) + swv * e.astype(np.float32)
            scores[lam] = float(np.mean((pred - Rv) ** 2))
        best_lam = min(scores, key=scores.get)
        err_held = scores[best_lam]
    if dual:
        X = Yc * inv
        K = X @ X.T
        lam = best_lam * (np.trace(K) / H + 1e-12)
        K[np.diag_indices_from(K)] += lam
        W = W0 + inv[:, None] * (X.T @ np.linalg.solve(K, R.astype(np.float64)))
    else:
        Ss = S * np.outer(inv, inv)
        lam = best_lam * (np.trace(Ss) / len(Ss) + 1e-12)
        W = W0 + inv[:, None] * np.linalg.solve(Ss + lam * np.eye(len(Ss)), C * inv[:, None])
    b = tm - ym @ W
    w32 = w.astype(np.float32)[:, None]
    mse = lambda W_, b_: float(np.mean(w32 * (Y @ W_.astype(np.float32) + b_.astype(np.float32) - T) ** 2, dtype=np.float64))
    err_prior = mse(W0, b0)
    err = mse(W, b)
    if err > err_prior:  # cannot happen in exact arithmetic; guard against round-off
        W, b, err = W0, b0, err_prior
    return RidgeFit(W.astype(np.float32), b.astype(np.float32), float(best_lam), err_prior, err, err_held)


def gelu(z: np.ndarray, variant: str = "erf") -> np.ndarray:
    z = np.asarray(z, np.float32)
    if variant == "tanh":
        return 0.5 * z * (1 + np.tanh(np.float32(math.sqrt(2 / math.pi)) * (z + np.float32(0.044715) * z ** 3)))
    if variant == "quick":
        return z / (1 + np.exp(-1.702 * z))
    return (0.5 * z * (1 + erf(z / np.float32(math.sqrt(2))))).astype(np.float32)


def erf(x: np.ndarray) -> np.ndarray:
    """erf to 1.5e-7 absolute (Abramowitz & Stegun 7.1.26); numpy has none."""
    x = np.asarray(x, np.float64)
    s = np.sign(x)
    x = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * x)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * np.exp(-x * x)
    return (s * y).astype(np.float32)



def greedy_units(Hm: np.ndarray, T: np.ndarray, k: int, eps: float = 1e-6, weights: np.ndarray | None = None) -> np.ndarray:
    """Pick k columns of Hm [N, H] that best explain T [N, D] by least squares, greedily.

    Forward selection on the Gram matrix (pivoted Cholesky): each step adds the unit whose
    residual (orthogonal to the units already chosen) explains most of the residual target
    energy. Unlike a per-unit importance score it accounts for redundancy: of two correlated
    units it keeps one, because the refit lets it stand in for both. O(H k (k + r)) after the
    Gram matrix, r = min(N, D): the choices depend on T only through T T^T, so a target wider
    than it has rows is first replaced by an [N, N] factor of T T^T (the R of a QR of T^T).
    ``weights``: row weights, as in ``ridge_refit``.
    """
    w = np.ones(len(Hm)) if weights is None else np.asarray(weights, np.float64) / np.mean(weights)
    sw = np.sqrt(w)[:, None]
    Hc = np.asarray(Hm, np.float64)
    Hc = (Hc - w @ Hc / w.sum()) * sw
    Tc = np.asarray(T, np.float64)
    Tc = (Tc - w @ Tc / w.sum()) * sw
    if Tc.shape[1] > Tc.shape[0]:
        Tc = np.linalg.qr(Tc.T, mode="r").T  # Tc Tc^T unchanged, N columns instead of D
    G = Hc.T @ Hc
    G[np.diag_indices_from(G)] += eps * (np.trace(G) / len(G) + 1e-30)
    Bres = Hc.T @ Tc  # [H, r]: each unit's correlation with the residual target
    del Hc, Tc
    d = np.diag(G).copy()
    energy = np.einsum("ij,ij->i", Bres, Bres)
    L = np.zeros((k, len(G)))
    chosen = np.zeros(len(G), bool)
    order = []
    for i in range(k):
        score = energy / np.maximum(d, 1e-30)
        score[chosen] = -np.inf
        p = int(np.argmax(score))
        col = G[:, p] - L[:i, p] @ L[:i]
        piv = np.sqrt(max(col[p], 1e-30))
        l = col / piv
        L[i] = l
        d -= l * l
        v = Bres[p] / piv
        Bres -= l[:, None] * v[None, :]
        energy = np.einsum("ij,ij->i", Bres, Bres)
        chosen[p] = True
        order.append(p)
    return np.sort(np.array(order))
