"""What the ``n6onnx`` commands print for a person (``--json`` prints the reports' JSON instead):
tables and lines on stdout, warnings and errors on stderr (rich)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import N6Error
from .report import FILES

err = Console(stderr=True)
out = Console()


def of_available(c) -> str:
    return f"{c.samples} of {c.available}" if c.available is not None and c.available > c.samples else str(c.samples)


def fmt(x, spec: str = ".6g") -> str:
    return "n/a" if x is None else format(x, spec)


def validate_human(rep) -> None:
    inp = rep.inputs
    out.print(f"[bold]{escape(rep.original)}[/] vs [bold]{escape(rep.candidate)}[/]  ({rep.seconds:.1f} s)",
              highlight=False)
    extra = f", tokenizer {inp['tokenizer']}" if inp.get("tokenizer") else ""
    out.print(escape(f"inputs: {inp['kind']} {inp['source']}: {inp['samples']} samples in {inp['batches']} "
                     f"batches{extra}"), highlight=False)
    if rep.providers.get("candidate", "CPUExecutionProvider") != "CPUExecutionProvider":
        out.print(escape(f"candidate on {rep.providers['candidate']}, original on {rep.providers['original']}"),
                  highlight=False)
    for n in rep.notes:
        out.print(f"[yellow]note:[/] {escape(n)}", highlight=False)
    for name, r in rep.outputs.items():
        t = Table("metric", "value", title=escape(f"{name}  {r.shape} per batch, {r.dtype['original']}, {r.kind}"),
                  title_justify="left")
        t.add_row("max abs error", fmt(r.max_abs_err))
        if r.kind == "exact":
            t.add_row("equal elements", fmt(r.equal_fraction, ".4%"))
        else:
            t.add_row("max rel error", fmt(r.max_rel_err))
            t.add_row("rel L2 error", fmt(r.rel_l2_err))
            t.add_row("per-sample cosine mean / worst",
                      escape(f"{fmt(r.cosine_mean, '.6f')} / {fmt(r.cosine_min, '.6f')} (sample {r.cosine_min_sample})"))
        if r.embedding:
            e = r.embedding
            t.add_row("embedding cosine mean / min", f"{fmt(e['cosine_mean'], '.6f')} / {fmt(e['cosine_min'], '.6f')}")
            t.add_row("nearest-neighbour agreement", fmt(e["nn_agreement"], ".2%"))
        if r.logits:
            lg = r.logits
            t.add_row("top-1 agreement", fmt(lg["top1_agreement"], ".2%"))
            t.add_row("KL(original || candidate)", fmt(lg["kl_divergence"]))
            if lg["accuracy"]:
                a = lg["accuracy"]
                t.add_row("accuracy original / candidate", f"{a['original']:.2%} / {a['candidate']:.2%}")
        if r.nonfinite["original"] or r.nonfinite["candidate"]:
            t.add_row("non-finite values", f"{r.nonfinite['original']} / {r.nonfinite['candidate']}")
        out.print(t)
    out.print(escape(f"cosine_mean {fmt(rep.cosine_mean, '.6f')} ({rep.cosine_source}), "
                     f"max_abs_err {fmt(rep.max_abs_err)}"), highlight=False)
    for g in rep.gates:
        out.print(("[green]pass[/] " if g.passed else "[red]FAIL[/] ") + escape(g.describe()), highlight=False)


def bench_human(r: dict) -> None:
    s = r["settings"]
    out.print(escape(f"{r['model']}" + (f"  vs  {r['baseline']['model']}" if r["baseline"] else "")), style="bold",
              highlight=False)
    out.print(escape(f"{s['provider']}, threads {s['threads'] or 'ORT default'}, {s['blocks_per_variant']} blocks x "
                     f"{s['block_seconds']:.1f} s per model ({s['order']}), inputs {s['feeds']['shapes']}"), highlight=False)
    cols = [("baseline", r["baseline"]), ("candidate", r)] if r["baseline"] else [("model", r)]
    t = Table("", *[c for c, _ in cols], *(["ratio (median [IQR])"] if r["ratio"] else []))

    def ratio(x):
        return "" if not x or x.get("median") is None else f"{x['median']:.3f}x [{x['q1']:.3f}, {x['q3']:.3f}]"

    rt = r["ratio"] or {}
    for q in ("p50", "p90", "p99"):
        t.add_row(f"latency {q} (ms)", *[f"{v['latency_ms'][q]:.3f}" for _, v in cols],
                  *([ratio(rt.get("latency_p50")) if q == "p50" else ""] if rt else []))
    t.add_row("throughput (inf/s)", *[f"{v['throughput']:.1f}" for _, v in cols], *([ratio(rt.get("throughput"))] if rt else []))
    e0 = r["energy"]
    tag = f"{e0['method']}, {e0['meter']}"
    for key, label, rkey in (("joules_per_inference", "energy J/inf", "total"),
                             ("dynamic_joules_per_inference", "dynamic J/inf", "dynamic")):
        cells = []
        for _, v in cols:
            e = v["energy"]
            x = e.get(key)
            band = e.get("band" if rkey == "total" else "dynamic_band")
            cells.append("n/a" if x is None else f"{x:.4g}" + (f" ({band['low']:.3g}-{band['high']:.3g})" if band else ""))
        t.add_row(f"{label} ({tag})", *cells, *([ratio((rt.get("energy") or {}).get(rkey))] if rt else []))
    for key, label in (("wh_per_1k", "energy Wh/1k inf"), ("co2e_g_per_1k", "gCO2e/1k inf")):
        cells = []
        for _, v in cols:
            c = (v.get("carbon") or {}).get("primary")
            x = c.get(key) if c else None
            band = (c.get("band") or {}).get(key) if c else None
            cells.append("n/a" if x is None else f"{x:.4g}" + (f" ({band[0]:.3g}-{band[1]:.3g})" if band else ""))
        t.add_row(f"{label} ({e0['method']})", *cells, *([""] if rt else []))
    out.print(t)
    for _, v in cols:
        f = v.get("fusion")
        if f:
            tried = ", ".join(f"{a['optimizer']} {a['fused_ops'] if a['error'] is None else 'failed'}" for a in f["attempts"])
            out.print(escape(f"{v['model']}: fusion {f['chosen']} ({f['fused_ops']} fused ops: {f['fused']}; tried {tried})"),
                      highlight=False)
        pl = v["session"]["placement"]
        out.print(escape(f"  placement {pl['by_provider']}, ORT allocator peak {v['session']['ort_allocator_peak_mb']:.1f} MB"),
                  highlight=False)
    for k, ln in (s.get("layernorm") or {}).items():
        if ln["skip_layernorm_nodes"] or ln["form"] == "split" or ln["split_speedup"]:  # (a file already in parts)
            out.print(escape(f"{k} layer norms: {ln['form']} ({ln['mode']}: {ln['reason']})" + (
                f"; run with disabled_optimizers={ln['disabled_optimizers']}" if ln["disabled_optimizers"] else "")),
                highlight=False)
    for o in e0.get("other", []):
        out.print(escape(f"also: {o['method']} {o['meter']}: {o['joules_per_inference']:.4g} J/inf ({o['scope']})"),
                  highlight=False)
    m = r["memory"]
    out.print(escape(f"peak RSS {m['peak_rss_mb']:.0f} MB (process)"
                     + (f", GPU {m['gpu_process_peak_mb']:.0f} MB" if m.get("gpu_process_peak_mb") else "")), highlight=False)
    out.print(escape(f"energy: {e0['source']}; scope: {e0['scope']}"), style="dim", highlight=False)
    cs = s.get("carbon") or {}
    if cs:
        out.print(escape(f"carbon: {cs['methodology']}; grid {cs['grid_intensity_g_per_kwh']} gCO2e/kWh "
                         f"({cs['grid_intensity_source']}); PUE {cs['pue']:g} ({cs['pue_source']})"
                         + (f"; {cs['note']}" if cs.get("note") else "")), style="dim", highlight=False)
    for w in r["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


class progress:
    """A rich progress line for long steps (silent for --json or when nothing is long)."""

    def __init__(self, silent: bool, what: str):
        self.silent, self.what, self._p = silent, what, None

    def __enter__(self):
        if self.silent:
            return None
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._p = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                           transient=True)
        self._p.start()
        task = self._p.add_task(self.what)
        return lambda label: self._p.update(task, description=f"{self.what}: {label}")

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.stop()
        return False


def kinds_table(kinds, last: str) -> None:
    t = Table("kind", "seen", "matched", "rejected", last if last != "found" else "rules")
    for k, r in kinds.items():
        if last == "found":
            rules = sorted({s.rule for s in r.sites})
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), ", ".join(rules))
        else:
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), str(r.rewritten))
    out.print(t)


def near_misses(kinds) -> None:
    for k, r in kinds.items():
        for m in r.near_misses:
            out.print(f"  [dim]{k} near-miss[/] {m.node}: {m.reason}", highlight=False)


def fail(e: N6Error) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)


def inspect_human(rep) -> None:
    out.print(f"[bold]{rep.model}[/]  opset {rep.opset}, {rep.nodes} nodes", highlight=False)
    kinds_table(rep.kinds, "found")
    near_misses(rep.kinds)
    for w in rep.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for k, r in rep.kinds.items():
        for n in r.notes:
            out.print(f"  [yellow]{k} note[/] {escape(n)}", highlight=False)
    for site in rep.kinds["attention"].sites:
        d = site.detail
        if "heads" in d:
            red = f", redundancy {d['redundancy']:.4f}" if d.get("redundancy") is not None else ""
            if d.get("layer_redundancy") is not None:
                red += f", layer redundancy {d['layer_redundancy']:.4f}"
            kv = d.get("kv_heads")
            heads = f"{d['heads']} heads ({kv} kv)" if kv and kv != d["heads"] else f"{d['heads']} heads"
            c = d.get("cache")
            cache = f", cache {c['past_key']}/{c['past_value']} -> {c['present_key']}/{c['present_value']}" if c else ""
            out.print(escape(f"  attention block {d['index']} ({d['form']}): {heads} x {d['head_size']}, "
                             f"scale {d['scale']}, {d['norm']}{red}{cache}"), highlight=False)


def rewrite_human(rep) -> None:
    out.print(f"[bold]{rep.model}[/] -> [bold]{rep.output}[/]  ({rep.seconds:.2f} s)", highlight=False)
    kinds_table(rep.reports, "rewritten")
    near_misses(rep.reports)
    for site in rep.reports["attention"].sites if "attention" in rep.reports else ():
        d = site.detail
        if d.get("method") == "fftmix":
            fit = d.get("fit")
            what = (f"fitted on {fit['rows']} tokens, relative error {fit['rel_err_default']:.4f} (default) -> "
                    f"{fit['rel_err']:.4f}") if fit else "uncalibrated"
            red = f", redundancy {d['redundancy']:.4f}" if d.get("redundancy") is not None else ""
            out.print(escape(f"  attention block {d['index']}: FFTMix ({d['norm']}{red}), {what}"), highlight=False)
        elif d.get("method") == "drop":
            out.print(escape(f"  attention block {d['index']}: dropped"
                             + (f" (redundancy {d['redundancy']:.4f})" if d.get("redundancy") is not None else "")
                             + (", its mean contribution kept as a bias" if d["bias"] else "")), highlight=False)
        elif d.get("method") == "egyptian":
            core = ("; full heads as com.microsoft.MultiHeadAttention" if d.get("core") == "mha" else "")
            how = d["assignment"] + (f" by {d['locality']['criterion']}" if "criterion" in d.get("locality", {}) else "")
            out.print(escape(f"  attention block {d['index']}: EgyptianAttention{' (causal)' if d.get('causal') else ''}, "
                             f"head kinds {d['head_kinds']} (0 full, 1 local, 2 global; {how}), window "
                             f"{d['window']}{core}"), highlight=False)
        c = d.get("cache")
        if c:  # the cache contract of this layer (docs/decoders.md)
            held = c.get("state") or c.get("layout", "")
            per = (f"; {c['bytes_per_token']} bytes/token (original {c['bytes_per_token_original']}) + "
                   f"{c['bytes_fixed']} bytes") if "bytes_per_token" in c else ""
            out.print(escape(f"    cache {c['past_key']}, {c['past_value']} -> {c['present_key']}, "
                             f"{c['present_value']}: {held}{per}"), highlight=False)
    for site in rep.reports["block"].sites if "block" in rep.reports else ():
        d = site.detail
        out.print(escape(f"  layer {d['index']}: dropped"
                         + (f" (layer redundancy {d['layer_redundancy']:.4f})" if "layer_redundancy" in d else "")
                         + (", its mean change of the stream kept as a bias" if d["bias"] else "")), highlight=False)
    if rep.calibration is not None:
        c = rep.calibration
        t = Table("FFN", "rows", "activation fit R2", "rel. error folded", "rel. error refit",
                  title=f"calibration: {of_available(c)} samples ({c.rows} real tokens), {c.seconds:.1f} s")
        for layer in c.layers:
            t.add_row(layer.block, str(layer.rows), f"{layer.activation_r2:.3f}", f"{layer.rel_err_folded:.4f}",
                      f"{layer.rel_err:.4f}")
        out.print(t)
        if c.available is not None and c.available > c.samples:
            out.print(f"calibrated on the first {c.samples} of the {c.available} samples in the data "
                      f"(--calib-samples); more samples usually give a more faithful model, at a longer calibration",
                      highlight=False)
    if rep.quantization is not None:
        q = rep.quantization
        out.print(escape(f"quantized {q.mode}: {q.quantized} of {q.candidates} MatMul/Gemm nodes "
                         f"(onnxruntime.quantization); {q.float_n6_nodes} n6 nodes kept float"
                         + (f"; {_fit(q.fit)}" if q.fit else "")), highlight=False)
    if rep.functions:
        out.print(f"fallback functions attached: {', '.join(rep.functions)}")
    for w in rep.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)
    if rep.healing is not None:
        heal_summary(rep.healing)


def report_human(rep, data, out_dir) -> None:
    files = ", ".join(os.path.join(out_dir, f) for f in FILES.values())
    nv = sum(s.kind == "validate" for s in rep.sources)
    out.print(escape(f"{len(rep.sources)} results ({nv} validate, {len(rep.sources) - nv} bench), "
                     f"{len(rep.variants)} variants -> {files}"), highlight=False)
    for n in rep.notes:
        err.print(f"[yellow]note:[/] {escape(n)}", highlight=False)


def heal_summary(h) -> None:
    out.print(f"healing: held-out fidelity {h.start:.5f} (calibrated) -> {h.best:.5f} (healed); lowest at an "
              f"evaluation {h.lowest:.5f}; {h.steps} steps in {h.seconds:.0f} s ({h.stopped}); "
              f"{h.train_samples} training + {h.heldout_samples} held-out samples; {h.trainable} tensors "
              f"({h.trainable_values} values) trained"
              + (f"; against the {h.config.get('quantize') or 'quantized'} path ({h.fake_quantized} MatMuls "
                 "fake-quantized)" if h.fake_quantized else "")
              + (f"; int8 products {_products(h)}" if getattr(h, "int8_kernel", None) else "")
              + (f"; {len(h.ranges)} activation ranges {_ranges_phase(h)}" if getattr(h, "ranges", None) else ""),
              highlight=False)


def _fit(fit: dict) -> str:
    """What the quantization-aware fit did, and for which int8 kernel."""
    said = f"{fit['matmuls']} MatMuls fitted ({fit['method']}" + (f", on {fit['samples']} samples)" if fit.get("samples") else ")")
    if fit.get("int8_kernel") == "saturating":
        return said + (f" for a kernel that clips pair sums to int16: {fit.get('unsafe_pairs', 0)} weight pairs that "
                       "could clip on the calibration data kept inside int16")
    return said + (" for exact int8 products" if fit.get("int8_kernel") == "exact" else "")


def _products(h) -> str:
    """The int8 kernel a healing mirrored, and whose it is."""
    what = "pair sums clipped to int16" if h.int8_kernel == "saturating" else "exact"
    asked = h.config.get("int8_kernel", "auto")
    if asked == "auto":
        whose = "this CPU's kernel; --int8-kernel names a deployment's"
    elif asked == h.int8_kernel:
        whose = "as --int8-kernel asked"
    else:  # saturating asked where onnxruntime multiplies none of the rounded MatMuls as integers
        whose = (f"--int8-kernel {asked} asked, but onnxruntime runs none of this model's rounded MatMuls "
                 "on its integer kernel: they are float products of dequantized values")
    return f"{what} ({whose})"


def _ranges_phase(h) -> str:
    """What the static heal's range phase did: the best check of that phase against the weights' best."""
    rows = [c for c in h.curve if len(c) > 4 and c[4] == "ranges"]
    before = max([c[2] for c in h.curve if len(c) < 5 or c[4] != "ranges"])
    if not rows:
        return "as calibrated (the budget left no step to train them)"
    gain = max(c[2] for c in rows) - before
    return (f"trained ({len(rows)} check{'s' if len(rows) > 1 else ''}; {'+' if gain > 0 else ''}{gain:.5f} held-out over the healed weights"
            f"{'' if gain > 0 else ': kept as calibrated'})")


def heal_human(rewritten: str, output: str, rep) -> None:
    out.print(f"[bold]{escape(rewritten)}[/] -> [bold]{escape(output)}[/]", highlight=False)
    heal_summary(rep)
