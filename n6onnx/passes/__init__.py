"""The pass registry. Each rewrite kind is one unit in this package (``passes/<kind>/`` or
``passes/<kind>.py``) holding a ``PASS`` record (``base.Pass``); the registry finds them, so adding a
pass touches no other file. The CLI's ``--pass`` parsing and help, ``inspect``'s table and the
README's pass list are all generated from ``PASSES``."""

from __future__ import annotations

import importlib
import pkgutil
import textwrap

import onnx_ir as ir

from ..errors import BadArgumentError
from ..findings import KindReport
from .base import Inspection, Pass, PassContext, PassSpec, choice_error

# modules of this package that are machinery, not passes
_MACHINERY = {"base", "finalize", "targets"}


def _discover() -> dict[str, Pass]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name in _MACHINERY or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        record = getattr(module, "PASS", None)
        if not isinstance(record, Pass):
            raise TypeError(f"n6onnx.passes.{info.name} has no PASS record (a base.Pass)")
        found.append(record)
    return {p.name: p for p in sorted(found, key=lambda p: (p.order, p.name))}


PASSES: dict[str, Pass] = _discover()
KINDS = tuple(PASSES)
# passes whose result depends on calibration data
DATA_PASSES = {k for k, p in PASSES.items() if p.uses_data}


def known() -> str:
    """Every pass and its option grammar, for error messages."""
    return ", ".join(p.grammar() for p in PASSES.values())


def help_epilog() -> str:
    """The pass list for ``n6onnx rewrite --help`` (click keeps a paragraph that starts with \\b as is)."""
    lines = ["\b", "Passes (--pass KIND=OPTION, applied in the order given):"]
    for p in PASSES.values():
        lines.append(f"  {p.grammar()}")
        lines += [f"      {line}" for line in textwrap.wrap(p.summary, 72)]
    return "\n".join(lines)


def readme_table() -> str:
    """The README's pass list (markdown), between its ``<!-- passes -->`` markers; a test keeps them equal."""
    rows = ["| pass | options | what it does | details |", "| --- | --- | --- | --- |"]
    for p in PASSES.values():
        options = ", ".join(f"`{o}`" for o in p.options)
        rows.append(f"| `{p.name}` | {options} | {p.summary} | [{p.docs}]({p.docs}) |")
    return "\n".join(rows) + "\n"


def parse(spec: str) -> PassSpec:
    """``KIND=OPTION`` -> PassSpec, the option checked against the pass's grammar."""
    kind, sep, option = spec.partition("=")
    kind, option = kind.strip(), option.strip()
    p = PASSES.get(kind)
    if p is None:
        raise BadArgumentError(f"unknown pass {spec!r}; known passes: {known()}")
    if not sep:
        raise choice_error(kind, p.options, spec)
    try:
        p.parse(option)
    except BadArgumentError as e:
        raise BadArgumentError(f"{e}; known passes: {known()}") from None
    return PassSpec(kind, option)


def plan(specs: list[PassSpec]) -> list[PassSpec]:
    """Two passes of a kind that would rewrite the same sites are refused before any work (the second
    would find nothing left and report 0 while the model holds the first's rewrites). A repeatable
    kind (attention, block) keeps every pass: each claims the blocks it rewrites, numbered as in the
    original model, and one that names a block an earlier pass took is refused (``targets``)."""
    by_kind: dict[str, list[PassSpec]] = {}
    for sp in specs:
        by_kind.setdefault(sp.kind, []).append(sp)
    for kind, group in by_kind.items():
        if len(group) == 1 or PASSES[kind].repeatable:
            continue
        raise BadArgumentError(
                f"--pass {group[0]} and --pass {group[1]} would rewrite the same {kind} sites (each rewrites every "
                f"{kind} site it can); give one {kind} pass")
    return list(specs)


def run(model: ir.Model, spec: PassSpec, ctx: PassContext | None = None) -> KindReport:
    return PASSES[spec.kind].run(model, spec.option, ctx or PassContext())


def detect_all(model: ir.Model) -> dict[str, KindReport]:
    """What every pass would find in ``model`` (canonicalised; not modified), for ``inspect``."""
    view = Inspection(model)
    return {k: p.detect(view) for k, p in PASSES.items()}


__all__ = ["DATA_PASSES", "KINDS", "PASSES", "Inspection", "Pass", "PassContext", "PassSpec", "detect_all", "help_epilog", "known", "readme_table",
           "parse", "run"]
