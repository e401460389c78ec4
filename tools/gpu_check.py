#!/usr/bin/env python3
"""GPU test driver: the n6onnx CUDA custom-op library on onnxruntime's CUDA provider.

Needs a CUDA-capable onnxruntime (onnxruntime-gpu), numpy, onnx, and this repository on the path
(the package need not be installed: run from the repo root with PYTHONPATH=.). The e2e part also
needs onnx-ir and onnxscript (the rewriter). The libraries come from the usual places or the
environment: N6ONNX_CUDA_LIBRARY (libn6ops_cuda.so, required), N6ONNX_LIBRARY (libn6ops.so,
optional: the CPU comparisons then use the CPU kernels of libn6ops_cuda.so).

Parts (all by default; --only picks some):
  contract   every op x float32/float16/bfloat16 x shapes (odd sizes, scalar tails, a bias with an
             odd last dim, 0 elements, 1M+3 elements): numpy reference == the function fallback on
             CUDA (no library) == our CUDA kernel == our CPU kernel, each within the op's tolerance
             (bfloat16: rtol = atol = 1e-2; the spec has no bfloat16 tolerance), bit-exactness
             recorded; the kernels on inf and NaN; misaligned device buffers through IO binding
             (x and y at equal and at different offsets from a 16-byte boundary, a misaligned
             bias) with guard elements around the output; a wrong bias length is an ORT error.
             bfloat16 models take and return float32 and Cast inside the graph (numpy has no
             bfloat16); their inputs are bfloat16-representable, so the Casts are exact.
  placement  ORT profiling: every n6onnx node of the contract models and of the rewritten e2e
             models ran on CUDAExecutionProvider.
  e2e        MiniLM and GPT-2 (zoo, exporter dynamo18, batch 2 x 16 tokens) rewritten gelu=phi6,
             run on CUDA with libn6ops_cuda, compared with the same rewritten model on the CPU
             provider with the CPU kernels (independent path) and with the function fallback on
             CUDA (max |diff| <= 1e-3 each; TF32 off), and with the original (must differ).
             Models: --models-dir/<zoo.cache_path name>, e.g. minilm-dynamo18-b2-s16-v1.onnx; a
             <name>.weightless.onnx (tools/weightless.py strip) is regrown when the full file is
             missing, and the report says so.
  sanitizer  re-runs the contract (CUDA kernels only) under `compute-sanitizer --tool memcheck`
             when compute-sanitizer is on PATH or in /usr/local/cuda/bin; must report 0 errors.

Writes JSON to --out (default benchmarks/results/gpu_check.json); exit status 0 when every part
that ran passed.

    PYTHONPATH=/tmp/site:. N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so \\
        python3 tools/gpu_check.py --models-dir build/test-models
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import _gpu  # noqa: E402  (tools/_gpu.py)
from n6onnx import _library  # noqa: E402
from n6onnx.ops import DOMAIN, Tolerance  # noqa: E402
from n6onnx.ops import ELEMENTWISE as REGISTRY  # noqa: E402  (this driver checks the activations)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# --cpu-dry-run (tests this script on a machine without a GPU): the "device" is the CPU provider.
TARGET = {"provider": CUDA, "device": "cuda"}
DTYPES = ("float32", "float16", "bfloat16")
BF16_TOL = Tolerance(rtol=1e-2, atol=1e-2)
E2E_ATOL = 1e-3
E2E_MODELS = ("minilm", "gpt2")
OPSET = 18

PLAIN_SHAPES = [(0,), (1,), (7,), (1031,), (3, 5, 33), (8, 128, 1536), ((1 << 20) + 3,)]
BIAS_SHAPES = [(0, 8), (1, 1), (7,), (3, 1031), (64, 5), (16, 3), (4, 1536), (2, 3, 33), (8, 128, 1536)]
# (x offset, y offset, bias offset) in elements from 256-byte-aligned device buffers
MISALIGNED = [(0, 0, 0), (1, 1, 0), (1, 2, 0), (0, 1, 1), (3, 3, 1)]
MISALIGNED_SHAPES = {"plain": [(1031,), (8, 1536)], "bias": [(3, 1031), (8, 1536), (64, 5)]}
GUARD = 64  # elements around bound output windows


# ------------------------------------------------------------------------------------------------
# numpy helpers


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16) & 0xFFFFFFFF
    out = r.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(a), a, out).astype(np.float32)


def storage_dtype(dtype: str):
    return np.float32 if dtype == "bfloat16" else np.dtype(dtype)


def make_inputs(spec, dtype: str, shape, seed: int, specials=(-2.0, 2.0, 0.0, -2.5, 2.5, 5 / 12, 1e4, -1e4)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    k = min(len(specials), flat.size)
    flat[:k] = np.asarray(specials[:k], np.float32)
    feeds = {"X": x}
    if "bias" in spec.inputs:
        feeds["bias"] = rng.uniform(-1, 1, size=shape[-1]).astype(np.float32)
    for name, v in feeds.items():
        feeds[name] = round_bf16(v) if dtype == "bfloat16" else v.astype(dtype)
    return feeds


def reference(spec, dtype: str, feeds) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow to inf is part of the test
        if dtype == "bfloat16":
            return round_bf16(spec.reference(*[np.asarray(v, np.float32) for v in feeds.values()]))
        return spec.reference(*feeds.values())


def tolerance(spec, dtype: str) -> Tolerance:
    return BF16_TOL if dtype == "bfloat16" else spec.tolerance(dtype)


def compare(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> dict:
    """Allclose (inf == inf, NaN == NaN) and bit-exactness of got against ref."""
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
    exact = bool(np.all((bits_g == bits_r) | (nan_g & nan_r)))
    return {
        "ok": bool(close.all()),
        "max_abs_err": float(err.max()) if err.size else 0.0,
        "mismatches": int((~close).sum()),
        "bit_exact": exact,
    }


# ------------------------------------------------------------------------------------------------
# models and sessions


def op_model(spec, dtype: str, rank: int) -> bytes:
    """One n6 node with dynamic dims; bfloat16: float32 graph IO with Casts around the node."""
    et = helper.np_dtype_to_tensor_dtype(np.dtype(storage_dtype(dtype)))
    dims = [f"d{i}" for i in range(rank)]
    inputs = [helper.make_tensor_value_info("X", et, dims)]
    if "bias" in spec.inputs:
        inputs.append(helper.make_tensor_value_info("bias", et, [dims[-1]]))
    nodes = []
    names = [i.name for i in inputs]
    out = "Y"
    if dtype == "bfloat16":
        for n in list(names):
            nodes.append(helper.make_node("Cast", [n], [n + "_bf16"], to=TensorProto.BFLOAT16))
        names = [n + "_bf16" for n in names]
        out = "Y_bf16"
    nodes.append(helper.make_node(spec.name, names, [out], domain=DOMAIN, name="n6_node"))
    if dtype == "bfloat16":
        nodes.append(helper.make_node("Cast", [out], ["Y"], to=TensorProto.FLOAT))
    g = helper.make_graph(nodes, "gpu_contract", inputs, [helper.make_tensor_value_info("Y", et, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(OPSET)], ir_version=10)
    return m.SerializeToString()


class Libraries:
    def __init__(self) -> None:
        self.cuda = _library.library_path("cuda")
        self.cpu = _library.library_path("cpu")
        # CPU-provider comparisons: the CPU library, else the CPU kernels inside the CUDA library.
        self.cpu_for_cpu = self.cpu or self.cuda

    def to_json(self) -> dict:
        return {"cuda": str(self.cuda) if self.cuda else None, "cpu": str(self.cpu) if self.cpu else None,
                "cpu_kernels_from": str(self.cpu_for_cpu) if self.cpu_for_cpu else None}


def session(model, lib, providers, profile_prefix: str | None = None, quiet: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4 if quiet else 3
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, so, providers=providers)


def cuda_providers(device_id: int) -> list:
    if TARGET["provider"] != CUDA:
        return [CPU]
    return [(CUDA, {"device_id": device_id, "use_tf32": "0"}), CPU]


def node_providers(profile_file: str) -> list[tuple[str, str, str]]:
    """(node name, op type, provider) of every node that ran, from an ORT profile."""
    with open(profile_file) as f:
        events = json.load(f)
    seen = {}
    for e in events:
        if e.get("cat") != "Node":
            continue
        args = e.get("args", {})
        name = e.get("name", "")
        for suffix in ("_kernel_time", "_fence_before", "_fence_after"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if "op_name" in args and "provider" in args:
            seen[name] = (name, args["op_name"], args["provider"])
    return list(seen.values())


# ------------------------------------------------------------------------------------------------
# contract


def run_contract(args, libs: Libraries, tmp: pathlib.Path, kernel_only: bool) -> dict:
    dev = args.device_id
    cases = []
    sessions: dict = {}
    placement = []

    def sess(op, dtype, rank, path):
        key = (op, dtype, rank, path)
        if key not in sessions:
            model = op_model(REGISTRY[op], dtype, rank)
            if path == "cuda_kernel":
                sessions[key] = session(model, libs.cuda, cuda_providers(dev))
            elif path == "cuda_fallback":
                sessions[key] = session(model, None, cuda_providers(dev))
            else:
                sessions[key] = session(model, libs.cpu_for_cpu, [CPU])
        return sessions[key]

    paths = ["cuda_kernel"] if kernel_only else ["cuda_kernel", "cuda_fallback", "cpu_kernel"]
    for op in sorted(REGISTRY):
        spec = REGISTRY[op]
        shapes = BIAS_SHAPES if "bias" in spec.inputs else PLAIN_SHAPES
        for dtype in DTYPES:
            tol = tolerance(spec, dtype)
            for si, shape in enumerate(shapes):
                feeds = make_inputs(spec, dtype, shape, seed=si)
                ref = reference(spec, dtype, feeds)
                case = {"op": op, "dtype": dtype, "shape": list(shape), "results": {}}
                for path in paths:
                    try:
                        got = sess(op, dtype, len(shape), path).run(None, feeds)[0]
                        case["results"][path] = compare(got, ref, tol)
                    except Exception as e:  # recorded, not raised: the report shows what happened
                        case["results"][path] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
                case["ok"] = all(r.get("ok") for r in case["results"].values())
                cases.append(case)
            # inf / NaN through the kernels (the function fallback's Clip need not propagate NaN)
            shape = (4, 1031) if "bias" in spec.inputs else (1031,)
            feeds = make_inputs(spec, dtype, shape, seed=99,
                                specials=(np.nan, np.inf, -np.inf, -2.0, 2.0, 0.0, np.nan, 3.0, -7.0))
            ref = reference(spec, dtype, feeds)
            case = {"op": op, "dtype": dtype, "shape": list(shape), "specials": "nan/inf", "results": {}}
            for path in [p for p in paths if p != "cuda_fallback"]:
                try:
                    got = sess(op, dtype, len(shape), path).run(None, feeds)[0]
                    case["results"][path] = compare(got, ref, tol)
                except Exception as e:
                    case["results"][path] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"}
            case["ok"] = all(r.get("ok") for r in case["results"].values())
            cases.append(case)
            # placement: the node ran on CUDA in the kernel session
            if not kernel_only:
                try:
                    prefix = str(tmp / f"prof_{op}_{dtype}")
                    rank = 2
                    s = session(op_model(spec, dtype, rank), libs.cuda, cuda_providers(dev), prefix)
                    s.run(None, make_inputs(spec, dtype, (4, 64), 0))
                    nodes = node_providers(s.end_profiling())
                    n6 = [(n, o, p) for n, o, p in nodes if o == op]
                    rec = {"op": op, "dtype": dtype, "n6_nodes": [list(t) for t in n6],
                           "ok": bool(n6) and all(p == TARGET["provider"] for _, _, p in n6)}
                    # where the function fallback's standard ops run (recorded, not required)
                    s = session(op_model(spec, dtype, rank), None, cuda_providers(dev), prefix + "_fallback")
                    s.run(None, make_inputs(spec, dtype, (4, 64), 0))
                    fb = node_providers(s.end_profiling())
                    rec["fallback_nodes"] = sorted({f"{o}@{p}" for _, o, p in fb})
                    rec["fallback_all_on_target"] = bool(fb) and all(p == TARGET["provider"] for _, _, p in fb)
                    placement.append(rec)
                except Exception as e:
                    placement.append({"op": op, "dtype": dtype, "ok": False, "error": f"{type(e).__name__}: {e}"})

    misaligned = run_misaligned(args, libs)
    bad_bias = run_bad_bias(args, libs)
    failed = [c for c in cases if not c["ok"]]
    return {
        "paths": paths,
        "cases": len(cases),
        "failed": len(failed),
        "failures": failed[:50],
        "bit_exact": {p: sum(1 for c in cases if c["results"].get(p, {}).get("bit_exact")) for p in paths},
        "all_cases": cases if args.verbose else None,
        "misaligned": misaligned,
        "bad_bias": bad_bias,
        "placement": placement,
        "ok": not failed and all(m["ok"] for m in misaligned) and bad_bias["ok"] and all(p["ok"] for p in placement),
    }


def run_misaligned(args, libs: Libraries) -> list[dict]:
    """IO binding with device buffers at element offsets from 16-byte boundaries; guards checked."""
    dev = args.device_id
    where = TARGET["device"]
    out = []
    for op in sorted(REGISTRY):
        spec = REGISTRY[op]
        kind = "bias" if "bias" in spec.inputs else "plain"
        for dtype in ("float32", "float16"):
            np_dtype = np.dtype(dtype)
            tol = spec.tolerance(dtype)
            for shape in MISALIGNED_SHAPES[kind]:
                s = session(op_model(spec, dtype, len(shape)), libs.cuda, cuda_providers(dev))
                for xo, yo, bo in MISALIGNED:
                    rec = {"op": op, "dtype": dtype, "shape": list(shape), "offsets": [xo, yo, bo]}
                    try:
                        feeds = make_inputs(spec, dtype, shape, seed=xo + 3 * yo)
                        ref = reference(spec, dtype, feeds)
                        n = int(np.prod(shape))
                        io = s.io_binding()
                        keep = []
                        xbuf = np.zeros(n + GUARD, np_dtype)
                        xbuf[xo:xo + n] = feeds["X"].reshape(-1)
                        xv = ort.OrtValue.ortvalue_from_numpy(xbuf, where, dev)
                        keep.append(xv)
                        io.bind_input("X", where, dev, np_dtype, list(shape), xv.data_ptr() + xo * np_dtype.itemsize)
                        if kind == "bias":
                            d = shape[-1]
                            bbuf = np.zeros(d + GUARD, np_dtype)
                            bbuf[bo:bo + d] = feeds["bias"]
                            bv = ort.OrtValue.ortvalue_from_numpy(bbuf, where, dev)
                            keep.append(bv)
                            io.bind_input("bias", where, dev, np_dtype, [d], bv.data_ptr() + bo * np_dtype.itemsize)
                        sentinel = np.full(n + 2 * GUARD, 12345.0, np_dtype)
                        yv = ort.OrtValue.ortvalue_from_numpy(sentinel, where, dev)
                        keep.append(yv)
                        io.bind_output("Y", where, dev, np_dtype, list(shape),
                                       yv.data_ptr() + (GUARD + yo) * np_dtype.itemsize)
                        s.run_with_iobinding(io)
                        yall = yv.numpy()
                        got = yall[GUARD + yo:GUARD + yo + n].reshape(shape)
                        rec.update(compare(got, ref, tol))
                        guard_ok = bool(np.all(yall[:GUARD + yo] == sentinel[0]) and np.all(yall[GUARD + yo + n:] == sentinel[0]))
                        rec["guards_intact"] = guard_ok
                        rec["ok"] = rec["ok"] and guard_ok
                    except Exception as e:
                        rec.update({"ok": False, "error": f"{type(e).__name__}: {str(e)[:500]}"})
                    out.append(rec)
    return out


def run_bad_bias(args, libs: Libraries) -> dict:
    spec = REGISTRY["BiasPhi6"]
    try:
        s = session(op_model(spec, "float32", 2), libs.cuda, cuda_providers(args.device_id), quiet=True)
        s.run(None, {"X": np.ones((3, 8), np.float32), "bias": np.ones(5, np.float32)})
        return {"ok": False, "why": "a bias of length 5 for a last dim of 8 ran without an error"}
    except Exception as e:
        msg = str(e)
        return {"ok": "bias" in msg, "error_message": msg[:300]}


# ------------------------------------------------------------------------------------------------
# e2e


def find_model(models_dir: pathlib.Path, model: str, tmp: pathlib.Path) -> tuple[pathlib.Path | None, str]:
    from n6onnx.testing import zoo

    path = zoo.cache_path(model, "dynamo18", models_dir)
    if path.is_file():
        return path, "exported weights"
    light = path.with_suffix(".weightless.onnx")
    if light.is_file():
        sys.path.insert(0, str(ROOT / "tools"))
        import weightless  # tools/weightless.py

        dst = tmp / path.name
        weightless.regrow(str(light), str(dst))
        return dst, "regrown (seeded random) weights from " + light.name
    return None, f"missing: {path} (nor {light.name})"


def run_e2e(args, libs: Libraries, tmp: pathlib.Path) -> dict:
    import n6onnx
    from n6onnx.testing import zoo

    dev = args.device_id
    res = {"atol": E2E_ATOL, "models": {}}
    ok = True
    for model in E2E_MODELS:
        rec: dict = {}
        res["models"][model] = rec
        try:
            src, weights = find_model(pathlib.Path(args.models_dir), model, tmp)
            rec["weights"] = weights
            if src is None:
                rec["ok"] = False
                ok = False
                continue
            out = tmp / f"{model}-phi6.onnx"
            _, rep = n6onnx.rewrite(src, out, ["gelu=phi6"])
            rec["rewritten"] = dict(rep.rewritten)
            proto = onnx.load(str(out))
            n6_types = sorted({n.op_type for n in proto.graph.node if n.domain == DOMAIN})
            rec["n6_node_types"] = n6_types
            rec["n6_nodes"] = sum(1 for n in proto.graph.node if n.domain == DOMAIN)
            feeds = zoo.example_inputs(model)

            so = ort.SessionOptions()
            so.enable_profiling = True
            so.profile_file_prefix = str(tmp / f"e2e_{model}")
            so.log_severity_level = 3
            a = n6onnx.InferenceSession(out, so, providers=cuda_providers(dev))
            rec["cuda_session"] = {"providers": a.get_providers(), "library_kind": a.library_kind}
            ya = a.run(None, feeds)[0]
            nodes = node_providers(a.end_profiling())
            n6_nodes = [(n, o, p) for n, o, p in nodes if o in REGISTRY]
            cpu_nodes: dict = {}
            for _, o, p in nodes:
                if p != TARGET["provider"]:
                    cpu_nodes[o] = cpu_nodes.get(o, 0) + 1
            rec["placement"] = {
                "n6_nodes_ran": len(n6_nodes),
                "n6_on_cuda": sum(1 for _, _, p in n6_nodes if p == TARGET["provider"]),
                "n6_not_on_cuda": [list(t) for t in n6_nodes if t[2] != TARGET["provider"]],
                "other_nodes_not_on_cuda": cpu_nodes,
            }
            placement_ok = len(n6_nodes) == rec["n6_nodes"] and all(p == TARGET["provider"] for _, _, p in n6_nodes)

            b = ort.InferenceSession(str(out), _opts(libs.cpu_for_cpu), providers=[CPU])
            yb = b.run(None, feeds)[0]
            c = n6onnx.InferenceSession(out, providers=cuda_providers(dev), use_library=False)
            yc = c.run(None, feeds)[0]
            d = ort.InferenceSession(str(src), _opts(None), providers=cuda_providers(dev))
            yd = d.run(None, feeds)[0]
            rec["max_abs_diff"] = {
                "cuda_kernel_vs_cpu_kernel": float(np.abs(ya - yb).max()),
                "cuda_kernel_vs_cuda_fallback": float(np.abs(ya - yc).max()),
                "cuda_kernel_vs_original_gelu_model": float(np.abs(ya - yd).max()),
            }
            diffs = rec["max_abs_diff"]
            rec["checks"] = {
                "library_kind_cuda": a.library_kind == ("cuda" if TARGET["provider"] == CUDA else "cpu"),
                "all_gelu_rewritten": rec["rewritten"].get("gelu", 0) == zoo.ARCH_COUNTS[model]["gelu"],
                "n6_nodes_on_cuda": placement_ok,
                "matches_cpu_kernel": diffs["cuda_kernel_vs_cpu_kernel"] <= E2E_ATOL,
                "matches_cuda_fallback": diffs["cuda_kernel_vs_cuda_fallback"] <= E2E_ATOL,
                "differs_from_gelu_model": diffs["cuda_kernel_vs_original_gelu_model"] > 1e-2,
            }
            rec["ok"] = all(rec["checks"].values())
        except Exception as e:
            rec["ok"] = False
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()[-2000:]
        ok = ok and rec["ok"]
    res["ok"] = ok
    return res


def _opts(lib) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    return so


# ------------------------------------------------------------------------------------------------
# sanitizer


def run_sanitizer(args, tmp: pathlib.Path) -> dict:
    r = _gpu.memcheck(__file__, ["--only", "contract", "--kernel-only", "--device-id", str(args.device_id),
                                 "--out", _gpu.sub_out(tmp)], tmp, args.sanitizer_timeout)
    sub = r.pop("sub", {})
    r["contract_under_memcheck_ok"] = sub.get("contract", {}).get("ok")
    r["contract_cases"] = sub.get("contract", {}).get("cases")
    r["ok"] = r.pop("clean") and bool(sub.get("contract", {}).get("ok")) if r["ran"] else None
    return r


# ------------------------------------------------------------------------------------------------


def environment(libs: Libraries) -> dict:
    env = {
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "available_providers": ort.get_available_providers(),
        "libraries": libs.to_json(),
        "numpy": np.__version__,
        "onnx": onnx.__version__,
    }
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        env["gpu"] = q.stdout.strip()
    except Exception:  # nvidia-smi missing: not fatal
        env["gpu"] = None
    return env


write_json = _gpu.write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    ap.add_argument("--models-dir", default=str(ROOT / "build" / "test-models"))
    ap.add_argument("--only", default="contract,e2e,sanitizer",
                    help="comma-separated parts: contract (includes placement of the op nodes), e2e "
                         "(includes placement in the rewritten models), sanitizer")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--kernel-only", action="store_true", help="contract: only the CUDA kernel path")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="test this script without a GPU: the CPU provider stands in for CUDA (no sanitizer)")
    ap.add_argument("--sanitizer-timeout", type=int, default=420)
    ap.add_argument("--verbose", action="store_true", help="keep every contract case in the JSON")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"contract", "e2e", "sanitizer"}
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}")

    if args.cpu_dry_run:
        TARGET.update(provider=CPU, device="cpu")
        parts.discard("sanitizer")
    ort.set_default_logger_severity(3)  # ORT 1.31 warns about plugin EP devices on every CUDA session
    libs = Libraries()
    payload = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "what": "n6onnx CUDA custom ops on onnxruntime's CUDA provider (tools/gpu_check.py)",
        "environment": environment(libs),
        "parts": sorted(parts),
        "cpu_dry_run": bool(args.cpu_dry_run),
    }
    if TARGET["provider"] not in ort.get_available_providers():
        payload["ok"] = False
        payload["error"] = "this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
        write_json(pathlib.Path(args.out), payload)
        print(payload["error"], file=sys.stderr)
        return 2
    if libs.cuda is None:
        payload["ok"] = False
        payload["error"] = "libn6ops_cuda.so not found: build it and set N6ONNX_CUDA_LIBRARY"
        write_json(pathlib.Path(args.out), payload)
        print(payload["error"], file=sys.stderr)
        return 2

    oks = []
    with tempfile.TemporaryDirectory(prefix="n6gpu") as td:
        tmp = pathlib.Path(td)
        t0 = time.time()
        if "contract" in parts:
            payload["contract"] = run_contract(args, libs, tmp, kernel_only=args.kernel_only)
            payload["contract"]["seconds"] = round(time.time() - t0, 1)
            oks.append(payload["contract"]["ok"])
            print(f"contract: {payload['contract']['cases']} cases, {payload['contract']['failed']} failed, "
                  f"ok={payload['contract']['ok']} ({payload['contract']['seconds']} s)", flush=True)
        if "e2e" in parts:
            t1 = time.time()
            payload["e2e"] = run_e2e(args, libs, tmp)
            payload["e2e"]["seconds"] = round(time.time() - t1, 1)
            oks.append(payload["e2e"]["ok"])
            for m, r in payload["e2e"]["models"].items():
                print(f"e2e {m}: ok={r.get('ok')} {r.get('max_abs_diff', r.get('error', r.get('weights')))}", flush=True)
        if "sanitizer" in parts:
            payload["sanitizer"] = run_sanitizer(args, tmp)
            if payload["sanitizer"]["ran"]:
                oks.append(payload["sanitizer"]["ok"])
            print(f"sanitizer: {payload['sanitizer'].get('error_summary') or payload['sanitizer'].get('why')} "
                  f"ok={payload['sanitizer']['ok']}", flush=True)
    payload["ok"] = all(oks)
    write_json(pathlib.Path(args.out), payload)
    print(f"wrote {args.out}: ok={payload['ok']}")
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
