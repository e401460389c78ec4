"""Fixtures for the bench tests: a shared fusion cache, tiny models, a phi6 candidate, fake meters."""

from __future__ import annotations

import pathlib

import pytest


@pytest.fixture(scope="session")
def fusion_cache(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("fusion-cache")


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch, fusion_cache):
    monkeypatch.setenv("N6ONNX_CACHE", str(fusion_cache))


@pytest.fixture(scope="session")
def bert(zoo_export) -> pathlib.Path:
    return zoo_export("bert", "dynamo18")


@pytest.fixture(scope="session")
def bert_phi6(bert, tmp_path_factory) -> pathlib.Path:
    import n6onnx

    out = tmp_path_factory.mktemp("cand") / "bert-phi6.onnx"
    n6onnx.rewrite(bert, out, ["gelu=phi6"])
    return out


class FakeCounter:
    """A raw counter that advances by ``steps`` and wraps at ``modulus``."""

    def __init__(self, start: int, steps, modulus: int | None = None):
        self.value, self.steps, self.modulus = start, list(steps), modulus

    def __call__(self) -> int:
        v = self.value
        if self.steps:
            self.value += self.steps.pop(0)
            if self.modulus:
                self.value %= self.modulus
        return v


@pytest.fixture
def fake_counter():
    return FakeCounter
