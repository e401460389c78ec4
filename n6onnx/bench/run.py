"""``n6onnx bench``: latency, throughput, energy and memory of a model against ORT's best original.

Method (also written into the report):

1. Feeds: an .npz (``--feeds``) or random feeds that respect the graph's input types, one batch,
   bound once with IO binding (on the device for CUDA) with outputs preallocated after the first
   run, so both variants are timed the same way.
2. Baseline: the original with ORT's transformer fusions (``baseline.fuse``: onnxscript
   ort_fusions or onnxruntime.transformers, whichever fuses more and still agrees with the
   original; a quantized graph may agree on one of ``baseline.quantized_probes`` instead, since a
   rounding flip on the first feed hides an exact fusion). With a baseline, the candidate gets the
   same treatment by default (its n6 nodes are protected), so the ratio measures the rewrite, not a
   missing fusion.
3. Sessions: ORT_ENABLE_ALL, the same provider and threads, the n6 custom-op library registered
   for both (it does not change a model without n6 ops). The layer norms in the form ORT runs
   faster here (``bench.layernorm``), measured on each variant: its SkipLayerNormalization nodes
   against their parts (Add + LayerNormalization, ORT's SkipLayerNormFusion disabled), interleaved
   blocks on the same feed; each variant runs in its own faster form (the parts only when more than
   2% faster), the only session option that may differ between them.
4. Placement and op times: one profiled session per variant (a few runs, the first dropped):
   which provider ran each node (any CPU node in a CUDA session is reported), time per op type,
   ORT's allocator peak.
5. Warm-up, then an idle window (power with nothing running), then interleaved blocks ABBA of at
   least ``window`` seconds each, then a second idle window. Every run is timed; every meter is
   read at block boundaries. Latency percentiles pool all runs; ratios are per block pair.
6. Energy per meter: joules per inference per block (total) and after subtracting idle power x
   block time (dynamic); the median over blocks with its spread. Measured (NVML, RAPL) and
   estimated (CPU-seconds x per-core watts) figures are reported apart, each with its method.
7. Carbon (Green Algorithms' method): energy per 1,000 inferences in Wh (the meter's total; an
   inference is one run of the benched inputs) and CO2e = Wh x PUE x the grid's carbon intensity
   (CodeCarbon's data unless given; PUE Green Algorithms' default unless given), labelled
   measured or estimated like the energy it comes from.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import pathlib
import time
from typing import Iterable, Mapping, Sequence

import onnxruntime as ort

from .. import feeds as feeds_mod
from .. import io, runtime, vocab
from .._library import library_status
from .._version import __version__
from ..errors import BadArgumentError
from ..options import number
from . import baseline as baseline_mod
from . import carbon as carbon_mod
from . import energy as energy_mod
from . import figures
from . import layernorm as layernorm_mod
from . import session as session_mod
from . import latency as latency_mod

NVML_MIN_WINDOW = 5.0  # s: NVML's counter updates about every 100 ms

RATIO_DEFINITION = ("baseline / candidate, per interleaved block pair: > 1 means the candidate is faster "
                    "(latency), does more per second (throughput), or uses less energy")


METHOD = " ".join(__doc__.split("Method (also written into the report):", 1)[1].replace("``", "").split())


# --------------------------------------------------------------------------------------------------
# Profile: placement and op times


# --------------------------------------------------------------------------------------------------
# Hardware and memory


# --------------------------------------------------------------------------------------------------
# The report


@dataclasses.dataclass
class VariantResult:
    role: str  # "candidate" or "baseline"
    source: str
    path: pathlib.Path
    fusion: baseline_mod.FusionResult | None
    library: str | None
    latency_ms: dict
    throughput: float
    block_medians_ms: list[float]
    energy: dict
    session: dict
    carbon: dict | None = None

    def to_json(self) -> dict:
        return {
            "model": self.source, "ran": str(self.path),
            "latency_ms": self.latency_ms, "throughput": self.throughput,
            "throughput_unit": "inferences/s",
            "block_median_latency_ms": latency_mod.summary(self.block_medians_ms),
            "energy": self.energy,
            "carbon": self.carbon,
            "fusion": self.fusion.to_json() if self.fusion else None,
            "session": {"custom_op_library": self.library, **self.session},
        }


@dataclasses.dataclass
class BenchReport:
    candidate: VariantResult
    baseline: VariantResult | None
    ratio: dict | None
    memory: dict
    settings: dict
    hardware: dict
    method: str
    warnings: list[str]
    seconds: float

    def to_json(self) -> dict:
        return {
            "tool": "n6onnx bench", "n6onnx": __version__,
            "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **self.candidate.to_json(),
            "baseline": self.baseline.to_json() if self.baseline else None,
            "ratio": self.ratio, "memory": self.memory, "settings": self.settings,
            "hardware": self.hardware, "method": self.method, "warnings": self.warnings,
            "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------------------------------


class _Progress:
    """A rich progress bar on stderr (no auto-refresh thread: it would compete with the runs)."""

    def __init__(self, enabled: bool) -> None:
        self.p = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.p = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                              TimeRemainingColumn(), console=Console(stderr=True), auto_refresh=False)
            self.p.start()
            self.task = self.p.add_task("preparing", total=None)

    def phase(self, text: str, total: float | None = None) -> None:
        """New description; ``total`` (seconds planned) starts the bar."""
        if self.p:
            if total is not None:
                self.p.update(self.task, total=total, completed=0)
            self.p.update(self.task, description=text)
            self.p.refresh()

    def advance(self, amount: float) -> None:
        if self.p:
            self.p.advance(self.task, amount)
            self.p.refresh()

    def close(self) -> None:
        if self.p:
            self.p.stop()


def _parse_dims(dims) -> dict[str, int]:
    if dims is None:
        return {}
    if isinstance(dims, Mapping):
        return {str(k): int(v) for k, v in dims.items()}
    return feeds_mod.parse_dims(dims)


def _input_signature(sess: ort.InferenceSession) -> list[tuple[str, str]]:
    return [(i.name, i.type) for i in sess.get_inputs()]


def bench(
    model: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    *,
    provider: str = "cpu",
    device_id: int = 0,
    threads: int | None = None,
    dims: Mapping[str, int] | Iterable[str] | None = None,
    feeds: str | os.PathLike | None = None,
    seconds: float = 30.0,
    window: float = NVML_MIN_WINDOW,
    idle_seconds: float | None = None,
    warmup: float = 1.0,
    cpu_watts: float = energy_mod.CPU_WATTS_PER_CORE,
    cpu_watts_uncertainty: float = energy_mod.CPU_WATTS_UNCERTAINTY,
    fuse_candidate: bool | None = None,
    model_type: str | None = None,
    num_heads: int | None = None,
    hidden_size: int | None = None,
    profile_runs: int = 10,
    progress: bool = False,
    meters: Sequence[energy_mod.Meter] | None = None,
    grid_intensity: str | float | None = None,
    pue: float | None = None,
    layernorm: str = "auto",
) -> BenchReport:
    """Benchmark ``model`` (the candidate), against ORT's best ``baseline`` when given.

    ``seconds``: measured time per variant, split into interleaved blocks of at least ``window``
    seconds (at least 3 blocks each). ``idle_seconds``: each of the two idle windows (default
    ``window``; 0: no idle measurement, no dynamic energy). ``fuse_candidate``: give the candidate
    the baseline's transformer fusions (default: when there is a baseline). ``meters``: override
    meter discovery (tests). ``grid_intensity`` (gCO2e/kWh, or an ISO 3166-1 alpha-3 country code;
    default CodeCarbon's world average) and ``pue`` (default Green Algorithms') turn each variant's
    energy into Wh and gCO2e per 1,000 inferences (``bench.carbon``). ``layernorm``: ``auto`` times
    each variant's SkipLayerNormalization against its parts and runs it in its faster form;
    ``fused`` / ``split`` force one on both (``bench.layernorm``).
    """
    t_start = time.perf_counter()
    runtime.providers_for(provider)  # a clear error for an unknown or unavailable provider
    threads = number("--threads", threads, 1, 4096, integer=True)
    device_id = number("--device-id", device_id, 0, 1023, integer=True)
    seconds = number("--seconds", seconds, 0, 86400, lo_open=True)
    window = number("--window", window, 0, 3600, lo_open=True)
    if seconds / window > 100_000:
        raise BadArgumentError(f"--seconds {seconds:g} / --window {window:g} asks for more than 100000 blocks")
    warmup = number("--warmup", warmup, 0, 3600)
    cpu_watts = number("--cpu-watts", cpu_watts, 0, 10000, lo_open=True)
    cpu_watts_uncertainty = number("--cpu-watts-uncertainty", cpu_watts_uncertainty, 0, 1, hi_open=True)
    num_heads = number("--num-heads", num_heads, 1, 65536, integer=True)
    hidden_size = number("--hidden-size", hidden_size, 1, 2**24, integer=True)
    carbon_settings = carbon_mod.settings(grid_intensity, pue)
    if layernorm not in layernorm_mod.MODES:
        raise BadArgumentError(f"--layernorm must be one of {', '.join(layernorm_mod.MODES)}, got {layernorm!r}")
    if idle_seconds is None:
        idle_seconds = window
    idle_seconds = number("--idle-seconds", idle_seconds, 0, 3600)
    dims_ = _parse_dims(dims)
    cfg = session_mod.SessionConfig(provider, device_id, threads)
    warnings: list[str] = []
    cand_src = pathlib.Path(model)
    base_src = pathlib.Path(baseline) if baseline is not None else None
    for p in (cand_src, base_src):
        if p is not None:
            io.load_proto(p)  # a clear BadModelError for a missing or broken file
    if fuse_candidate is None:
        fuse_candidate = base_src is not None
    prog = _Progress(progress)
    meter_list: list[energy_mod.Meter] = []
    try:
        # -- feeds and reference outputs
        prog.phase("loading")
        ref_src = base_src or cand_src
        ref_sess, _ = cfg.session(ref_src)
        bounds = vocab.bounds(ref_src)  # token ids both models' tables take
        for k, v in (vocab.bounds(cand_src).items() if base_src is not None else ()):
            bounds[k] = min(bounds.get(k, v), v)
        if feeds is not None:
            batches = feeds_mod.load_npz(feeds, ref_sess)
            vocab.check_ids(batches[:1], bounds, str(feeds))
            feed = batches[0]
            feeds_desc = {"source": str(feeds), "batch": 0, "batches_in_file": len(batches)}
        else:
            dims_, chosen = feeds_mod.default_dims(ref_sess, dims_)
            feed = feeds_mod.random_feeds(ref_sess, 1, dims_, id_high=bounds)[0]
            feeds_desc = {"source": "random", "seed": 0, "dims": dims_}
            if chosen:
                feeds_desc["dims_default"] = chosen
                warnings.append("random inputs: dynamic dimension(s) " + ", ".join(f"{k}={v}" for k, v in chosen.items())
                                + " by default (give --dim NAME=SIZE to measure another shape)")
        feeds_desc["shapes"] = {k: list(v.shape) for k, v in feed.items()}
        feeds_desc["dtypes"] = {k: str(v.dtype) for k, v in feed.items()}
        ref_out = {ref_src: ref_sess.run(None, feed)}
        if base_src is not None:
            cand_sess, _ = cfg.session(cand_src)
            if _input_signature(cand_sess) != _input_signature(ref_sess):
                raise BadArgumentError(
                    f"{cand_src} and {base_src} have different inputs ({_input_signature(cand_sess)} vs "
                    f"{_input_signature(ref_sess)}); a candidate must take the original's inputs")
            feeds_mod.check_feeds(cand_sess, feed, str(cand_src))
            ref_out[cand_src] = cand_sess.run(None, feed)
            del cand_sess
        del ref_sess
        gc.collect()

        def run_file(path: pathlib.Path):  # fusion checks: a failing candidate is reported, not logged by ORT
            s, _ = cfg.session(path, quiet=True)
            out = s.run(None, feed)
            del s
            return out

        def open_session(path):
            return cfg.session(path, quiet=True)[0]

        fuse_kw = dict(provider=provider, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
        base_fusion = cand_fusion = None
        if base_src is not None:
            prog.phase("fusing the baseline (onnxscript, onnxruntime.transformers)")
            base_fusion = baseline_mod.fuse(base_src, run_file, ref_out[base_src], **fuse_kw,
                                            probes=baseline_mod.quantized_probes(base_src, open_session,
                                                                                 like=feed))
            if base_fusion.chosen == "none":
                warnings.append("no transformer fusion applied to the baseline: " + "; ".join(
                    f"{a.optimizer}: {a.error or 'no more fused ops than the original'}" for a in base_fusion.attempts))
        if fuse_candidate:
            prog.phase("fusing the candidate")
            cand_fusion = baseline_mod.fuse(cand_src, run_file, ref_out[cand_src], **fuse_kw,
                                            probes=baseline_mod.quantized_probes(cand_src, open_session,
                                                                                 like=feed))
        variants = {"candidate": (cand_src, cand_fusion)}
        if base_src is not None:
            variants = {"baseline": (base_src, base_fusion), **variants}
        paths = {k: (f.path if f else src) for k, (src, f) in variants.items()}

        # -- the layer-norm form ORT runs faster, measured on each variant (each runs in its own faster form)
        prog.phase("timing SkipLayerNormalization against Add + LayerNormalization")
        ln_choices, paths, cfgs = layernorm_mod.choose_each(
            paths, cfg, feed, mode=layernorm, block_seconds=min(layernorm_mod.BLOCK_SECONDS, window),
            reference=base_src)

        # -- placement and op times
        profiles = {}
        for k, p in paths.items():
            prog.phase(f"profiling the {k}")
            profiles[k] = session_mod.profile(p, feed, cfgs[k], runs=profile_runs)
            gc.collect()
            pl = profiles[k]["placement"]
            if pl["cpu_fallback"]:
                warnings.append(f"{k}: {sum(pl['cpu_nodes'].values())} node(s) ran on the CPU in the CUDA session: "
                                + ", ".join(f"{op} x{n}" for op, n in pl["cpu_nodes"].items()))

        # -- timed sessions
        rss0 = session_mod.rss_mb()
        sessions, runners, libs, rss_session = {}, {}, {}, {}
        for k, p in paths.items():
            before = session_mod.rss_mb()
            sessions[k], libs[k] = cfgs[k].session(p)
            runners[k] = session_mod.Runner(sessions[k], feed, cfgs[k])
            after = session_mod.rss_mb()
            rss_session[k] = (after - before) if before is not None and after is not None else None

        # -- meters
        if meters is None:
            disc = energy_mod.discover(provider, device_id, cpu_watts=cpu_watts,
                                       cpu_watts_uncertainty=cpu_watts_uncertainty)
            meter_list = disc.meters
            meter_notes = disc.notes
        else:
            meter_list, meter_notes = list(meters), []
        nvml = next((m for m in meter_list if isinstance(m, energy_mod.NvmlMeter)), None)
        if provider == "cuda" and nvml is None:
            warnings.append("no GPU energy: " + "; ".join(meter_notes))
        if any(m.method == "measured" for m in meter_list) and window < NVML_MIN_WINDOW:
            warnings.append(f"energy windows of {window:g} s are shorter than {NVML_MIN_WINDOW:g} s: counters that "
                            "update every ~100 ms make short windows imprecise")

        # -- plan
        blocks = max(3, int(seconds // window))
        block_s = max(window, seconds / blocks)
        n_var = len(runners)
        total = n_var * warmup + 2 * idle_seconds + n_var * blocks * block_s

        # -- warm-up
        prog.phase("warm-up", total)
        warm_runs = {}
        for k, r in runners.items():
            warm_runs[k] = latency_mod.warm_up(r, warmup)
            prog.advance(warmup)

        # -- idle, blocks, idle
        idle_w = None
        idle_detail = {}
        if idle_seconds > 0:
            prog.phase("idle power")
            w1, d1 = energy_mod.idle_watts(meter_list, idle_seconds)
            prog.advance(idle_seconds)
        prog.phase(f"interleaved blocks ({blocks} x {block_s:.1f} s per variant)")
        gpu_mem = [nvml.process_memory_mb()] if nvml is not None else []

        def on_block(b):
            prog.advance(block_s)
            if nvml is not None:
                gpu_mem.append(nvml.process_memory_mb())

        res = latency_mod.run_blocks(runners, blocks, block_s, meter_list, on_block)
        if idle_seconds > 0:
            prog.phase("idle power")
            w2, d2 = energy_mod.idle_watts(meter_list, idle_seconds)
            prog.advance(idle_seconds)
            idle_w = [(a + b) / 2 for a, b in zip(w1, w2)]
            idle_detail = {m.name: {"before_watts": a, "after_watts": b, "seconds": [d1, d2]}
                           for m, a, b in zip(meter_list, w1, w2)}
        peak = session_mod.peak_rss_mb()

        # -- results
        results = {}
        for k, (src, fusion) in variants.items():
            bl = res[k]
            results[k] = VariantResult(
                k, str(src), paths[k], fusion, libs[k],
                latency_mod.percentiles_ms(latency_mod.pooled_latencies(bl)), latency_mod.throughput(bl),
                [b.median * 1e3 for b in bl], figures.json_block(figures.figures(meter_list, bl, idle_w)),
                {"providers": sessions[k].get_providers(), "warmup_runs": warm_runs[k],
                 "rss_increase_mb": rss_session[k], **profiles[k]},
            )
        for k, v in results.items():
            e = v.energy
            v.carbon = {"primary": carbon_mod.per_1k(e, carbon_settings),
                        "other": [carbon_mod.per_1k(o, carbon_settings) for o in e.get("other", [])]}
            if idle_w is not None and not e["dynamic_resolved"]:
                warnings.append(f"{k}: the dynamic energy ({e['meter']}) is not above idle in every window: the "
                                "workload's share is within the meter's noise (longer --seconds/--window help)")
        ratio = None
        if base_src is not None:
            bb, cb = res["baseline"], res["candidate"]
            e_ratios = figures.ratios(meter_list, bb, cb, idle_w)
            ratio = {
                "definition": RATIO_DEFINITION,
                "latency_p50": latency_mod.ratio_summary([b.median for b in bb], [b.median for b in cb]),
                "throughput": latency_mod.ratio_summary([c.runs / c.seconds for c in cb], [b.runs / b.seconds for b in bb]),
                "latency_p50_pooled": results["baseline"].latency_ms["p50"] / results["candidate"].latency_ms["p50"],
                "energy": e_ratios[0], "energy_other": e_ratios[1:],
            }
            if fuse_candidate is False and base_fusion is not None and base_fusion.chosen != "none":
                warnings.append("the baseline has transformer fusions the candidate was not given "
                                "(--no-fuse-candidate): the ratio mixes the rewrite with the missing fusions")
        memory = {
            "peak_rss_mb": peak, "rss_before_sessions_mb": rss0, "rss_end_mb": session_mod.rss_mb(),
            "note": "peak_rss_mb is the whole process (both variants, the profiling and checking sessions); "
                    "each variant's rss_increase_mb and ORT allocator peak are under its session",
        }
        if nvml is not None:
            vals = [v for v in gpu_mem if v is not None]
            memory["gpu_process_peak_mb"] = max(vals) if vals else None
        settings = {
            "provider": provider, "execution_providers": cfg.providers if provider == "cpu" else
            ["CUDAExecutionProvider", "CPUExecutionProvider"], "device_id": device_id if provider == "cuda" else None,
            "threads": threads, "threads_note": None if threads else "onnxruntime default (one per physical core)",
            "graph_optimization_level": "ORT_ENABLE_ALL", "io_binding": True,
            "disabled_optimizers": {k: list(c.disabled_optimizers) for k, c in cfgs.items()},
            "layernorm": {k: c.to_json() for k, c in ln_choices.items()},
            "io_binding_device": "cuda" if provider == "cuda" else "cpu",
            "feeds": feeds_desc, "warmup_seconds": warmup, "blocks_per_variant": blocks,
            "block_seconds": block_s, "order": "ABBA" if n_var == 2 else "single variant",
            "idle_seconds": idle_seconds, "idle": idle_detail, "seconds_per_variant": blocks * block_s,
            "cpu_watts_per_core": cpu_watts, "cpu_watts_uncertainty": cpu_watts_uncertainty,
            "fuse_candidate": fuse_candidate, "carbon": carbon_settings.to_json(),
            "meters": [m.describe() for m in meter_list], "meters_unavailable": meter_notes,
        }
        method = METHOD
        if results["candidate"].library is None:
            why = library_status("cuda" if provider == "cuda" else "cpu")[1]
            method = METHOD.replace("the n6 custom-op library registered for both (it does not change a model without "
                                    "n6 ops)", "no n6 custom-op library registered (none was found)")
            warnings.append(f"no n6 custom-op library was registered: {why}")
        return BenchReport(results["candidate"], results.get("baseline"), ratio, memory, settings,
                           session_mod.hardware(nvml), method,
                           warnings, time.perf_counter() - t_start)
    finally:
        prog.close()
        if meters is None:
            energy_mod.close_all(meter_list)
