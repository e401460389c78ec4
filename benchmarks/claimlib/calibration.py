"""Calibrated swap quality, the calibration-size curves and the phi-bottleneck."""

from __future__ import annotations

from .common import (
    _fidelity_sentence, _generic_detail, _generic_where, _row_name, _row_summary, _rows_of, CLAIMS, finite,
    generic_value, not_measured, num, Results, Row,
)


def quality_rows(res: Results, fidelity: dict | None, fid_name: str) -> list[Row]:
    name, source = CLAIMS["quality"]
    rows: list[Row] = []
    scope = ("the sources' claim is about training a tiny MLP from scratch, which n6onnx does not do; measured here: "
             "swapping Phi6 for GELU in the pretrained all-MiniLM-L6-v2. ")
    if fidelity is not None:
        rows.append(Row(f"{name}: pretrained all-MiniLM-L6-v2, gelu=phi6 swap", source,
                        scope + "Fidelity against the original: " + _fidelity_sentence(fidelity) + ".",
                        f"n6onnx validate, `{fidelity.get('original', '?')}` vs `{fidelity.get('candidate', '?')}`, "
                        f"inputs {(fidelity.get('inputs') or {}).get('source', '?')}",
                        [res.rel(fid_name)]))
    cname = "calibration_minilm.json"
    c = res.load(cname)
    if c is None:
        rows.append(Row(f"{name}: calibrated swap (all-MiniLM-L6-v2)", source,
                        f"not measured yet: no {cname} (run benchmarks/recovery.py)", "-", []))
    else:
        rr = _rows_of(c)
        if not rr:
            rows.append(Row(f"{name}: calibrated swap (all-MiniLM-L6-v2)", source,
                            f"not measured yet: {cname} has no rows", "-", [res.rel(cname)]))
        else:
            scored = [r for r in rr if finite(r.get("cosine_mean")) is not None]
            parts = [f"{_row_name(r)}: {_row_summary(r)}" for r in rr]
            verdict = scope + "; ".join(parts) + "."
            if scored:
                best = max(scored, key=lambda r: r["cosine_mean"])
                verdict += f" Best: {_row_name(best)} (cosine {num(best['cosine_mean'], 4)})."
            goals = c.get("goals")
            if isinstance(goals, dict) and goals:
                verdict += " Project goals: " + ", ".join(f"{k} {generic_value(v)}" for k, v in goals.items()) + "."
            rows.append(Row(f"{name}: calibrated swap (all-MiniLM-L6-v2)", source, verdict, _generic_where(c),
                            [res.rel(cname)], _generic_detail(c), f"{name}: calibrated swap"))
    return rows


_CURVES = {
    "calibration_curve_minilm.json": "Calibration data: how far more of it goes (all-MiniLM-L6-v2)",
    "calibration_extended_minilm.json": "Calibration data past the corpus: where more of it stops helping (all-MiniLM-L6-v2)",
}


def curve_row(res: Results, fname: str = "calibration_curve_minilm.json") -> Row | None:
    """Fidelity against the amount of calibration data (benchmarks/recovery.py's curve and extended
    sections), with the in-sample bound where there is one; None when the file is absent (an optional
    measurement)."""
    d = res.load(fname)
    if d is None:
        return None
    rr = _rows_of(d)
    title = _CURVES[fname]
    source = "ours: the calibrated swap and the phi-bottleneck, fidelity against calibration size"
    if not rr:
        return Row(title, source, f"not measured yet: {fname} has no rows", "-", [res.rel(fname)])
    parts = []
    for spec in dict.fromkeys(str(r.get("pass", "?")) for r in rr):
        mine = [r for r in rr if str(r.get("pass", "?")) == spec]
        real = sorted((r for r in mine if not r.get("in_sample")), key=lambda r: finite(r.get("samples")) or 0)
        bound = [r for r in mine if r.get("in_sample")]
        bit = f"{spec}: " + ", ".join(f"{generic_value(r.get('samples'))} samples cosine {num(r.get('cosine_mean'), 4)}"
                                      f" ({num(r.get('seconds'))} s)" for r in real)
        if bound:
            bit += (f"; calibrated on the held-out sentences themselves (an optimistic bound, not a result) "
                    f"cosine {num(bound[0].get('cosine_mean'), 4)}")
        parts.append(bit)
    verdict = "; ".join(parts) + "."
    goals = d.get("goals")
    if isinstance(goals, dict) and goals:
        verdict += " Project goals: " + ", ".join(f"{k} {generic_value(v)}" for k, v in goals.items()) + "."
    return Row(title, source, verdict, _generic_where(d), [res.rel(fname)], _generic_detail(d), title)


def bottleneck_row(res: Results) -> Row:
    name, source = CLAIMS["bottleneck"]
    fname = "bottleneck_minilm.json"
    d = res.load(fname)
    if d is None:
        return not_measured("bottleneck", f"no {fname} (run benchmarks/recovery.py)", " (all-MiniLM-L6-v2)")
    rr = _rows_of(d)
    if not rr:
        return Row(name + " (all-MiniLM-L6-v2)", source, f"not measured yet: {fname} has no rows", "-", [res.rel(fname)])
    key = next((r for r in rr if str(r.get("ratio")) == "4/3" or "4/3" in _row_name(r)), None)
    verdict = ""
    if key is not None:
        hid = key.get("hidden")
        verdict += (f"At the claimed width (4D/3{', hidden ' + generic_value(hid) if hid is not None else ''}): "
                    f"{_row_summary(key)}. ")
    others = [r for r in rr if r is not key]
    if others:
        verdict += "Other widths: " + "; ".join(f"{_row_name(r)}: {_row_summary(r)}" for r in others) + "."
    return Row(name + " (all-MiniLM-L6-v2)", source, verdict.strip(), _generic_where(d), [res.rel(fname)],
               _generic_detail(d), f"{name} (all-MiniLM-L6-v2)")
