"""Loading a benchmark script as a module, the way it runs: with benchmarks/ on sys.path for its own imports
(``_common``, ``_sidebyside``, ...), which is taken off again afterwards."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="session")
def load_script():
    """The loader below, for the module fixtures of the tests here."""
    return _load


def _load(filename: str):
    """benchmarks/``filename`` as a fresh module (named after the file, prefixed so it never shadows the script)."""
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("n6_bench_" + filename.removesuffix(".py").lstrip("_"),
                                                      BENCH / filename)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))
