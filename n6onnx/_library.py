"""Locating and registering the n6 custom-op library."""

from __future__ import annotations

import os
import pathlib

_LIB_NAMES = {"cpu": "libn6ops.so", "cuda": "libn6ops_cuda.so"}


def library_status(kind: str = "cpu") -> tuple[pathlib.Path | None, str]:
    """The built custom-op library's path and where it came from, or None and why there is none.

    ``N6ONNX_LIBRARY`` (or ``N6ONNX_CUDA_LIBRARY`` for kind="cuda") overrides the installed copy.
    """
    var = "N6ONNX_CUDA_LIBRARY" if kind == "cuda" else "N6ONNX_LIBRARY"
    env = os.environ.get(var)
    if env:
        p = pathlib.Path(env)
        if p.is_file():
            return p, f"{var}={env}"
        return None, f"{var}={env} names no file"
    p = pathlib.Path(__file__).resolve().parent / "lib" / _LIB_NAMES[kind]
    if p.is_file():
        return p, "installed with the package"
    where = ("n6onnx is imported from a source tree, where the library is not built (install the package with "
             f"pip, or set {var} to a built {_LIB_NAMES[kind]})" if (p.parent.parent.parent / "pyproject.toml").is_file()
             else f"the package was installed without {_LIB_NAMES[kind]} (a build without "
             f"{'CUDA' if kind == 'cuda' else 'the C++ kernels'}; set {var} to a built one)")
    return None, f"no {p}: {where}; n6 ops run as their ONNX function fallbacks"


def library_path(kind: str = "cpu") -> pathlib.Path | None:
    """Path of the built custom-op library, or None when it was not built (``library_status``
    says why). ``N6ONNX_LIBRARY`` (or ``N6ONNX_CUDA_LIBRARY`` for kind="cuda") overrides the
    installed copy."""
    return library_status(kind)[0]
