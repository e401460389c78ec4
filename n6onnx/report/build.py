"""The report model: variants matched across validate and bench results, measurements grouped by
setting and energy method, and the fidelity-vs-cost panels with their Pareto fronts."""

from __future__ import annotations

import dataclasses
import datetime
import os
import statistics
from typing import Any, Sequence

from .._version import __version__
from ..bench import carbon as carbon_mod
from ..errors import BadArgumentError
from .sources import FILES, TOOL, Source, finite, read_sources



def _key(path: str) -> str:
    return os.path.normpath(path)


def energy_axis(energy: dict | None) -> str | None:
    """``measured (nvml)``, ``measured (rapl)``, ``estimated``, ``measured (<meter>)`` or None."""
    if not isinstance(energy, dict) or finite(energy.get("joules_per_inference")) is None:
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
    if not isinstance(r, dict) or finite(r.get("median")) is None:
        return None
    return {k: finite(r.get(k)) for k in ("median", "q1", "q3")} | {"n": r.get("n")}


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
                 against: str | None, carbon: carbon_mod.CarbonSettings) -> Measurement:
    lat = variant_block.get("latency_ms") or {}
    e = variant_block.get("energy")
    energy = None
    axis = energy_axis(e)
    if axis is not None:
        band = e.get("band") if isinstance(e.get("band"), dict) else None
        spread = e.get("spread") if isinstance(e.get("spread"), dict) else None
        energy = {"joules_per_inference": finite(e.get("joules_per_inference")), "axis": axis,
                  "method": e.get("method"), "meter": e.get("meter"),
                  "band": {"low": finite(band.get("low")), "high": finite(band.get("high"))} if band else None,
                  "spread": {"q1": finite(spread.get("q1")), "q3": finite(spread.get("q3")), "n": spread.get("n")}
                  if spread else None}
        energy["per_1k"] = carbon_mod.per_1k(energy, carbon)
    ratio = None
    if role == "candidate" and isinstance(ratio_block, dict):
        er = ratio_block.get("energy") if isinstance(ratio_block.get("energy"), dict) else {}
        ratio = {"latency_p50": _ratio(ratio_block.get("latency_p50")), "throughput": _ratio(ratio_block.get("throughput")),
                 "energy": _ratio(er.get("total")), "energy_method": er.get("method") or (e or {}).get("method"),
                 "definition": ratio_block.get("definition")}
    return Measurement(
        _key(variant_block["model"]), role, setting,
        {q: finite(lat.get(q)) for q in ("p50", "p90", "p99")}, finite(variant_block.get("throughput")),
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
        if nn is None and isinstance(o.get("embedding"), dict) and finite(o["embedding"].get("nn_agreement")) is not None:
            nn = {"output": name, "value": finite(o["embedding"]["nn_agreement"])}
        if top1 is None and isinstance(o.get("logits"), dict) and finite(o["logits"].get("top1_agreement")) is not None:
            top1 = {"output": name, "value": finite(o["logits"]["top1_agreement"])}
    inp = d.get("inputs") if isinstance(d.get("inputs"), dict) else {}
    return {"cosine_mean": finite(d.get("cosine_mean")), "cosine_source": d.get("cosine_source"),
            "max_abs_err": finite(d.get("max_abs_err")), "nn_agreement": nn, "top1_agreement": top1,
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
    carbon: carbon_mod.CarbonSettings | None = None

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
            "carbon": self.carbon.to_json() if self.carbon else None,
            "notes": self.notes,
            "files": dict(FILES),
        }


def build(inputs: Sequence[str | os.PathLike], carbon: carbon_mod.CarbonSettings | None = None) -> Report:
    """Read the inputs and assemble the report (writes nothing). ``carbon``: grid intensity and PUE
    for the Wh and CO2e per 1,000 inferences (default ``bench.carbon.settings()``)."""
    carbon = carbon or carbon_mod.settings()
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
        v.measurements.append(_measurement(d, "candidate", st, s.path, d.get("ratio"), against, carbon))
        if base:
            o = get(base["model"])
            o.measurements.append(_measurement(base, "original", st, s.path, None, None, carbon))
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
    return Report(sources, ordered, list(settings.values()), panels, notes, carbon)


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
