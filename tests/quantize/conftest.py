"""Shared fixtures of the quantization tests."""

from __future__ import annotations

import numpy as np
import pytest

from n6onnx.quantize import kernel
from n6onnx.testing import zoo

# A bar set for exact int8 products. On an x86 CPU without VNNI onnxruntime's u8s8 kernel clips each pair of
# neighbouring products to int16 (n6onnx.quantize.kernel), an input-dependent error that a mean correction or
# a weight fit cannot model: measured on an AVX2 VM, these bars fail there and hold on AVX-512 VNNI VMs.
exact_int8 = pytest.mark.skipif(kernel.pairs_saturate(), reason="this CPU's u8s8 int8 kernel clips pair sums to "
                                "int16 (x86 without VNNI); the bar assumes exact int8 products")


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
