"""Shared fixtures: exported test models cached in the build tree (build/test-models)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = pathlib.Path(os.environ.get("N6ONNX_TEST_CACHE", ROOT / "build" / "test-models"))

@pytest.fixture(scope="session")
def zoo_export():
    from n6onnx.testing import zoo

    CACHE.mkdir(parents=True, exist_ok=True)

    def get(model: str, exporter: str) -> pathlib.Path:
        return zoo.export(model, exporter, CACHE)

    return get


@pytest.fixture(scope="session")
def phi6_np():
    """Phi6 in float64 straight from SPEC.md (independent of n6onnx.ops)."""

    def f(x):
        c = np.clip(np.asarray(x, np.float64), -2.0, 2.0)
        return c * c - c + 1.0

    return f
