#!/usr/bin/env python3
"""GPU driver for the attention ops (FFTMix, EgyptianAttention) of libn6ops_cuda.so.

Parts (all by default; --only picks some; one failing part never stops the others):
  contract   every contract sample of both ops (OpSpec.samples) x float32/float16, plus a few
             larger cases (several key tiles, head size 128, odd head size, no mask, odd D, long
             FFTMix): numpy reference == function fallback on CUDA (no library, TF32 off) == our
             CUDA kernel == our CPU kernel (libn6ops.so, CPU provider), each within the op's
             tolerance; bad shapes are ORT errors on CUDA too.
  placement  ORT profiling: every n6 node of the CUDA-kernel sessions ran on CUDAExecutionProvider.
  sanitizer  the contract (CUDA kernels only) again under `compute-sanitizer --tool memcheck`;
             must report 0 errors.
  bench      benchmarks/attention_ops.py on CUDA (fp32 + fp16, IO binding, NVML energy):
             benchmarks/results/attention_ops_cuda.json.
Writes benchmarks/results/attention_ops_gpu_check.json (and copies every JSON to $OUT if set).
Exit status 0 when every part that ran passed. Budget: ~60-90 s on an H100.

    PYTHONPATH=/tmp/site:. N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so \\
        N6ONNX_LIBRARY=build/cuda/libn6ops.so python3 tools/gpu_attention.py
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper  # noqa: E402

import _gpu  # noqa: E402  (tools/_gpu.py)
from n6onnx import _library  # noqa: E402
from n6onnx.ops import DOMAIN, REGISTRY, Sample  # noqa: E402

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TARGET = {"provider": CUDA}  # --cpu-dry-run: CPU stands in (tests this script without a GPU)
OPS = ("FFTMix", "EgyptianAttention")
DTYPES = ("float32", "float16")
RESULTS = ROOT / "benchmarks" / "results"
PART_TIMEOUT = {"contract": 150, "sanitizer": 300, "bench": 300}  # seconds; normal runs take far less
# --kernel-only (the memcheck run): float32 and float16 x these (odd / even D, L < every window,
# L = 1, head sizes 4 / 20 / 32 / 64 / 128, no key at all, no mask)
MEMCHECK_SAMPLES = {"L1", "L5_below_every_window", "L131_D96_threads", "L97_D33_odd", "L10_not_divisible",
                    "L5_window4_custom_kinds_mask", "L150_D64_threads", "L300_12x64_mask", "L130_dh128",
                    "L77_dh20_nomask", "L200_local_global_only"}


def extra_samples(op: str, dtype: str) -> list[Sample]:
    rng = np.random.default_rng(7)
    out = []
    if op == "FFTMix":
        for sid, B, L, D in (("L1000_D768", 1, 1000, 768), ("L97_D33_odd", 3, 97, 33)):
            feeds = {"X": rng.normal(0, 1, (B, L, D)).astype(dtype)}
            for w in (6, 12, 24):
                feeds[f"F{w}"] = rng.uniform(-1, 1, (w // 2 + 1, D)).astype(dtype)
            out.append(Sample(sid, feeds))
        return out
    for sid, B, L, H, dh, attrs, mask in (
        ("L300_12x64_mask", 2, 300, 12, 64, {"num_heads": 12}, True),
        ("L130_dh128", 1, 130, 2, 128, {"num_heads": 2, "head_kinds": [0, 1], "window": 20}, True),
        ("L77_dh20_nomask", 2, 77, 3, 20, {"num_heads": 3, "window": 10}, False),
        # no full head (the EgyptianAttention left by attention=egyptian:...:mha): 64-query tiles
        ("L200_local_global_only", 2, 200, 6, 64, {"num_heads": 6, "head_kinds": [1, 1, 1, 1, 2, 2]}, True),
    ):
        feeds = {n: rng.normal(0, 1, (B, L, H * dh)).astype(dtype) for n in ("Q", "K", "V")}
        if mask:
            m = np.ones((B, L), np.int32)
            m[-1, L - L // 3:] = 0
            feeds["key_padding_mask"] = m
        out.append(Sample(sid, feeds, attrs))
    return out


def sample_model(spec, sample) -> bytes:
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in sample.feeds.items()]
    names = [n if n in sample.feeds else "" for n in spec.inputs]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(spec.name, names, ["Y"], domain=DOMAIN, name="n6_node", **sample.attrs)
    rank = 3
    out = helper.make_tensor_value_info("Y", inputs[0].type.tensor_type.elem_type, [None] * rank)
    g = helper.make_graph([node], "gpu_attention", inputs, [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(18)], ir_version=10)
    return m.SerializeToString()


def session(model: bytes, lib, provider: str, profile_prefix=None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if lib is not None:
        so.register_custom_ops_library(str(lib))
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    provs = [(CUDA, {"use_tf32": 0}), CPU] if provider == CUDA else [CPU]
    return ort.InferenceSession(model, so, providers=provs)


def compare(got, ref, tol) -> dict:
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return {"ok": False, "why": f"{got.shape}/{got.dtype} != {ref.shape}/{ref.dtype}"}
    g, r = got.astype(np.float64), ref.astype(np.float64)
    close = np.abs(g - r) <= tol.atol + tol.rtol * np.abs(r)
    return {"ok": bool(close.all()), "max_abs_err": float(np.abs(g - r).max()) if g.size else 0.0,
            "mismatches": int((~close).sum())}


def placement_of(sess) -> dict:
    prof = sess.end_profiling()
    ran = [(e["args"]["op_name"], e["args"]["provider"]) for e in json.load(open(prof))
           if e.get("cat") == "Node" and "provider" in e.get("args", {})]
    os.unlink(prof)
    n6 = [(o, p) for o, p in ran if o in OPS]
    return {"nodes": sorted({f"{o}@{p}" for o, p in ran}),
            "ok": bool(n6) and all(p == TARGET["provider"] for _, p in n6)}


def run_contract(libs: dict, tmp: pathlib.Path, kernel_only: bool) -> dict:
    cases, placement, failed = [], {}, 0
    for op in OPS:
        spec = REGISTRY[op]
        for dtype in DTYPES:
            samples = list(spec.samples(dtype)) + extra_samples(op, dtype)
            if kernel_only:  # under memcheck: fewer cases, still every kernel instantiation and edge
                samples = [s for s in samples if s.id in MEMCHECK_SAMPLES]
            for sample in samples:
                case = {"op": op, "dtype": dtype, "sample": sample.id}
                try:
                    model = sample_model(spec, sample)
                    ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
                    tol = spec.tolerance(dtype)
                    paths = [("cuda_kernel", libs["cuda"], TARGET["provider"])]
                    if not kernel_only:
                        if "key_padding_mask" in sample.feeds or op != "EgyptianAttention":
                            paths.append(("fallback_on_cuda", None, TARGET["provider"]))  # fallback needs the mask
                        paths.append(("cpu_kernel", libs["cpu"], CPU))
                    for name, lib, prov in paths:
                        key = f"{op}/{dtype}"
                        prof = str(tmp / f"p_{op}_{dtype}") if name == "cuda_kernel" and key not in placement else None
                        s = session(model, lib, prov, prof)
                        got = s.run(None, sample.feeds)[0]
                        case[name] = compare(got, ref, tol)
                        if prof:
                            placement[key] = placement_of(s)
                    case["ok"] = all(v["ok"] for k, v in case.items() if isinstance(v, dict))
                except Exception as e:  # noqa: BLE001
                    case["ok"] = False
                    case["error"] = f"{type(e).__name__}: {e}"[:800]
                failed += not case["ok"]
                cases.append(case)
    # bad shapes / attributes: ORT errors from the CUDA kernels
    errors = {}
    try:
        rng = np.random.default_rng(1)
        f = {n: rng.normal(0, 1, (1, 8, 16)).astype(np.float32) for n in ("Q", "K", "V")}
        for sid, attrs in (("num_heads_not_dividing", {"num_heads": 3}), ("head_kinds_length", {"num_heads": 4, "head_kinds": [0]}),
                           ("head_size_above_128", None)):
            feeds = dict(f)
            if attrs is None:  # dh = 192 > 128: refused by the CUDA kernel only
                feeds = {n: rng.normal(0, 1, (1, 4, 192)).astype(np.float32) for n in ("Q", "K", "V")}
                attrs = {"num_heads": 1}
            s = session(sample_model(REGISTRY["EgyptianAttention"], Sample(sid, feeds, attrs)), libs["cuda"], TARGET["provider"])
            try:
                s.run(None, feeds)
                errors[sid] = {"ok": TARGET["provider"] == CPU and sid == "head_size_above_128", "why": "no error raised"}
            except Exception as e:  # noqa: BLE001
                errors[sid] = {"ok": "EgyptianAttention" in str(e), "error": str(e)[:300]}
        fx = {"X": np.ones((1, 10, 8), np.float32), "F6": np.ones((4, 8), np.float32),
              "F12": np.ones((7, 4), np.float32), "F24": np.ones((13, 8), np.float32)}
        s = session(sample_model(REGISTRY["FFTMix"], Sample("bad_F12", fx)), libs["cuda"], TARGET["provider"])
        try:
            s.run(None, fx)
            errors["fftmix_bad_F12"] = {"ok": False, "why": "no error raised"}
        except Exception as e:  # noqa: BLE001
            errors["fftmix_bad_F12"] = {"ok": "F12 must be" in str(e), "error": str(e)[:300]}
    except Exception:  # noqa: BLE001
        errors["setup"] = {"ok": False, "error": traceback.format_exc()[-800:]}
    ok = failed == 0 and all(v["ok"] for v in errors.values()) and (kernel_only or all(p["ok"] for p in placement.values()))
    return {"ok": ok, "cases": len(cases), "failed": failed, "bad_input_errors": errors,
            "placement": placement, "failures": [c for c in cases if not c["ok"]],
            "max_abs_err": {f"{c['op']}/{c['dtype']}/{c['sample']}": {k: v.get("max_abs_err") for k, v in c.items()
                                                                     if isinstance(v, dict)} for c in cases}}


def run_sanitizer(tmp: pathlib.Path, timeout: int) -> dict:
    r = _gpu.memcheck(__file__, ["--only", "contract", "--kernel-only", "--out", _gpu.sub_out(tmp)], tmp, timeout)
    sub = r.pop("sub", {})
    r["contract_under_memcheck_ok"] = sub.get("contract", {}).get("ok")
    r["ok"] = r.pop("clean") and bool(sub.get("contract", {}).get("ok")) if r["ran"] else None
    return r


write_json = _gpu.write_json


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="contract,sanitizer,bench")
    ap.add_argument("--kernel-only", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "attention_ops_gpu_check.json"))
    ap.add_argument("--cpu-dry-run", action="store_true", help="no GPU: the CPU provider stands in for CUDA")
    ap.add_argument("--sanitizer-timeout", type=int, default=240)
    ap.add_argument("--bench-lengths", default="512,2048,4096,8192")
    ap.add_argument("--in-process", action="store_true", help="run all parts in this process")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    if args.cpu_dry_run:
        TARGET["provider"] = CPU
        parts.discard("sanitizer")
    ort.set_default_logger_severity(3)
    libs = {"cuda": _library.library_path("cuda"), "cpu": _library.library_path("cpu") or _library.library_path("cuda")}
    if args.cpu_dry_run:
        libs["cuda"] = libs["cpu"]
    payload = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "what": "FFTMix / EgyptianAttention on onnxruntime's CUDA provider (tools/gpu_attention.py)",
               "onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
               "libraries": {k: str(v) if v else None for k, v in libs.items()}, "parts": sorted(parts),
               "cpu_dry_run": args.cpu_dry_run}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        payload["gpu"] = q.stdout.strip()
    except Exception:  # noqa: BLE001
        payload["gpu"] = None
    if TARGET["provider"] not in ort.get_available_providers() or libs["cuda"] is None:
        payload["ok"] = False
        payload["error"] = "needs onnxruntime-gpu and libn6ops_cuda.so (N6ONNX_CUDA_LIBRARY)"
        write_json(pathlib.Path(args.out), payload)
        print(payload["error"], file=sys.stderr)
        return 2
    if len(parts) > 1 and not args.in_process:
        # Each part in its own process: a kernel fault (sticky CUDA error, crash) in one part
        # cannot take the others down.
        oks = []
        with tempfile.TemporaryDirectory(prefix="n6attn") as td:
            for part in [p for p in ("contract", "sanitizer", "bench") if p in parts]:
                sub = pathlib.Path(td) / f"{part}.json"
                cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--only", part, "--out", str(sub),
                       "--bench-lengths", args.bench_lengths] + (["--cpu-dry-run"] if args.cpu_dry_run else [])
                t0 = time.time()
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=PART_TIMEOUT[part])
                    rc, tail = p.returncode, (p.stdout + p.stderr)[-3000:]
                except subprocess.TimeoutExpired as e:
                    rc, tail = None, f"timed out after {PART_TIMEOUT[part]} s: {str(e.stdout or '')[-1500:]}"
                print(tail.strip().splitlines()[-1] if tail.strip() else f"{part}: no output", flush=True)
                got = json.loads(sub.read_text()) if sub.exists() else {}
                payload[part] = got.get(part, {"ok": False, "exit_status": rc, "output_tail": tail})
                payload[part]["process_seconds"] = round(time.time() - t0, 1)
                if part != "sanitizer" or payload[part].get("ran", True):
                    oks.append(bool(payload[part].get("ok")))
        payload["ok"] = all(oks)
        write_json(pathlib.Path(args.out), payload)
        print(f"wrote {args.out}: ok={payload['ok']}")
        return 0 if payload["ok"] else 1

    oks = []
    with tempfile.TemporaryDirectory(prefix="n6attn") as td:
        tmp = pathlib.Path(td)
        if "contract" in parts:
            t0 = time.time()
            try:
                payload["contract"] = run_contract(libs, tmp, args.kernel_only)
            except Exception:  # noqa: BLE001
                payload["contract"] = {"ok": False, "error": traceback.format_exc()[-2000:]}
            payload["contract"]["seconds"] = round(time.time() - t0, 1)
            oks.append(payload["contract"]["ok"])
            print(f"contract: {payload['contract'].get('cases')} cases, {payload['contract'].get('failed')} failed, "
                  f"ok={payload['contract']['ok']} ({payload['contract']['seconds']} s)", flush=True)
        if "sanitizer" in parts:
            try:
                payload["sanitizer"] = run_sanitizer(tmp, args.sanitizer_timeout)
            except Exception:  # noqa: BLE001
                payload["sanitizer"] = {"ran": False, "ok": False, "error": traceback.format_exc()[-2000:]}
            if payload["sanitizer"].get("ran"):
                oks.append(payload["sanitizer"]["ok"])
            print(f"sanitizer: {payload['sanitizer'].get('error_summary') or payload['sanitizer'].get('why')} "
                  f"ok={payload['sanitizer']['ok']} ({payload['sanitizer'].get('seconds')} s)", flush=True)
        if "bench" in parts:
            t0 = time.time()
            try:
                import attention_ops

                prov = TARGET["provider"]
                res = attention_ops.run(prov, dtypes=DTYPES if prov == CUDA else ("float32",),
                                        lengths=tuple(int(x) for x in args.bench_lengths.split(",")),
                                        copies=8 if prov == CUDA else 1, quick=True,
                                        energy_seconds=1.0 if prov == CUDA else 0.0,
                                        out_name=None if prov == CUDA else "attention_ops_cpu_dryrun")
                name = "attention_ops_cuda.json" if prov == CUDA else "attention_ops_cpu_dryrun.json"
                write_json(RESULTS / name, json.loads((RESULTS / name).read_text()))  # copy to $OUT
                payload["bench"] = {"ok": True, "json": f"benchmarks/results/{name}", "seconds": round(time.time() - t0, 1),
                                    "ratios": {k: v.get("ratios") for k, v in res["results"].items()}}
            except Exception:  # noqa: BLE001
                payload["bench"] = {"ok": False, "error": traceback.format_exc()[-2000:]}
            oks.append(payload["bench"]["ok"])
            print(f"bench: ok={payload['bench']['ok']} ({payload['bench'].get('seconds')} s)", flush=True)
    payload["ok"] = all(oks)
    write_json(pathlib.Path(args.out), payload)
    print(f"wrote {args.out}: ok={payload['ok']}")
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
