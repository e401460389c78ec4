"""Measuring one model in ``n6onnx bench``: its session (provider, threads, the n6 library, IO
binding), a profiled run (placement per provider, time per op type, allocator peak), process
memory and the hardware description."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import resource
import shutil
import sys
import tempfile
import time
from typing import Mapping

import numpy as np
import onnxruntime as ort

from .. import runtime
from .._library import library_path
from ..quantize import kernel
from ..errors import N6Error
from . import energy as energy_mod


@dataclasses.dataclass
class SessionConfig:
    provider: str = "cpu"
    device_id: int = 0
    threads: int | None = None
    disabled_optimizers: tuple[str, ...] = ()  # ORT graph transformers left out (bench.layernorm's choice)

    @property
    def providers(self) -> list:
        return runtime.providers_for(self.provider, self.device_id)

    def options(self, profile_prefix: str | None = None, quiet: bool = False) -> tuple[ort.SessionOptions, str | None]:
        """ORT_ENABLE_ALL, threads, and the n6 library (the CUDA one on cuda when it exists). ``quiet``:
        onnxruntime logs nothing, not even its errors (a probe whose failure the caller handles and reports)."""
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 4 if quiet else 3
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        cuda_lib = library_path("cuda") if self.provider == "cuda" else None
        so, registered = runtime.session_options(self.threads, use_library=cuda_lib is None, base=so)
        lib = library_path() if registered else None
        if cuda_lib is not None:
            so.register_custom_ops_library(str(cuda_lib))
            lib = cuda_lib
        return so, (str(lib) if lib else None)

    def session(self, path: str | os.PathLike, profile_prefix: str | None = None,
                quiet: bool = False) -> tuple[ort.InferenceSession, str | None]:
        so, lib = self.options(profile_prefix, quiet)
        try:
            sess = ort.InferenceSession(str(path), so, providers=self.providers,
                                        **({"disabled_optimizers": list(self.disabled_optimizers)}
                                           if self.disabled_optimizers else {}))
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise N6Error(f"{path}: onnxruntime cannot create a session: {msg}") from None
        runtime.check_placed(sess, self.provider, str(path))
        return sess, lib


class Runner:
    """One inference with IO binding: inputs bound once (on the device for CUDA), outputs
    preallocated from the first run's results."""

    def __init__(self, sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], cfg: SessionConfig) -> None:
        self.sess = sess
        self.io = sess.io_binding()
        self._keep = []
        names = [o.name for o in sess.get_outputs()]
        for i in sess.get_inputs():
            x = np.ascontiguousarray(feeds[i.name])
            if cfg.provider == "cuda":
                v = ort.OrtValue.ortvalue_from_numpy(x, "cuda", cfg.device_id)
                self._keep.append(v)
                self.io.bind_ortvalue_input(i.name, v)
            else:
                self._keep.append(x)
                self.io.bind_cpu_input(i.name, x)
        for n in names:
            if cfg.provider == "cuda":
                self.io.bind_output(n, "cuda", cfg.device_id)
            else:
                self.io.bind_output(n)
        sess.run_with_iobinding(self.io)
        self.outputs = self.io.get_outputs()
        for n, v in zip(names, self.outputs):  # preallocated from now on
            self.io.bind_ortvalue_output(n, v)

    def __call__(self) -> None:
        self.sess.run_with_iobinding(self.io)

    def numpy_outputs(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.outputs]


def parse_profile(events: list[dict], provider: str) -> dict:
    """Placement (nodes per provider, CPU nodes of a CUDA session), time per op type (ms per
    inference, the first run dropped) and ORT's allocator peak, from an ORT profile."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    skip = (runs[0]["ts"], runs[0]["ts"] + runs[0]["dur"]) if len(runs) > 1 else None
    counted_runs = max(1, len(runs) - (1 if skip else 0))
    nodes: dict[str, tuple[str, str]] = {}
    op_us: dict[str, float] = {}
    peak = 0
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        a = e.get("args", {})
        name = e["name"][: -len("_kernel_time")]
        op, prov = a.get("op_name", "?"), a.get("provider", "?")
        nodes[name] = (op, prov)
        try:
            peak = max(peak, int(a.get("mem_in_use_peak", 0)))
        except (TypeError, ValueError):
            pass
        if skip and skip[0] <= e["ts"] <= skip[1]:
            continue
        op_us[op] = op_us.get(op, 0.0) + e.get("dur", 0)
    by_provider: dict[str, int] = {}
    cpu_ops: dict[str, int] = {}
    cpu_names = []
    for name, (op, prov) in nodes.items():
        by_provider[prov] = by_provider.get(prov, 0) + 1
        if provider == "cuda" and prov == "CPUExecutionProvider":
            cpu_ops[op] = cpu_ops.get(op, 0) + 1
            cpu_names.append(name)
    memcpy = sum(1 for op, _ in nodes.values() if op.startswith("Memcpy"))
    total_us = sum(op_us.values())
    op_ms = {k: v / counted_runs / 1e3 for k, v in sorted(op_us.items(), key=lambda kv: -kv[1])}
    placement = {
        "nodes": len(nodes), "by_provider": dict(sorted(by_provider.items())),
        "cpu_fallback": bool(cpu_ops), "cpu_nodes": dict(sorted(cpu_ops.items())),
        "cpu_node_names": sorted(cpu_names)[:50], "memcpy_nodes": memcpy,
    }
    ops = {"runs": counted_runs, "kernel_ms": total_us / counted_runs / 1e3,
           "by_op_type_ms": {k: round(v, 6) for k, v in op_ms.items()},
           "share": {k: round(v * counted_runs * 1e3 / total_us, 4) for k, v in op_ms.items()} if total_us else {}}
    return {"placement": placement, "op_time": ops, "ort_allocator_peak_mb": peak / 2**20}


def profile(path: pathlib.Path, feeds: Mapping[str, np.ndarray], cfg: SessionConfig, runs: int = 10,
            seconds: float = 1.0) -> dict:
    tmp = tempfile.mkdtemp(prefix="n6onnx-profile-")
    try:
        sess, _ = cfg.session(path, profile_prefix=os.path.join(tmp, "profile"))
        runner = Runner(sess, feeds, cfg)  # its first run is the one dropped
        t0 = time.perf_counter()
        for k in range(runs):
            runner()
            if k >= 1 and time.perf_counter() - t0 > seconds:
                break
        prof = sess.end_profiling()
        with open(prof) as f:
            events = json.load(f)
        del runner, sess
        return parse_profile(events, cfg.provider)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rss_mb() -> float | None:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError):
            return None


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 2**10


def hardware(nvml: energy_mod.NvmlMeter | None = None) -> dict:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    physical = None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    hw = {
        "cpu": cpu or platform.processor(), "logical_cpus": os.cpu_count(), "physical_cores": physical,
        "usable_cpus": usable, "machine": platform.machine(), "system": platform.platform(),
        "python": platform.python_version(), "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "int8_kernel": kernel.kind(),  # int8 models' products on this CPU: "saturating" on x86 without VNNI
    }
    if nvml is not None:
        hw["gpu"] = nvml.gpu_name
        hw["nvidia_driver"] = nvml.driver
    return hw
