"""The healing row: issue 16's goals against benchmarks/results/heal_minilm.json (benchmarks/heal.py)."""

from __future__ import annotations

from .common import Results, Row, _generic_where, table

NAME = "Healing (distillation after calibration)"
SOURCE = ("issue 16's goals on all-MiniLM-L6-v2: healed cosine >= 0.998 (gelu=phi6), >= 0.99 (bottleneck 4/3, "
          "fftmix:2, egyptian), >= 0.985 (the three together); calibrate + heal <= 10 min on 2 cores")


def _fid(f: dict | None) -> str:
    return "-" if not f else f"{f['cosine']:.4f} / {f['nn']:.3f}"


def heal_row(res: Results) -> Row:
    fname = "heal_minilm.json"
    d = res.load(fname)
    if d is None or not d.get("rows"):
        return Row(NAME, SOURCE, f"not measured yet: no rows in {fname} (run benchmarks/heal.py)", "-", [])
    rows = d["rows"]
    int8 = next((r["fidelity"] for r in rows if "fidelity" in r), None)
    best: dict[str, dict] = {}
    for r in rows:
        if "healed" in r and (r["rewrite"] not in best or r["healed"]["cosine"] > best[r["rewrite"]]["healed"]["cosine"]):
            best[r["rewrite"]] = r
    parts = []
    for spec, r in best.items():
        goal = r.get("goal") or [None]
        reached = goal[0] is not None and r["healed"]["cosine"] >= goal[0]
        parts.append(f"{spec} {r['calibrated']['cosine']:.4f} -> {r['healed']['cosine']:.4f} "
                     f"({'goal reached' if reached else f'goal {goal[0]}'}, {r['calibrate_and_heal_seconds']:.0f} s)")
    refused = [f"{r['rewrite']} rewrites nothing ({'; '.join(r['refused'])})" for r in rows if r.get("refused")]
    verdict = ("Held-out embedding cosine calibrated -> healed (best run): " + "; ".join(parts) + ". "
               + (f"ORT int8 in the same run: {int8['cosine']:.4f}. " if int8 else "") + " ".join(refused))
    head = ["Rewrite", "Run", "Uncalibrated cos / NN", "Calibrated", "Healed", "Heal start -> lowest -> best (held-out part of DATA)",
            "Calibrate + heal (s)", "Steps", "Goal"]
    body = []
    for r in rows:
        h = r.get("healing") or {}
        body.append([r["rewrite"], r.get("run", "-"), _fid(r.get("uncalibrated")), _fid(r.get("calibrated") or r.get("fidelity")),
                     "refused: " + "; ".join(r["refused"]) if r.get("refused") else _fid(r.get("healed")),
                     f"{h['start']:.4f} -> {h['lowest']:.4f} -> {h['best']:.4f}" if h else "-",
                     f"{r['calibrate_and_heal_seconds']:.0f}" if "calibrate_and_heal_seconds" in r else "-",
                     str(h.get("steps", "-")), str((r.get("goal") or ["-"])[0])])
    data = f"DATA: {d.get('samples')} sentences (closed-form fit on {d.get('calib_samples')})"
    detail = [data + ". " + str(d.get("note", "")), "", *table(head, body)]
    return Row(NAME, SOURCE, verdict.strip(), _generic_where(d), [res.rel(fname)], detail, NAME + " (all-MiniLM-L6-v2)")
