"""Shared fixtures of the quantization tests."""

from __future__ import annotations

import numpy as np
import pytest

from n6onnx.testing import zoo


@pytest.fixture(scope="session")
def bert_npz():
    """``make(path, n, seed)``: n feed batches of the zoo bert's example shape with random token ids, as
    a ``--calibrate``/``validate`` .npz; returns the path."""
    def make(path, n, seed):
        base = zoo.example_inputs("bert")
        rng = np.random.default_rng(seed)
        np.savez(path, **{f"{k}/{i}": (rng.integers(1, 1000, a.shape).astype(a.dtype) if k == "input_ids" else a)
                          for i in range(n) for k, a in base.items()})
        return path
    return make
