"""``n6onnx tune``: an Optuna multi-objective study (held-out fidelity up, latency down) over recipes.

Flow: split DATA into a fit part (calibration, healing) and a held-out part (fidelity only); make
ORT's best fused original (the fp32 baseline) and its int8 versions in both graph orders (fused, then
quantized: a fused attention keeps its Q/K/V projections float; quantized, then fused: every MatMul int8, what
``quantize_dynamic`` on the export gives), the faster of which is the int8 reference; then each trial builds a
recipe (passes -> heal -> int8 and fusion in the reference's order; a healed int8 recipe: passes -> heal under
fake quantization -> int8 -> fuse, so the written int8 graph is the one the heal trained against), measures its
held-out fidelity, and times it
only when the fidelity meets the gates (otherwise the trial is pruned: no time is spent timing a
recipe that cannot be chosen). The fastest recipe meeting the gates is written to OUT.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pathlib
import shutil
import tempfile
import time
from typing import Callable

import numpy as np

from .. import api, io, runtime, vocab
from .. import feeds as feeds_mod
from .. import quantize as quant_mod
from ..calibrate import TUNE_SAMPLES, load_batches
from ..feeds import parse_dims
from ..bench.energy import CPU_WATTS_PER_CORE
from ..errors import BadArgumentError, N6Error
from . import measure, render, space, stages
from .stages import FUSED_FIRST, QUANTIZED_FIRST  # noqa: F401  (study.FUSED_FIRST: the graph-order labels)

#: what the heal hook's result (a ``heal.train.HealReport``) adds to a healed point's ``healing``
HEAL_FIELDS = ("steps", "fake_quantized", "start", "best", "stopped")
#: a recipe whose cosine misses --min-cosine by at most this (NN, top-1: 4x this) gets a healed trial
HEAL_MARGIN = 0.02
#: this many proposals in a row of recipes already measured end the study (the space is exhausted)
EXHAUSTED = 200


@dataclasses.dataclass
class Point:
    """One measured recipe."""

    recipe: space.Recipe
    role: str  # "fp32", "int8" (or "fp16" on CUDA: the reduced-precision reference), "trial"
    fidelity: dict | None = None
    timing: dict | None = None
    status: str = "complete"  # complete | pruned (gates failed, not timed) | failed
    reason: str = ""
    number: int | None = None
    path: pathlib.Path | None = None
    seconds: float = 0.0
    healing: dict | None = None  # healed recipes: how (float / fake-quant int8), heal seconds, steps, ...
    graph: str = ""  # int8 points: the graph order ("fused, then quantized" / "quantized, then fused")

    @property
    def label(self) -> str:
        return self.recipe.label + (f" ({self.graph})" if self.graph else "")

    @property
    def cosine(self) -> float | None:
        return (self.fidelity or {}).get("cosine")

    @property
    def nn(self) -> float | None:
        return (self.fidelity or {}).get("nn")

    @property
    def top1(self) -> float | None:
        return (self.fidelity or {}).get("top1")

    @property
    def latency(self) -> float | None:
        return ((self.timing or {}).get("latency_ms") or {}).get("median")

    @property
    def speedup(self) -> float | None:
        return ((self.timing or {}).get("speedup_vs_fp32") or {}).get("median")

    @property
    def relative_latency(self) -> float | None:
        """Latency relative to the fp32 baseline timed interleaved with it (1 / speed-up): compares
        trials timed minutes apart on a machine whose load drifts, which raw milliseconds do not."""
        s = self.speedup
        return None if not s else 1.0 / s

    def to_json(self) -> dict:
        return {"role": self.role, "trial": self.number, **self.recipe.to_json(), "graph": self.graph or None,
                "status": self.status,
                "reason": self.reason, "fidelity": self.fidelity, "timing": self.timing,
                "healing": self.healing, "seconds": round(self.seconds, 2)}


@dataclasses.dataclass
class TuneReport:
    model: str
    output: str | None
    min_cosine: float
    min_nn: float | None
    references: list[Point]
    trials: list[Point]
    front: list[Point]
    chosen: Point | None
    setting: dict
    seconds: float
    notes: list[str] = dataclasses.field(default_factory=list)
    min_top1: float | None = None

    def meets(self, p: Point) -> bool:
        return _meets(p, self.min_cosine, self.min_nn, self.min_top1)

    @property
    def key(self) -> str:
        """The fidelity of the front and the plot: "top1" where the study gates on it, else "cosine"."""
        return "top1" if self.min_top1 is not None else "cosine"

    def gates(self) -> str:
        """The gates in words, e.g. "cosine >= 0.99, top-1 >= 0.97"."""
        return _gates(self.min_cosine, self.min_nn, self.min_top1)

    @property
    def int8(self) -> Point | None:
        """The int8 reference ("x int8"): the faster of the int8 graph orders measured."""
        return anchor(self.references)

    def to_json(self) -> dict:
        int8 = self.int8
        chosen = None
        if self.chosen is not None:
            chosen = self.chosen.to_json()
            if int8 is not None and int8.speedup and self.chosen.speedup:
                chosen["speedup_vs_int8"] = self.chosen.speedup / int8.speedup
        return {"model": self.model, "output": self.output, "min_cosine": self.min_cosine, "min_nn": self.min_nn,
                "min_top1": self.min_top1,
                "setting": self.setting, "seconds": round(self.seconds, 1), "chosen": chosen,
                "references": [p.to_json() for p in self.references], "front": [p.to_json() for p in self.front],
                "trials": [p.to_json() for p in self.trials], "notes": self.notes}


def anchor(references: list[Point]) -> Point | None:
    """The fastest int8 reference (by speed-up over the fp32 baseline), or the first one when none is timed."""
    q = [p for p in references if p.role in stages.QUANT_MODES]
    timed = [p for p in q if p.speedup]
    return max(timed, key=lambda p: p.speedup) if timed else (q[0] if q else None)


def _meets(p: Point, c: float, nn: float | None, top1: float | None = None) -> bool:
    if p.cosine is None or p.cosine < c:
        return False
    if top1 is not None and (p.top1 is None or p.top1 < top1):
        return False
    return nn is None or (p.nn is not None and p.nn >= nn)


def _gates(c: float, nn: float | None, top1: float | None) -> str:
    return f"cosine >= {c:g}" + (f", NN >= {nn:g}" if nn is not None else "") + (
        f", top-1 >= {top1:g}" if top1 is not None else "")


def _fid(p: Point) -> str:
    """A point's fidelity for the progress lines: cosine, and NN or top-1 where the model has them."""
    return f"cos {_f(p.cosine)}" + (f" top-1 {_f(p.top1)}" if p.top1 is not None else f" NN {_f(p.nn)}")


def pareto(points: list[Point], key: str = "cosine") -> list[Point]:
    """Points no other point beats on both fidelity (``key``: "cosine", or "top1" for a decoder gated on
    it; higher) and relative latency (lower), fastest first."""
    f = lambda p: getattr(p, key)  # noqa: E731
    pts = [p for p in points if f(p) is not None and p.relative_latency is not None]
    front = [p for p in pts if not any(
        (f(q) >= f(p) and q.relative_latency <= p.relative_latency)
        and (f(q) > f(p) or q.relative_latency < p.relative_latency) for q in pts)]
    return sorted(front, key=lambda p: p.relative_latency)


def _gate(name: str, value, lo: float, hi: float) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise BadArgumentError(f"{name} expects a number, got {value!r}") from None
    if not (lo <= v <= hi) or math.isnan(v):
        raise BadArgumentError(f"{name} {v:g} is out of range [{lo:g}, {hi:g}]")
    return v


def _data(calibrate, model: pathlib.Path, tokenizer, dims, holdout: float, work: pathlib.Path):
    """(fit-part file for ``rewrite --calibrate`` and the heals: the whole fit part, held-out feed batches)."""
    p = pathlib.Path(calibrate)
    if not p.is_file():
        raise BadArgumentError(f"--calibrate {calibrate}: no such file")
    if p.suffix == ".npz":
        proto = io.load_proto(model)
        batches = load_batches(str(p), proto, tokenizer=tokenizer)  # a --tokenizer with an .npz is refused
        vocab.check_ids(batches, vocab.bounds(proto), f"--calibrate {calibrate}")
        fit, held = stages.split(list(batches), holdout)
        if not fit or not held:
            raise BadArgumentError(f"--calibrate {calibrate}: {len(batches)} batch(es) cannot be split into a fit and "
                                   f"a held-out part; give at least {round(1 / holdout)}")
        fit_file = work / "fit.npz"
        np.savez(fit_file, **{f"{k}/{i}": a for i, b in enumerate(fit) for k, a in b.items()})
        return fit_file, feeds_mod.FeedBatches(held, source="held-out")
    lines = feeds_mod.read_text(p)
    fit, held = stages.split(lines, holdout)
    if len(held) < 2 or not fit:
        raise BadArgumentError(f"--calibrate {calibrate}: {len(lines)} line(s) are too few to split into a fit and a "
                               "held-out part")
    fit_file = work / "fit.txt"  # all of the fit part: calibration caps itself (calib_samples), a heal uses it all
    fit_file.write_text("\n".join(fit) + "\n")
    return fit_file, load_batches(str(_held_file(work, held)), io.load_proto(model), tokenizer=tokenizer, dims=dims)


def _held_file(work: pathlib.Path, held: list[str]) -> pathlib.Path:
    f = work / "held.txt"
    f.write_text("\n".join(held) + "\n")
    return f


def tune(model, output=None, *, calibrate, min_cosine: float, min_nn: float | None = None,
         min_top1: float | None = None, tokenizer=None,
         minutes: float = 30.0, threads: int | None = None, dims=None, holdout: float = 0.25,
         calib_samples: int | None = TUNE_SAMPLES, seconds_per_trial: float = 6.0, block_seconds: float = 1.0,
         trials: int | None = None, seed: int = 0, heal: stages.HealHook | None = None,
         heal_minutes: float = 3.0, heal_note: str | None = None,
         storage: str | None = None, study_name: str | None = None, report_dir=None,
         provider: str = "cpu", device_id: int = 0, stage: str | None = None,
         progress: Callable[[str], None] | None = None) -> TuneReport:
    """Search recipes for ``model``; write the fastest one meeting the gates to ``output``.

    ``trials`` caps the number of trials (default: as many as ``minutes`` allow). ``heal``: a hook
    (``stages.HealHook``) makes heal on/off a dimension: the sampler may pick it, and every recipe that
    misses the gates by at most ``HEAL_MARGIN`` in fp32 gets a healed trial (the candidates heal can
    lift over the gates); each heal trains for at most ``heal_minutes`` and half the time left, an
    int8 recipe against its int8 graph (the hook gets ``quantize="int8"``), an fp32 one in float.
    ``heal_note``: why there is no hook (said in the report). ``storage``/``study_name``: an Optuna
    storage URL to share the study (see docs/tune.md). ``provider``: where recipes are timed and their fidelity
    measured (``cuda``: on ``device_id``, with float16 instead of int8 as the reduced-precision stage and NVML
    energy where it loads). ``stage``: the reduced precision searched (``stages.QUANT_MODES``; default
    ``stages.STAGE[provider]``: int8 on the CPU, fp16 on CUDA; int4 is fitted on the fit part of DATA). Raises
    ``N6Error`` for bad input."""
    try:
        import optuna
    except ImportError:
        raise N6Error("n6onnx tune needs Optuna: pip install 'n6onnx[tune]'") from None

    t0 = time.perf_counter()
    say = progress or (lambda s: None)
    min_cosine = _gate("--min-cosine", min_cosine, -1.0, 1.0)
    min_nn = _gate("--min-nn", min_nn, 0.0, 1.0)
    min_top1 = _gate("--min-top1", min_top1, 0.0, 1.0)
    for opt, v in (("--minutes", minutes), ("--heal-minutes", heal_minutes),
                   ("--seconds-per-trial", seconds_per_trial)):
        if not v > 0 or v == float("inf"):  # (NaN is refused too)
            raise BadArgumentError(f"{opt} must be a positive number, got {v:g}")
    if threads is not None and threads < 1:
        raise BadArgumentError(f"--threads must be at least 1, got {threads}")
    runtime.providers_for(provider, device_id)  # an unknown or unavailable provider: refused before any work
    stage = stage or stages.STAGE[provider]
    if stage not in stages.QUANT_MODES:
        raise BadArgumentError(f"--stage {stage}: not one of {', '.join(stages.QUANT_MODES)}")
    fake_quant = stage in stages.FAKE_QUANT_MODES  # a heal can train against int8 and int4, not fp16
    src = pathlib.Path(model)
    proto = io.load_proto(src)
    if stage != "fp16":
        quant_mod.check_precision(proto, stage, str(src), option="--stage")
    del proto
    if output is not None:
        io.check_output_path(output, (src,))
    dims = parse_dims(dims)
    study_storage = _storage(storage)  # a bad --storage is refused before any work
    deadline = t0 + 60 * minutes
    work = pathlib.Path(tempfile.mkdtemp(prefix="n6tune-"))
    timer = None
    try:
        info = space.ModelInfo.of(api.inspect(src))
        fit_file, held = _data(calibrate, src, tokenizer, dims, holdout, work)
        if pathlib.Path(calibrate).suffix == ".npz":  # the feeds' own shapes size the dims not given with --dim
            dims = feeds_mod.dims_of(feeds_mod.proto_input_specs(io.load_proto(src)), held[0], dims)
        say(f"data: fit part {fit_file.name}, {held.samples} held-out samples; model: {info}")
        _check_gated_outputs(src, held, threads, min_nn, min_top1)
        say("fusing the original (ORT's best fp32 baseline)")
        timer = measure.Timer(src, work, threads=threads, dims=dims, seconds=seconds_per_trial,
                              block_seconds=block_seconds, provider=provider, device_id=device_id)
        # int4: fitted to its rounding on calibration's part of the fit data (rewrite --quantize int4 --calibrate)
        fit = load_batches(str(fit_file), io.load_proto(src), tokenizer=tokenizer, samples=calib_samples,
                           dims=dims) if stage == "int4" else None
        refs = _references(src, timer, held, work, say, stage,
                           lambda p: measure.fidelity(src, p, held, threads, provider, device_id), fit)
        prepared = round(time.perf_counter() - t0, 1)  # the data, the fused baseline and the references, before any recipe
        meets = lambda p: _meets(p, min_cosine, min_nn, min_top1)  # noqa: E731
        # the fidelity the study maximises and the front ranks: a decoder gated on its next token, its top-1
        key = "top1" if min_top1 is not None else "cosine"
        score = lambda p: getattr(p, key)  # noqa: E731
        # unhealed int8 recipes are built in the int8 reference's graph order (the faster one here)
        int8_first = anchor(refs).graph == QUANTIZED_FIRST
        floats: dict[tuple, pathlib.Path] = {}
        healed: dict[tuple, tuple[pathlib.Path, dict]] = {}
        fids: dict[pathlib.Path, dict] = {}
        done: dict[space.Recipe, Point] = {}
        points: list[Point] = []
        durations: list[float] = []

        def fidelity(path: pathlib.Path) -> dict:
            if path not in fids:
                fids[path] = measure.fidelity(src, path, held, threads, provider, device_id)
            return fids[path]

        def rewritten(passes: tuple) -> pathlib.Path:
            """The float rewrite (passes + calibration), cached per pass list. A gelu swap keeps the per-tensor
            int8 guard (rewrite's ``auto`` without its int8 fit: tune quantizes with the stock tool)."""
            if passes not in floats:
                path = work / f"rw-{_key(passes)}.onnx"
                if passes:
                    api.rewrite(src, path, list(passes), calibrate=fit_file, tokenizer=tokenizer,
                                calib_samples=calib_samples, dims=dims)
                else:
                    shutil.copyfile(src, path)
                floats[passes] = path
            return floats[passes]

        def healed_rewrite(r: space.Recipe) -> tuple[pathlib.Path, dict]:
            """The recipe's rewrite healed (float weights), cached per pass list and heal mode: an int8 recipe
            is healed against its int8 graph (the hook gets ``quantize="int8"``: fake quantization), an fp32
            one in float."""
            mode = r.quantize if r.quantize in stages.FAKE_QUANT_MODES else None
            if (r.passes, mode) not in healed:
                base = rewritten(r.passes)
                out = work / f"heal-{_key((r.passes, mode))}.onnx"
                left = (deadline - time.perf_counter()) / 60
                if left < 0.5:
                    raise N6Error("no time left in the budget to heal")
                budget_min = min(heal_minutes, left / 2)
                th = time.perf_counter()
                res = heal(base, out, original=src, calibrate=fit_file, tokenizer=tokenizer, minutes=budget_min,
                           quantize=mode)
                info = {"mode": f"fake-quant {mode}" if mode else "float", "quantize": mode,
                        "seconds": round(time.perf_counter() - th, 1), "minutes_budget": round(budget_min, 3)}
                info.update({k: getattr(res, k) for k in HEAL_FIELDS if hasattr(res, k)})
                healed[(r.passes, mode)] = out, info
            return healed[(r.passes, mode)]

        def build(r: space.Recipe, path: pathlib.Path) -> pathlib.Path:
            """fp32: fused. int8: in the int8 reference's order (fused then quantized, or quantized then fused);
            healed under fake quantization: quantized as healed (the graph the heal trained against), then fused
            (fusion leaves the int8 MatMuls as they are)."""
            key = _key(r)
            rounding = None if r.heal else fit  # a healed recipe trained against the plain rounding
            if r.quantize and (int8_first or r.heal and r.quantize in stages.FAKE_QUANT_MODES):
                q = work / f"q-{key}.onnx"
                stages.quantize(path, q, r.quantize, rounding)
                return timer.fuse(q)
            path = timer.fuse(path)
            if r.quantize:
                q = work / f"q-{key}.onnx"
                stages.quantize(path, q, r.quantize, rounding)
                path = q
            return path

        def objective(trial):
            r = space.suggest(trial, info, heal=heal is not None, stage=stage, fake_quant=fake_quant)
            trial.set_user_attr("recipe", r.label)
            if r in done:  # the sampler proposed a recipe already measured
                repeats[0] += 1
                p = done[r]
                if p.status != "complete":
                    raise optuna.TrialPruned(p.reason)
                return score(p), p.relative_latency
            repeats[0] = 0
            ts = time.perf_counter()
            p = Point(r, "trial", number=trial.number)
            points.append(p)
            done[r] = p
            try:
                say(f"trial {trial.number}: {r.label}: building")
                path = rewritten(r.passes)
                if r.heal:
                    path, p.healing = healed_rewrite(r)
                if r.heal and r.quantize in stages.FAKE_QUANT_MODES:  # healed for int8: only int8 is measured
                    p.path = build(r, path)
                    p.fidelity = fidelity(p.path)
                else:
                    p.fidelity = fidelity(path)
                    # int8 only adds error: skip it when fp32 fails
                    if not r.quantize or meets(p):
                        p.path = build(r, path)
                        if r.quantize:
                            p.fidelity = fidelity(p.path)
                if not meets(p):
                    p.status = "pruned"
                    p.reason = (f"held-out {_fid(p)} below the gates"
                                + (f" before {r.quantize}" if r.quantize and p.path is None else "") + ": not timed")
                else:
                    p.timing, p.path = timer.time(p.path)
            except N6Error as e:
                p.status, p.reason = "failed", str(e)
            except Exception as e:  # an optimizer/quantizer crash in one recipe must not end the study
                p.status, p.reason = "failed", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            p.seconds = time.perf_counter() - ts
            durations.append(p.seconds)
            say(f"trial {trial.number}: {r.label}: {_fid(p)} "
                + (f"x{p.speedup:.2f} vs fp32" if p.speedup else p.status) + f" ({p.seconds:.0f} s; "
                f"{max(0, deadline - time.perf_counter()) / 60:.1f} min left)")
            if p.status != "complete":
                raise optuna.TrialPruned(p.reason)
            return score(p), p.relative_latency

        healed_asked: set = set()
        repeats, exhausted = [0], []  # consecutive proposals of measured recipes; the note when that stops the study

        def heal_near_misses(study, ft):
            """Enqueue a healed trial of a recipe whose fp32 fidelity missed the gates by a little."""
            p = next((q for q in reversed(points) if q.number == ft.number), None)
            if heal is None or p is None or p.recipe.heal or p.cosine is None or "heal" not in ft.params:
                return
            near = (p.cosine >= min_cosine - HEAL_MARGIN
                    and (min_nn is None or (p.nn or 0) >= min_nn - 4 * HEAL_MARGIN)
                    and (min_top1 is None or (p.top1 or 0) >= min_top1 - 4 * HEAL_MARGIN))
            # once per pass list and int8 on/off: an int8 recipe is healed against its int8 graph
            again = space.Recipe(p.recipe.passes, p.recipe.quantize, True) in done  # (e.g. the healed int8 seed)
            if near and not again and not meets(p) and \
                    (p.recipe.passes, p.recipe.quantize) not in healed_asked:
                healed_asked.add((p.recipe.passes, p.recipe.quantize))
                study.enqueue_trial({**ft.params, "heal": True})
                say(f"trial {ft.number}: {p.recipe.label} missed the gates by a little: a healed trial is queued")

        def budget(study, _trial):
            heal_near_misses(study, _trial)
            left = deadline - time.perf_counter()
            typical = sorted(durations)[len(durations) // 2] if durations else 0
            if left < max(typical, 5.0) or (trials is not None and len(points) >= trials):
                study.stop()
            elif repeats[0] >= EXHAUSTED:  # a small model's space is soon measured: stop early, say so
                exhausted.append(f"the search stopped early: the sampler proposed only recipes already measured "
                                 f"({EXHAUSTED} in a row), so the space is exhausted")
                study.stop()

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler, storage=study_storage,
                                    study_name=study_name, load_if_exists=storage is not None)
        for params in space.seeds(info, heal=heal is not None, fake_quant=fake_quant):
            study.enqueue_trial(params, skip_if_exists=True)
        left = deadline - time.perf_counter()
        if left > 0 and (trials is None or trials > 0):
            study.optimize(objective, timeout=left, callbacks=[budget], n_trials=None if trials is None else 4 * trials,
                           catch=())
        refs[0].timing = timer.reference()  # its own blocks: speed-up 1 by construction
        complete = [p for p in points if p.status == "complete"]
        front = pareto(refs + complete, key)
        # candidates: every timed trial and the int8 references faster than the fp32 original (it, or anything
        # slower, is no saving)
        within = [p for p in complete + refs[1:] if meets(p) and p.relative_latency is not None]
        ok = [p for p in within if p.relative_latency < 1]
        chosen = min(ok, key=lambda p: (p.relative_latency, -(score(p) or 0))) if ok else None
        setting = {"threads": threads, "dims": dims, "feed_shapes": {k: list(v.shape) for k, v in timer.feed.items()},
                   "held_out_samples": held.samples, "holdout": holdout, "calib_samples": calib_samples,
                   "fit_data": str(calibrate), "baseline_fusion": timer.baseline_fusion,
                   "layernorm": timer.layernorm.to_json(),
                   "timing": f"interleaved A/B blocks of {block_seconds:g} s vs the fused fp32 original, "
                             f"{seconds_per_trial:g} s per variant per trial (bench's method, shorter)",
                   "provider": provider, "stage": stage,
                   "energy": f"estimated: process CPU-seconds x {CPU_WATTS_PER_CORE:g} W per busy core "
                             "(bench's estimator), not measured" if provider == "cpu" else
                             f"{timer.meter.method} ({timer.meter.name}, bench's meter on {provider})",
                   "quantize": stages.describe(stage, anchor(refs).graph),
                   "heal": heal is not None, "heal_minutes": heal_minutes if heal is not None else None,
                   "seed": seed, "budget_minutes": minutes, "references_seconds": prepared,
                   "optuna": optuna.__version__}
        rep = TuneReport(str(src), None, min_cosine, min_nn, refs, points, front, chosen, setting,
                         time.perf_counter() - t0, min_top1=min_top1)
        if heal is None and heal_note:
            rep.notes.append(heal_note)
        rep.notes.extend(exhausted[:1])
        if not points and (trials is None or trials > 0):
            rep.notes.append(f"the budget ({minutes:g} min) was spent before any recipe: the data, the fused fp32 "
                             f"baseline and the references took {prepared:.1f} s; no recipe was tried (give --minutes "
                             f"well above {prepared / 60:.1f})")
        if provider == "cuda" and stage == "int8":  # measured: 0.02-0.04x fp32 on an H100 (tune_minilm_cuda_int8.json)
            rep.notes.append("--stage int8 on cuda: onnxruntime's CUDA provider has no kernels for dynamic int8 "
                             "(DynamicQuantizeLinear, MatMulInteger), so those nodes run on the CPU with copies each "
                             "way; fp16 (the default stage on cuda) or int4 are the GPU's reduced precisions")
        if chosen is None:
            rep.notes.append(f"no recipe met {_gates(min_cosine, min_nn, min_top1)}" + (
                f" and ran faster than the fp32 original ({len(within)} met the gates, all slower)" if within else "")
                + "; nothing written")
        elif output is not None:
            io.save(io.load_proto(chosen.path), output)
            rep.output = str(output)
            ln = chosen.timing.get("layernorm") or {}
            if ln.get("form") == "split":
                rep.notes.append("the written model's layer norms are Add + LayerNormalization, the faster form here "
                                 f"({ln['reason']}): run it with onnxruntime's disabled_optimizers="
                                 f"{ln['disabled_optimizers']}, or the session fuses them back")
        if report_dir is not None:
            render.write(rep, pathlib.Path(report_dir))
        return rep
    finally:
        if timer is not None:
            timer.close()  # the energy meter (NVML), also when the study stopped on an error
        shutil.rmtree(work, ignore_errors=True)


def _storage(url: str | None):
    """Optuna's storage for ``--storage``: an RDB URL (connected now), or else a journal file (Optuna's
    JournalStorage, file backend) in an existing folder; ``BadArgumentError`` where neither works."""
    if url is None:
        return None
    import optuna

    try:
        if "://" in url:
            return optuna.storages.RDBStorage(url)
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = pathlib.Path(url)
        if not path.parent.is_dir():
            raise BadArgumentError(f"--storage {url}: the folder {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    except N6Error:
        raise
    except Exception as e:  # SQLAlchemy's and Optuna's errors: say which option and why
        raise BadArgumentError(f"--storage {url}: not a usable Optuna storage ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _check_gated_outputs(src: pathlib.Path, held, threads, min_nn, min_top1) -> None:
    """Refuse --min-nn on a model without an embedding output and --min-top1 on one without logits, by
    validate's own rules on the first held-out batches, before anything is fused or timed."""
    if min_nn is None and min_top1 is None:
        return
    first = feeds_mod.FeedBatches(held[:2], held.rows[:2], source=held.source)
    found = measure.fidelity(src, src, first, threads)
    if min_nn is not None and found["nn"] is None:
        raise BadArgumentError("--min-nn: no output of the model looks like an embedding; gate a decoder's "
                               "logits with --min-top1")
    if min_top1 is not None and found["top1"] is None:
        raise BadArgumentError("--min-top1: no output of the model looks like logits (a decoder's next-token "
                               "scores); gate an encoder with --min-cosine and --min-nn")


def _references(src: pathlib.Path, timer: measure.Timer, held, work: pathlib.Path, say, stage: str,
                fidelity: Callable[[pathlib.Path], dict], fit=None) -> list[Point]:
    """The fp32 baseline (ORT's best fused original) and int8 alone in both graph orders: fused then quantized
    (a fused attention keeps its Q/K/V projections float) and quantized then fused (every MatMul int8: what
    ``quantize_dynamic`` on the export gives). Which is faster depends on the machine; the faster is the
    int8 reference of the report's "x int8" (``anchor``), and both are candidates for OUT. ``stage`` fp16
    (CUDA): fp16 alone, the fused original converted, instead; ``stage`` int4: int4 alone, fitted on ``fit``."""
    fp32 = Point(space.Recipe(), "fp32", path=timer.baseline)
    fp32.fidelity = fidelity(timer.baseline)
    refs = [fp32]
    say(f"{stage} references: the original" + (" in both graph orders" if stage != "fp16" else ", fused then converted"))
    t = time.perf_counter()
    paths = stages.quantize_both_orders(src, timer.fused_baseline, timer.fuse, work, stage, stage, fit)
    built = (time.perf_counter() - t) / len(paths)
    for graph, path in paths.items():
        t = time.perf_counter()
        p = Point(space.Recipe((), stage), stage, path=path, graph=graph)
        p.fidelity = fidelity(p.path)
        p.timing, p.path = timer.time(p.path)
        p.seconds = built + time.perf_counter() - t
        say(f"{stage} reference ({graph}): {_fid(p)} x{p.speedup or float('nan'):.2f} vs fp32")
        refs.append(p)
    return refs


def _key(x) -> str:
    return hashlib.sha1(repr(x).encode()).hexdigest()[:12]


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"
