"""Calibration for the attention passes (numpy + onnxruntime).

Redundancy score of an attention block (``inspect --calibrate``): the mean, over the real (not
padding) tokens of the calibration data, of cos(x_in, x_out), where x_in is the residual stream
entering the block (the block input for post-LN BERT/MiniLM, the stream before the pre-norm for
pre-LN models) and x_out = x_in + the block's output (after the output projection and its bias),
i.e. the stream right after the attention residual add. 1.0: the block barely changes the stream.

FFT-Mix fit (``attention=fftmix``). The replacement computes
    out = FFTMix(h; F6, F12, F24) @ W + b,      W [3D, D], b [D]
where h is the input the Q/K/V projections read. It is linear in W for fixed filters and linear
in the filters for fixed W, so it is fitted by alternating least squares on the calibration
tokens (padding rows excluded from the loss; they still take part in the windows, as they do at
inference):
  1. filters start as window means (F_w[0, :] = 1, other bins 0);
  2. W, b: ridge regression of the target on the FFTMix features (``fit.ridge_refit``), shrunk
     towards the uncalibrated default; the ridge strength is chosen on 20% of the calibration
     *sequences* held out (a split by rows would leak: rows of one sequence share windows);
  3. filters (all 24 x D rfft-domain values at once, W fixed): regularised least squares
     min ||A(F) - R||^2 + mu ||F - F_prev||^2 solved by conjugate gradients on the normal
     equations (CGLS, ``cg_iters`` iterations, matrix-free: A and its adjoint are FFTs over the
     windows and products with W);
  4. W, b refitted by ridge as in 2; steps 3-4 repeat ``rounds`` times; the fit with the lowest
     error on the held-out sequences is kept (on MiniLM the fitted filters barely beat the
     window means there, so the window means often stay: see benchmarks/results/attention_minilm.json).
Causal blocks (decoders) get FFTMix's causal mode, fitted the same way: the filters are then the
one-sided taps [w, D] of each scale (start: every tap 1/w), the features the causal convolution
inside each window (``causal_fftmix``) and its adjoint a correlation with the same shifts.
The target is what the original model adds to the residual stream at that block, given the
already-rewritten prefix: original residual + original block output - current residual (as the
activation calibration does), so upstream errors are compensated rather than compounded. Rows
are weighted by 1 / var of the original residual stream after the block's add, the stream the next
LayerNorm normalises (as in the activation calibration: ``calibrate.stream_weights``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import onnx
from scipy.optimize import linear_sum_assignment

from ..runtime import session_for
from . import collect, fit, weighted_mse, weighted_var

WINDOWS = (6, 12, 24)


# ------------------------------------------------------------------------------------- ORT runs
def run_batches(proto: onnx.ModelProto, names: Sequence[str], batches: Sequence[dict],
                fn: Callable[[dict, dict], None], threads: int | None = None) -> None:
    """Run the model pruned to ``names`` on each batch and call fn(feeds, {name: array})."""
    import onnxruntime as ort

    names = list(dict.fromkeys(names))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = session_for(collect.with_outputs(proto, names), so, threads=threads)
    for feeds in batches:
        fn(feeds, dict(zip(names, sess.run(names, feeds))))


def _real(feeds: dict, shape) -> np.ndarray:
    """[B, L] bool: which token positions are real (attention_mask 1), all True without a mask."""
    m = feeds.get("attention_mask")
    if m is not None and tuple(m.shape) == tuple(shape[:2]):
        return m.astype(bool)
    return np.ones(shape[:2], bool)


def redundancy(proto: onnx.ModelProto, pairs: dict[int, tuple[str, str]], batches, threads=None) -> dict[int, float]:
    """pairs: block index -> (residual stream entering, block output). See the module docstring."""
    sums = {i: [0.0, 0] for i in pairs}

    def fn(feeds, out):
        for i, (xin, y) in pairs.items():
            a, o = out[xin], out[y]
            if a.ndim == 2:
                a = a.reshape(o.shape)
            if o.ndim == 2:
                o = o.reshape(a.shape)
            b = a + o
            real = _real(feeds, a.shape) if a.ndim == 3 else np.ones(a.shape[:-1], bool)
            cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
            sums[i][0] += float(cos[real].sum())
            sums[i][1] += int(real.sum())

    run_batches(proto, [n for p in pairs.values() for n in p], batches, fn, threads)
    return {i: round(s / max(n, 1), 6) for i, (s, n) in sums.items()}


def head_locality(proto: onnx.ModelProto, probs: dict[int, str], batches, window: int,
                  threads=None) -> dict[int, dict[str, list[float]]]:
    """Per block and head: mean attention mass, over real queries, on keys within |i - j| <= window // 2
    ("local") and on keys {0, L-1} ("global")."""
    acc = {i: [None, None, 0] for i in probs}

    def fn(feeds, out):
        for i, name in probs.items():
            p = out[name].astype(np.float64)  # [B, H, L, L]
            B, H, L, _ = p.shape
            real = _real(feeds, (B, L))
            idx = np.arange(L)
            near = np.abs(idx[:, None] - idx[None, :]) <= window // 2
            loc = (p * near).sum(-1)  # [B, H, L]
            glob = p[..., 0] + (p[..., L - 1] if L > 1 else 0)
            w = real[:, None, :]
            a = acc[i]
            a[0] = (0 if a[0] is None else a[0]) + (loc * w).sum((0, 2))
            a[1] = (0 if a[1] is None else a[1]) + (glob * w).sum((0, 2))
            a[2] += int(real.sum())

    run_batches(proto, list(probs.values()), batches, fn, threads)
    return {i: {"local": [round(float(x), 4) for x in a[0] / max(a[2], 1)],
                "global": [round(float(x), 4) for x in a[1] / max(a[2], 1)]} for i, a in acc.items()}


def assign_heads(local: Sequence[float], glob: Sequence[float], counts: tuple[int, int, int]) -> list[int]:
    """Head kinds (0 full, 1 local, 2 global) keeping counts (full, local, global): the heads with
    the most mass on keys {0, L-1} become global, then the most local of the rest become local.
    Ties go to the lower head index."""
    H = len(local)
    kinds = [0] * H
    n_full, n_local, n_global = counts
    order = sorted(range(H), key=lambda h: (-glob[h], h))
    for h in order[:n_global]:
        kinds[h] = 2
    rest = sorted((h for h in range(H) if kinds[h] == 0), key=lambda h: (-local[h], h))
    for h in rest[:n_local]:
        kinds[h] = 1
    return kinds


@dataclasses.dataclass
class CausalProbe:
    """What ``causal_locality`` reads of one causal block: the names of its softmax probabilities
    [B, H, Lq, Lk] and (optional) of the values [B, H or kv_heads, Lk, dh] they weight, the output
    projection's weight [H * dh, D] (optional) and the number of KV groups."""

    probs: str
    kv_heads: int
    values: str | None = None
    w_out: np.ndarray | None = None


def causal_locality(proto: onnx.ModelProto, blocks: dict[int, CausalProbe], batches, window: int, sinks: int,
                    threads=None) -> dict[int, dict]:
    """Causal blocks, per KV group (query head h in group h // (H / kv_heads); the group's heads
    summed or averaged), over the real queries of the calibration data (query i at key position
    Lk - Lq + i; the padding repeats of a last batch, ``batches.rows``, left out):

    - ``local`` / ``global``: the mean mass of the original's causal softmax on the last ``window``
      keys, i - window < j <= i (what a local head sees), and on the first ``sinks`` keys plus the
      query's own key (what a global head sees);
    - with the values and the output projection: ``error_local`` / ``error_global``, the mean squared
      change of the block's attention output (after the output projection, before its bias) if the
      group's heads were local / global (their probabilities restricted to what the kind sees and
      renormalised), relative to the mean squared attention output of the block.

    ``criterion`` says which of the two ``assign_groups`` should use: the output error where it was
    measured, else the lost mass 1 - local / 1 - global."""
    acc: dict = {i: {"n": 0} for i in blocks}
    real_rows = getattr(batches, "rows", None)
    step = [0]

    def add(a: dict, key: str, x: np.ndarray) -> None:
        a[key] = a.get(key, 0.0) + x

    def fn(feeds, out):
        n_real = real_rows[step[0]] if real_rows is not None else None
        step[0] += 1
        for i, probe in blocks.items():
            p = out[probe.probs].astype(np.float64)[:n_real]  # [B, H, Lq, Lk]
            B, H, Lq, Lk = p.shape
            G = probe.kv_heads
            pos, j = np.arange(Lq) + Lk - Lq, np.arange(Lk)
            sees = {"local": (j[None] > pos[:, None] - window) & (j[None] <= pos[:, None]),
                    "global": (j[None] < sinks) | (j[None] == pos[:, None])}
            m = feeds.get("attention_mask")
            real = m[:n_real, Lk - Lq:].astype(bool) if m is not None and m[:n_real].shape == (B, Lk) \
                else np.ones((B, Lq), bool)
            w = real[:, None, :]  # padding queries (their rows may even be NaN) take no part
            a = acc[i]
            a["n"] += int(real.sum())
            for kind, mask in sees.items():
                add(a, kind, np.where(w, (p * mask).sum(-1), 0.0).sum((0, 2)).reshape(G, H // G).mean(1))
            if probe.values is None or probe.w_out is None:
                continue
            v = out[probe.values].astype(np.float64)[:n_real]  # [B, H or G, Lk, dh]
            v = np.repeat(v, H // v.shape[1], axis=1)
            wo = probe.w_out.astype(np.float64).reshape(H, v.shape[-1], -1)  # head h's rows of W_O
            o = p @ v
            add(a, "energy", float((np.einsum("bhld,hde->ble", o, wo) ** 2).sum(-1)[real].sum()))
            for kind, mask in sees.items():
                pk = p * mask
                pk = pk / np.maximum(pk.sum(-1, keepdims=True), 1e-30)
                e = (np.einsum("bhld,hde->bhle", pk @ v - o, wo) ** 2).sum(-1)  # [B, H, Lq]
                add(a, "error_" + kind, np.where(w, e, 0.0).sum((0, 2)).reshape(G, H // G).sum(1))

    run_batches(proto, [n for pr in blocks.values() for n in (pr.probs, pr.values) if n], batches, fn, threads)
    res = {}
    for i, a in acc.items():
        n = max(a["n"], 1)
        r = {k: [round(float(x), 6) for x in np.atleast_1d(a.get(k, np.zeros(blocks[i].kv_heads))) / n]
             for k in ("local", "global")}
        if "energy" in a:
            for k in ("error_local", "error_global"):
                r[k] = [round(float(x), 6) for x in np.atleast_1d(a[k]) / max(a["energy"], 1e-30)]
        res[i] = {**r, "criterion": "output error" if "energy" in a else "lost mass", "queries": a["n"],
                  "window": window, "sinks": sinks, "per": "kv group"}
    return res


def assign_groups(loc: dict, default: Sequence[int]) -> list[int]:
    """Kinds per KV group (0 full, 1 local, 2 global) with the counts of ``default`` (the by-index
    kinds) for a block measured by ``causal_locality``, minimising the summed cost of the kinds: a
    full group costs nothing, a local or global group its ``error_local`` / ``error_global`` (the
    ``output error`` criterion) or the mass it drops, 1 - local / 1 - global (``lost mass``). An
    optimal assignment of groups to the kind slots (scipy's linear_sum_assignment); among equal costs
    the one closest to ``default`` (a 1e-10 penalty per group whose kind differs from it)."""
    G = len(default)
    slots = sorted(default)
    if loc["criterion"] == "output error":
        cost_of = {1: np.asarray(loc["error_local"], np.float64), 2: np.asarray(loc["error_global"], np.float64)}
    else:
        cost_of = {1: 1.0 - np.asarray(loc["local"], np.float64), 2: 1.0 - np.asarray(loc["global"], np.float64)}
    cost_of[0] = np.zeros(G)
    cost = np.stack([cost_of[k] for k in slots], 1)  # [group, slot]
    cost += 1e-10 * (np.asarray(default)[:, None] != np.asarray(slots)[None, :])
    rows, cols = linear_sum_assignment(cost)
    kinds = [0] * G
    for g, s in zip(rows, cols):
        kinds[int(g)] = int(slots[s])
    return kinds


def reference_counts(H: int) -> tuple[int, int, int]:
    """(full, local, global) as the reference: first H/2 full, next H/3 local, the rest global."""
    full, local = H // 2, H // 3
    return full, local, H - full - local


# ------------------------------------------------------------------------------------- FFT-Mix
def _nbins(w: int) -> int:
    return w // 2 + 1


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """[S, L, C] -> [S, nW, w, C], zero-padded at the end."""
    S, L, C = x.shape
    n = -(-L // w)
    if n * w != L:
        x = np.concatenate([x, np.zeros((S, n * w - L, C), x.dtype)], 1)
    return x.reshape(S, n, w, C)


def fftmix(h: np.ndarray, filters: Sequence[np.ndarray]) -> np.ndarray:
    """float32 FFTMix of h [S, L, D] (SPEC.md): [S, L, 3D]; a window longer than L gives zeros."""
    S, L, D = h.shape
    outs = []
    for w, F in zip(WINDOWS, filters):
        if w > L:
            outs.append(np.zeros((S, L, D), np.float32))
            continue
        xf = np.fft.rfft(_windows(h.astype(np.float64), w), axis=2)
        y = np.fft.irfft(xf * F[None, None], n=w, axis=2).reshape(S, -1, D)[:, :L]
        outs.append(y.astype(np.float32))
    return np.concatenate(outs, -1)


def default_filters(D: int) -> list[np.ndarray]:
    """Window means: bin 0 = 1 (irfft of e_0 is the constant 1/w), other bins 0."""
    out = []
    for w in WINDOWS:
        F = np.zeros((_nbins(w), D), np.float32)
        F[0] = 1
        out.append(F)
    return out


def default_taps(D: int) -> list[np.ndarray]:
    """Causal mode (taps [w, D]): every tap 1/w, the window sum so far over w (the causal counterpart
    of the window means)."""
    return [np.full((w, D), 1.0 / w, np.float32) for w in WINDOWS]


def _tap_terms(h: np.ndarray, w: int):
    """(d, h shifted by d, rows allowed) for the causal taps of window w over h [S, L, C] from position
    0: y[t] = sum_d k[d] h[t - d] for d <= t mod w."""
    S, L, C = h.shape
    pos = np.arange(L) % w
    for d in range(min(w, L)):
        shifted = np.concatenate([np.zeros((S, d, C), h.dtype), h[:, :L - d]], 1)
        yield d, shifted, (pos >= d)[None, :, None]


def causal_fftmix(h: np.ndarray, taps: Sequence[np.ndarray]) -> np.ndarray:
    """float32 causal FFTMix of h [S, L, D] starting at position 0 (SPEC.md, causal mode): [S, L, 3D]."""
    outs = []
    for w, k in zip(WINDOWS, taps):
        y = np.zeros(h.shape, np.float64)
        for d, x, ok in _tap_terms(h.astype(np.float64), w):
            y += np.where(ok, x * k[d][None, None], 0.0)
        outs.append(y.astype(np.float32))
    return np.concatenate(outs, -1)


@dataclasses.dataclass
class FFTMixFit:
    filters: list[np.ndarray]
    W: np.ndarray
    b: np.ndarray
    rel_err_default: float  # relative calibration error (MSE / target variance) of the uncalibrated default
    rel_err: float
    ridge: float | None
    rows: int

    def to_json(self) -> dict:
        return {"rows": self.rows, "rel_err_default": round(self.rel_err_default, 6), "rel_err": round(self.rel_err, 6),
                "ridge": self.ridge}


class _Data:
    """Calibration sequences of one block: h [S, L, D] per batch, real-token masks, targets [N, Dout]."""

    def __init__(self, hs: list[np.ndarray], reals: list[np.ndarray], targets: list[np.ndarray]):
        self.hs, self.reals = hs, reals
        self.T = np.concatenate([t[r] for t, r in zip(targets, reals)], 0).astype(np.float32)
        seq = [np.broadcast_to(np.arange(k, k + r.shape[0])[:, None], r.shape)[r]
               for k, r in zip(np.cumsum([0] + [r.shape[0] for r in reals[:-1]]), reals)]
        self.seq = np.concatenate(seq)  # sequence id of each row
        self.spectra = [[np.fft.rfft(_windows(h.astype(np.float32), w), axis=2) if w <= h.shape[1] else None
                         for w in WINDOWS] for h in hs]

    def features(self, filters) -> np.ndarray:
        rows = []
        for h, r, sp in zip(self.hs, self.reals, self.spectra):
            S, L, D = h.shape
            parts = []
            for w, F, xf in zip(WINDOWS, filters, sp):
                if xf is None:
                    parts.append(np.zeros((S, L, D), np.float32))
                else:
                    parts.append(np.fft.irfft(xf * F[None, None], n=w, axis=2).reshape(S, -1, D)[:, :L].astype(np.float32))
            rows.append(np.concatenate(parts, -1)[r])
        return np.concatenate(rows, 0)

    def adjoint(self, G: np.ndarray) -> list[np.ndarray]:
        """Gradient of <features(F), G> with respect to each filter (G [N, 3D] on the real rows)."""
        D = self.hs[0].shape[2]
        grads = [np.zeros((_nbins(w), D), np.float64) for w in WINDOWS]
        k = 0
        for h, r, sp in zip(self.hs, self.reals, self.spectra):
            S, L, _ = h.shape
            n = int(r.sum())
            full = np.zeros((S, L, 3 * D), np.float32)
            full[r] = G[k:k + n]
            k += n
            for j, (w, xf) in enumerate(zip(WINDOWS, sp)):
                if xf is None:
                    continue
                gf = np.fft.rfft(_windows(full[..., j * D:(j + 1) * D], w), axis=2)
                c = np.full(_nbins(w), 2.0)
                c[0] = 1
                if w % 2 == 0:
                    c[-1] = 1
                grads[j] += (c[:, None] / w) * np.real(xf * np.conj(gf)).sum((0, 1))
        return grads


class _CausalData(_Data):
    """As ``_Data`` for the causal mode: the filters are the one-sided taps [w, D] of each scale."""

    def __init__(self, hs: list[np.ndarray], reals: list[np.ndarray], targets: list[np.ndarray]):
        self.hs, self.reals = [h.astype(np.float32) for h in hs], reals
        self.T = np.concatenate([t[r] for t, r in zip(targets, reals)], 0).astype(np.float32)
        seq = [np.broadcast_to(np.arange(k, k + r.shape[0])[:, None], r.shape)[r]
               for k, r in zip(np.cumsum([0] + [r.shape[0] for r in reals[:-1]]), reals)]
        self.seq = np.concatenate(seq)

    def features(self, filters) -> np.ndarray:
        return np.concatenate([causal_fftmix(h, filters)[r] for h, r in zip(self.hs, self.reals)], 0)

    def adjoint(self, G: np.ndarray) -> list[np.ndarray]:
        D = self.hs[0].shape[2]
        grads = [np.zeros((w, D), np.float64) for w in WINDOWS]
        k = 0
        for h, r in zip(self.hs, self.reals):
            n = int(r.sum())
            full = np.zeros((*h.shape[:2], 3 * D), np.float32)
            full[r] = G[k:k + n]
            k += n
            for j, w in enumerate(WINDOWS):
                g = full[..., j * D:(j + 1) * D]
                for d, x, ok in _tap_terms(h, w):
                    grads[j][d] += np.where(ok, x * g, 0.0).sum((0, 1))
        return grads


def fit_fftmix(hs: list[np.ndarray], reals: list[np.ndarray], targets: list[np.ndarray], W0: np.ndarray,
               b0: np.ndarray, *, weights: np.ndarray | None = None, rounds: int = 1, cg_iters: int = 8,
               causal: bool = False) -> FFTMixFit:
    """Alternating least squares for FFTMix + Linear(3D -> D); see the module docstring. ``weights``:
    one per real row (as ``calibrate.stream_weights``), normalised to mean 1. ``causal``: fit the
    one-sided taps of the causal mode (start: ``default_taps``) instead of the rfft-domain filters."""
    data = (_CausalData if causal else _Data)(hs, reals, targets)
    T = data.T
    w = None if weights is None else np.asarray(weights, np.float64) / np.mean(weights)
    var = weighted_var(T, w)
    F = (default_taps if causal else default_filters)(hs[0].shape[2])
    X = data.features(F)
    err_default = weighted_mse(X @ W0 + b0 - T, w) / var
    held = (data.seq * 7919) % 5 == 0  # 20% of the sequences, deterministic
    W, b, lam, err, herr = ridge(X, T, W0, b0, held, w)
    best = (err / var, [f.copy() for f in F], W, b, lam, herr)
    for _ in range(rounds):
        F = _cgls_filters(data, F, W, b, T, cg_iters, w)
        X = data.features(F)
        W, b, lam, err, herr = ridge(X, T, W, b, held, w)
        if herr < best[5]:  # kept only if the held-out sequences agree
            best = (err / var, [f.copy() for f in F], W, b, lam, herr)
    err, F, W, b, lam, _ = best
    return FFTMixFit([f.astype(np.float32) for f in F], W.astype(np.float32), b.astype(np.float32), err_default,
                     err, float(lam), int(len(T)))


def ridge(X: np.ndarray, T: np.ndarray, W0: np.ndarray, b0: np.ndarray, held: np.ndarray,
          weights: np.ndarray | None = None, lams=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)):
    """``fit.ridge_refit`` with lam chosen on the ``held`` rows (held-out sequences) and the middle
    lam when there are too few rows for that. Not standardised: the FFTMix features share one scale,
    and on MiniLM the standardised penalty fitted six blocks worse (cos 0.740 against 0.753).
    Returns W, b, lam, calibration MSE, held-out MSE."""
    rf = fit.ridge_refit(X, T, W0, b0, weights=weights, lams=lams, held=held, default_lam=lams[len(lams) // 2],
                         standardize=False)
    return rf.W, rf.b, rf.lam, rf.err, rf.err if rf.err_held is None else rf.err_held


def _cgls_filters(data: _Data, F, W, b, T, iters: int, w: np.ndarray | None = None, mu_rel: float = 1e-3):
    """min ||A(dF) - R||^2 + mu ||dF||^2, A(dF) = features(dF) @ W (linear in the filters), rows
    scaled by sqrt(w)."""
    sw = np.ones((len(T), 1), np.float32) if w is None else np.sqrt(w).astype(np.float32)[:, None]
    shapes = [f.shape for f in F]
    sizes = [int(np.prod(s)) for s in shapes]

    def unflat(v):
        out, k = [], 0
        for s, n in zip(shapes, sizes):
            out.append(v[k:k + n].reshape(s))
            k += n
        return out

    def A(v):
        return sw * (data.features(unflat(v)) @ W)

    def At(E):
        return np.concatenate([g.ravel() for g in data.adjoint((sw * E) @ W.T)])

    R = (sw * (T - (data.features(F) @ W + b))).astype(np.float32)
    g0 = At(R)
    # mu relative to the mean diagonal of A^T A, estimated from one random probe
    probe = np.random.default_rng(0).standard_normal(sum(sizes))
    mu = mu_rel * float(np.sum(A(probe) ** 2)) / len(probe)
    x = np.zeros(sum(sizes))
    r = R.astype(np.float64)
    s = g0 - mu * x
    p = s.copy()
    gamma = float(s @ s)
    for _ in range(iters):
        q = A(p)
        denom = float(np.sum(q.astype(np.float64) ** 2)) + mu * float(p @ p)
        if denom <= 0 or gamma <= 1e-30:
            break
        alpha = gamma / denom
        x += alpha * p
        r -= alpha * q
        s = At(r.astype(np.float32)) - mu * x
        gnew = float(s @ s)
        p = s + (gnew / gamma) * p
        gamma = gnew
    return [f + d for f, d in zip(F, unflat(x))]
