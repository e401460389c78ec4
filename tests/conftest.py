"""Shared fixtures: exported test models cached in the build tree (build/test-models), and the
policy for tests whose requirement may be absent (``missing``).

Skips: a test that needs something the build may lack (the custom-op library, its CUDA build, the
MoE kernel) calls ``missing(...)``: a skip on a developer machine, a failure in CI (``CI`` set, as
``.ci/run`` does), where ``make test`` builds all of it, so a skip there would hide a broken build.
The NVML test needs a GPU: it skips (listed with its reason in pytest's ``-ra`` summary) unless
``N6ONNX_EXPECT_GPU`` is set, as on the GPU machine, where a missing NVML fails it."""

from __future__ import annotations

import importlib
import os
import pathlib
from typing import NoReturn

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
EXPECT_GPU = bool(os.environ.get("N6ONNX_EXPECT_GPU"))


def missing(what: str, *, expected: bool = IN_CI) -> NoReturn:
    """``what`` a test needs is absent: fail where it is ``expected`` (default: in CI), else skip."""
    if expected:
        pytest.fail(f"{what} (expected here: CI={os.environ.get('CI')!r}, "
                    f"N6ONNX_EXPECT_GPU={os.environ.get('N6ONNX_EXPECT_GPU')!r})")
    pytest.skip(what)


def require(module: str):
    """Import ``module`` (an optional extra a test needs): absent, the test module is skipped on a
    developer machine and fails in CI, where ``.[dev]`` installs every extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        if IN_CI:
            pytest.fail(f"{module} is not installed (CI installs .[dev], which includes it)", pytrace=False)
        pytest.skip(f"{module} is not installed", allow_module_level=True)


CACHE = pathlib.Path(os.environ.get("N6ONNX_TEST_CACHE", ROOT / "build" / "test-models"))

@pytest.fixture(scope="session")
def zoo_export():
    from n6onnx.testing import zoo

    CACHE.mkdir(parents=True, exist_ok=True)

    def get(model: str, exporter: str) -> pathlib.Path:
        return zoo.export(model, exporter, CACHE)

    return get


@pytest.fixture(scope="session")
def decoder_export():
    """A cached decoder-zoo export: ``decoder_export(model, form="kv", exporter="dynamo20")``."""
    from n6onnx.testing import zoo_decoder

    CACHE.mkdir(parents=True, exist_ok=True)

    def get(model: str, form: str = "kv", exporter: str = "dynamo20") -> pathlib.Path:
        return zoo_decoder.export(model, CACHE, form=form, exporter=exporter)

    return get


@pytest.fixture(scope="session")
def phi6_np():
    """Phi6 in float64 straight from SPEC.md (independent of n6onnx.ops)."""

    def f(x):
        c = np.clip(np.asarray(x, np.float64), -2.0, 2.0)
        return c * c - c + 1.0

    return f


# calibration data for the data-driven passes (tests/calibrate, tests/passes)
@pytest.fixture(scope="session")
def calib_text(tmp_path_factory):
    from n6onnx.testing import corpus

    s = corpus.sentences()
    d = tmp_path_factory.mktemp("calib")
    (d / "calib.txt").write_text("\n".join(s[:64]))
    (d / "heldout.txt").write_text("\n".join(s[1000:1032]))
    return d / "calib.txt", s[1000:1032]


@pytest.fixture(scope="session")
def token_npz(tmp_path_factory):
    """Random token feeds for the tiny zoo text models (batch 2 x 16), 24 batches."""

    def make(model: str, batches: int = 24):
        from n6onnx.testing import zoo

        base = zoo.example_inputs(model)
        rng = np.random.default_rng(1)
        arrays = {}
        for k in range(batches):
            for name, a in base.items():
                arrays[f"{name}/{k}"] = rng.integers(1, 1000, a.shape).astype(a.dtype) if name == "input_ids" else a
        p = tmp_path_factory.mktemp("npz") / f"{model}.npz"
        np.savez(p, **arrays)
        return p

    return make
