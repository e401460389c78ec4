"""The ``n6onnx`` command line: thin click commands over n6onnx.api."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from .errors import N6Error
from .quantize.mode import QuantModeType

err = Console(stderr=True)
out = Console()


def _fail(e: N6Error) -> None:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(e.exit_code)


@click.group()
@click.version_option(package_name="n6onnx")
def main() -> None:
    """Rewrite ONNX models with the n6 techniques and measure what they really do."""


def _of_available(c) -> str:
    return f"{c.samples} of {c.available}" if c.available is not None and c.available > c.samples else str(c.samples)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calibrate", type=click.Path(dir_okay=False), metavar="DATA",
              help="Calibration data (text or .npz): adds each attention block's redundancy score.")
@click.option("--tokenizer", type=click.Path(file_okay=False), metavar="DIR",
              help="Hugging Face tokenizer folder for a text DATA (default: the packaged all-MiniLM-L6-v2).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def inspect(model: str, calibrate, tokenizer, calib_samples, as_json: bool) -> None:
    """Report the GELU, FFN, attention and MoE subgraphs found in MODEL (with near-misses).

    With --calibrate, each attention block gets a redundancy score: the mean over real tokens of
    the cosine between the residual stream before the block and after its residual add."""
    try:
        rep = api.inspect(model, calibrate=calibrate, tokenizer=tokenizer, calib_samples=calib_samples)
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    out.print(f"[bold]{rep.model}[/]  opset {rep.opset}, {rep.nodes} nodes", highlight=False)
    _kinds_table(rep.kinds, "found")
    _near_misses(rep.kinds)
    for w in rep.warnings:
        out.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    for site in rep.kinds["attention"].sites:
        d = site.detail
        if "heads" in d:
            red = f", redundancy {d['redundancy']:.4f}" if d.get("redundancy") is not None else ""
            out.print(escape(f"  attention block {d['index']} ({d['form']}): {d['heads']} heads x {d['head_size']}, "
                             f"scale {d['scale']}, {d['norm']}{red}"), highlight=False)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--pass", "passes_", multiple=True, metavar="KIND=OPTION",
              help="A rewrite pass: gelu=phi6, gelu=zetaln2, ffn=phi-bottleneck[:RATIO], attention=fftmix[:LAYERS], "
                   "attention=egyptian[:HEADS]. Repeatable; optional with --quantize.")
@click.option("--calibrate", type=click.Path(dir_okay=False), metavar="DATA",
              help="Calibration data: a text file (one sample per line) or an .npz of feeds.")
@click.option("--tokenizer", type=click.Path(file_okay=False), metavar="DIR",
              help="Hugging Face tokenizer folder for a text DATA (default: the packaged all-MiniLM-L6-v2).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True,
              help="Use at most this many calibration samples.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Refit the down projection and its bias by ridge least squares.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic input dimension.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store tensors in OUTPUT.data (default: when the input did or the model is over 2 GB).")
@click.option("--quantize", "quantize_", type=QuantModeType(), metavar="MODE",
              help="Quantize last, with onnxruntime's tools: int8 (dynamic, per channel), int8:static (QDQ, needs "
                   "--calibrate) or int4[:BLOCK] (weight-only MatMulNBits, block 32). n6 ops stay float.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def rewrite(model: str, output: str, passes_: tuple[str, ...], calibrate, tokenizer, calib_samples, refit, dims,
            external_data, quantize_, as_json: bool) -> None:
    """Rewrite MODEL with the given passes and write OUTPUT (atomically; MODEL is never modified)."""
    from .feeds import parse_dims

    try:
        with _progress(as_json or calibrate is None, "calibrating") as progress:
            _, rep = api.rewrite(model, output, passes_, external_data=external_data, calibrate=calibrate,
                                 tokenizer=tokenizer, calib_samples=calib_samples, refit=refit,
                                 dims=parse_dims(dims), progress=progress, quantize=quantize_)
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    out.print(f"[bold]{rep.model}[/] -> [bold]{rep.output}[/]  ({rep.seconds:.2f} s)", highlight=False)
    _kinds_table(rep.reports, "rewritten")
    _near_misses(rep.reports)
    for site in rep.reports["attention"].sites if "attention" in rep.reports else ():
        d = site.detail
        if d.get("method") == "fftmix":
            fit = d.get("fit")
            what = (f"fitted on {fit['rows']} tokens, relative error {fit['rel_err_default']:.4f} (default) -> "
                    f"{fit['rel_err']:.4f}") if fit else "uncalibrated"
            red = f", redundancy {d['redundancy']:.4f}" if d.get("redundancy") is not None else ""
            out.print(escape(f"  attention block {d['index']}: FFTMix ({d['norm']}{red}), {what}"), highlight=False)
        elif d.get("method") == "egyptian":
            core = ("; full heads as com.microsoft.MultiHeadAttention" if d.get("core") == "mha" else "")
            out.print(escape(f"  attention block {d['index']}: EgyptianAttention, head kinds {d['head_kinds']} "
                             f"(0 full, 1 local, 2 global; {d['assignment']}), window {d['window']}{core}"),
                      highlight=False)
    if rep.calibration is not None:
        c = rep.calibration
        t = Table("FFN", "rows", "activation fit R2", "rel. error folded", "rel. error refit",
                  title=f"calibration: {_of_available(c)} samples ({c.rows} token rows), {c.seconds:.1f} s")
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
                         f"(onnxruntime.quantization); {q.float_n6_nodes} n6 nodes kept float"), highlight=False)
    if rep.functions:
        out.print(f"fallback functions attached: {', '.join(rep.functions)}")
    for w in rep.warnings:
        err.print(f"[yellow]warning:[/] {w}", highlight=False)


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--feeds", "feeds_", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Inputs from an .npz: arrays named after the inputs, or NAME/K for batch K.")
@click.option("--text", type=click.Path(dir_okay=False), metavar="FILE", help="Inputs from text, one sample a line.")
@click.option("--tokenizer", type=click.Path(file_okay=False), metavar="DIR",
              help="Hugging Face tokenizer folder for --text (default: the packaged MiniLM's, for the zoo MiniLM).")
@click.option("--random", "random_", type=int, metavar="N", help="N random samples that respect the input types.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic dimension. Repeatable.")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
              help="One integer label per sample (text, one a line, or .npy): task accuracy of both models.")
@click.option("--min-cosine", type=float, help="Fail (exit 1) when cosine_mean is below this.")
@click.option("--max-abs-err", type=float, help="Fail (exit 1) when max_abs_err is above this.")
@click.option("--min-top1", type=float, help="Fail (exit 1) when the top-1 agreement of a logits output is below this.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --random.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads per model.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def validate(original: str, candidate: str, feeds_, text, tokenizer, random_, dims, labels, min_cosine,
             max_abs_err, min_top1, seed, threads, as_json: bool) -> None:
    """Compare CANDIDATE with ORIGINAL on the same inputs: errors, cosines, logits agreement, gates.

    Give exactly one of --feeds, --text or --random. Per output: max absolute / relative error and
    per-sample cosine (mean, worst). An output [B, L, H] with an attention_mask [B, L] input is an
    embedding: mean-pooled cosine and nearest-neighbour agreement. A float output [B, C] (C >= 2, not
    named like an embedding) or [B, L, C] named *logit* is logits: top-1 agreement, KL divergence and,
    with --labels, accuracy. cosine_mean is the embedding cosine, else the first float output's.

    Exit 0: all gates pass; 1: a gate fails (the failing metric is named); 2: bad input.
    """
    try:
        rep = api.validate(
            original, candidate, feeds=feeds_, text=text, tokenizer=tokenizer, random=random_, dims=dims,
            labels=labels, min_cosine=min_cosine, max_abs_err=max_abs_err, min_top1=min_top1, seed=seed,
            threads=threads, progress=err if not as_json else False,
        )
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        _validate_human(rep)
    if not rep.passed:
        if not as_json:
            err.print(f"[bold red]gate failed:[/] {escape(rep.failure_message())}", highlight=False)
        sys.exit(1)


def _fmt(x, spec: str = ".6g") -> str:
    return "n/a" if x is None else format(x, spec)


def _validate_human(rep) -> None:
    inp = rep.inputs
    out.print(f"[bold]{escape(rep.original)}[/] vs [bold]{escape(rep.candidate)}[/]  ({rep.seconds:.1f} s)",
              highlight=False)
    extra = f", tokenizer {inp['tokenizer']}" if inp.get("tokenizer") else ""
    out.print(escape(f"inputs: {inp['kind']} {inp['source']}: {inp['samples']} samples in {inp['batches']} "
                     f"batches{extra}"), highlight=False)
    for n in rep.notes:
        out.print(f"[yellow]note:[/] {escape(n)}", highlight=False)
    for name, r in rep.outputs.items():
        t = Table("metric", "value", title=escape(f"{name}  {r.shape} per batch, {r.dtype['original']}, {r.kind}"),
                  title_justify="left")
        t.add_row("max abs error", _fmt(r.max_abs_err))
        if r.kind == "exact":
            t.add_row("equal elements", _fmt(r.equal_fraction, ".4%"))
        else:
            t.add_row("max rel error", _fmt(r.max_rel_err))
            t.add_row("rel L2 error", _fmt(r.rel_l2_err))
            t.add_row("per-sample cosine mean / worst",
                      escape(f"{_fmt(r.cosine_mean, '.6f')} / {_fmt(r.cosine_min, '.6f')} (sample {r.cosine_min_sample})"))
        if r.embedding:
            e = r.embedding
            t.add_row("embedding cosine mean / min", f"{_fmt(e['cosine_mean'], '.6f')} / {_fmt(e['cosine_min'], '.6f')}")
            t.add_row("nearest-neighbour agreement", _fmt(e["nn_agreement"], ".2%"))
        if r.logits:
            lg = r.logits
            t.add_row("top-1 agreement", _fmt(lg["top1_agreement"], ".2%"))
            t.add_row("KL(original || candidate)", _fmt(lg["kl_divergence"]))
            if lg["accuracy"]:
                a = lg["accuracy"]
                t.add_row("accuracy original / candidate", f"{a['original']:.2%} / {a['candidate']:.2%}")
        if r.nonfinite["original"] or r.nonfinite["candidate"]:
            t.add_row("non-finite values", f"{r.nonfinite['original']} / {r.nonfinite['candidate']}")
        out.print(t)
    out.print(escape(f"cosine_mean {_fmt(rep.cosine_mean, '.6f')} ({rep.cosine_source}), "
                     f"max_abs_err {_fmt(rep.max_abs_err)}"), highlight=False)
    for g in rep.gates:
        out.print(("[green]pass[/] " if g.passed else "[red]FAIL[/] ") + escape(g.describe()), highlight=False)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="ORIGINAL",
              help="The original model: measured as ORT runs it best (transformer fusions applied), interleaved "
                   "with MODEL, and the ratio reported. Without it only MODEL is measured.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--device-id", type=int, default=0, show_default=True, help="CUDA device (and NVML GPU).")
@click.option("--threads", type=int, help="onnxruntime intra-op threads (default: onnxruntime's).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic dimension. Repeatable.")
@click.option("--feeds", "feeds_", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Inputs from an .npz (first batch); default: random inputs of the graph's types.")
@click.option("--seconds", type=float, default=30.0, show_default=True,
              help="Measured time per model, in interleaved blocks of at least --window seconds (3 at least).")
@click.option("--window", type=float, default=5.0, show_default=True,
              help="Minimum block (energy window) length; NVML's counter updates every ~100 ms.")
@click.option("--idle-seconds", type=float, help="Idle-power window before and after the runs (default: --window; 0: none).")
@click.option("--warmup", type=float, default=1.0, show_default=True, help="Warm-up seconds per model.")
@click.option("--cpu-watts", type=float, default=10.0, show_default=True,
              help="Assumed power per busy core for the CPU energy estimate (always labelled estimated; the "
                   "headline figure only when neither NVML nor RAPL is there).")
@click.option("--cpu-watts-uncertainty", type=float, default=0.5, show_default=True,
              help="Relative half-width of the estimate's band (0.5: 5-15 W at 10 W).")
@click.option("--fuse-candidate/--no-fuse-candidate", default=None,
              help="Give MODEL the baseline's transformer fusions too (default: on with --baseline).")
@click.option("--model-type", help="Model type for onnxruntime.transformers' optimizer (default: inferred: bert, gpt2, vit).")
@click.option("--num-heads", type=int, help="Attention heads for onnxruntime.transformers (default: inferred).")
@click.option("--hidden-size", type=int, help="Hidden size for onnxruntime.transformers (default: inferred).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def bench(model: str, baseline, provider, device_id, threads, dims, feeds_, seconds, window, idle_seconds, warmup,
          cpu_watts, cpu_watts_uncertainty, fuse_candidate, model_type, num_heads, hidden_size, as_json: bool) -> None:
    """Latency, throughput, energy per inference and peak memory of MODEL, against ORT's best ORIGINAL.

    Energy figures say how they were obtained: measured (NVML on --provider cuda, RAPL where
    /sys/class/powercap is readable) or estimated (CPU-seconds x --cpu-watts, with its band).
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    try:
        rep = api.bench(
            model, baseline, provider=provider, device_id=device_id, threads=threads, dims=dims, feeds=feeds_,
            seconds=seconds, window=window, idle_seconds=idle_seconds, warmup=warmup, cpu_watts=cpu_watts,
            cpu_watts_uncertainty=cpu_watts_uncertainty, fuse_candidate=fuse_candidate, model_type=model_type,
            num_heads=num_heads, hidden_size=hidden_size, progress=not as_json and err.is_terminal,
        )
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        _bench_human(rep.to_json())


def _bench_human(r: dict) -> None:
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
    for o in e0.get("other", []):
        out.print(escape(f"also: {o['method']} {o['meter']}: {o['joules_per_inference']:.4g} J/inf ({o['scope']})"),
                  highlight=False)
    m = r["memory"]
    out.print(escape(f"peak RSS {m['peak_rss_mb']:.0f} MB (process)"
                     + (f", GPU {m['gpu_process_peak_mb']:.0f} MB" if m.get("gpu_process_peak_mb") else "")), highlight=False)
    out.print(escape(f"energy: {e0['source']}; scope: {e0['scope']}"), style="dim", highlight=False)
    for w in r["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR|JSON...")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), metavar="OUT_DIR",
              help="Folder for report.md, report.json and pareto.png (created if needed).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's content only.")
def report(inputs: tuple[str, ...], out_dir: str, as_json: bool) -> None:
    """Tables and a fidelity-vs-cost plot from validate and bench JSON results.

    Each input is a JSON file (``n6onnx validate --json`` / ``n6onnx bench --json`` output) or a
    folder whose *.json files are all taken. Variants are matched by model path (validate's
    candidate, bench's model); a top-level "label" names one. The original is a variant too
    (fidelity 1.0, figures from bench's baseline). Measured and estimated energy are never mixed
    on one axis. Writes OUT_DIR/report.md, OUT_DIR/report.json and OUT_DIR/pareto.png atomically.
    """
    import os

    from . import report as report_mod

    try:
        rep, data = report_mod.report(inputs, out_dir)
    except N6Error as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    files = ", ".join(os.path.join(out_dir, f) for f in report_mod.FILES.values())
    nv = sum(s.kind == "validate" for s in rep.sources)
    out.print(escape(f"{len(rep.sources)} results ({nv} validate, {len(rep.sources) - nv} bench), "
                     f"{len(rep.variants)} variants -> {files}"), highlight=False)
    for n in rep.notes:
        err.print(f"[yellow]note:[/] {escape(n)}", highlight=False)


class _progress:
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


def _kinds_table(kinds, last: str) -> None:
    t = Table("kind", "seen", "matched", "rejected", last if last != "found" else "rules")
    for k, r in kinds.items():
        if last == "found":
            rules = sorted({s.rule for s in r.sites})
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), ", ".join(rules))
        else:
            t.add_row(k, str(r.seen), str(r.found), str(len(r.near_misses)), str(r.rewritten))
    out.print(t)


def _near_misses(kinds) -> None:
    for k, r in kinds.items():
        for m in r.near_misses:
            out.print(f"  [dim]{k} near-miss[/] {m.node}: {m.reason}", highlight=False)


@main.command()
@click.argument("out_dir", default="build/demo", type=click.Path(file_okay=False))
def demo(out_dir: str) -> None:
    """The main job on the packaged, pretrained all-MiniLM-L6-v2 (needs the export extras):
    rewrite gelu=phi6 with and without calibration, validate, bench and report into OUT_DIR."""
    from . import demo as demo_mod

    sys.exit(demo_mod.main(out_dir))


if __name__ == "__main__":  # pragma: no cover
    main()
