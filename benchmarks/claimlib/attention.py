"""FFT-Mix and Egyptian attention."""

from __future__ import annotations

from .common import (
    _generic_where, _row_name, _row_summary, _rows_of, CLAIMS, finite, generic_table, pct, ratio_x, Results,
    Row,
)


def attention_rows(res: Results) -> dict[str, Row]:
    """The FFT-Mix and Egyptian-attention rows from benchmarks/attention_e2e.py's result (pretrained
    all-MiniLM-L6-v2) plus, when present, the op-level results attention_ops_{cpu,cuda}.json."""
    out: dict[str, Row] = {}
    fname = "attention_minilm.json"
    d = res.load(fname)
    rr = _rows_of(d) if d else []
    for key, prefix, note in (
            ("fftmix", "fftmix", "FFT-Mix replaces whole attention blocks of a pretrained model without training (the "
                                 "sources train it from scratch): filters and Linear(3D->D) fitted on calibration text. "),
            ("egyptian_attention", "egyptian", "Egyptian attention keeps the pretrained weights and restricts which keys "
                                               "each head sees (no retraining). ")):
        name, source = CLAIMS[key]
        mine = [r for r in rr if _row_name(r).startswith(prefix)]
        files, detail, where = [], [], []
        verdict = ""
        if mine:
            verdict = note + "; ".join(
                f"{_row_name(r)}: {_row_summary(r)}"
                + (f", keys scored per query {pct(r['attention_core_work_ratio_L128'])} of full attention at L=128 "
                   f"(analytic)" if finite(r.get("attention_core_work_ratio_L128")) is not None else "")
                for r in mine) + "."
            files.append(res.rel(fname))
            detail += [f"Method (from {fname}): {d.get('method', 'not recorded')}", ""] + generic_table(mine)
            where.append(_generic_where(d))
        for oname, ops in (("attention_ops_cpu.json", res.load("attention_ops_cpu.json")),
                           ("attention_ops_cuda.json", res.load("attention_ops_cuda.json"))):
            ol = _attention_ops_sentence(ops, prefix)
            if ol:
                verdict += f" Op level ({oname}, {ops.get('provider', '?')}): {ol}."
                files.append(res.rel(oname))
                where.append(_generic_where(ops))
        if prefix == "egyptian":  # benchmarks/gpu_egyptian_long.sh: e2e_egyptian_long_<L>[_nomask][_fp16]_<core>_cuda.json
            bits = []
            for path in sorted(res.folder.glob("e2e_egyptian_long_*_cuda.json")):
                tag = path.name[len("e2e_egyptian_long_"):-len("_cuda.json")]
                shape, _, core = tag.rpartition("_")
                e = res.load(path.name)
                b = (e or {}).get("bench") or {}
                lat = (b.get("ratio") or {}).get("latency_p50") or {}
                if finite(lat.get("median")) is None:
                    continue
                en = ((b.get("ratio") or {}).get("energy") or {}).get("total") or {}
                dtype = "float16" if shape.endswith("fp16") else "float32"
                masked = "no mask" if "nomask" in shape.split("_") else "[B, L] mask"
                bits.append(f"{shape.split('_')[0]} {dtype} {masked}, {core} core: latency ratio {ratio_x(lat['median'])} "
                            f"[{ratio_x(lat.get('q1'))}, {ratio_x(lat.get('q3'))}], energy ratio "
                            f"{ratio_x(en.get('median'))} ({(b.get('energy') or {}).get('method', '?')}, "
                            f"{(b.get('energy') or {}).get('meter', '?')})")
                files.append(res.rel(path.name))
                where.append(_generic_where(b))
            if bits:
                verdict += (" End to end on CUDA (benchmarks/gpu_egyptian_long.sh: BERT-base-shaped 4-layer encoder, "
                            "batch 1, random weights, attention=egyptian:by-index, original/rewritten vs ORT's best "
                            "original): " + "; ".join(bits) + ".")
        if files:
            out[key] = Row(name + " (all-MiniLM-L6-v2)" if mine else name, source, verdict.strip(), "; ".join(where),
                           files, detail, name)
    return out


def _attention_ops_sentence(ops: dict | None, prefix: str) -> str:
    """benchmarks/attention_ops.py's results ({"dtype/L": {"ratios": ...}}) as one sentence."""
    if not ops or not isinstance(ops.get("results"), dict):
        return ""
    bits = []
    for k, v in ops["results"].items():
        r = (v or {}).get("ratios") or {}
        if prefix == "fftmix" and finite(r.get("mha_over_fftmix")) is not None:
            bits.append(f"{k}: MultiHeadAttention / FFTMix {ratio_x(r['mha_over_fftmix'])}, attention sub-layer / "
                        f"(FFTMix + Linear) {ratio_x(r.get('mha_block_over_fftmix_linear'))}")
        elif prefix == "egyptian" and finite(r.get("egyptian_saving_vs_egyptian_full")) is not None:
            mha_core = (f", with the mha core (full heads through MultiHeadAttention) vs MultiHeadAttention "
                        f"{pct(r['egyptian_mha_saving_vs_mha'])}"
                        if finite(r.get("egyptian_mha_saving_vs_mha")) is not None else "")
            bits.append(f"{k}: time saved vs all heads full {pct(r['egyptian_saving_vs_egyptian_full'])}, vs "
                        f"MultiHeadAttention {pct(r.get('egyptian_saving_vs_mha'))}{mha_core} (analytic FLOP saving "
                        f"{pct(v.get('analytic_flop_saving_632'))})")
    return "; ".join(bits)
