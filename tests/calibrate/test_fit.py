"""The closed-form fits, against known answers."""

import numpy as np

from n6onnx.calibrate import fit
from n6onnx.ops import REGISTRY

phi6 = REGISTRY["Phi6"].reference


def test_affine_fit_recovers_a_known_affine_phi6():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 16)).astype(np.float32) * 1.3 - 0.4
    a = rng.uniform(0.4, 1.2, 16).astype(np.float32)
    c = rng.uniform(-0.5, 0.5, 16).astype(np.float32)
    alpha = rng.uniform(0.5, 2, 16).astype(np.float32)
    beta = rng.uniform(-1, 1, 16).astype(np.float32)
    g = alpha * phi6(a * z + c) + beta
    f = fit.fit_affine_activation(z, g, phi6)
    assert f.r2.min() > 0.995
    assert np.abs(f.apply(phi6, z) - g).max() < 0.1 * np.abs(g).max()


def test_affine_fit_of_gelu_is_good_but_not_perfect():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4000, 8)).astype(np.float32)
    f = fit.fit_affine_activation(z, fit.gelu(z), phi6)
    assert 0.9 < f.r2.mean() < 0.999  # Phi6 is a clamped parabola: it cannot be GELU


def test_erf_matches_math_erf():
    import math

    x = np.linspace(-5, 5, 1001)
    np.testing.assert_allclose(fit.erf(x), [math.erf(v) for v in x], atol=2e-7)


def test_ridge_refit_never_increases_the_error_and_recovers_exact_maps():
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((500, 20))
    W = rng.standard_normal((20, 5))
    b = rng.standard_normal(5)
    T = Y @ W + b + 0.01 * rng.standard_normal((500, 5))
    for W0 in (np.zeros((20, 5)), W + rng.standard_normal((20, 5)), W):
        r = fit.ridge_refit(Y, T, W0, np.zeros(5))
        assert r.err <= r.err_prior + 1e-12
    r = fit.ridge_refit(Y, T, np.zeros((20, 5)), np.zeros(5), lams=(1e-6,))
    np.testing.assert_allclose(r.W, W, atol=5e-3)
    np.testing.assert_allclose(r.b, b, atol=5e-3)


def test_greedy_units_skips_redundant_columns():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((1000, 3))
    H = np.concatenate([base, base[:, :1] * 2.0, base[:, :1] + 1e-4 * rng.standard_normal((1000, 1))], 1)  # cols 3,4 ~ col 0
    T = base @ np.array([[1.0], [2.0], [3.0]])
    keep = fit.greedy_units(H, T, 3)
    assert set(keep) >= {1, 2} and len(set(keep) & {0, 3, 4}) == 1


def test_affine_fit_reaches_the_hinge_optimum_for_gaussian_inputs():
    # For z ~ N(0, 1) the best alpha*Phi6(a z + c) + beta sits at a clamp point with a tiny scale
    # (a ReLU-like hinge): a brute-force search over (a, c) finds R^2 = 0.9928 there. The fit must
    # reach it (a grid of ordinary scales alone stops near 0.990).
    z = np.random.default_rng(4).standard_normal((20000, 1)).astype(np.float32)
    f = fit.fit_affine_activation(z, fit.gelu, phi6)
    assert f.r2[0] > 0.992
    r = np.corrcoef(f.apply(phi6, z)[:, 0], fit.gelu(z)[:, 0])[0, 1] ** 2
    assert r > 0.992


def test_weighted_ridge_is_weighted_least_squares():
    rng = np.random.default_rng(5)
    Y = rng.standard_normal((400, 6))
    T = Y @ rng.standard_normal((6, 3)) + 0.5 * rng.standard_normal((400, 3)) + 1.0
    w = rng.uniform(0.1, 5.0, 400)
    r = fit.ridge_refit(Y, T, np.zeros((6, 3)), np.zeros(3), weights=w, lams=(1e-9,))
    # reference: ordinary least squares on rows scaled by sqrt(w), intercept included
    A = np.concatenate([Y, np.ones((400, 1))], 1) * np.sqrt(w)[:, None]
    sol = np.linalg.lstsq(A, T * np.sqrt(w)[:, None], rcond=None)[0]
    np.testing.assert_allclose(r.W, sol[:6], atol=1e-4)
    np.testing.assert_allclose(r.b, sol[6], atol=1e-4)
    # the weights matter: the unweighted solution is a different one
    u = fit.ridge_refit(Y, T, np.zeros((6, 3)), np.zeros(3), lams=(1e-9,))
    assert np.abs(u.W - r.W).max() > 1e-3
    # and the reported error is the weighted one
    pred = Y @ r.W + r.b
    np.testing.assert_allclose(r.err, np.mean(w / w.mean() * ((pred - T) ** 2).mean(1)), rtol=1e-4)


def test_weighted_affine_fit_with_equal_weights_is_the_unweighted_fit():
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((3000, 5)) * 1.5 - 0.5).astype(np.float32)
    a = fit.fit_affine_activation(z, fit.gelu, phi6)
    b = fit.fit_affine_activation(z, fit.gelu, phi6, weights=np.full(3000, 7.0))
    np.testing.assert_allclose(a.r2, b.r2, rtol=1e-5)
    np.testing.assert_allclose(a.a, b.a, rtol=1e-5)


def test_ridge_refit_does_not_depend_on_the_scale_of_a_feature():
    # with standardisation, scaling feature j by k scales its coefficient by 1/k and changes nothing
    # else (without it, the shared penalty would freeze the small-spread features at their prior)
    rng = np.random.default_rng(7)
    Y = rng.standard_normal((600, 8))
    T = Y @ rng.standard_normal((8, 4)) + rng.standard_normal((600, 4))
    W0 = rng.standard_normal((8, 4)) * 0.1
    k = np.array([1, 1e-3, 1, 50, 1, 1, 0.2, 1])
    a = fit.ridge_refit(Y, T, W0, np.zeros(4), lams=(3.0,))
    b = fit.ridge_refit(Y * k, T, W0 / k[:, None], np.zeros(4), lams=(3.0,))
    np.testing.assert_allclose(b.W * k[:, None], a.W, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(b.b, a.b, rtol=2e-3, atol=2e-4)
    c = fit.ridge_refit(Y * k, T, W0 / k[:, None], np.zeros(4), lams=(3.0,), standardize=False)
    assert np.abs(c.W * k[:, None] - a.W).max() > 1e-2


def test_ridge_refit_picks_lam_on_the_held_rows():
    # with a held-out row mask (how FFT-Mix holds out whole sequences), the chosen lam is the one whose
    # fit on the other rows has the smallest weighted error on the held rows, and that error is reported
    rng = np.random.default_rng(8)
    Y = rng.standard_normal((300, 40))
    T = Y[:, :3] @ rng.standard_normal((3, 2)) + 0.8 * rng.standard_normal((300, 2))
    w = rng.uniform(0.5, 2.0, 300)
    held = np.zeros(300, bool)
    held[::4] = True
    lams = (1e-3, 0.1, 1.0, 10.0, 100.0)
    W0 = np.zeros((40, 2))
    r = fit.ridge_refit(Y, T, W0, np.zeros(2), weights=w, held=held, lams=lams, standardize=False)
    scores = {}
    for lam in lams:
        f = fit.ridge_refit(Y[~held], T[~held], W0, np.zeros(2), weights=w[~held], lams=(lam,), holdout=0,
                            standardize=False)
        e = ((Y[held] @ f.W + f.b - T[held]) ** 2).mean(1)
        scores[lam] = float(np.sum(w[held] * e) / np.sum(w) * len(w) / held.sum())
    assert r.lam == min(scores, key=scores.get)
    np.testing.assert_allclose(r.err_held, scores[r.lam], rtol=1e-3)


def test_affine_fit_is_not_misled_by_the_row_order():
    # calibration rows come sequence by sequence, so the first rows need not look like the rest:
    # here the first quarter is a narrow slice of z. The fit must match one on shuffled rows.
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4000, 32)).astype(np.float32)
    z[:1000] = 0.1 * z[:1000] - 1.5
    g = fit.gelu(z)
    ordered = fit.fit_affine_activation(z, g, phi6, max_rows=4000)
    perm = rng.permutation(len(z))
    shuffled = fit.fit_affine_activation(z[perm], g[perm], phi6, max_rows=4000)
    # (a search scoring its coarse grid on the first rows only got R^2 0.845 here instead of 0.9915)
    assert abs(float(ordered.r2.mean()) - float(shuffled.r2.mean())) < 2e-3
    assert np.all(ordered.r2 > shuffled.r2 - 0.02)  # per channel, up to a different local optimum


def _weighted_centred(X, w):
    """Rows centred by their weighted mean and scaled by sqrt(w) (w normalised to mean 1), float64."""
    w = np.asarray(w, np.float64) * (len(w) / np.sum(w))
    X = np.asarray(X, np.float64)
    return (X - w @ X / w.sum()) * np.sqrt(w)[:, None]


def test_greedy_units_equals_forward_selection_by_least_squares_with_a_wide_target():
    # a target wider than it has rows (LLM widths: D > N) takes the reduced path; the choices must be
    # those of plain forward selection: each step adds the unit that most lowers the (eps-ridged)
    # weighted least-squares residual of T on the chosen units
    rng = np.random.default_rng(7)
    N, H, D, k, eps = 40, 30, 90, 8, 1e-6
    Hm = np.maximum(rng.standard_normal((N, 5)) @ rng.standard_normal((5, H)) + 0.5 * rng.standard_normal((N, H)), 0)
    T = Hm @ rng.standard_normal((H, D)) * 0.3 + rng.standard_normal((N, D))
    w = rng.uniform(0.5, 2.0, N)
    Hc, Tc = _weighted_centred(Hm, w), _weighted_centred(T, w)
    ridge = eps * np.trace(Hc.T @ Hc) / H
    chosen = []
    for _ in range(k):
        def residual(j):
            A = Hc[:, chosen + [j]]
            coef = np.linalg.solve(A.T @ A + ridge * np.eye(A.shape[1]), A.T @ Tc)
            return np.sum((Tc - A @ coef) ** 2) + ridge * np.sum(coef ** 2)
        chosen.append(min((j for j in range(H) if j not in chosen), key=residual))
    np.testing.assert_array_equal(fit.greedy_units(Hm, T, k, eps=eps, weights=w), np.sort(chosen))


def test_ridge_refit_with_fewer_rows_than_features_equals_the_primal_solution():
    # n < H takes the kernel (dual) path; reference: the weighted, standardised ridge in primal form,
    # with lam chosen on the held rows by fits on the other rows
    rng = np.random.default_rng(8)
    N, H, D = 60, 80, 7
    Y = np.maximum(rng.standard_normal((N, 6)) @ rng.standard_normal((6, H)) + 0.3 * rng.standard_normal((N, H)), 0)
    Y[:, 5] = 2.0  # a constant feature keeps its prior coefficient
    T = Y @ rng.standard_normal((H, D)) * 0.1 + rng.standard_normal((N, D))
    W0, b0 = 0.05 * rng.standard_normal((H, D)), np.zeros(D)
    w = rng.uniform(0.5, 2.0, N)
    held = np.arange(N) % 4 == 0
    lams = (0.01, 0.1, 1.0, 10.0)
    r = fit.ridge_refit(Y, T, W0, b0, weights=w, held=held, lams=lams)

    def primal(rows, lam_rel):
        Yc, Tc = _weighted_centred(Y[rows], w[rows]), _weighted_centred(T[rows], w[rows])
        ww = w[rows] / w[rows].mean()
        sd = np.sqrt((Yc ** 2).sum(0) / len(Yc))
        inv = np.where(sd > 1e-9, 1 / np.maximum(sd, 1e-300), 0.0)
        X = Yc * inv
        S = X.T @ X
        lam = lam_rel * np.trace(S) / H
        W = W0 + inv[:, None] * np.linalg.solve(S + lam * np.eye(H), X.T @ (Tc - Yc @ W0))
        b = (ww @ T[rows] - ww @ Y[rows] @ W) / ww.sum()
        return W, b

    def held_err(lam_rel):
        W, b = primal(~held, lam_rel)
        e = Y[held] @ W + b - T[held]
        return np.mean(w[held][:, None] * e ** 2)

    best = min(lams, key=held_err)
    assert r.lam == best
    W, b = primal(np.ones(N, bool), best)
    np.testing.assert_allclose(r.W, W, atol=2e-5 * np.abs(W).max())
    np.testing.assert_allclose(r.b, b, atol=2e-5 * np.abs(b).max() + 1e-5)
    np.testing.assert_allclose(r.W[5], W0[5], atol=1e-6)
