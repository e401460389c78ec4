"""Fixtures of the CUDA tests (tests/cuda/, marker ``cuda``): the n6onnx CUDA custom-op library
(libn6ops_cuda.so) on onnxruntime's CUDAExecutionProvider, against the ops' numpy references, the
ONNX function fallback on CUDA and the CPU kernels.

Deselected by default (pyproject addopts ``-m "not cuda"``); on a GPU machine run
``pytest -m cuda`` (tools/gpu_pytest.sh). When they are selected nothing is skipped: a missing
CUDAExecutionProvider, CUDA library or compute-sanitizer is a failure.

Environment:
  N6ONNX_CUDA_LIBRARY   libn6ops_cuda.so (else the installed n6onnx/lib copy)
  N6ONNX_LIBRARY        libn6ops.so for the CPU comparisons (else the CPU kernels of the CUDA library)
  N6ONNX_CUDA_DRY_RUN=1 the CPU provider and the CPU library stand in for CUDA: runs the tests'
                        logic on a machine without a GPU (placement then expects the CPU provider)
  N6ONNX_CUDA_KERNEL_ONLY=1  only the CUDA kernel path of each case (set by the memcheck tests
                        for the runs under compute-sanitizer)
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import pytest

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DRY_RUN = os.environ.get("N6ONNX_CUDA_DRY_RUN") == "1"
KERNEL_ONLY = os.environ.get("N6ONNX_CUDA_KERNEL_ONLY") == "1"
REPO = pathlib.Path(__file__).resolve().parents[2]


class Target:
    """Where the kernels under test run: CUDA (or the CPU in a dry run), with which libraries."""

    def __init__(self) -> None:
        from n6onnx import _library

        self.provider = CPU if DRY_RUN else CUDA
        self.device = "cpu" if DRY_RUN else "cuda"
        cpu = _library.library_path("cpu")
        cuda = _library.library_path("cuda")
        if DRY_RUN:
            cuda = cpu
        if self.provider not in ort.get_available_providers():
            pytest.fail(f"onnxruntime {ort.__version__} has no {self.provider} "
                        f"(available: {ort.get_available_providers()}); install onnxruntime-gpu", pytrace=False)
        if cuda is None:
            pytest.fail("libn6ops_cuda.so not found: build it and set N6ONNX_CUDA_LIBRARY", pytrace=False)
        self.cuda_lib = str(cuda)
        self.cpu_lib = str(cpu or cuda)  # the CPU kernels: libn6ops.so, else those of libn6ops_cuda.so
        self.kernel_only = KERNEL_ONLY
        self._cache: dict = {}

    def providers(self) -> list:
        if self.provider == CPU:
            return [CPU]
        return [(CUDA, {"device_id": 0, "use_tf32": "0"}), CPU]

    def session(self, model: bytes, path: str, *, profile: str | None = None, cache: bool = True,
                quiet: bool = False) -> ort.InferenceSession:
        """path: "cuda_kernel" (our library on the target), "cuda_fallback" (no library: the
        function bodies on the target) or "cpu_kernel" (our CPU kernels on the CPU provider)."""
        key = (model, path)
        if cache and profile is None and key in self._cache:
            return self._cache[key]
        so = ort.SessionOptions()
        so.log_severity_level = 4 if quiet else 3
        lib = {"cuda_kernel": self.cuda_lib, "cuda_fallback": None, "cpu_kernel": self.cpu_lib}[path]
        if lib is not None:
            so.register_custom_ops_library(lib)
        if profile:
            so.enable_profiling = True
            so.profile_file_prefix = profile
        providers = [CPU] if path == "cpu_kernel" else self.providers()
        s = ort.InferenceSession(model, so, providers=providers)
        if cache and profile is None:
            self._cache[key] = s
        return s

    def paths(self, *, fallback: bool = True) -> list[str]:
        if self.kernel_only:
            return ["cuda_kernel"]
        return ["cuda_kernel"] + (["cuda_fallback"] if fallback else []) + ["cpu_kernel"]

    @staticmethod
    def compare(got: np.ndarray, ref: np.ndarray, tol) -> dict:
        """Allclose (inf == inf of the same sign, NaN == NaN) and bit-exactness of got against ref."""
        if got.shape != ref.shape or got.dtype != ref.dtype:
            return {"ok": False, "why": f"shape/dtype {got.shape}/{got.dtype} != {ref.shape}/{ref.dtype}"}
        if got.size == 0:
            return {"ok": True, "max_abs_err": 0.0, "bit_exact": True, "mismatches": 0}
        g = got.astype(np.float64)
        r = ref.astype(np.float64)
        nan_g, nan_r = np.isnan(g), np.isnan(r)
        same_inf = np.isinf(g) & np.isinf(r) & (np.sign(g) == np.sign(r))
        fin = ~(nan_g | nan_r | same_inf)
        close = np.zeros(g.shape, bool)
        close[fin] = np.abs(g[fin] - r[fin]) <= tol.atol + tol.rtol * np.abs(r[fin])
        close |= (nan_g & nan_r) | same_inf
        err = np.abs(g[fin] - r[fin])
        bits_g = got.view(np.uint32 if got.itemsize == 4 else np.uint16)
        bits_r = ref.view(np.uint32 if ref.itemsize == 4 else np.uint16)
        return {"ok": bool(close.all()), "max_abs_err": float(err.max()) if err.size else 0.0,
                "mismatches": int((~close).sum()), "bit_exact": bool(np.all((bits_g == bits_r) | (nan_g & nan_r)))}

    def check(self, model: bytes, feeds: dict, ref: np.ndarray, tol, paths: list[str]) -> dict:
        """Runs the model on every path and asserts each output is within tol of ref."""
        results = {}
        for path in paths:
            got = self.session(model, path).run(None, feeds)[0]
            results[path] = self.compare(got, ref, tol)
        bad = {p: r for p, r in results.items() if not r["ok"]}
        assert not bad, f"outside the tolerance (rtol={tol.rtol}, atol={tol.atol}): {bad}"
        return results


@pytest.fixture(scope="session")
def target() -> Target:
    ort.set_default_logger_severity(3)  # ORT 1.31 warns about plugin EP devices on every CUDA session
    return Target()


def node_providers(profile_file: str) -> list[tuple[str, str]]:
    """(op type, provider) of every node that ran, from an ORT profile (the file is removed)."""
    with open(profile_file) as f:
        events = json.load(f)
    os.unlink(profile_file)
    return [(e["args"]["op_name"], e["args"]["provider"]) for e in events
            if e.get("cat") == "Node" and "op_name" in e.get("args", {}) and "provider" in e.get("args", {})]


@pytest.fixture
def placement(target, tmp_path):
    """placement(model, feeds, ops) -> the (op, provider) pairs of every node that ran in the
    CUDA-kernel session; asserts a node of `ops` ran and each of them ran on the target provider."""

    def check(model: bytes, feeds: dict, ops) -> list:
        s = target.session(model, "cuda_kernel", profile=str(tmp_path / "prof"))
        s.run(None, feeds)
        nodes = node_providers(s.end_profiling())
        ran = [(o, p) for o, p in nodes if o in ops]
        assert ran, f"no node of {sorted(ops)} ran: {nodes}"
        assert all(p == target.provider for _, p in ran), f"not all on {target.provider}: {ran}"
        return nodes

    return check


# seconds per memcheck run (the activations' contract under memcheck took 217 s on an H200)
TIMEOUT = int(os.environ.get("N6ONNX_MEMCHECK_TIMEOUT", "900"))


def find_sanitizer() -> str:
    exe = shutil.which("compute-sanitizer")
    for p in (exe, "/usr/local/cuda/bin/compute-sanitizer", "/usr/local/cuda/compute-sanitizer/compute-sanitizer"):
        if p and os.access(p, os.X_OK):
            return p
    pytest.fail("compute-sanitizer not found (PATH, /usr/local/cuda/bin)", pytrace=False)


@pytest.fixture
def memcheck(tmp_path):
    """memcheck(cmd, env=None) runs cmd under `compute-sanitizer --tool memcheck` from the repo
    root, asserts exit status 0 and an error summary of 0 errors, and returns its output."""
    return lambda cmd, env=None: run_memcheck(cmd, tmp_path, env)


def run_memcheck(cmd: list[str], tmp_path: pathlib.Path, env: dict | None = None) -> str:
    log = tmp_path / "memcheck.log"
    full = [find_sanitizer(), "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "50",
            "--log-file", str(log), *cmd]
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        pytest.fail(f"memcheck timed out after {TIMEOUT} s (N6ONNX_MEMCHECK_TIMEOUT): {' '.join(full)}")
    text = log.read_text(errors="replace") if log.exists() else ""
    summary = [ln.strip() for ln in text.splitlines() if "ERROR SUMMARY" in ln]
    out = p.stdout + p.stderr
    assert summary, f"no memcheck error summary (exit {p.returncode}):\n{text[-2000:]}\n{out[-2000:]}"
    assert p.returncode == 0 and "ERROR SUMMARY: 0 errors" in summary[-1], \
        f"exit {p.returncode}, {summary[-1]}:\n{text[-3000:]}\n{out[-3000:]}"
    return out
