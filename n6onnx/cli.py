"""The ``n6onnx`` command line: each click command parses its options, calls n6onnx.api (or the
module that does the work) and prints with n6onnx.console. New commands and options go here;
their logic goes in the API or a subpackage, their human output in console.py."""

from __future__ import annotations

import json
import sys

import click
from rich.markup import escape

from . import api, console, passes
from . import calibrate as cal
from . import report as report_mod
from .errors import BadArgumentError, N6Error
from .feeds import parse_dims
from .heal.config import INT8_KERNELS, LOCAL_MODES, LOSSES, PARAMS, TRAIN_DTYPES, TRAINABLE, HealConfig
from .options import Number
from .passes.base import INT8_GUARDS
from .quantize import qfit
from .quantize.mode import QuantModeType
from .tune.command import tune as tune_command


@click.group()
@click.version_option(package_name="n6onnx")
def main() -> None:
    """Rewrite ONNX models with the n6 techniques and measure what they really do."""
    import onnxruntime as ort

    # onnxruntime's process-wide logger warns while it merges the shapes of graphs that the quantizer and the
    # fusion probes build ("MergeShapeInfo ... Falling back to lenient merge"): harmless, and not the user's to
    # act on. Its errors still print; n6onnx reports each failure itself.
    ort.set_default_logger_severity(3)


def _heal_options(f, flag: bool = True):
    """--heal (``flag``) and the healing options (shared by `rewrite` and `heal`)."""
    opts = [
        click.option("--heal", is_flag=True, help="Distil the calibrated rewrite towards the original on DATA "
                     "(needs --calibrate; the `heal` extra: torch)."),
        click.option("--heal-samples", type=click.IntRange(min=2), help="Heal on the first N samples of DATA (default: all)."),
        click.option("--heal-minutes", type=Number(0, 10080, lo_open=True), default=HealConfig.minutes,
                     show_default=True, help="Time budget of the healing."),
        click.option("--heal-steps", type=click.IntRange(min=1), help="Stop after N steps (a deterministic end point)."),
        click.option("--heal-local", type=Number(0, 1), default=HealConfig.local, show_default=True,
                     help="Share of the budget spent first on block-local reconstruction (each rewritten block towards "
                     "the original's output); 0: global distillation only."),
        click.option("--heal-local-mode", type=click.Choice(LOCAL_MODES), default=HealConfig.local_mode,
                     show_default=True, help="parallel: every block at once from the original's input (the best "
                     "healed fidelity measured); sequential: one block after another on the model's own input, "
                     "each kept only where the held-out check does not fall (with --heal-local-lr 3e-4 no check "
                     "falls more than about 0.001 below the start, at a fidelity cost: docs/heal-measurements.md)."),
        click.option("--heal-local-lr", type=Number(0, 1, lo_open=True), default=HealConfig.local_lr,
                     show_default=True, help="Adam step of the block-local phase."),
        click.option("--heal-local-lr-start", type=Number(0, 1, lo_open=True, word="off"),
                     default=HealConfig.local_lr_start or "off", show_default=True,
                     help="Adaptive step of the parallel block-local phase: start at this step, double it after each "
                     "held-out check that improves, up to --heal-local-lr; after a check that falls restore the best "
                     "weights and halve it (off: --heal-local-lr after a warm-up)."),
        click.option("--heal-lr", type=Number(0, 1, lo_open=True), default=HealConfig.lr, show_default=True,
                     help="Adam step of the global phase, relative to each weight's typical size."),
        click.option("--heal-train", type=click.Choice(TRAINABLE), default=HealConfig.train, show_default=True,
                     help="What is trained: the rewritten blocks, plus neighbouring LayerNorms and projections, or all."),
        click.option("--heal-loss", type=click.Choice(LOSSES), default=HealConfig.loss, show_default=True,
                     help="Residual stream after each block and/or the model outputs (kl: the KL divergence of "
                     "the outputs' softmax, for a language model's logits; pooled: 1 - cosine of each "
                     "sample's mean-pooled token embeddings, a sentence embedding; relational: pooled plus the "
                     "error of the pairwise cosines between a batch's samples, what nearest neighbours follow)."),
        click.option("--heal-param", type=click.Choice(PARAMS), default=HealConfig.param, show_default=True,
                     help="relative: centred, per-entry-scaled Adam steps; raw: plain Adam on the weights."),
        click.option("--heal-backtrack", type=Number(0, 1, word="auto"), default=HealConfig.backtrack,
                     show_default=True,
                     help="A held-out check this far below the best so far restores the best weights and halves the "
                     "step. auto: the check's own noise, max(0.0005, 2 standard errors of the per-sample "
                     "differences between the check and the best check), so that noise does not stop the healing "
                     "early; a number fixes it."),
        click.option("--heal-floor-falls", type=click.IntRange(min=1), default=HealConfig.floor_falls, show_default=True,
                     help="Falls at the smallest step (1/64 of the phase's) before a phase ends early (converged); "
                     "more keep training at that step, each fall restoring the best weights, while the budget lasts."),
        click.option("--heal-ema", type=Number(0, 1, hi_open=True), default=HealConfig.ema, show_default=True,
                     help="Held-out checks see, and keep as the best, an exponential moving average of the weights "
                     "(decay per step, e.g. 0.99); 0: the live weights."),
        click.option("--heal-fake-quant/--no-heal-fake-quant", default=HealConfig.fake_quant, show_default=True,
                     help="For a quantized result (--quantize int8, int8:static or int4, or healing an int8 or int4 "
                     "model): "
                     "train against the quantized path (fake-quantized MatMuls as onnxruntime runs them, "
                     "straight-through gradients), the quantized MatMuls' weights included; off: heal in float, "
                     "quantize after."),
        click.option("--int8-kernel", "--heal-int8-kernel", "heal_int8_kernel", type=click.Choice(INT8_KERNELS),
                     default=HealConfig.int8_kernel, show_default=True,
                     help="The int8 kernel the model will be deployed on: the fit of --quantize int8 --calibrate "
                     "rounds for it, and a --quantize int8 or int8:static --heal (or healing an int8 model) mirrors "
                     "its products. auto: this CPU's, as measured; exact: x86 with VNNI or AMX, ARM; saturating: x86 "
                     "AVX2 without VNNI, whose u8s8 kernel clips neighbouring product pairs to int16. Quantize on one "
                     "machine for another with exact or saturating. (--heal-int8-kernel: the same option.)"),
    ]
    ranges = [  # rewrite only: `n6onnx heal` takes int8 (dynamic) and int4 models, which have no activation ranges
        click.option("--heal-ranges", type=Number(0, 1, hi_open=True), default=None,
                     help="rewrite --quantize int8:static only: the share of the budget that trains the activation "
                     "ranges last (scale and zero point of each QuantizeLinear, straight-through; the weights frozen), "
                     "written as trained; 0: the calibrated ranges, calibrated again on write-out. [default: "
                     f"{HealConfig.ranges:g}]"),
    ] if flag else []
    opts += ranges + [
        click.option("--heal-dtype", type=click.Choice(TRAIN_DTYPES), default=HealConfig.train_dtype,
                     show_default=True, help="Precision of the training forward: bfloat16 runs it under bf16 "
                     "autocast (about 2x the steps on a CPU with avx512_bf16; held-out checks stay float32; lower "
                     "fidelity under --quantize int8 fake quantization: docs/heal-measurements.md)."),
        click.option("--heal-device", default=HealConfig.device, show_default=True,
                     help="Where the model being healed trains: cpu, or a CUDA device of torch (cuda, cuda:1). The "
                     "original (the teacher) runs on onnxruntime's CPU provider either way."),
        click.option("--heal-cache-mb", type=click.IntRange(min=0), default=HealConfig.cache_bytes >> 20,
                     show_default=True, help="Memory kept for the original's values (the targets, stream points in "
                     "float16) between passes over DATA; batches beyond it are recomputed by onnxruntime at each "
                     "use, which slows every step (MiniLM: about 1.4 GiB holds 2000 sentences at 8 x 64)."),
        click.option("--seed", type=Number(0, 2**63 - 1, integer=True), default=0, show_default=True,
                     help="Seed of the healing's batch order."),
        click.option("--threads", type=Number(1, 4096, integer=True), help="torch / onnxruntime threads of the healing."),
    ]
    for o in reversed(opts[0 if flag else 1:]):
        f = o(f)
    return f


def _heal_config(heal_minutes, heal_steps, heal_local, heal_local_mode, heal_local_lr, heal_local_lr_start, heal_lr,
                 heal_train, heal_loss, heal_param, heal_backtrack, heal_floor_falls, heal_ema, heal_fake_quant,
                 heal_int8_kernel, heal_ranges, heal_dtype, heal_device, heal_cache_mb, seed, threads):
    return HealConfig(minutes=heal_minutes, steps=heal_steps, local=heal_local, local_mode=heal_local_mode,
                      local_lr=heal_local_lr, local_lr_start=None if heal_local_lr_start == "off" else heal_local_lr_start,
                      lr=heal_lr,
                      train=heal_train, loss=heal_loss, param=heal_param, backtrack=heal_backtrack,
                      floor_falls=heal_floor_falls, ema=heal_ema, fake_quant=heal_fake_quant,
                      int8_kernel=heal_int8_kernel,
                      ranges=HealConfig.ranges if heal_ranges is None else heal_ranges,
                      train_dtype=heal_dtype,
                      device=heal_device, cache_bytes=heal_cache_mb << 20, seed=seed, threads=threads)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calibrate", type=click.Path(dir_okay=False), metavar="DATA",
              help="Calibration data (text or .npz): adds each attention block's redundancy score.")
@click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER",
              help="The model's tokenizer for a text DATA: a Hugging Face tokenizer folder or tokenizer.json (default: the packaged all-MiniLM-L6-v2, only for a model whose vocabulary provably is its).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def inspect(model: str, calibrate, tokenizer, calib_samples, as_json: bool) -> None:
    """Report the GELU, FFN, attention and MoE subgraphs found in MODEL (with near-misses).

    With --calibrate, each attention block gets a redundancy score: the mean over real tokens of
    the cosine between the residual stream before the block and after its residual add."""
    try:
        rep = api.inspect(model, calibrate=calibrate, tokenizer=tokenizer, calib_samples=calib_samples)
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
        return
    console.inspect_human(rep)


@main.command(epilog=passes.help_epilog())
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the rewritten model.")
@click.option("--pass", "passes_", multiple=True, metavar="KIND=OPTION",
              help=f"A rewrite pass: {passes.known()} (each pass below). Repeatable; optional with --quantize.")
@click.option("--calibrate", type=click.Path(dir_okay=False), metavar="DATA",
              help="Calibration data: a text file (one sample per line) or an .npz of feeds.")
@click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER",
              help="The model's tokenizer for a text DATA: a Hugging Face tokenizer folder or tokenizer.json (default: the packaged all-MiniLM-L6-v2, only for a model whose vocabulary provably is its).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=cal.SAMPLES, show_default=True,
              help="Use at most this many calibration samples (the first of DATA): more give a closer fit, in "
                   "more time and memory.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Refit the down projection and its bias by ridge least squares.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic input dimension.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store tensors in OUTPUT.data (default: when the input did or the model is over 2 GB).")
@click.option("--quantize", "quantize_", type=QuantModeType(), metavar="MODE",
              help="Quantize last, with onnxruntime's tools: int8 (dynamic, per channel), int8:static (QDQ on the "
                   "MatMul inputs, needs --calibrate) or int4[:BLOCK] (weight-only MatMulNBits, block 32). n6 ops "
                   "stay float.")
@click.option("--quantize-fit", type=click.Choice(["auto", "refit", "gptq", "none"]), default="auto", show_default=True,
              help="With --quantize int8 or int4 and --calibrate (no --heal): refit each quantized MatMul on the "
                   "quantized path and GPTQ-round it onto onnxruntime's grid (refit), GPTQ-round only (gptq), or let "
                   "onnxruntime round to nearest (none). auto: refit where it applies, else none.")
@click.option("--quantize-fit-samples", type=click.IntRange(min=1), default=qfit.SAMPLES, show_default=True,
              help="The fit of --quantize-fit runs on the first this many calibration samples (1000 were measured "
                   "to fit MiniLM no better, in over twice the fit's time).")
@click.option("--int8-guard", type=click.Choice(("auto",) + INT8_GUARDS), default="auto", show_default=True,
              help="Which int8 quantizer a calibrated gelu swap must survive: per-tensor (any stock quantizer; adds "
                   "a gain Mul and an outlier detour FFN per FFN) or per-channel (per-channel/per-block weights only, "
                   "faster). auto: per-channel where the int8 fit runs (--quantize int8 --calibrate, no --heal), "
                   "else per-tensor.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@_heal_options
def rewrite(model: str, output: str, passes_: tuple[str, ...], calibrate, tokenizer, calib_samples, refit, dims,
            external_data, quantize_, quantize_fit, quantize_fit_samples, int8_guard, as_json: bool, heal,
            heal_samples, **heal_opts) -> None:
    """Rewrite MODEL with the given passes and write OUTPUT (atomically; MODEL is never modified).

    With --heal (needs --calibrate), the calibrated rewrite is then distilled towards MODEL on all of
    DATA (or --heal-samples): see `n6onnx heal`."""
    try:
        if heal_opts["heal_ranges"] is not None and str(quantize_) != "int8:static":
            raise BadArgumentError("--heal-ranges trains the activation ranges of --quantize int8:static; "
                                   f"it does not apply to {'--quantize ' + str(quantize_) if quantize_ else 'a float model'}")
        with console.progress(as_json or calibrate is None or heal, "calibrating") as progress:
            _, rep = api.rewrite(model, output, passes_, external_data=external_data, calibrate=calibrate,
                                 tokenizer=tokenizer, calib_samples=calib_samples, refit=refit,
                                 dims=parse_dims(dims), progress=progress, heal=heal, heal_samples=heal_samples,
                                 heal_config=_heal_config(**heal_opts), heal_progress=not as_json,
                                 quantize=quantize_, quantize_fit=quantize_fit, int8_guard=int8_guard,
                                 quantize_fit_samples=quantize_fit_samples,
                                 int8_kernel=heal_opts["heal_int8_kernel"])
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        console.rewrite_human(rep)
    _exit_if_interrupted(rep.healing)


def _exit_if_interrupted(healing) -> None:
    """Ctrl-C during a heal: the best weights so far were written; exit 130 (SIGINT's status) so a script
    can tell the heal did not run its course."""
    if healing is not None and getattr(healing, "stopped", None) == "interrupted":
        sys.exit(130)


@main.command()
@click.argument("rewritten", type=click.Path(dir_okay=False))
@click.option("--teacher", required=True, type=click.Path(dir_okay=False), metavar="ORIGINAL",
              help="The original model (run by onnxruntime as the teacher).")
@click.option("--calibrate", required=True, type=click.Path(dir_okay=False), metavar="DATA",
              help="Unlabeled data: a text file (one sample per line) or an .npz of feeds.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the healed model.")
@click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER",
              help="The model's tokenizer for a text DATA: a Hugging Face tokenizer folder or tokenizer.json (default: the packaged all-MiniLM-L6-v2, only for a model whose vocabulary provably is its).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic input dimension.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
@lambda f: _heal_options(f, flag=False)
def heal(rewritten, teacher, calibrate, output, tokenizer, dims, as_json, heal_samples, **heal_opts) -> None:
    """Distil REWRITTEN (an n6onnx rewrite of ORIGINAL) towards ORIGINAL on DATA; write OUTPUT.

    A REWRITTEN quantized by --quantize int8 (or by quantize_dynamic per channel) or --quantize int4
    (MatMulNBits) is healed under fake quantization and quantized again the same way (same nodes);
    other quantized formats (static QDQ: heal the float model with rewrite --quantize int8:static
    --heal; per tensor; onnxruntime's fused int8 ops) are refused.

    Trains the initializers of the rewritten blocks (--heal-train widens the set) against the
    original's residual stream after each block and its outputs; part of DATA is held out, and the
    weights with the best held-out fidelity are written (never worse than the start). Ctrl-C stops
    the heal, writes the best weights so far and exits 130."""
    from .heal.run import heal_file  # needs torch (the heal extra): only when this command runs

    try:
        rep = heal_file(rewritten, teacher, calibrate, output, tokenizer=tokenizer, samples=heal_samples,
                        dims=parse_dims(dims), config=_heal_config(heal_ranges=None, **heal_opts),
                        progress=not as_json)
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        console.heal_human(rewritten, output, rep)
    _exit_if_interrupted(rep)


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option("--feeds", "feeds_", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Inputs from an .npz: arrays named after the inputs, or NAME/K for batch K.")
@click.option("--text", type=click.Path(dir_okay=False), metavar="FILE", help="Inputs from text, one sample a line.")
@click.option("--tokenizer", type=click.Path(), metavar="TOKENIZER",
              help="The model's tokenizer for --text: a Hugging Face tokenizer folder or tokenizer.json (default: the packaged MiniLM's, only for a model whose vocabulary provably is its).")
@click.option("--random", "random_", type=Number(1, 10**7, integer=True), metavar="N", help="N random samples that respect the input types.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic dimension. Repeatable.")
@click.option("--labels", type=click.Path(dir_okay=False), metavar="FILE",
              help="One integer label per sample (text, one a line, or .npy): task accuracy of both models.")
@click.option("--min-cosine", type=Number(-1, 1), help="Fail (exit 1) when cosine_mean is below this.")
@click.option("--max-abs-err", type=Number(0), help="Fail (exit 1) when max_abs_err is above this.")
@click.option("--min-top1", type=Number(0, 1), help="Fail (exit 1) when the top-1 agreement of a logits output is below this.")
@click.option("--seed", type=Number(0, 2**63 - 1, integer=True), default=0, show_default=True, help="Seed of --random.")
@click.option("--threads", type=Number(1, 4096, integer=True), help="onnxruntime intra-op threads per model.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where the candidate runs (cuda: as deployed on a GPU, e.g. a float16 model); the original, "
                   "the reference, runs on the CPU provider.")
@click.option("--device-id", type=Number(0, 1023, integer=True), default=0, show_default=True,
              help="CUDA device of --provider cuda.")
@click.option("--int8-kernel", type=click.Choice(INT8_KERNELS), default="auto", show_default=True,
              help="The CPU int8 kernel an int8 CANDIDATE's products are computed with. auto: this CPU's; exact: "
              "as x86 with VNNI or AMX and ARM compute them, also on an x86 CPU without VNNI, whose kernel clips "
              "neighbouring product pairs to int16 (validate on a build box for a VNNI server); saturating: "
              "only on such a CPU.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def validate(original: str, candidate: str, feeds_, text, tokenizer, random_, dims, labels, min_cosine,
             max_abs_err, min_top1, seed, threads, provider, device_id, int8_kernel, as_json: bool) -> None:
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
            threads=threads, provider=provider, device_id=device_id, progress=console.err if not as_json else False,
            int8_kernel=int8_kernel,
        )
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        console.validate_human(rep)
    if not rep.passed:
        if not as_json:
            console.err.print(f"[bold red]gate failed:[/] {escape(rep.failure_message())}", highlight=False)
        sys.exit(1)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--baseline", type=click.Path(dir_okay=False), metavar="ORIGINAL",
              help="The original model: measured as ORT runs it best (transformer fusions applied), interleaved "
                   "with MODEL, and the ratio reported. Without it only MODEL is measured.")
@click.option("--provider", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--device-id", type=Number(0, 1023, integer=True), default=0, show_default=True, help="CUDA device (and NVML GPU).")
@click.option("--threads", type=Number(1, 4096, integer=True), help="onnxruntime intra-op threads (default: onnxruntime's).")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE", help="Size of a dynamic dimension. Repeatable.")
@click.option("--feeds", "feeds_", type=click.Path(dir_okay=False), metavar="FILE.npz",
              help="Inputs from an .npz (first batch); default: random inputs of the graph's types.")
@click.option("--seconds", type=Number(0, 86400, lo_open=True), default=30.0, show_default=True,
              help="Measured time per model, in interleaved blocks of at least --window seconds (3 at least).")
@click.option("--window", type=Number(0, 3600, lo_open=True), default=5.0, show_default=True,
              help="Minimum block (energy window) length; NVML's counter updates every ~100 ms.")
@click.option("--idle-seconds", type=Number(0, 3600), help="Idle-power window before and after the runs (default: --window; 0: none).")
@click.option("--warmup", type=Number(0, 3600), default=1.0, show_default=True, help="Warm-up seconds per model.")
@click.option("--cpu-watts", type=Number(0, 10000, lo_open=True), default=10.0, show_default=True,
              help="Assumed power per busy core for the CPU energy estimate (always labelled estimated; the "
                   "headline figure only when neither NVML nor RAPL is there).")
@click.option("--cpu-watts-uncertainty", type=Number(0, 1, hi_open=True), default=0.5, show_default=True,
              help="Relative half-width of the estimate's band (0.5: 5-15 W at 10 W).")
@click.option("--grid-intensity", metavar="G|ISO3",
              help="Grid carbon intensity for CO2e: gCO2e/kWh, or an ISO 3166-1 alpha-3 country code (CodeCarbon's "
                   "data). Default: CodeCarbon's world average (the carbon extra).")
@click.option("--pue", type=Number(1, 100), help="Data-centre PUE for CO2e (default: Green Algorithms' 1.56).")
@click.option("--fuse-candidate/--no-fuse-candidate", default=None,
              help="Give MODEL the baseline's transformer fusions too (default: on with --baseline).")
@click.option("--layernorm", type=click.Choice(["auto", "fused", "split"]), default="auto", show_default=True,
              help="Layer norms as ORT's SkipLayerNormalization or as its parts (Add + LayerNormalization, run with "
                   "ORT's SkipLayerNormFusion disabled). auto: time both forms of each variant and run "
                   "each in its faster one.")
@click.option("--model-type", help="Model type for onnxruntime.transformers' optimizer (default: inferred: bert, gpt2, vit).")
@click.option("--num-heads", type=Number(1, 65536, integer=True), help="Attention heads for onnxruntime.transformers (default: inferred).")
@click.option("--hidden-size", type=Number(1, 2**24, integer=True), help="Hidden size for onnxruntime.transformers (default: inferred).")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
def bench(model: str, baseline, provider, device_id, threads, dims, feeds_, seconds, window, idle_seconds, warmup,
          cpu_watts, cpu_watts_uncertainty, grid_intensity, pue, fuse_candidate, layernorm, model_type, num_heads,
          hidden_size, as_json: bool) -> None:
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
            num_heads=num_heads, hidden_size=hidden_size, grid_intensity=grid_intensity, pue=pue,
            layernorm=layernorm, progress=not as_json and console.err.is_terminal,
        )
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(rep.to_json(), indent=2))
    else:
        console.bench_human(rep.to_json())


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR|JSON...")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(), metavar="OUT_DIR",
              help="Folder for report.md, report.json and pareto.png (created if needed).")
@click.option("--grid-intensity", metavar="G|ISO3",
              help="Grid carbon intensity for CO2e: gCO2e/kWh, or an ISO 3166-1 alpha-3 country code (CodeCarbon's "
                   "data). Default: CodeCarbon's world average (the carbon extra).")
@click.option("--pue", type=Number(1, 100), help="Data-centre PUE for CO2e (default: Green Algorithms' 1.56).")
@click.option("--json", "as_json", is_flag=True, help="Print report.json's content only.")
def report(inputs: tuple[str, ...], out_dir: str, grid_intensity, pue, as_json: bool) -> None:
    """Tables and a fidelity-vs-cost plot from validate and bench JSON results.

    Each input is a JSON file (``n6onnx validate --json`` / ``n6onnx bench --json`` output) or a
    folder whose *.json files are all taken. Variants are matched by model path (validate's
    candidate, bench's model); a top-level "label" names one. The original is a variant too
    (fidelity 1.0, figures from bench's baseline). Measured and estimated energy are never mixed
    on one axis. Writes OUT_DIR/report.md, OUT_DIR/report.json and OUT_DIR/pareto.png atomically.
    """
    try:
        rep, data = report_mod.report(inputs, out_dir, grid_intensity=grid_intensity, pue=pue)
    except N6Error as e:
        console.fail(e)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    console.report_human(rep, data, out_dir)


@main.command()
@click.argument("out_dir", default="build/demo", type=click.Path(file_okay=False))
def demo(out_dir: str) -> None:
    """The main job on the packaged, pretrained all-MiniLM-L6-v2 (needs the export extras):
    rewrite gelu=phi6 with and without calibration, and beside them onnxruntime's int8 quantizer on the
    original (the reference) and on the calibrated rewrite; validate, bench and report into OUT_DIR."""
    # the demo needs the export extras (torch, transformers) and the testing zoo: imported only when
    # `n6onnx demo` runs, so the other commands never load test scaffolding
    from . import demo as demo_mod

    try:
        code = demo_mod.main(out_dir)
    except N6Error as e:
        console.fail(e)
    except OSError as e:  # the output folder cannot be created or written
        console.fail(N6Error(f"{out_dir}: cannot write the demo's files: {e.strerror or e}"))
    sys.exit(code)


main.add_command(tune_command)

if __name__ == "__main__":  # pragma: no cover
    main()
