"""report.md."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from .build import Report
from .sources import FILES, finite


def _f(x: Any, spec: str = ".4g") -> str:
    x = finite(x)
    return "n/a" if x is None else format(x, spec)


def _pct(x: Any) -> str:
    x = finite(x)
    return "n/a" if x is None else f"{x:.2%}"


def _r(r: dict | None) -> str:
    if not r or r.get("median") is None:
        return "n/a"
    if r.get("q1") is None or r.get("q3") is None:
        return f"{r['median']:.3f}x"
    return f"{r['median']:.3f}x [{r['q1']:.3f}, {r['q3']:.3f}]"


def cell(s: Any) -> str:
    """A markdown table cell: pipes escaped, one line."""
    return str(s).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return out


def render(rep: Report, data: dict | None = None) -> str:
    """report.md: the variants, fidelity, latency and energy tables, and notes."""
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
    L += table(["variant", "role", "model", "compared with"],
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
    L += table(["variant", "cosine_mean", "cosine source", "max abs err", "NN agreement", "top-1 agreement",
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
                k1 = (e or {}).get("per_1k") or {}
                rows.append([v.display, _f(m.latency_ms.get("p50")), _f(m.latency_ms.get("p90")),
                             _f(m.throughput, ".1f"), ecell, emeth, _f(k1.get("wh_per_1k"), ".4g"),
                             _f(k1.get("co2e_g_per_1k"), ".4g"),
                             _r(rt.get("latency_p50")) if m.role == "candidate" else "-",
                             _r(rt.get("energy")) if m.role == "candidate" else "-", f"`{m.file}`"])
        L += table(["variant", "latency p50 (ms)", "latency p90 (ms)", "throughput (inf/s)", "energy J/inference",
                     "energy method", "Wh / 1k inferences", "gCO2e / 1k inferences", "speed ratio", "energy ratio",
                     "file"], rows)
        L.append("")
        cs = data.get("carbon") or {}
        if cs:
            grid = (f"{cs['grid_intensity_g_per_kwh']:g} gCO2e/kWh ({cs['grid_intensity_source']})"
                    if cs.get("grid_intensity_g_per_kwh") is not None else "unknown")
            L += [f"Wh and CO2e per 1,000 inferences (an inference is one run of the benched inputs): "
                  f"{cs['methodology']}. Grid intensity {grid}; PUE {cs['pue']:g} ({cs['pue_source']}). "
                  "Wh is the hardware's energy (before PUE); the CO2e includes PUE and is measured or estimated "
                  "like the energy it comes from." + (f" {cs['note']}." if cs.get("note") else ""), ""]
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
