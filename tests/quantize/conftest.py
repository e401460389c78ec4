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


@pytest.fixture(scope="session")
def held_err():
    """``held_err(src, cand, held)``: the mean squared error of ``cand``'s first output against ORT running ``src`` over the feed batches of the
    .npz ``held`` (the independent reference of the fit tests)."""
    import onnxruntime as ort

    def err(src, cand, held) -> float:
        s, r = ort.InferenceSession(str(cand)), ort.InferenceSession(str(src))
        d = np.load(held)
        n = len({k.split("/")[1] for k in d.files})
        errs = []
        for i in range(n):
            feeds = {k.split("/")[0]: d[k] for k in d.files if k.endswith(f"/{i}")}
            errs.append(np.mean((s.run(None, feeds)[0] - r.run(None, feeds)[0]).astype(np.float64) ** 2))
        return float(np.mean(errs))
    return err
