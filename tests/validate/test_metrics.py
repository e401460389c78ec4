"""n6onnx.validate.metrics on hand-made arrays whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from n6onnx.validate import metrics as M


def test_errors_known_values():
    o = np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)
    c = np.array([[1.0, 2.5], [3.0, -5.0]], np.float32)
    assert M.max_abs_err(o, c) == 1.0
    assert M.max_rel_err(o, c) == 0.25  # 0.5 / 2 and 1 / 4
    assert M.rel_l2_err(o, c) == pytest.approx(math.sqrt(1.25) / math.sqrt(30.0))
    assert M.max_abs_err(o, o) == 0.0 and M.max_rel_err(o, o) == 0.0 and M.rel_l2_err(o, o) == 0.0


def test_rel_err_floor_and_nan():
    o = np.array([0.0, 1.0])
    c = np.array([1e-7, 1.0])
    assert M.max_rel_err(o, c) == pytest.approx(0.1)  # 1e-7 / max(0, 1e-6)
    assert math.isnan(M.max_abs_err(o, np.array([np.nan, 1.0])))
    assert M.rel_l2_err(np.zeros(3), np.ones(3)) == math.inf
    with pytest.raises(ValueError, match="shape mismatch"):
        M.max_abs_err(np.zeros(3), np.zeros(4))


def test_cosine_rows_known_values():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, -2.0], [0.0, 0.0], [1.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(M.cosine_rows(a, b), [0.0, 1.0, -1.0, 1.0, 0.0, 24 / 25], atol=1e-15)


def test_per_sample_cosine_flattens_each_sample():
    o = np.array([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])  # [2, 2, 2]
    c = np.array([[[1.0, 0.0], [0.0, -1.0]], [[2.0, 2.0], [2.0, 2.0]]])
    # sample 0: (1,0,0,1).(1,0,0,-1) = 0 -> 0; sample 1: parallel -> 1
    np.testing.assert_allclose(M.per_sample_cosine(o, c), [0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(M.per_sample_cosine(np.array([3.0, 4.0]), np.array([4.0, 3.0])), [0.96])


def test_mean_pool_ignores_masked_positions():
    h = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    m = np.array([[1, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(M.mean_pool(h, m), [[2.0, 3.0], [7.0, 8.0]])
    np.testing.assert_allclose(M.mean_pool(h, np.zeros((2, 3))), np.zeros((2, 2)))  # all masked: 0, no NaN


def test_nearest_neighbour_agreement_half():
    orig = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])  # NN: 0<->1, 2<->3
    cand = orig.copy()
    cand[1] = [-1.0, 0.05]  # now 0 -> 3 and 1 -> 2; 2 -> 3 and 3 -> 2 unchanged
    nn_o, _ = M.nearest_neighbours(orig)
    nn_c, _ = M.nearest_neighbours(cand)
    assert nn_o.tolist() == [1, 0, 3, 2] and nn_c.tolist() == [3, 2, 3, 2]
    assert M.nn_agreement_per_sample(orig, cand).tolist() == [False, False, True, True]
    assert M.nn_agreement(orig, cand) == 0.5
    assert M.nn_agreement(orig, orig) == 1.0
    assert M.nn_agreement(orig[:1], cand[:1]) is None


def test_nearest_neighbour_ties_count_as_agreement():
    orig = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 2 is equally far from the duplicates 0 and 1
    cand = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])  # the candidate picks 1 for sample 2
    assert M.nearest_neighbours(orig)[0][2] == 0 and M.nearest_neighbours(cand)[0][2] == 1
    assert M.nn_agreement(orig, cand) == 1.0


def test_nearest_neighbours_chunked_equals_unchunked():
    e = np.random.default_rng(0).standard_normal((50, 8))
    assert (M.nearest_neighbours(e, chunk=7)[0] == M.nearest_neighbours(e)[0]).all()


def test_kl_known_value():
    o = np.array([[0.0, 0.0]])
    c = np.array([[0.0, math.log(3.0)]])  # p = (1/2, 1/2), q = (1/4, 3/4)
    assert M.kl_divergence(o, c) == pytest.approx(0.5 * math.log(4.0 / 3.0), rel=1e-12)
    assert M.kl_divergence(o, o) == 0.0
    big = np.array([[1000.0, 0.0, -1000.0]])  # stable for large logits
    assert M.kl_divergence(big, big) == 0.0 and np.isfinite(M.kl_divergence(big, big[:, ::-1]))


def test_top1_and_kl_masked_rows():
    o = np.array([[[2.0, 1.0], [0.0, 5.0], [9.0, 0.0]]])  # [1, 3, 2]
    c = np.array([[[1.0, 2.0], [0.0, 4.0], [0.0, 9.0]]])
    assert M.top1_agreement(o, c) == pytest.approx(1 / 3)
    mask = np.array([[1, 1, 0]])  # the last position is padding
    assert M.top1_agreement(o, c, mask) == 0.5
    p = np.exp(o[0, :2]) / np.exp(o[0, :2]).sum(-1, keepdims=True)
    q = np.exp(c[0, :2]) / np.exp(c[0, :2]).sum(-1, keepdims=True)
    assert M.kl_divergence(o, c, mask) == pytest.approx(np.mean((p * np.log(p / q)).sum(-1)), rel=1e-12)


def test_accuracy_known_value():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 2.0, 1.0]])  # argmax 0, 2, 1
    assert M.accuracy(logits, np.array([0, 2, 2])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        M.accuracy(logits, np.array([0, 1]))


@pytest.mark.parametrize("name,shape,dtype,expected", [
    ("logits", [4, 10], np.float32, True),
    ("y", [4, 10], np.float32, True),  # rank 2, C >= 2, not named like an embedding
    ("scores", [4, 1], np.float32, False),  # C < 2
    ("sentence_embedding", [4, 384], np.float32, False),
    ("pooler_output", [4, 384], np.float32, False),
    ("last_hidden_state", [4, 16, 384], np.float32, False),
    ("logits", [4, 16, 1000], np.float16, True),  # rank 3 needs "logit" in the name
    ("start_logits", [4, 16], np.float32, True),
    ("logits", [4, 10], np.int64, False),
    ("logits", [4, 2, 3, 5], np.float32, False),
])
def test_looks_like_logits_rule(name, shape, dtype, expected):
    assert M.looks_like_logits(name, shape, dtype) is expected
