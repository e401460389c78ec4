"""Python API: inspect and rewrite models. The CLI is a thin layer over these functions."""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Sequence

import onnx
import onnx_ir as ir

from . import calibrate as cal
from . import io, passes
from . import quantize as quant
from .errors import BadArgumentError, N6Error
from .findings import KindReport
from .graph import canonicalize, default_opset
from .heal.config import INT8_KERNELS, HealConfig
from .passes import KINDS, PassSpec  # noqa: F401 - KINDS: the pass kinds, in pipeline order
from .passes.attention import redundancy_scores
from .passes.base import INT8_GUARDS
from .passes.block.drop import layer_scores
from .passes.finalize import check, finalize
from .quantize import qfit
from .quantize.hostile import hostile_activations


@dataclasses.dataclass
class InspectReport:
    model: str
    opset: int
    nodes: int
    kinds: dict[str, KindReport]
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return {"model": self.model, "opset": self.opset, "nodes": self.nodes,
                **{k: r.to_json() for k, r in self.kinds.items()}, "warnings": self.warnings}


@dataclasses.dataclass
class RewriteReport:
    model: str
    output: str | None
    passes: list[str]
    reports: dict[str, KindReport]
    functions: list[str]
    seconds: float
    warnings: list[str] = dataclasses.field(default_factory=list)
    calibration: object | None = None  # calibrate.CalibrationReport (None when no activation was fitted)
    fitted: bool = False  # at least one site was fitted to calibration data
    healing: object | None = None  # heal.train.HealReport
    quantization: object | None = None  # quantize.QuantizeReport

    @property
    def rewritten(self) -> dict[str, int]:
        return {k: r.rewritten for k, r in self.reports.items()}

    def to_json(self) -> dict:
        return {
            "model": self.model, "output": self.output, "passes": self.passes,
            "rewritten": self.rewritten,
            "reports": {k: r.to_json() for k, r in self.reports.items()},
            "functions": self.functions, "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
            "calibrated": self.fitted,
            "calibration": None if self.calibration is None else self.calibration.to_json(),
            "healing": None if self.healing is None else self.healing.to_json(),
            "quantization": None if self.quantization is None else self.quantization.to_json(),
        }


def _load(model: str | os.PathLike | ir.Model | onnx.ModelProto) -> tuple[str, ir.Model]:
    if isinstance(model, ir.Model):
        return "<ir.Model>", ir.from_proto(ir.to_proto(model))  # work on a copy
    if isinstance(model, onnx.ModelProto):
        return "<ModelProto>", ir.serde.deserialize_model(model)
    return str(model), io.load(model)


def inspect(model: str | os.PathLike | ir.Model | onnx.ModelProto, *, calibrate: str | os.PathLike | None = None,
            tokenizer: str | os.PathLike | None = None, calib_samples: int | None = 256,
            dims: dict | None = None) -> InspectReport:
    """Report, per kind (gelu, ffn, attention, moe), what was found, with near-misses.

    With ``calibrate`` (calibration data, as for ``rewrite``) each attention block also gets a
    ``redundancy`` score: the mean over real tokens of cos(residual stream before the block, stream
    after its residual add) (see ``n6onnx.calibrate.attention``), and a ``layer_redundancy`` score for
    the whole layer it opens: mean cos(stream entering the layer, stream leaving it) (see
    ``n6onnx.passes.drop``)."""
    name, m = _load(model)
    n_nodes = sum(1 for _ in m.graph.all_nodes())
    canonicalize(m)
    kinds = passes.detect_all(m)
    if calibrate is not None:
        batches = cal.load_batches(str(calibrate), ir.to_proto(m),
                                   tokenizer=None if tokenizer is None else str(tokenizer), samples=calib_samples,
                                   dims=dims)
        scores = redundancy_scores(m, batches)
        layers = layer_scores(m, batches)
        for site in kinds["attention"].sites:
            if site.detail.get("index") in scores:
                site.detail["redundancy"] = scores[site.detail["index"]]
            if site.detail.get("index") in layers:
                site.detail["layer_redundancy"] = layers[site.detail["index"]]
    return InspectReport(name, default_opset(m), n_nodes, kinds, hostile_activations(ir.to_proto(m)))


def rewrite(
    model: str | os.PathLike | ir.Model | onnx.ModelProto,
    output: str | os.PathLike | None = None,
    passes_: Sequence[str | PassSpec] = ("gelu=phi6",),
    *,
    external_data: bool | None = None,
    calibrate: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    calib_samples: int | None = cal.SAMPLES,
    refit: bool = True,
    dims: dict | None = None,
    progress=None,
    heal: bool = False,
    heal_samples: int | None = None,
    heal_config=None,
    heal_progress: bool = False,
    quantize: str | None = None,
    quantize_fit: str = "auto",
    int8_guard: str = "auto",
    int8_kernel: str = "auto",
    quantize_fit_samples: int | None = qfit.SAMPLES,
) -> tuple[ir.Model, RewriteReport]:
    """Apply passes; write ``output`` atomically if given. The input file is never modified.

    ``heal``: after calibration, distil the rewritten model towards the original on all of the
    calibration data (or its first ``heal_samples``); ``heal_config`` a ``heal.HealConfig``.
    ``quantize`` (``int8``, ``int8:static``, ``int4[:BLOCK]``, see ``n6onnx.quantize``) runs last,
    after the passes, calibration and healing; with it, ``passes_`` may be empty (quantize the original).
    ``quantize_fit`` (``int8`` or ``int4`` with ``calibrate`` and no ``heal``): ``refit`` refits every quantized
    MatMul on the quantized path and GPTQ-rounds it onto onnxruntime's grid (per-channel int8, or MatMulNBits'
    4-bit blocks), ``gptq`` only rounds, ``none`` leaves the rounding to onnxruntime (see
    ``n6onnx.quantize.qfit``); ``auto`` (default): ``refit`` where it applies (``int8`` or ``int4`` with
    ``calibrate`` and no ``heal``: healing trains against the quantized path itself), else ``none``.
    ``int8_guard``: which int8 quantizer a calibrated gelu swap is made to survive. ``per-tensor``: any stock
    quantizer, per-tensor weights included (the up projection's gain in a Mul, outlier units in a detour FFN;
    docs/calibration.md); ``per-channel``: per-channel or per-block weights only (centring and balance, without
    those two pieces, which cost time); ``auto`` (default): ``per-channel`` where the int8 fit runs
    (``quantize_fit`` not ``none``: after it both guards measured level on MiniLM), else ``per-tensor`` (without
    the fit the per-tensor pieces kept 0.001-0.002 more cosine under per-channel int8, and a healed int8 model
    started and ended higher with them).
    ``quantize_fit_samples``: the fit runs on the first that many calibration samples (None: all of them).
    ``int8_kernel`` (``int8`` with the fit or ``heal``, ``int8:static`` with ``heal``): the u8s8 kernel the model
    will be deployed on, which the fit rounds for and the heal mirrors: ``exact`` (x86 with VNNI or AMX, ARM),
    ``saturating`` (x86 without VNNI: pair sums clipped to int16), ``auto`` (default): this CPU's.

    Returns the rewritten model and a report of what each pass saw, matched, rejected, rewrote.
    """
    t0 = time.perf_counter()
    specs = [p if isinstance(p, PassSpec) else passes.parse(p) for p in passes_]
    qmode = None
    if quantize is not None:
        qmode = quant.parse_mode(quantize)
        if qmode.needs_calibration and calibrate is None:
            raise N6Error(f"--quantize {qmode} needs calibration data (--calibrate DATA)")
    if quantize_fit not in qfit.METHODS + ("auto",):
        raise BadArgumentError(f"quantize_fit: expected auto or one of {', '.join(qfit.METHODS)}, got {quantize_fit!r}")
    if quantize_fit == "auto":
        fits = qmode is not None and qmode.kind in qfit.MODES and calibrate is not None and not heal
        quantize_fit = "refit" if fits else "none"
    if quantize_fit != "none" and (qmode is None or qmode.kind not in qfit.MODES or calibrate is None):
        raise BadArgumentError(f"--quantize-fit {quantize_fit} needs --quantize int8 or int4 and --calibrate DATA "
                               "(it fits the quantized MatMuls on DATA)")
    if quantize_fit_samples is not None and quantize_fit_samples < 1:
        raise BadArgumentError(f"quantize_fit_samples: expected a positive count or None, got {quantize_fit_samples!r}")
    if int8_guard not in INT8_GUARDS + ("auto",):
        raise BadArgumentError(f"int8_guard: expected auto, {' or '.join(INT8_GUARDS)}, got {int8_guard!r}")
    if int8_guard == "auto":
        int8_guard = "per-channel" if quantize_fit != "none" and not heal else "per-tensor"
    if int8_kernel not in INT8_KERNELS:
        raise BadArgumentError(f"int8_kernel: expected one of {', '.join(INT8_KERNELS)}, got {int8_kernel!r}")
    kind = qmode.kind if qmode is not None else None
    if int8_kernel != "auto" and not (kind == "int8" and (heal or quantize_fit != "none") or kind == "int8:static" and heal):
        raise BadArgumentError(
            "--int8-kernel names the int8 kernel that the fit of --quantize int8 (with --calibrate) rounds for, or "
            "that a --quantize int8 or int8:static --heal mirrors; it does not apply to "
            + (f"--quantize {qmode}" if qmode else "a float model")
            + (" without --heal" if kind == "int8:static" else " with --quantize-fit none and no --heal" if kind == "int8" else ""))
    if heal and int8_kernel != "auto":
        heal_config = dataclasses.replace(heal_config or HealConfig(), int8_kernel=int8_kernel)
    if not specs and qmode is None:
        raise N6Error("no pass given (e.g. --pass gelu=phi6, or --quantize int8)")
    passes.plan(specs)  # duplicate passes on the same sites: refused before any work
    if heal and calibrate is None:
        raise BadArgumentError("--heal needs --calibrate DATA (the teacher is run on it)")
    if heal:
        from .heal import run as heal_run  # needs torch (the heal extra): only when healing

        if heal_config is not None:  # a device torch cannot use: refused before the passes and calibration
            heal_run.check_device(heal_config.device)
    if output is not None:
        io.check_output_path(output, (model,) if isinstance(model, (str, os.PathLike)) else ())
    name, m = _load(model)
    if qmode is not None:  # a precision the stages cannot take: refused before the passes run
        quant.check_precision(m, qmode, name)
    if heal:
        heal_run.check_precision(m, name)
    in_names = [v.name for v in m.graph.inputs]
    out_names = [v.name for v in m.graph.outputs]
    if external_data is None and isinstance(model, (str, os.PathLike)):
        external_data = io.uses_external_data(model) or None
    canonicalize(m)
    original = ir.from_proto(ir.to_proto(m)) if calibrate is not None else None
    ctx = passes.PassContext(original=original, refit=refit, progress=progress or None, int8_guard=int8_guard)
    if calibrate is not None:
        ctx.batches = cal.load_batches(str(calibrate), ir.to_proto(original),
                                       tokenizer=None if tokenizer is None else str(tokenizer),
                                       samples=calib_samples, dims=dims)
    reports: dict[str, KindReport] = {}
    calibration = None
    functions: list[str] = []
    for spec in passes.plan(specs):
        report = passes.run(m, spec, ctx)
        reports[spec.kind] = reports[spec.kind].merged(report) if spec.kind in reports else report
        functions = finalize(m)
        hook = passes.PASSES[spec.kind].calibrate
        if hook is not None and ctx.batches and report.rewritten:
            calibration = hook(m, report, ctx)
            functions = finalize(m)
    healing = None
    if heal:
        if qmode is not None:  # heal against what will be written: the student runs it fake-quantized
            heal_config = dataclasses.replace(heal_config or HealConfig(), quantize=str(qmode))
        healing = heal_run.heal_in_place(m, original, calibrate, tokenizer=tokenizer, samples=heal_samples, dims=dims,
                                         config=heal_config, progress=heal_progress, quant_feeds=ctx.batches)
    if [v.name for v in m.graph.inputs] != in_names or [v.name for v in m.graph.outputs] != out_names:
        raise N6Error("internal error: a pass changed graph input/output names")  # never expected
    warnings = [n for r in reports.values() for n in r.notes]
    if calibration is not None and not calibration.layers:
        calibration = None  # nothing was fitted: the swap is uncalibrated, and is reported so
    if calibration is not None:
        warnings += [f"{l.block}: the calibration's affine could not be folded into the neighbours; emitted "
                     f"explicitly: {'; '.join(l.explicit)}" for l in calibration.layers if l.explicit]
        warnings += calibration.warnings
    elif reports.get("gelu") and reports["gelu"].rewritten:
        warnings.append(
            "uncalibrated activation swap: a pretrained model will lose accuracy (GELU and Phi6 are "
            "uncorrelated); pass --calibrate DATA to recover it, and measure with `n6onnx validate`"
        )
    fitted = (calibration is not None) or any(
        k in passes.DATA_PASSES and r.rewritten for k, r in reports.items()) and bool(ctx.batches)
    if fitted and healing is not None and sum(ctx.batches.rows) > healing.train_samples:
        # the heal holds out the end of DATA, calibration fits its first --calib-samples: they overlap
        warnings.append(f"heal: its {healing.heldout_samples} held-out samples (the end of DATA) were also "
                        f"calibration's (its first {sum(ctx.batches.rows)}), so its checks read high and it may stop "
                        "early; give more DATA or a smaller --calib-samples")
    if calibrate is not None and not fitted and specs:
        warnings.append(f"--calibrate {calibrate}: no site was calibrated (no rewritten site could use the data: "
                        "see the near-misses); the result is uncalibrated")
    check(m)
    quantization = None
    if qmode is not None:  # last: onnxruntime's quantizer on the finished float model
        proto = io.materialize(ir.serde.serialize_model(m))
        fit = None
        if qmode.kind in qfit.MODES and ctx.batches and quantize_fit != "none" and not heal:
            proto, fit = qfit.fit_quantized(proto, ctx.batches.head(quantize_fit_samples), compensate=quantize_fit == "refit",
                                            progress=ctx.progress, mode=qmode,
                                            saturate={"auto": None, "exact": False, "saturating": True}[int8_kernel])
        quantization, proto = quant.quantize_proto(proto, qmode, calibration_feeds=ctx.batches,
                                                   ranges=getattr(healing, "ranges", None))
        quantization.fit = None if fit is None else fit.to_json()
        warnings += quantization.warnings
        m = ir.serde.deserialize_model(proto)
    if output is not None:  # tensor by tensor: external ones are copied file to file
        io.save(m, output, external_data=external_data,
                inputs=(model,) if isinstance(model, (str, os.PathLike)) else ())
    rep = RewriteReport(name, str(output) if output else None, [str(s) for s in specs], reports,
                        functions, time.perf_counter() - t0, warnings, calibration, fitted, healing,
                        quantization)
    return m, rep


# --------------------------------------------------------------------------------------------------
# validate (imported eagerly: the subpackage n6onnx.validate must be loaded before n6onnx/__init__
# binds the name ``n6onnx.validate`` to the function below, or a first import would rebind it)
from .validate import run as _validate_run  # noqa: E402

ValidateReport = _validate_run.ValidateReport


def validate(
    original: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    feeds=None,
    text: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    random: int | None = None,
    dims=None,
    labels: str | os.PathLike | None = None,
    min_cosine: float | None = None,
    max_abs_err: float | None = None,
    min_top1: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    provider: str = "cpu",
    device_id: int = 0,
    progress=False,
    int8_kernel: str = "auto",
) -> ValidateReport:
    """Run ``original`` and ``candidate`` on the same inputs and compare every output.

    Inputs: exactly one of ``feeds`` (.npz path, feed dict or list of them), ``text`` (one sample a
    line; ``tokenizer`` a Hugging Face tokenizer folder) or ``random`` (number of samples);
    ``dims`` sizes dynamic dimensions (``["batch=8"]`` or a mapping). Gates: ``min_cosine``
    (on ``cosine_mean``), ``max_abs_err``, ``min_top1``. ``provider``: where the candidate runs
    (``"cuda"``: on ``device_id``, as deployed on a GPU; the original always runs on the CPU provider,
    the reference). ``int8_kernel`` (``exact``): compute an int8 candidate's products as an exact int8 kernel
    (VNNI, AMX, ARM) does, on a CPU whose kernel clips pair sums too. Returns a report (``.passed``,
    ``.failed``, ``.to_json()``); bad input raises ``N6Error`` subclasses.
    """
    return _validate_run.validate(
        original, candidate, feeds=feeds, text=text, tokenizer=tokenizer, random=random, dims=dims,
        labels=labels, min_cosine=min_cosine, max_abs_err=max_abs_err, min_top1=min_top1, seed=seed,
        threads=threads, provider=provider, device_id=device_id, progress=progress, int8_kernel=int8_kernel,
    )


# --------------------------------------------------------------------------------------------------
# bench (imported eagerly for the same reason as validate: n6onnx.bench must name the function)
from .bench import run as _bench_run  # noqa: E402

BenchReport = _bench_run.BenchReport


def bench(
    model: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    *,
    provider: str = "cpu",
    threads: int | None = None,
    dims=None,
    feeds: str | os.PathLike | None = None,
    seconds: float = 30.0,
    **options,
) -> BenchReport:
    """Latency (p50/p90/p99), throughput, energy per inference and peak memory of ``model``, against
    ORT's best version of ``baseline`` (the original with its transformer fusions) when given.

    ``provider`` "cpu" or "cuda"; ``dims`` sizes dynamic dimensions; ``feeds`` an .npz (default:
    random feeds); ``seconds`` measured per variant in interleaved blocks of at least ``window``
    (5 s) each. Further options (``window``, ``idle_seconds``, ``warmup``, ``cpu_watts``,
    ``cpu_watts_uncertainty``, ``fuse_candidate``, ``model_type``, ``num_heads``, ``hidden_size``,
    ``device_id``, ``progress``): see ``n6onnx.bench.run.bench``. Returns a report (``.to_json()``).
    """
    return _bench_run.bench(model, baseline, provider=provider, threads=threads, dims=dims, feeds=feeds,
                            seconds=seconds, **options)
