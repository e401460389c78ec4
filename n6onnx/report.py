"""``n6onnx report``: validate and bench JSON results -> report.md, report.json and pareto.png.

Inputs are the JSON that ``n6onnx validate --json`` and ``n6onnx bench --json`` print (a bench
result wrapped by ``benchmarks/e2e.py`` under a ``bench`` key is accepted too), given as files or
as folders (every ``*.json`` directly inside). A file is *validate* when it has ``passed`` and
``cosine_mean``, *bench* when it has ``latency_ms`` and ``throughput``; anything else is an error
that names the file (our own ``report.json`` found inside a folder is skipped, with a note).

Variants are models, identified by path: a validate result's ``candidate``, a bench result's
``model``, matched between files by the normalised path string; a top-level ``label`` gives a
friendly name. The original (a validate result's ``original``, a bench result's ``baseline``) is a
variant too: fidelity 1.0 by definition, latency and energy from the bench result's ``baseline``
block (the original as ORT runs it best, measured interleaved with the candidate).

Bench results are grouped by *setting* (provider, device, threads): latencies from different
settings are never on one axis. Energy figures are grouped further by their method: ``measured
(nvml)``, ``measured (rapl)`` or ``estimated`` (CPU-seconds x assumed watts); measured and
estimated figures are never on one axis. The plot has one row per setting: fidelity (cosine_mean)
against latency p50, then against energy per inference once per energy method. Pareto-optimal
points (no other point in the panel is at least as fast/frugal and at least as faithful, and
better in one) are marked.

Nothing is written until every input has been read and the plot has been rendered; then the
three files are written atomically (temporary file beside the destination + os.replace).
"""

from __future__ import annotations

import dataclasses
import datetime
import io as _io
import json
import math
import os
import pathlib
import statistics
from typing import Any, Iterable, Sequence

from ._version import __version__
from .errors import BadArgumentError
from .io import atomic_write

TOOL = "n6onnx report"
FILES = {"markdown": "report.md", "json": "report.json", "plot": "pareto.png"}


# --------------------------------------------------------------------------------------------------
# Reading inputs


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
    if not isinstance(d.get("latency_ms"), dict) or _finite(d["latency_ms"].get("p50")) is None:
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


# --------------------------------------------------------------------------------------------------
# Helpers


def _finite(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _key(path: str) -> str:
    return os.path.normpath(path)


def energy_axis(energy: dict | None) -> str | None:
    """``measured (nvml)``, ``measured (rapl)``, ``estimated``, ``measured (<meter>)`` or None."""
    if not isinstance(energy, dict) or _finite(energy.get("joules_per_inference")) is None:
        return None
    method = energy.get("method")
    meter = str(energy.get("meter") or "unknown meter")
    if method == "estimated":
        return "estimated"
    if method == "measured":
        base = meter.split(":", 1)[0]
        return f"measured ({base})"
    return f"{method or 'unknown method'} ({meter})"


def _setting(d: dict) -> dict:
    s = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    hw = d.get("hardware") if isinstance(d.get("hardware"), dict) else {}
    provider = s.get("provider") or "unknown provider"
    if provider == "cuda":
        device = hw.get("gpu") or (f"GPU {s.get('device_id')}" if s.get("device_id") is not None else "GPU")
    else:
        device = hw.get("cpu") or hw.get("machine") or "unknown CPU"
    threads = s.get("threads")
    t = f"{threads} thread{'s' if threads != 1 else ''}" if threads else "ORT default threads"
    return {"provider": provider, "device": device, "threads": threads,
            "name": f"{provider}, {device}, {t}"}


def _ratio(r: Any) -> dict | None:
    if not isinstance(r, dict) or _finite(r.get("median")) is None:
        return None
    return {k: _finite(r.get(k)) for k in ("median", "q1", "q3")} | {"n": r.get("n")}


# --------------------------------------------------------------------------------------------------
# The model


@dataclasses.dataclass
class Measurement:
    """One variant as one bench result measured it."""

    variant: str  # normalised model path
    role: str  # "candidate" or "original"
    setting: dict
    latency_ms: dict  # p50, p90, p99
    throughput: float | None
    energy: dict | None  # {"joules_per_inference", "axis", "meter", "method", "band", "spread"}
    ratio: dict | None  # candidates: {"latency_p50": {...}, "energy": {...}} (baseline / candidate)
    against: str | None  # candidates: the original's path
    file: str

    def to_json(self) -> dict:
        return {"variant": self.variant, "role": self.role, "setting": self.setting["name"],
                "latency_ms": self.latency_ms, "throughput": self.throughput, "energy": self.energy,
                "ratio": self.ratio, "original": self.against, "file": self.file}


def _measurement(variant_block: dict, role: str, setting: dict, file: str, ratio_block: Any,
                 against: str | None) -> Measurement:
    lat = variant_block.get("latency_ms") or {}
    e = variant_block.get("energy")
    energy = None
    axis = energy_axis(e)
    if axis is not None:
        band = e.get("band") if isinstance(e.get("band"), dict) else None
        spread = e.get("spread") if isinstance(e.get("spread"), dict) else None
        energy = {"joules_per_inference": _finite(e.get("joules_per_inference")), "axis": axis,
                  "method": e.get("method"), "meter": e.get("meter"),
                  "band": {"low": _finite(band.get("low")), "high": _finite(band.get("high"))} if band else None,
                  "spread": {"q1": _finite(spread.get("q1")), "q3": _finite(spread.get("q3")), "n": spread.get("n")}
                  if spread else None}
    ratio = None
    if role == "candidate" and isinstance(ratio_block, dict):
        er = ratio_block.get("energy") if isinstance(ratio_block.get("energy"), dict) else {}
        ratio = {"latency_p50": _ratio(ratio_block.get("latency_p50")), "throughput": _ratio(ratio_block.get("throughput")),
                 "energy": _ratio(er.get("total")), "energy_method": er.get("method") or (e or {}).get("method"),
                 "definition": ratio_block.get("definition")}
    return Measurement(
        _key(variant_block["model"]), role, setting,
        {q: _finite(lat.get(q)) for q in ("p50", "p90", "p99")}, _finite(variant_block.get("throughput")),
        energy, ratio, against, file)


@dataclasses.dataclass
class Variant:
    path: str  # normalised
    label: str | None = None
    role: str = "candidate"  # or "original"
    fidelity: dict | None = None
    originals: list[str] = dataclasses.field(default_factory=list)  # the originals it was compared with
    measurements: list[Measurement] = dataclasses.field(default_factory=list)

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        base = os.path.basename(self.path) or self.path
        return base

    @property
    def display(self) -> str:
        return f"{self.name} (original)" if self.role == "original" else self.name

    def to_json(self) -> dict:
        return {"model": self.path, "label": self.label, "name": self.display, "role": self.role,
                "originals": self.originals, "fidelity": self.fidelity,
                "bench": [m.to_json() for m in self.measurements]}


def _fidelity(d: dict, file: str) -> dict:
    nn = top1 = None
    outputs = d.get("outputs") if isinstance(d.get("outputs"), dict) else {}
    for name, o in outputs.items():
        if not isinstance(o, dict):
            continue
        if nn is None and isinstance(o.get("embedding"), dict) and _finite(o["embedding"].get("nn_agreement")) is not None:
            nn = {"output": name, "value": _finite(o["embedding"]["nn_agreement"])}
        if top1 is None and isinstance(o.get("logits"), dict) and _finite(o["logits"].get("top1_agreement")) is not None:
            top1 = {"output": name, "value": _finite(o["logits"]["top1_agreement"])}
    inp = d.get("inputs") if isinstance(d.get("inputs"), dict) else {}
    return {"cosine_mean": _finite(d.get("cosine_mean")), "cosine_source": d.get("cosine_source"),
            "max_abs_err": _finite(d.get("max_abs_err")), "nn_agreement": nn, "top1_agreement": top1,
            "passed": bool(d.get("passed")), "failed": list(d.get("failed") or []),
            "gates": len(d.get("gates") or []),
            "inputs": {k: inp.get(k) for k in ("kind", "source", "samples") if k in inp} or None,
            "original": _key(d["original"]), "file": file}


ORIGINAL_FIDELITY = {"cosine_mean": 1.0, "cosine_source": "the original itself (by definition)", "max_abs_err": 0.0,
                     "nn_agreement": None, "top1_agreement": None, "passed": True, "failed": [], "gates": 0,
                     "inputs": None, "original": None, "file": None}


@dataclasses.dataclass
class Panel:
    setting: str
    metric: str  # "latency" or "energy"
    axis: str  # x-axis label
    energy_method: str | None  # the energy axis ("measured (nvml)", "estimated", ...)
    points: list[dict]

    def to_json(self) -> dict:
        return {"setting": self.setting, "metric": self.metric, "energy_method": self.energy_method,
                "x_axis": self.axis, "y_axis": "fidelity: cosine_mean vs the original", "points": self.points}


@dataclasses.dataclass
class Report:
    sources: list[Source]
    variants: list[Variant]
    settings: list[dict]
    panels: list[Panel]
    notes: list[str]

    def to_json(self) -> dict:
        return {
            "tool": TOOL, "n6onnx": __version__,
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "inputs": [{"file": s.path, "kind": s.kind, "label": s.label,
                        "model": s.data["candidate"] if s.kind == "validate" else s.data["model"],
                        **({"wrapped_in": "bench"} if s.wrapped else {})} for s in self.sources],
            "fidelity_metric": "cosine_mean from n6onnx validate (the embedding cosine, else the first float "
                               "output's per-sample cosine); the original is 1.0 by definition",
            "settings": [{k: v for k, v in s.items()} for s in self.settings],
            "variants": [v.to_json() for v in self.variants],
            "panels": [p.to_json() for p in self.panels],
            "notes": self.notes,
            "files": dict(FILES),
        }


def build(inputs: Sequence[str | os.PathLike]) -> Report:
    """Read the inputs and assemble the report (writes nothing)."""
    sources, notes = read_sources(inputs)
    variants: dict[str, Variant] = {}

    def get(path: str) -> Variant:
        k = _key(path)
        if k not in variants:
            variants[k] = Variant(k)
        return variants[k]

    def set_label(v: Variant, label: str | None, file: str) -> None:
        if label is None:
            return
        if v.label is None:
            v.label = label
        elif v.label != label:
            notes.append(f"{v.path}: labelled {v.label!r} and {label!r} ({file}); using {v.label!r}")

    validate_files: dict[str, str] = {}
    # validate results: candidates' fidelity
    for s in sources:
        if s.kind != "validate":
            continue
        d = s.data
        v = get(d["candidate"])
        if v.path in validate_files:
            raise BadArgumentError(f"two validate results for {v.path}: {validate_files[v.path]} and {s.path} "
                                   "(report one per variant)")
        validate_files[v.path] = s.path
        v.fidelity = _fidelity(d, s.path)
        v.originals.append(_key(d["original"]))
        set_label(v, s.label, s.path)
        if _key(d["original"]) == v.path:
            notes.append(f"{s.path}: the candidate is the original itself")
        get(d["original"])
    # bench results
    settings: dict[str, dict] = {}
    bench_files: dict[tuple[str, str], str] = {}
    for s in sources:
        if s.kind != "bench":
            continue
        d = s.data
        st = _setting(d)
        settings.setdefault(st["name"], st)
        v = get(d["model"])
        key = (v.path, st["name"])
        if key in bench_files:
            raise BadArgumentError(f"two bench results for {v.path} on {st['name']}: {bench_files[key]} and {s.path} "
                                   "(report one per variant and setting)")
        bench_files[key] = s.path
        set_label(v, s.label, s.path)
        base = d.get("baseline")
        against = _key(base["model"]) if base else None
        v.measurements.append(_measurement(d, "candidate", st, s.path, d.get("ratio"), against))
        if base:
            o = get(base["model"])
            o.measurements.append(_measurement(base, "original", st, s.path, None, None))
            if against not in v.originals:
                if v.originals:
                    notes.append(f"{v.path}: validated against {', '.join(v.originals)} but benchmarked against "
                                 f"{against} ({s.path})")
                v.originals.append(against)
        else:
            notes.append(f"{s.path}: a bench result without a baseline: no original measured, no ratio")
    # roles: a model is an original when something was compared with it and it is no validate candidate
    used_as_original = {o for v in variants.values() for o in v.originals}
    for v in variants.values():
        if v.path in used_as_original and v.fidelity is None:
            v.role = "original"
            v.fidelity = dict(ORIGINAL_FIDELITY)
            if any(m.role == "candidate" for m in v.measurements):
                # benchmarked as a candidate too: its own bench figures stay, it is still a reference
                pass
    # order: originals first, then candidates in input order
    ordered = [v for v in variants.values() if v.role == "original"] + \
              [v for v in variants.values() if v.role != "original"]
    for v in ordered:
        if v.role == "candidate" and v.fidelity is None and v.measurements:
            notes.append(f"{v.display}: no validate result: fidelity unknown, not on the plot")
        elif v.role == "candidate" and v.fidelity is not None and v.fidelity["cosine_mean"] is None:
            notes.append(f"{v.display}: validate gave no cosine_mean ({v.fidelity['file']}): not on the plot")
        elif v.role == "candidate" and not v.measurements:
            notes.append(f"{v.display}: no bench result: latency and energy unknown, not on the plot")
    panels = _panels(ordered, list(settings.values()), notes)
    if not any(p.points for p in panels):
        notes.append("nothing to plot: no variant has both a fidelity (validate) and a bench result")
    return Report(sources, ordered, list(settings.values()), panels, notes)


def _median_of(ms: list[Measurement], get) -> tuple[float | None, dict | None]:
    xs = [x for x in (get(m) for m in ms) if x is not None]
    if not xs:
        return None, None
    return statistics.median(xs), ({"n": len(xs), "min": min(xs), "max": max(xs)} if len(xs) > 1 else None)


def _panels(variants: list[Variant], settings: list[dict], notes: list[str]) -> list[Panel]:
    panels: list[Panel] = []
    for st in settings:
        name = st["name"]
        # -- latency
        pts = []
        methods: list[str] = []
        for v in variants:
            ms = [m for m in v.measurements if m.setting["name"] == name]
            if not ms:
                continue
            for m in ms:
                if m.energy is not None and m.energy["axis"] not in methods:
                    methods.append(m.energy["axis"])
            y = (v.fidelity or {}).get("cosine_mean")
            if y is None:
                continue
            x, rng = _median_of(ms, lambda m: m.latency_ms.get("p50"))
            if x is not None:
                pts.append(_point(v, x, y, rng, ms))
        panels.append(Panel(name, "latency", "latency p50 (ms)", None, _pareto(pts)))
        # -- energy, one panel per method
        if len(methods) > 1:
            notes.append(f"{name}: energy figures by different methods ({', '.join(methods)}): one energy panel "
                         "per method, never on one axis")
        for meth in methods:
            pts = []
            for v in variants:
                ms = [m for m in v.measurements if m.setting["name"] == name and m.energy is not None
                      and m.energy["axis"] == meth]
                y = (v.fidelity or {}).get("cosine_mean")
                if not ms or y is None:
                    continue
                x, rng = _median_of(ms, lambda m: m.energy["joules_per_inference"])
                if x is None:
                    continue
                p = _point(v, x, y, rng, ms)
                if meth == "estimated":
                    lo, _ = _median_of(ms, lambda m: (m.energy.get("band") or {}).get("low"))
                    hi, _ = _median_of(ms, lambda m: (m.energy.get("band") or {}).get("high"))
                    if lo is not None and hi is not None:
                        p["band"] = {"low": lo, "high": hi}
                pts.append(p)
            panels.append(Panel(name, "energy", f"energy per inference (J), {meth}", meth, _pareto(pts)))
        for v in variants:
            ms = [m for m in v.measurements if m.setting["name"] == name]
            if v.role == "original" and len(ms) > 1:
                notes.append(f"{v.display} on {name}: measured in {len(ms)} bench results; the plot shows the median "
                             "of its measurements, the tables each one")
    return panels


def _point(v: Variant, x: float, y: float, rng: dict | None, ms: list[Measurement]) -> dict:
    p = {"variant": v.path, "name": v.display, "role": v.role, "x": x, "y": y, "files": [m.file for m in ms]}
    if rng:
        p["range"] = rng
    return p


def _pareto(points: list[dict]) -> list[dict]:
    for p in points:
        p["pareto"] = not any(
            q is not p and q["x"] <= p["x"] and q["y"] >= p["y"] and (q["x"] < p["x"] or q["y"] > p["y"])
            for q in points)
    return points


# --------------------------------------------------------------------------------------------------
# Output


def _f(x: Any, spec: str = ".4g") -> str:
    x = _finite(x)
    return "n/a" if x is None else format(x, spec)


def _pct(x: Any) -> str:
    x = _finite(x)
    return "n/a" if x is None else f"{x:.2%}"


def _r(r: dict | None) -> str:
    if not r or r.get("median") is None:
        return "n/a"
    if r.get("q1") is None or r.get("q3") is None:
        return f"{r['median']:.3f}x"
    return f"{r['median']:.3f}x [{r['q1']:.3f}, {r['q3']:.3f}]"


def _cell(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def markdown(rep: Report, data: dict | None = None) -> str:
    data = data or rep.to_json()
    nv = sum(s.kind == "validate" for s in rep.sources)
    nb = len(rep.sources) - nv
    L = ["# n6onnx report", "",
         f"Generated {data['generated']} by n6onnx {data['n6onnx']} from {len(rep.sources)} result files "
         f"({nv} validate, {nb} bench).", "",
         "Fidelity is `cosine_mean` from `n6onnx validate` (the embedding cosine, else the first float output's "
         "per-sample cosine) against the original; the original is 1.0 by definition. Latency and energy come "
         "from `n6onnx bench`: the original as ORT runs it best (ORT_ENABLE_ALL, transformer fusions, same "
         "provider and threads), interleaved with the candidate. Ratios are baseline / candidate per "
         "interleaved block pair (median [IQR]): > 1 means the candidate is faster or uses less energy. "
         "Measured and estimated energy are never on one axis.", ""]
    # variants
    L += ["## Variants", ""]
    L += _table(["variant", "role", "model", "compared with"],
                [[v.display, v.role, f"`{v.path}`", ", ".join(f"`{o}`" for o in v.originals) or "-"]
                 for v in rep.variants])
    L.append("")
    # fidelity
    L += ["## Fidelity (n6onnx validate)", ""]
    rows = []
    for v in rep.variants:
        fd = v.fidelity
        if fd is None:
            rows.append([v.display, "n/a", "no validate result", "n/a", "n/a", "n/a", "n/a", "-"])
            continue
        gates = "no gates" if not fd["gates"] else ("passed" if fd["passed"] else "FAILED: " + ", ".join(fd["failed"]))
        inp = fd.get("inputs") or {}
        inputs = f"{inp.get('samples')} {inp.get('kind')} ({inp.get('source')})" if inp else "-"
        rows.append([v.display, _f(fd["cosine_mean"], ".6f"), fd["cosine_source"] or "n/a", _f(fd["max_abs_err"]),
                     _pct((fd["nn_agreement"] or {}).get("value")), _pct((fd["top1_agreement"] or {}).get("value")),
                     f"{gates}; {inputs}" if inp else gates, f"`{fd['file']}`" if fd["file"] else "-"])
    L += _table(["variant", "cosine_mean", "cosine source", "max abs err", "NN agreement", "top-1 agreement",
                 "gates; inputs", "file"], rows)
    L.append("")
    # speed and energy, per setting
    for st in rep.settings:
        name = st["name"]
        L += [f"## Speed and energy: {name} (n6onnx bench)", ""]
        rows = []
        for v in rep.variants:
            for m in v.measurements:
                if m.setting["name"] != name:
                    continue
                e = m.energy
                if e is None:
                    ecell, emeth = "n/a", "n/a"
                else:
                    ecell = _f(e["joules_per_inference"])
                    if e.get("band") and e["band"]["low"] is not None:
                        ecell += f" (band {_f(e['band']['low'], '.3g')} to {_f(e['band']['high'], '.3g')})"
                    emeth = f"{e['axis']}" + (f", {e['meter']}" if e.get("meter") and e['meter'] not in e['axis'] else "")
                rt = m.ratio or {}
                rows.append([v.display, _f(m.latency_ms.get("p50")), _f(m.latency_ms.get("p90")),
                             _f(m.throughput, ".1f"), ecell, emeth,
                             _r(rt.get("latency_p50")) if m.role == "candidate" else "-",
                             _r(rt.get("energy")) if m.role == "candidate" else "-", f"`{m.file}`"])
        L += _table(["variant", "latency p50 (ms)", "latency p90 (ms)", "throughput (inf/s)", "energy J/inference",
                     "energy method", "speed ratio", "energy ratio", "file"], rows)
        L.append("")
        if any(m.energy and m.energy["axis"] == "estimated" for v in rep.variants for m in v.measurements
               if m.setting["name"] == name):
            L += ["Estimated energy is CPU-seconds x an assumed power per busy core, with the assumption's band in "
                  "brackets: an estimate, not a measurement; its ratio is the ratio of CPU-seconds.", ""]
    # Pareto
    L += ["## Fidelity against cost", "", f"![fidelity against latency and energy]({FILES['plot']})", ""]
    for p in rep.panels:
        if not p.points:
            continue
        what = "latency p50 (ms)" if p.metric == "latency" else f"energy J/inference, {p.energy_method}"
        L += [f"{p.setting}, {what}: Pareto-optimal: "
              + ", ".join(f"{q['name']} ({_f(q['x'])}, cosine {_f(q['y'], '.4f')})" for q in p.points if q["pareto"])
              + "; dominated: " + (", ".join(q["name"] for q in p.points if not q["pareto"]) or "none") + ".", ""]
    if rep.notes:
        L += ["## Notes", ""] + [f"- {n}" for n in rep.notes] + [""]
    return "\n".join(L)


def plot_png(rep: Report) -> bytes:
    """pareto.png as bytes (matplotlib's Agg canvas; pyplot and the global backend are not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[list[Panel]] = []
    for st in rep.settings:
        rows.append([p for p in rep.panels if p.setting == st["name"]])
    ncols = max([len(r) for r in rows] or [1])
    nrows = max(len(rows), 1)
    fig = Figure(figsize=(5.6 * ncols, 4.4 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    if not any(p.points for p in rep.panels):
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to plot:\nno variant has both a validate and a bench result",
                ha="center", va="center", fontsize=12)
    else:
        for i, row in enumerate(rows):
            for j, p in enumerate(row):
                ax = fig.add_subplot(nrows, ncols, i * ncols + j + 1)
                _draw(ax, p)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _draw(ax, p: Panel) -> None:
    ax.set_xlabel(p.axis, fontsize=9)
    ax.set_ylabel("fidelity: cosine_mean vs original", fontsize=9)
    what = "latency" if p.metric == "latency" else f"energy, {p.energy_method}"
    ax.set_title(f"fidelity vs {what}\n{p.setting}", fontsize=9)
    ax.grid(True, alpha=0.3)
    if not p.points:
        ax.text(0.5, 0.5, "no variant with fidelity and this figure", transform=ax.transAxes, ha="center", va="center")
        return
    for q in p.points:
        orig = q["role"] == "original"
        color = "black" if orig else ("tab:green" if q["pareto"] else "tab:blue")
        if "band" in q:
            ax.errorbar([q["x"]], [q["y"]], xerr=[[q["x"] - q["band"]["low"]], [q["band"]["high"] - q["x"]]],
                        fmt="none", ecolor=color, alpha=0.4, capsize=3)
        ax.scatter([q["x"]], [q["y"]], s=60, marker="*" if orig else "o", color=color, zorder=3,
                   edgecolors="black" if q["pareto"] else "none")
        ax.annotate(q["name"], (q["x"], q["y"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((q for q in p.points if q["pareto"]), key=lambda q: q["x"])
    if len(front) > 1:
        ax.plot([q["x"] for q in front], [q["y"] for q in front], "--", color="tab:green", alpha=0.6, zorder=2)
    if p.energy_method == "estimated":
        ax.text(0.01, 0.01, "estimated: CPU-seconds x assumed W/core (bars: band)", transform=ax.transAxes,
                fontsize=7, color="dimgray", va="bottom")
    ax.margins(x=0.15, y=0.1)


def report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> tuple[Report, dict]:
    """Build the report from ``inputs`` and write report.md, report.json and pareto.png into ``out_dir``.

    Returns the report and its JSON. Every input is read and everything is rendered before anything
    is written; each file is written atomically.
    """
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadArgumentError(f"{out}: exists and is not a folder (-o takes the output folder)")
    rep = build(inputs)
    data = rep.to_json()
    blobs = {
        FILES["json"]: (json.dumps(data, indent=2, allow_nan=False) + "\n").encode(),
        FILES["markdown"]: markdown(rep, data).encode(),
        FILES["plot"]: plot_png(rep),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadArgumentError(f"{out}: cannot create the output folder: {e}") from None
    for name, b in blobs.items():
        try:
            atomic_write(out / name, b)
        except OSError as e:
            raise BadArgumentError(f"{out / name}: cannot write: {e}") from None
    return rep, data
