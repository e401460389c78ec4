"""Locating and registering the n6 custom-op library."""

from __future__ import annotations

import os
import pathlib

_LIB_NAMES = {"cpu": "libn6ops.so", "cuda": "libn6ops_cuda.so"}


def library_path(kind: str = "cpu") -> pathlib.Path | None:
    """Path of the built custom-op library, or None when it was not built.

    ``N6ONNX_LIBRARY`` (or ``N6ONNX_CUDA_LIBRARY`` for kind="cuda") overrides the installed copy.
    """
    env = os.environ.get("N6ONNX_CUDA_LIBRARY" if kind == "cuda" else "N6ONNX_LIBRARY")
    if env:
        p = pathlib.Path(env)
        return p if p.is_file() else None
    p = pathlib.Path(__file__).resolve().parent / "lib" / _LIB_NAMES[kind]
    return p if p.is_file() else None
