"""What every pass shares: the ``Pass`` record the registry reads, the ``--pass KIND=OPTION``
spec, the context data-driven passes get, and the inspection view detectors share."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import onnx_ir as ir

from ..errors import BadArgumentError
from ..findings import KindReport


@dataclasses.dataclass(frozen=True)
class PassSpec:
    kind: str
    option: str

    def __str__(self) -> str:
        return f"{self.kind}={self.option}"


INT8_GUARDS = ("per-tensor", "per-channel")  # PassContext.int8_guard


@dataclasses.dataclass
class PassContext:
    """What data-driven passes may use: the canonical original model and calibration feeds."""

    original: ir.Model | None = None
    batches: list | None = None
    refit: bool = True
    progress: Callable[[str], None] | None = None  # told a label per layer while calibrating
    # which int8 quantizer a calibrated activation swap must survive: "per-tensor" (any stock quantizer, the
    # default) or "per-channel" (per-channel or per-block weights only; api.rewrite's auto where its int8 fit runs)
    int8_guard: str = "per-tensor"
    # attention/block passes: block anchors before the first of them, and blocks taken (see targets)
    anchors: list[str] | None = None
    claimed: dict[int, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Inspection:
    """A canonicalised model being inspected (never modified) and work detectors share: ``cache``
    holds e.g. the copy whose GELUs are collapsed (``gelu.collapsed``), made once for every kind."""

    model: ir.Model
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Pass:
    """One rewrite kind, as the registry (CLI help and parsing, inspect, README) sees it.

    ``parse(option)`` checks an option against the grammar (raises ``BadArgumentError`` with the
    grammar) and returns it parsed; ``run(model, option, ctx)`` rewrites ``model`` in place and
    reports; ``detect(inspection)`` reports what the pass would find, without rewriting.
    ``calibrate(model, report, ctx)``, when set, runs after a rewrite that changed something while
    calibration data is given, and returns a calibration report (the gelu pass's activation fit).
    """

    name: str  # KIND in --pass KIND=OPTION
    order: int  # position in reports, help, inspect and the README (pipeline order)
    options: tuple[str, ...]  # the option grammar, one form each (shown in help and errors)
    summary: str  # one line for `n6onnx rewrite --help` and the README
    parse: Callable[[str], Any]
    run: Callable[[ir.Model, str, PassContext], KindReport]
    detect: Callable[[Inspection], KindReport]
    uses_data: bool = False  # the result depends on calibration data
    calibrate: Callable[[ir.Model, KindReport, PassContext], Any] | None = None
    # several --pass options of this kind may be given: each run claims the blocks it rewrites
    # (``passes.targets``), so they must target disjoint blocks; otherwise ``passes.plan`` refuses a
    # second pass of the kind (it would find nothing left while the model holds the first's rewrites)
    repeatable: bool = False
    docs: str = ""  # docs/passes/<name>.md, the user's page for this pass

    def grammar(self) -> str:
        return f"{self.name}={'|'.join(self.options)}"


def choice_error(kind: str, options, got: str) -> BadArgumentError:
    """The error for an option that is not one of ``options``; ``got`` is what the user wrote."""
    return BadArgumentError(f"pass {kind!r} needs one of: {', '.join(f'{kind}={o}' for o in options)} (got {got!r})")
