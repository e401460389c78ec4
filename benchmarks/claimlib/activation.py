"""Phi6 vs GELU speed: op level on CPU and CUDA, and end to end."""

from __future__ import annotations

from .common import (
    _bench_where, _energy_cell, _energy_windows, _fidelity_sentence, _rewritten, CLAIMED_SPEEDUP, CLAIMS,
    cpu_hw, direction, dtype_short, energy_label, finite, generated, iqr, not_measured, num, ratio_iqr,
    ratio_x, Results, Row, shape_str, table,
)


def activation_cpu(res: Results) -> Row:
    name, source = CLAIMS["speed"]
    fname = "activation_cpu.json"
    d = res.load(fname)
    if d is None:
        return not_measured("speed", f"no {fname} (run benchmarks/activation_cpu.py)", ": op level, CPU")
    rows = [r for r in d.get("rows", []) if isinstance(r, dict)]
    per: dict[str, list[tuple[str, float, float | None]]] = {}
    bias: dict[str, list[float]] = {}
    detail_rows = []
    for r in rows:
        dt = dtype_short(str(r.get("dtype")))
        res_ = r.get("results") or {}
        ratio = finite(r.get("ratio_phi6_vs_gelu"))
        if ratio is not None:
            per.setdefault(dt, []).append((shape_str(r.get("shape")), ratio, finite(r.get("elements"))))
        if finite(r.get("ratio_biasphi6_vs_biasgelu")) is not None:
            bias.setdefault(dt, []).append(r["ratio_biasphi6_vs_biasgelu"])

        def t(v):  # seconds -> ms with IQR
            s = res_.get(v)
            if not isinstance(s, dict):
                return "n/a"
            return iqr({k: (s[k] * 1e3 if finite(s.get(k)) is not None else None) for k in ("median", "q1", "q3")},
                       sig=4)

        n = next((res_[v].get("n") for v in ("phi6", "ort_gelu") if isinstance(res_.get(v), dict)), None)
        detail_rows.append([dt, shape_str(r.get("shape")), t("ort_gelu"), t("phi6"), ratio_x(r.get("ratio_phi6_vs_gelu"), 4),
                            t("ort_biasgelu"), t("biasphi6"), ratio_x(r.get("ratio_biasphi6_vs_biasgelu"), 4),
                            ratio_x(r.get("ratio_fallback_vs_gelu"), 4), n if n is not None else "n/a"])
    if not per:
        return Row(name + ": op level, CPU", source, f"not measured yet: {fname} has no Phi6/Gelu ratios", "-",
                   [res.rel(fname)])
    parts = []
    all_r = []
    for dt, xs in per.items():
        all_r += [(dt, sh, x) for sh, x, _ in xs]
        lo, hi = min(x for _, x, _ in xs), max(x for _, x, _ in xs)
        s = f"{dt} {ratio_x(lo)}-{ratio_x(hi)}" if lo != hi else f"{dt} {ratio_x(lo)}"
        if dt in bias:
            s += f" (BiasPhi6 vs BiasGelu {ratio_x(min(bias[dt]))}-{ratio_x(max(bias[dt]))})"
        parts.append(s)
    sizes = sorted({sh for xs in per.values() for sh, _, _ in xs}, key=lambda s: [int(p) for p in s.split("x") if p.isdigit()])
    verdict = (f"Our Phi6 kernel vs ORT's Gelu, time ratio per size ({sizes[0]} to {sizes[-1]}): " + "; ".join(parts)
               + ". " + _against_claim(all_r))
    n = {row[-1] for row in detail_rows}
    where = (f"{cpu_hw(d.get('hardware'))}, {d.get('threads', '?')} threads; single-node models, IO binding; "
             f"{', '.join(str(x) for x in sorted(n, key=str))} interleaved blocks per size; spread: IQR of block means "
             f"(details); {generated(d)}")
    detail = [f"Method (from the file): {d.get('method', 'not recorded')}.", ""]
    detail += table(["dtype", "shape", "ORT Gelu ms [IQR]", "Phi6 ms [IQR]", "Gelu/Phi6", "ORT BiasGelu ms [IQR]",
                     "BiasPhi6 ms [IQR]", "BiasGelu/BiasPhi6", "Gelu/Phi6-as-standard-ops", "blocks"], detail_rows)
    detail += ["", "Ratios are ORT time / our time (> 1: ours is faster). \"Phi6-as-standard-ops\" is the pure-ONNX "
               "function body that runs when the library is not registered."]
    return Row(name + ": op level, CPU", source, verdict, where, [res.rel(fname)], detail,
               "Phi6 vs GELU speed: op level, CPU")


def _against_claim(points: list[tuple[str, str, float]]) -> str:
    """points: (dtype, shape, ratio)."""
    if not points:
        return ""
    ratios = [r for _, _, r in points]
    above = [f"{dt} {sh}" for dt, sh, r in points if r >= CLAIMED_SPEEDUP]
    if not above:
        head = (f"Faster than ORT's Gelu at every size, but below the claimed {CLAIMED_SPEEDUP}x everywhere."
                if min(ratios) > 1 else f"Below the claimed {CLAIMED_SPEEDUP}x everywhere, and not faster at every size.")
    else:
        head = (f"{len(above)} of {len(points)} size/dtype points reach the claimed {CLAIMED_SPEEDUP}x "
                f"({', '.join(above)}); the others do not.")
    return head + (" The 8.1x came from numpy timing; the baseline here is ORT's own Gelu kernel. FLOPs are not "
                   "counted: time, bandwidth and energy are measured instead.")


def activation_cuda(res: Results) -> Row:
    name, source = CLAIMS["speed"]
    fname = "activation_cuda.json"
    d = res.load(fname)
    gpu = d.get("gpu") if d else None
    label = f"op level, {gpu.get('name')}" if isinstance(gpu, dict) and gpu.get("name") else "op level, GPU"
    if d is None:
        return not_measured("speed", f"no {fname} (run benchmarks/activation_cuda.py on the GPU machine)",
                            ": op level, GPU")
    rows = [r for r in d.get("rows", []) if isinstance(r, dict)]
    detail_rows = []
    speed: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for r in rows:
        dt = dtype_short(str(r.get("dtype")))
        rr = r.get("results") or {}
        for mode in ("single", "chain"):
            g = (rr.get("ort_gelu") or {}).get(mode)
            p = (rr.get("phi6") or {}).get(mode)
            if not isinstance(g, dict) or not isinstance(p, dict):
                continue
            sp = finite(p.get("speedup_vs_ort_gelu"))
            if sp is not None:
                speed.setdefault((dt, mode), []).append((str(r.get("shape_name") or shape_str(r.get("shape"))), sp))
            bp = (rr.get("biasphi6") or {}).get(mode) or {}
            detail_rows.append([
                dt, r.get("shape_name", ""), shape_str(r.get("shape")), mode,
                iqr(g, "median_ms", "q1_ms", "q3_ms", 4), iqr(p, "median_ms", "q1_ms", "q3_ms", 4),
                num(g.get("tb_per_s"), 3), num(p.get("tb_per_s"), 3), ratio_x(p.get("speedup_vs_ort_gelu"), 4),
                ratio_x(bp.get("speedup_vs_ort_biasgelu"), 4), p.get("blocks", "n/a")])
    big = [r for r in rows if r.get("shape_name") == "8192x4096"] or rows[-1:]
    sentences = []
    for r in big:
        dt = dtype_short(str(r.get("dtype")))
        rr = r.get("results") or {}
        bits = []
        for mode in ("single", "chain"):
            g = (rr.get("ort_gelu") or {}).get(mode) or {}
            p = (rr.get("phi6") or {}).get(mode) or {}
            if finite(p.get("speedup_vs_ort_gelu")) is not None:
                bits.append(f"{mode} {ratio_x(p['speedup_vs_ort_gelu'])} ({num(p.get('tb_per_s'))} vs "
                            f"{num(g.get('tb_per_s'))} TB/s)")
        if bits:
            sentences.append(f"{dt} {shape_str(r.get('shape'))}: " + ", ".join(bits))
    ranges = []
    for (dt, mode), xs in speed.items():
        if mode == "chain":
            lo = min(xs, key=lambda t: t[1])
            hi = max(xs, key=lambda t: t[1])
            ranges.append(f"{dt} {ratio_x(lo[1])} ({lo[0]}) to {ratio_x(hi[1])} ({hi[0]})")
    verdict = "Our Phi6 kernel vs ORT's CUDA Gelu, time ratio (effective bandwidth ours vs ORT's): " + \
              "; ".join(sentences) + "."
    if ranges:
        verdict += " Across sizes (chain mode): " + "; ".join(ranges) + "."
    # energy (NVML)
    e = d.get("energy") if isinstance(d.get("energy"), dict) else {}
    energy_rows = []
    ebits = []
    by = {(x.get("variant"), x.get("dtype"), x.get("mode")): x for x in e.get("results", []) if isinstance(x, dict)}
    for (variant, dtype, mode), x in by.items():
        energy_rows.append([variant, dtype_short(str(dtype)), mode, iqr(x.get("mj_per_node_run"), sig=4),
                            iqr(x.get("mj_per_node_run_above_idle"), sig=4), num(x.get("watts"), 4),
                            num(x.get("ms_per_node_run"), 4),
                            ratio_x(x.get("energy_ratio_vs_ort_gelu") or x.get("energy_ratio_vs_ort_biasgelu"), 4),
                            (x.get("mj_per_node_run") or {}).get("n", "n/a")])
        if variant == "phi6" and mode == "single" and finite(x.get("energy_ratio_vs_ort_gelu")) is not None:
            g = by.get(("ort_gelu", dtype, mode)) or {}
            ebits.append(f"{dtype_short(str(dtype))} {num((x.get('mj_per_node_run') or {}).get('median'))} vs "
                         f"{num((g.get('mj_per_node_run') or {}).get('median'))} mJ per run "
                         f"({ratio_x(x['energy_ratio_vs_ort_gelu'])} of Gelu's energy)")
    if ebits:
        verdict += f" Energy at {shape_str(e.get('shape'))}, measured (nvml), whole board: " + "; ".join(ebits) + "."
    gp = gpu or {}
    hw = d.get("hardware") or {}
    where = (f"{gp.get('name', 'GPU not recorded')} (driver {gp.get('driver', '?')}), onnxruntime "
             f"{hw.get('onnxruntime', '?')} CUDA EP, IO binding on the device; {d.get('rounds', '?')} interleaved "
             f"rounds of ~{num(d.get('block_s'))} s blocks per variant, spread IQR over blocks; chain mode = "
             f"{d.get('chain_length', '?')} nodes per model; energy: NVML windows >= {num(e.get('window_s_min'))} s, "
             f"{_energy_windows(e)} per variant, idle {num(e.get('idle_watts'))} W; {generated(d)}")
    detail = [f"Method (from the file): {d.get('method', 'not recorded')}", ""]
    detail += table(["dtype", "size", "shape", "mode", "ORT Gelu ms [IQR]", "Phi6 ms [IQR]", "Gelu TB/s", "Phi6 TB/s",
                     "Gelu/Phi6", "BiasGelu/BiasPhi6", "blocks"], detail_rows)
    if energy_rows:
        detail += ["", f"Energy at {shape_str(e.get('shape'))} (NVML, measured, whole board incl. idle "
                   f"{num(e.get('idle_watts'))} W):", ""]
        detail += table(["variant", "dtype", "mode", "mJ per node run [IQR]", "above idle [IQR]", "W", "ms per run",
                         "energy vs ORT op", "windows"], energy_rows)
    pl = d.get("placement")
    if isinstance(pl, dict) and pl:
        ok = all(isinstance(v, dict) and v.get("all_on_cuda") for v in pl.values())
        detail += ["", "Placement (ORT profiling): " + ("every variant's nodes ran on CUDAExecutionProvider." if ok else
                   "some nodes did NOT run on CUDAExecutionProvider: " +
                   ", ".join(k for k, v in pl.items() if not (isinstance(v, dict) and v.get("all_on_cuda"))))]
    return Row(f"{name}: {label}", source, verdict, where, [res.rel(fname)], detail, f"Phi6 vs GELU speed: {label}")


def e2e(res: Results, provider: str, fidelity: dict | None, fid_name: str) -> Row:
    name, source = CLAIMS["speed"]
    fname = f"e2e_minilm_{provider}.json"
    where_word = "CPU" if provider == "cpu" else "GPU"
    suffix = f": end to end, all-MiniLM-L6-v2 gelu=phi6, {where_word}"
    w = res.load(fname)
    if w is None:
        return not_measured("speed", f"no {fname} (run benchmarks/e2e.py"
                            + (" --provider cuda on the GPU machine)" if provider == "cuda" else ")"), suffix)
    b = w.get("bench") if isinstance(w.get("bench"), dict) else w
    base = b.get("baseline") or {}
    r = b.get("ratio") or {}
    e = b.get("energy") or {}
    be = base.get("energy") or {}
    er = r.get("energy") or {}
    elabel = energy_label(e)
    lat = r.get("latency_p50")
    verdict = (f"{', '.join(w.get('passes') or ['?'])} ({_rewritten(w.get('rewritten'))}) vs the ORT-best original: "
               f"latency p50 {num((base.get('latency_ms') or {}).get('p50'))} ms -> "
               f"{num((b.get('latency_ms') or {}).get('p50'))} ms, ratio {ratio_iqr(lat)} "
               f"(baseline/candidate): {direction(lat)}")
    if finite(e.get("joules_per_inference")) is not None:
        est = " (CPU-seconds x assumed W/core: an estimate, not a measurement)" if elabel == "estimated" else ""
        verdict += (f"; energy, {elabel}{est}: {num(be.get('joules_per_inference'))} -> "
                    f"{num(e.get('joules_per_inference'))} J/inference, ratio {ratio_iqr(er.get('total'))}: "
                    f"{direction(er.get('total'), 'less energy', 'more energy')}")
    verdict += "."
    files = [res.rel(fname)]
    if fidelity is not None:
        verdict += " Fidelity: " + _fidelity_sentence(fidelity) + f" ({fid_name})."
        files.append(res.rel(fid_name))
    detail = table(["", "original (ORT best)", "gelu=phi6"], [
        ["model", f"`{w.get('original', base.get('model', '?'))}`", f"`{w.get('candidate', b.get('model', '?'))}`"],
        ["latency p50 / p90 / p99 (ms)"] + [" / ".join(num((x.get("latency_ms") or {}).get(q), 4) for q in ("p50", "p90", "p99"))
                                            for x in (base, b)],
        ["throughput (inf/s)"] + [num(x.get("throughput"), 4) for x in (base, b)],
        [f"energy J/inference ({elabel})"] + [_energy_cell(x.get("energy")) for x in (base, b)],
        ["ratio latency p50 (baseline/candidate)", "", ratio_iqr(lat, 4)],
        ["ratio throughput", "", ratio_iqr(r.get("throughput"), 4)],
        [f"ratio energy ({elabel})", "", ratio_iqr(er.get("total"), 4)],
    ])
    if er.get("note"):
        detail += ["", f"Energy ratio note (from the file): {er['note']}."]
    warns = b.get("warnings") or []
    if warns:
        detail += ["", "Warnings recorded by bench: " + "; ".join(str(x) for x in warns)]
    return Row(name + suffix, source, verdict, _bench_where(b, w), files, detail,
               f"Phi6 vs GELU speed{suffix}")
