"""The CUDA kernel cases marked `sanitize` (every kernel instantiation and edge case of the
activations, FFTMix, EgyptianAttention and MoE, float16 tensor-core paths included) re-run under
`compute-sanitizer --tool memcheck`, the CUDA kernel path only (N6ONNX_CUDA_KERNEL_ONLY=1): 0
errors and every output still within tolerance. Opt-in, slow: `pytest -m memcheck`."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.memcheck

MODULES = ("test_activations.py", "test_attention.py", "test_moe.py")


@pytest.mark.parametrize("module", MODULES)
def test_memcheck(module, memcheck):
    env = dict(os.environ, N6ONNX_CUDA_KERNEL_ONLY="1")
    out = memcheck([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda and sanitize",
                    str(REPO / "tests" / "cuda" / module)], env)
    assert " passed" in out, out[-3000:]  # exit status 0 (checked by memcheck): none failed
