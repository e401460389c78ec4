"""Rewrite passes (one file each) and the ``--pass KIND=OPTION`` parser."""

from __future__ import annotations

import dataclasses
from typing import Callable

import onnx_ir as ir

from ..errors import BadArgumentError
from . import gelu
from ._common import KindReport


@dataclasses.dataclass(frozen=True)
class PassSpec:
    kind: str
    option: str

    def __str__(self) -> str:
        return f"{self.kind}={self.option}"


# kind -> (allowed options, runner(model, option) -> KindReport)
PASSES: dict[str, tuple[tuple[str, ...], Callable[[ir.Model, str], KindReport]]] = {
    "gelu": (tuple(gelu.TARGETS), lambda model, option: gelu.run(model, option)),
}


def parse(spec: str) -> PassSpec:
    kind, sep, option = spec.partition("=")
    kind, option = kind.strip(), option.strip()
    if kind not in PASSES:
        raise BadArgumentError(
            f"unknown pass {spec!r}; known passes: "
            + ", ".join(f"{k}={'|'.join(v[0])}" for k, v in PASSES.items())
        )
    options = PASSES[kind][0]
    if not sep or option not in options:
        raise BadArgumentError(f"pass {kind!r} needs one of: {', '.join(f'{kind}={o}' for o in options)} (got {spec!r})")
    return PassSpec(kind, option)


def run(model: ir.Model, spec: PassSpec) -> KindReport:
    return PASSES[spec.kind][1](model, spec.option)
