"""Shared helpers of the hostile-input suite: run the CLI as a user would, and check that a failure
is one clear line with a non-zero exit (never a traceback), and that inputs are left untouched."""

from __future__ import annotations

import hashlib
import os
import pathlib

import pytest
from click.testing import CliRunner

from n6onnx.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[2]
CACHE = pathlib.Path(os.environ.get("N6ONNX_TEST_CACHE", ROOT / "build" / "test-models"))


def cli(*args: str):
    """Invoke the CLI in-process; returns the click Result (exceptions are caught, not raised)."""
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


def assert_clean_failure(r, *needles: str, code: int = 2) -> str:
    """A bad input: exit ``code``, no traceback, one ``error:`` line naming the problem."""
    text = r.output
    assert r.exception is None or isinstance(r.exception, SystemExit), f"traceback: {r.exception!r}\n{text}"
    assert "Traceback" not in text, text
    assert r.exit_code == code, (r.exit_code, text)
    for n in needles:
        assert n.lower() in text.lower(), (n, text)
    return text


def fingerprint(*paths: str | os.PathLike) -> dict:
    """Bytes (sha256), inode and mode of each existing file: equal before and after a command."""
    out = {}
    for p in paths:
        p = pathlib.Path(p)
        if p.exists():
            st = p.stat()
            out[str(p)] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_ino, st.st_mode, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def dyn_minilm():
    """The pretrained all-MiniLM-L6-v2 as the usual dynamic-axes export (symbolic batch and seq)."""
    from n6onnx.testing import zoo

    CACHE.mkdir(parents=True, exist_ok=True)
    return zoo.export("minilm", "dynamo20", CACHE, dynamic=True)


@pytest.fixture(scope="session")
def hx():
    """The helpers above, as a fixture (tests cannot import conftest under --import-mode=importlib)."""
    import types

    return types.SimpleNamespace(cli=cli, clean=assert_clean_failure, fingerprint=fingerprint, cache=CACHE)
