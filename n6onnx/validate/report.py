"""What ``n6onnx validate`` reports: per output errors, cosines and logits agreement, the gates, and
the JSON form (non-finite numbers as null)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def _num(x: Any) -> Any:
    """JSON-safe number: NaN and infinities become None (the ``nonfinite`` counts say why)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclasses.dataclass
class Gate:
    metric: str  # e.g. "cosine_mean"
    option: str  # e.g. "--min-cosine"
    op: str  # ">=" or "<="
    threshold: float
    value: float | None = None
    output: str | None = None  # for per-output gates (top-1)
    passed: bool = False

    def evaluate(self, value: float | None) -> None:
        self.value = value
        if value is None or not math.isfinite(value):
            self.passed = False
        else:
            self.passed = value >= self.threshold if self.op == ">=" else value <= self.threshold

    @property
    def name(self) -> str:
        return f"{self.metric}[{self.output}]" if self.output else self.metric

    def describe(self) -> str:
        v = "NaN/none" if self.value is None or not math.isfinite(self.value) else f"{self.value:.6g}"
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.name} = {v} (gate {self.option} {self.threshold:g}: {verdict})"

    def to_json(self) -> dict:
        return {"metric": self.metric, "output": self.output, "option": self.option, "op": self.op,
                "threshold": self.threshold, "value": _num(self.value), "passed": self.passed}


@dataclasses.dataclass
class OutputReport:
    name: str
    kind: str  # "embedding", "logits", "tensor" (float) or "exact" (integer / bool)
    shape: list  # of the first batch, after trimming padding rows
    dtype: dict  # {"original": ..., "candidate": ...}
    samples: int
    max_abs_err: float
    max_rel_err: float | None
    rel_l2_err: float | None
    cosine_mean: float | None
    cosine_min: float | None
    cosine_min_sample: int | None
    nonfinite: dict
    equal_fraction: float | None = None
    embedding: dict | None = None
    logits: dict | None = None

    def to_json(self) -> dict:
        d = {
            "kind": self.kind, "shape": self.shape, "dtype": self.dtype, "samples": self.samples,
            "max_abs_err": _num(self.max_abs_err), "max_rel_err": _num(self.max_rel_err),
            "rel_l2_err": _num(self.rel_l2_err), "cosine_mean": _num(self.cosine_mean),
            "cosine_min": _num(self.cosine_min), "cosine_min_sample": self.cosine_min_sample,
            "nonfinite": self.nonfinite,
        }
        if self.equal_fraction is not None:
            d["equal_fraction"] = _num(self.equal_fraction)
        d["embedding"] = _clean(self.embedding)
        d["logits"] = _clean(self.logits)
        return d


def _clean(d):
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, (float, np.floating)):
        return _num(d)
    if isinstance(d, np.integer):
        return int(d)
    return d


@dataclasses.dataclass
class ValidateReport:
    original: str
    candidate: str
    inputs: dict
    outputs: dict[str, OutputReport]
    cosine_mean: float | None
    cosine_source: str | None
    max_abs_err: float | None
    gates: list[Gate]
    uses_library: dict
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    providers: dict = dataclasses.field(default_factory=dict)  # role -> the execution provider it ran on

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed(self) -> list[str]:
        """Names of the failing metrics (``top1_agreement[logits]`` for per-output gates)."""
        return [g.name for g in self.gates if not g.passed]

    def failure_message(self) -> str:
        return "; ".join(g.describe() for g in self.gates if not g.passed)

    def to_json(self) -> dict:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "cosine_mean": _num(self.cosine_mean),
            "cosine_source": self.cosine_source,
            "max_abs_err": _num(self.max_abs_err),
            "gates": [g.to_json() for g in self.gates],
            "original": self.original,
            "candidate": self.candidate,
            "inputs": _clean(self.inputs),
            "outputs": {k: o.to_json() for k, o in self.outputs.items()},
            "uses_library": self.uses_library,
            "providers": self.providers,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }
