"""The ``n6onnx tune`` click command (registered by n6onnx.cli)."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape

from ..calibrate import TUNE_SAMPLES
from ..errors import N6Error
from . import render, stages
from .study import tune as run


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calibrate", required=True, type=click.Path(dir_okay=False), metavar="DATA",
              help="Text (one sample a line) or .npz feeds; split into a fit part (calibration, healing) and a "
                   "held-out part (fidelity only).")
@click.option("--min-cosine", required=True, type=float, metavar="C", help="Held-out cosine the result must keep.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="OUT",
              help="Where to write the fastest recipe meeting the gates (atomically; nothing when none does).")
@click.option("--tokenizer", type=click.Path(file_okay=False), metavar="DIR",
              help="Hugging Face tokenizer folder for a text DATA (default: the packaged all-MiniLM-L6-v2).")
@click.option("--min-nn", type=float, metavar="X", help="Held-out nearest-neighbour agreement the result must keep.")
@click.option("--min-top1", type=float, metavar="T", help="Held-out top-1 agreement (the next token, for a decoder "
              "whose output is logits) the result must keep.")
@click.option("--minutes", type=float, default=30.0, show_default=True, help="Time budget of the whole search.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write tune.json, tune.md and tune.png (the Pareto front) here.")
@click.option("--threads", type=int, help="onnxruntime intra-op threads, as for bench (default: onnxruntime's).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic dimension (timing "
              "and tokenisation), e.g. --dim batch=8 --dim seq=64. Repeatable.")
@click.option("--holdout", type=float, default=0.25, show_default=True, help="Held-out fraction of DATA.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=TUNE_SAMPLES, show_default=True,
              help="Use at most this many fit samples for each trial's calibration (fewer than rewrite's default: "
                   "every trial calibrates).")
@click.option("--seconds-per-trial", type=float, default=6.0, show_default=True,
              help="Timed seconds per variant and trial (interleaved with the fp32 baseline).")
@click.option("--trials", type=click.IntRange(min=0), help="At most this many recipes (default: as time allows).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampler seed.")
@click.option("--heal/--no-heal", default=None,
              help="Make healing a dimension of the search, and heal the recipes that miss the gates by a little "
                   "(int8 and int4 recipes against their own graph, by fake quantization; fp32 and fp16 ones in float). Default: "
                   "when torch, the heal extra, is installed; else skipped, and the report says so.")
@click.option("--heal-minutes", type=float, default=3.0, show_default=True,
              help="At most this long for each heal (and never more than half the time left).")
@click.option("--storage", metavar="URL", help="Optuna storage (RDB URL or journal file) to share the study; see "
              "docs/tune.md.")
@click.option("--study-name", metavar="NAME", help="Study name in --storage.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where recipes are timed and their fidelity measured; cuda searches float16 instead of int8 and "
                   "measures energy with NVML.")
@click.option("--device-id", type=click.IntRange(0, 1023), default=0, show_default=True, help="CUDA device.")
@click.option("--stage", type=click.Choice(list(stages.QUANT_MODES)),
              help="The reduced precision searched beside the passes (default: int8 on the CPU, fp16 on CUDA); int4 is "
                   "weight-only 4-bit (MatMulNBits), fitted on the fit part of DATA, for machines where it pays.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def tune(model, calibrate, min_cosine, output, tokenizer, min_nn, min_top1, minutes, report_dir, threads, dims, holdout,
         calib_samples, seconds_per_trial, trials, seed, heal, heal_minutes, storage, study_name, provider, device_id,
         stage, as_json) -> None:
    """Find the fastest recipe (passes, int8, heal) for MODEL on this machine that keeps a held-out
    cosine >= C (and NN >= X, top-1 >= T): an Optuna multi-objective study, fidelity against latency.

    Prints the Pareto front with the fp32 original and int8 alone as references, writes the
    fastest recipe meeting the gates (and faster than the original) to OUT; when none does, writes nothing
    and exits 1. With
    --provider cuda, recipes run on the GPU and float16 takes int8's place."""
    err, out = Console(stderr=True), Console()
    device = f"cuda:{device_id}" if provider == "cuda" else "cpu"  # heal on the GPU tune times on, where torch can
    try:
        hook, why = (stages.default_heal(dims=list(dims), threads=threads, device=device) if heal is not False
                     else (None, None))
    except N6Error as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    if heal and hook is None:
        err.print(f"[bold red]error:[/] --heal: {escape(why)}")
        sys.exit(2)
    try:
        rep = run(model, output, calibrate=calibrate, min_cosine=min_cosine, min_nn=min_nn, min_top1=min_top1,
                  tokenizer=tokenizer,
                  minutes=minutes, threads=threads, dims=list(dims), holdout=holdout, calib_samples=calib_samples,
                  seconds_per_trial=seconds_per_trial, trials=trials, seed=seed,
                  heal=hook, heal_minutes=heal_minutes, heal_note=why, storage=storage, study_name=study_name,
                  report_dir=report_dir, provider=provider, device_id=device_id, stage=stage,
                  progress=None if as_json else (lambda s: err.print(f"[dim]{escape(s)}[/]", highlight=False)))
    except N6Error as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2, default=str))
    else:
        out.print(render.table(rep))
        for line in render.reasons(rep):
            out.print(escape(line), style="dim", highlight=False)
        for n in rep.notes:
            out.print(escape(n), highlight=False)
        if rep.output:
            out.print(escape(f"wrote {rep.output}: {rep.chosen.label}"), highlight=False)
    if rep.chosen is None:
        sys.exit(1)
