"""Phi MoE, Egyptian routing and the combined claim."""

from __future__ import annotations

from .common import (
    CLAIMS, Results, Row, _bench_where, _rows_of, cpu_hw, energy_label, finite, generated, num, pct, ratio_iqr, table,
)


def moe_rows(res: Results) -> dict[str, Row] | None:
    """The Phi-MoE and Egyptian-routing rows from benchmarks/moe_quality.py's result (the project's
    own trained character-level MoE), or None when that file does not exist."""
    fname = "moe_quality.json"
    d = res.load(fname)
    if d is None:
        return None
    by = {r.get("option"): r for r in _rows_of(d)}
    m = d.get("model") or {}
    where = (f"{cpu_hw(d.get('hardware'))}; character-level MoE LM trained here ({m.get('layers', '?')} layers, "
             f"D={m.get('d', '?')}, {m.get('experts', '?')} experts of width {m.get('hidden', '?')}, top-{m.get('k', '?')}, "
             f"{m.get('steps', '?')} steps); held-out next-character loss/accuracy over "
             f"{(d.get('data') or {}).get('evaluation_positions', '?')} positions through onnxruntime; latency/energy: "
             f"n6onnx bench vs the ORT-best original, CPU, 2 threads; {generated(d)}")

    def chg(x):
        x = finite(x)
        return "n/a" if x is None else f"{x:+.2f}%"

    def q(r):
        return (f"loss {num(r.get('eval_loss'), 4)} ({chg(r.get('eval_loss_change_pct'))}), accuracy "
                f"{pct(r.get('eval_accuracy'))} ({chg(r.get('eval_accuracy_change_pct'))})")

    def speed(r):
        if not isinstance(r.get("latency_ratio"), dict):
            return ""
        e = r.get("energy_ratio") or {}
        return (f", latency ratio {ratio_iqr(r['latency_ratio'])}, energy ratio "
                f"{ratio_iqr(e.get('total'))} ({energy_label(e)})")

    orig = by.get(None) or {}
    rows: dict[str, Row] = {}
    phis = [by[f"phi:{k}"] for k in range(8) if f"phi:{k}" in by]
    if phis:
        parts = [f"phi:{r['option'].split(':')[1]}: {pct(r.get('active_fraction_vs_top2'))} of top-2's active expert "
                 f"parameters, {q(r)}{speed(r)}" for r in phis]
        verdict = (f"Measured on our trained MoE (original 8 x 4D top-2: loss {num(orig.get('eval_loss'), 4)}, accuracy "
                   f"{pct(orig.get('eval_accuracy'))}). ")
        t = ((d.get("summary") or {}).get("phi_moe") or {}).get("trained_24x4D/3_top2_vs_8x4D_top2")
        if isinstance(t, dict):
            per = ", ".join(chg(x) for x in t.get("per_seed_loss_change_pct") or [])
            verdict += (f"Trained from scratch as 24 experts x 4D/3, top-2 ({pct(t.get('active_fraction'))} of the active "
                        f"expert parameters): loss {chg(t.get('eval_loss_change_pct'))} (per seed: {per}), accuracy "
                        f"{chg(t.get('eval_accuracy_change_pct'))} against 8 x 4D top-2 trained the same way, mean of "
                        f"{len(t.get('seeds') or [])} seed(s) (claimed: -1.76% loss). ")
        verdict += ("Converting the trained model with moe=phi (24 sub-experts, exact) and dropping sub-experts per token "
                    "(changes relative to the original): " + "; ".join(parts) + ".")
        files = [res.rel(fname)]
        anchor = _int8_anchor(res)
        if anchor:
            verdict += " " + anchor
            files.append(res.rel("moe_int8.json"))
        name, source = CLAIMS["phi_moe"]
        rows["phi_moe"] = Row(name, source, verdict, where, files, _moe_detail(d), f"{name} and Egyptian routing ({fname})")
    s = d.get("summary") or {}
    rt = s.get("routing") or {}
    if "egyptian" in by and "equal3" in by:
        bits = []
        t = rt.get("trained_with_each_routing")
        if isinstance(t, dict):
            per = ", ".join(chg(x) for x in t.get("per_seed_change_pct") or [])
            bits.append(f"trained with each routing (same steps; mean of {len(t.get('seeds') or [])} seed(s)): Egyptian "
                        f"accuracy {pct(t.get('egyptian_accuracy'))} vs equal 1/3 {pct(t.get('equal3_accuracy'))}: "
                        f"{chg(t.get('egyptian_vs_equal3_accuracy_change_pct'))} relative (per seed: {per}; claimed +8.8%)")
        sw = rt.get("inference_swap_on_top2_model") or {}
        bits.append(f"swapped into the top-2-trained model (moe=egyptian vs equal weights on the same top-3): "
                    f"{pct(sw.get('egyptian_accuracy'))} vs {pct(sw.get('equal3_accuracy'))}, "
                    f"{chg(sw.get('egyptian_vs_equal3_accuracy_change_pct'))} relative; against the original top-2 "
                    f"({pct(orig.get('eval_accuracy'))}) moe=egyptian changes {q(by['egyptian'])}, running 3 experts "
                    f"per token instead of 2{speed(by['egyptian'])}")
        name, source = CLAIMS["routing"]
        rows["routing"] = Row(name, source, "; ".join(bits) + ".", where, [res.rel(fname)])
    return rows


def _int8_anchor(res: Results) -> str:
    """The sentence on ORT's own int8 of the same kind of model, side by side in one run (moe_int8.json), or ""."""
    d = res.load("moe_int8.json")
    t = (d or {}).get("table") or {}
    anchor = (d or {}).get("anchor")
    rw = next((k for k in t if k.startswith("moe=") and "--quantize" not in k), None)
    if anchor not in t or "fp32" not in t or rw is None:
        return ""
    a, r, f = t[anchor], t[rw], t["fp32"]

    def q(x):
        return (f"loss {num(x.get('eval_loss'), 4)} ({finite(x.get('eval_loss_change_pct')) or 0:+.2f}%), top-1 agreement "
                f"with the original {pct(x.get('top1_agreement_with_original'))}")
    return (f"Against ORT's own dynamic per-channel int8 of the original in one run ({cpu_hw(d.get('hardware'))}; a "
            f"retrained top-2 model, loss {num(f.get('eval_loss'), 4)}): int8 {q(a)}, {ratio_iqr(a.get('speedup_vs_fp32'))} "
            f"fp32's speed; {rw} {q(r)}, {ratio_iqr(r.get('speedup_vs_fp32'))} fp32's and "
            f"{ratio_iqr(r.get('speedup_vs_' + anchor))} int8's speed.")


def _moe_detail(d: dict) -> list[str]:
    out = [f"Method (from the file): {d['method']}", ""] if isinstance(d.get("method"), str) else []
    body = []
    for r in _rows_of(d):
        lat = r.get("latency_ratio")
        e = r.get("energy_ratio") or {}
        body.append([r.get("variant"), pct(r.get("active_fraction_vs_top2")), num(r.get("eval_loss"), 4),
                     pct(r.get("eval_accuracy")), num(r.get("eval_loss_change_pct")), num(r.get("eval_accuracy_change_pct")),
                     pct(r.get("top1_agreement_with_original")),
                     ratio_iqr(lat) if isinstance(lat, dict) else "-", ratio_iqr(e.get("total")) if e else "-"])
    for t in d.get("trained_routing") or []:
        if isinstance(t, dict):
            body.append([t.get("variant"), pct(t.get("active_fraction_vs_top2")) if "active_fraction_vs_top2" in t else "-",
                         num(t.get("eval_loss"), 4), pct(t.get("eval_accuracy")), "-", "-", "-", "-", "-"])
    out += table(["variant", "active expert params vs top-2", "eval loss", "eval accuracy", "loss change %",
                  "accuracy change %", "top-1 agreement with original", "latency ratio", "energy ratio (estimated)"], body)
    out += ["", "Ratios are baseline / candidate (> 1: the candidate is faster or uses less energy)."]
    return out


def combined_row(res: Results) -> Row:
    name, source = CLAIMS["combined"]
    found = []
    for f in res.glob("e2e_*.json"):
        w = res.load(f) or {}
        kinds = {str(p).split("=", 1)[0] for p in (w.get("passes") or [])}
        if len(kinds) >= 2:
            found.append((f, w))
    combined = [(f, res.load(f) or {}) for f in res.glob("combined_*.json")]
    if not found and not combined:
        single = res.glob("e2e_*.json")
        so_far = (f"end-to-end results so far cover single rewrites only ({', '.join(single)})" if single else
                  "no end-to-end result exists yet")
        return Row(name, source, "not measured yet: needs several n6 rewrites in one model (at least two of gelu, ffn, "
                   "attention, moe) and an end-to-end energy run (benchmarks/e2e.py --passes A,B,...); "
                   f"{so_far}.", "-", [])
    rows = [_combined_run_row(res, f, w) for f, w in combined]
    if combined and "combined_cuda.json" not in dict(combined):
        rows.append(Row(name, source, "GPU: not measured yet (benchmarks/gpu_combined.sh on the GPU machine, NVML).",
                        "-", []))
    for f, w in found:
        b = w.get("bench") if isinstance(w.get("bench"), dict) else w
        r = b.get("ratio") or {}
        er = r.get("energy") or {}
        rows.append(Row(name, source,
                        f"{', '.join(w.get('passes'))}: energy ({energy_label(b.get('energy'))}) ratio "
                        f"{ratio_iqr(er.get('total'))} (baseline/candidate), latency ratio "
                        f"{ratio_iqr(r.get('latency_p50'))}.", _bench_where(b, w), [res.rel(f)]))
    if len(rows) == 1:
        return rows[0]
    return Row(name, source, " ".join(r.verdict for r in rows), "; ".join(r.where for r in rows),
               [f for r in rows for f in r.files])


def _combined_run_row(res: Results, f: str, w: dict) -> Row:
    """A benchmarks/combined.py result: passes + int8 vs the ORT-best fp32 original and vs int8 alone."""
    name, source = CLAIMS["combined"]
    v = w.get("verdict") or {}
    sbs = (w.get("side_by_side") or {}).get("variants") or {}
    method = (w.get("side_by_side") or {}).get("method") or {}
    best = sbs.get(v.get("variant")) or {}
    ref = v.get("int8_reference") or "int8"  # the faster int8 graph order (older results: the fused-first int8)
    fid = v.get("fidelity") or {}
    label = "measured" if v.get("method") == "measured" else "estimated"
    quant = v.get("quantize") if v.get("quantize") not in (None, "none") else None
    parts = [f"{', '.join(v.get('passes') or [])}{' + ' + quant if quant else ''} "
             f"({(method.get('provider') or '?')}, energy {label}, meter {v.get('meter')}): energy per inference "
             f"{pct(v.get('energy_saving_vs_fp32'))} lower than the ORT-best fp32 original"]
    alone = v.get("reference_label") or "int8 alone"
    if "energy_saving_vs_int8" in v:
        parts.append(f"{pct(v.get('energy_saving_vs_int8'))} lower than {alone}")
    parts.append(f"latency ratio vs fp32 {ratio_iqr(best.get('speedup_vs_fp32'))}"
                 + (f", vs {alone.removesuffix(' alone')} {ratio_iqr(best.get(f'speedup_vs_{ref}'))}"
                    if best.get(f"speedup_vs_{ref}") else ""))
    parts.append(v["fidelity_note"] if v.get("fidelity_note") else
                 f"held-out cosine {num(fid.get('cosine'), 4)}, NN agreement {pct(fid.get('nn'))}")
    h = v.get("healed")
    if h:
        hf, hh = h.get("fidelity") or {}, h.get("healing") or {}
        parts.append(f"the same recipe healed against its {quant or 'float'} path ({hh.get('steps')} steps, "
                     f"{num(hh.get('seconds'), 0)} s): held-out cosine {num(hf.get('cosine'), 4)}, NN agreement "
                     f"{pct(hf.get('nn'))}, energy {pct(h.get('energy_saving_vs_fp32'))} lower than fp32"
                     + (f", {pct(h.get('energy_saving_vs_int8'))} lower than {alone}"
                        if "energy_saving_vs_int8" in h else ""))
    met = v.get("claim_met")
    verdict = "; ".join(parts) + "."
    if met is not None:
        verdict += (f" The {label} energy saving {'reaches' if met else 'falls short of'} the claimed 60% on this run"
                    + (", at the fidelity above (the project's fidelity goal is cosine >= 0.993)." if met else "."))
    where = (f"{cpu_hw(w.get('hardware'))}; {method.get('timing', '')}; conditions: {w.get('conditions') or '-'}; "
             f"{w.get('generated', '')}")
    return Row(name, source, verdict, where, [res.rel(f)])
