"""The healing row: issue 16's goals against benchmarks/results/heal_minilm.json (benchmarks/heal.py)."""

from __future__ import annotations

from .common import Results, Row, _generic_where, table

NAME = "Healing (distillation after calibration)"
SOURCE = ("issue 16's goals on all-MiniLM-L6-v2: healed cosine >= 0.998 (gelu=phi6), >= 0.99 (bottleneck 4/3, "
          "fftmix:2, egyptian), >= 0.985 (the three together); calibrate + heal <= 10 min on 2 cores")


def _fid(f: dict | None) -> str:
    return "-" if not f else f"{f['cosine']:.4f} / {f['nn']:.3f}"


def _rows(res: Results, fname: str, name: str, source: str, script: str) -> tuple[dict | None, Row | None]:
    """(the results file, None), or (None, the "not measured yet" row) when it has no rows."""
    d = res.load(fname)
    if d is None or not d.get("rows"):
        return None, Row(name, source, f"not measured yet: no rows in {fname} (run benchmarks/{script})", "-", [])
    return d, None


def heal_row(res: Results) -> Row:
    fname = "heal_minilm.json"
    d, empty = _rows(res, fname, NAME, SOURCE, "heal.py")
    if empty is not None:
        return empty
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


LM_NAME = "Healing a decoder (byte-level GPT-2)"
LM_SOURCE = ("issue 16's goal: the healed gelu=phi6 model of a small GPT-2-style LM trained by the project has "
             "next-token top-1 agreement >= 0.97 with the original on held-out text")


def heal_lm_row(res: Results) -> Row:
    """The decoder goal against benchmarks/results/heal_lm.json (benchmarks/heal_lm.py)."""
    fname = "heal_lm.json"
    d, empty = _rows(res, fname, LM_NAME, LM_SOURCE, "heal_lm.py")
    if empty is not None:
        return empty
    rows = d["rows"]
    by = {r["model"]: r for r in rows}
    cal = next((r for r in rows if r["model"].endswith("calibrated") and "uncalibrated" not in r["model"]), None)
    healed = [r for r in rows if "healing" in r]
    best = max(healed, key=lambda r: r["held_out"]["top1_agreement"], default=None)
    int8 = next((r for r in rows if r["model"].startswith("ORT int8")), None)
    goal = (d.get("goal") or {}).get("top1_agreement", 0.97)
    parts = []
    if cal is not None:
        parts.append(f"calibrated {cal['held_out']['top1_agreement']:.4f}")
    if best is not None:
        t = best["held_out"]["top1_agreement"]
        parts.append(f"healed {t:.4f} ({best['model']}, {best['calibrate_and_heal_seconds']:.0f} s calibrate + heal; "
                     + ("goal reached" if t >= goal else f"goal {goal}: {goal - t:.4f} short") + ")")
    if int8 is not None:
        parts.append(f"ORT int8 in the same run {int8['held_out']['top1_agreement']:.4f}")
    verdict = "Held-out next-byte top-1 agreement with the original: " + "; ".join(parts) + "."
    head = ["Model", "Top-1 agreement", "KL (nats)", "Logits cosine", "Next-byte accuracy", "Seconds"]
    body = [[r["model"], f"{r['held_out']['top1_agreement']:.4f}", f"{r['held_out']['kl']:.5f}",
             f"{r['held_out']['cosine']:.6f}", f"{r['held_out']['accuracy']:.4f}",
             str(r.get("calibrate_and_heal_seconds", r.get("calibrate_seconds", "-")))] for r in by.values()]
    detail = [f"Model: {d.get('model')}. DATA: {d.get('data')}. {d.get('note', '')}", "", *table(head, body)]
    return Row(LM_NAME, LM_SOURCE, verdict, _generic_where(d), [res.rel(fname)], detail, LM_NAME)
