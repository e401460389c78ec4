"""Reading the inputs of ``n6onnx report``: validate and bench JSON files or folders of them, each
classified (see the package docstring)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Sequence

from ..errors import BadArgumentError

TOOL = "n6onnx report"
FILES = {"markdown": "report.md", "json": "report.json", "plot": "pareto.png"}


def finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclasses.dataclass
class Source:
    path: str  # as given / found
    kind: str  # "validate" or "bench"
    data: dict  # the validate or bench JSON (unwrapped)
    label: str | None
    wrapped: bool = False  # a bench result found under an e2e result's "bench" key


def _is_validate(d: dict) -> bool:
    return "passed" in d and "cosine_mean" in d


def _is_bench(d: dict) -> bool:
    return "latency_ms" in d and "throughput" in d


def _label(*ds: dict) -> str | None:
    for d in ds:
        v = d.get("label")
        if v is not None:
            if not isinstance(v, str) or not v.strip():
                return None
            return v.strip()
    return None


def _classify(path: str, d: Any) -> Source | None:
    """A Source, None for our own report.json, or BadArgumentError."""
    if not isinstance(d, dict):
        raise BadArgumentError(f"{path}: expected a JSON object (a validate or bench result), got a {type(d).__name__}")
    if d.get("tool") == TOOL:
        return None
    for key in ("label",):
        if key in d and d[key] is not None and not (isinstance(d[key], str) and d[key].strip()):
            raise BadArgumentError(f"{path}: 'label' must be a non-empty string, got {d[key]!r}")
    if _is_validate(d) and _is_bench(d):
        raise BadArgumentError(f"{path}: has the keys of both a validate result (passed, cosine_mean) and a bench "
                               "result (latency_ms, throughput): cannot tell which it is")
    if _is_validate(d):
        for key in ("candidate", "original"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise BadArgumentError(f"{path}: a validate result without a {key!r} model path")
        return Source(path, "validate", d, _label(d))
    if _is_bench(d):
        _check_bench(path, d)
        return Source(path, "bench", d, _label(d))
    inner = d.get("bench")
    if isinstance(inner, dict) and _is_bench(inner):  # benchmarks/e2e.py wraps the bench JSON
        _check_bench(path, inner)
        return Source(path, "bench", inner, _label(d, inner), wrapped=True)
    keys = ", ".join(sorted(d)[:8]) + (", ..." if len(d) > 8 else "")
    raise BadArgumentError(
        f"{path}: not a validate result (needs 'passed' and 'cosine_mean') nor a bench result (needs 'latency_ms' "
        f"and 'throughput'); its keys: {keys or 'none'}")


def _check_bench(path: str, d: dict) -> None:
    if not isinstance(d.get("model"), str) or not d["model"]:
        raise BadArgumentError(f"{path}: a bench result without a 'model' path")
    if not isinstance(d.get("latency_ms"), dict) or finite(d["latency_ms"].get("p50")) is None:
        raise BadArgumentError(f"{path}: a bench result without latency_ms.p50")
    b = d.get("baseline")
    if b is not None:
        if not isinstance(b, dict) or not isinstance(b.get("model"), str) or not isinstance(b.get("latency_ms"), dict):
            raise BadArgumentError(f"{path}: the bench result's 'baseline' block has no model path or latency_ms")


def _expand(inputs: Sequence[str | os.PathLike]) -> tuple[list[str], list[str]]:
    """Files to read, in order (folders: their *.json sorted by name), and names of folders."""
    if not inputs:
        raise BadArgumentError("give at least one RUN_DIR or JSON file")
    files: list[str] = []
    folders: list[str] = []
    seen: set[str] = set()
    for inp in inputs:
        p = pathlib.Path(inp)
        if not p.exists():
            raise BadArgumentError(f"{p}: no such file or directory")
        if p.is_dir():
            found = sorted(q for q in p.glob("*.json") if q.is_file())
            if not found:
                raise BadArgumentError(f"{p}: no *.json files in this folder")
            folders.append(str(p))
            cand = [str(q) for q in found]
        elif p.is_file():
            cand = [str(p)]
        else:
            raise BadArgumentError(f"{p}: not a file or a folder")
        for c in cand:
            key = os.path.realpath(c)
            if key not in seen:
                seen.add(key)
                files.append(c)
    return files, folders


def read_sources(inputs: Sequence[str | os.PathLike]) -> tuple[list[Source], list[str]]:
    """Read and classify every input file; returns the sources and notes."""
    files, folders = _expand(inputs)
    explicit = {os.path.realpath(str(i)) for i in inputs if pathlib.Path(i).is_file()}
    sources: list[Source] = []
    notes: list[str] = []
    for f in files:
        try:
            text = pathlib.Path(f).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BadArgumentError(f"{f}: cannot read: {e}") from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise BadArgumentError(f"{f}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        s = _classify(f, d)
        if s is None:
            if os.path.realpath(f) in explicit:
                raise BadArgumentError(f"{f}: an n6onnx report output, not a validate or bench result")
            notes.append(f"{f}: skipped (an n6onnx report output)")
            continue
        sources.append(s)
    if not sources:
        where = ", ".join(folders) if folders else ", ".join(str(i) for i in inputs)
        raise BadArgumentError(f"{where}: no validate or bench results to report")
    return sources, notes
