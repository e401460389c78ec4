"""Op-level CPU benchmark: our Phi6 / BiasPhi6 kernels against ORT's Gelu / BiasGelu.

Method: one single-node model per variant; sessions with ORT_ENABLE_ALL and the same thread
count (default 2); input and a preallocated output bound with IO binding so that only the kernel
is timed; variants interleaved in repeated blocks; per size the median time per call, its
interquartile range, elements per second, and the ratio of medians against ORT's op.
Also shown: Phi6 written as standard ONNX ops (the function fallback), for reference.
Writes benchmarks/results/activation_cpu.json.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
import onnxruntime as ort
from onnx import helper
from rich.console import Console
from rich.table import Table

import n6onnx
from n6onnx.ops import DOMAIN, REGISTRY

from _common import summary, write

D = 1024  # last axis (bias length)


def model(kind: str, n: int, dtype: str) -> bytes:
    rows = n // D
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("X", et, [rows, D])
    y = helper.make_tensor_value_info("Y", et, [rows, D])
    b = helper.make_tensor_value_info("B", et, [D])
    funcs, opsets = [], [helper.make_opsetid("", 20)]
    if kind == "ort_gelu":
        nodes, ins = [helper.make_node("Gelu", ["X"], ["Y"])], [x]
    elif kind == "ort_biasgelu":
        nodes, ins = [helper.make_node("BiasGelu", ["X", "B"], ["Y"], domain="com.microsoft")], [x, b]
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    else:
        op = {"phi6": "Phi6", "biasphi6": "BiasPhi6", "phi6_fallback": "Phi6"}[kind]
        ins = [x, b] if op.startswith("Bias") else [x]
        nodes = [helper.make_node(op, [i.name for i in ins], ["Y"], domain=DOMAIN)]
        funcs = [REGISTRY[op].function(20)]
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    g = helper.make_graph(nodes, kind, ins, [y])
    return helper.make_model(g, opset_imports=opsets, functions=funcs).SerializeToString()


def session(kind: str, n: int, threads: int, dtype: str) -> ort.InferenceSession | None:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    # Interleaved sessions: idle sessions' spinning workers would steal the 2 cores from the one
    # being timed, so spinning is off for every variant alike.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if kind in ("phi6", "biasphi6"):
        so.register_custom_ops_library(str(n6onnx.library_path()))
    try:
        return ort.InferenceSession(model(kind, n, dtype), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. an ORT op without a kernel for this dtype
        if kind in ("phi6", "biasphi6"):
            raise
        print(f"{kind} {dtype}: not available in onnxruntime ({str(e).splitlines()[0][:120]})")
        return None


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="1e4,1e5,1e6,1e7,1e8")
    ap.add_argument("--seconds", type=float, default=1.5, help="target time per variant and size")
    ap.add_argument("--dtypes", default="float32,float16")
    args = ap.parse_args()
    if n6onnx.library_path() is None:
        raise SystemExit("the n6 custom-op library is not built; run `make install` first")
    kinds = ["ort_gelu", "phi6", "ort_biasgelu", "biasphi6", "phi6_fallback"]
    rng = np.random.default_rng(0)
    rows = []
    con = Console()
    cases = [(dt, int(float(s)) // D * D) for dt in args.dtypes.split(",") for s in args.sizes.split(",")]
    for dtype, n in cases:
        x = rng.standard_normal((n // D, D)).astype(dtype)
        b = rng.standard_normal(D).astype(dtype)
        runners = {}
        for k in kinds:
            s = session(k, n, args.threads, dtype)
            if s is None:
                continue
            io = s.io_binding()
            io.bind_cpu_input("X", x)
            if "bias" in k:
                io.bind_cpu_input("B", b)
            io.bind_ortvalue_output("Y", ort.OrtValue.ortvalue_from_numpy(np.empty_like(x)))
            s.run_with_iobinding(io)  # warm-up
            t = time.perf_counter()
            s.run_with_iobinding(io)
            runners[k] = (s, io, max(time.perf_counter() - t, 1e-6))
        blocks = 10
        times = {k: [] for k in runners}
        for _ in range(blocks):  # interleaved blocks
            for k, (s, io, t1) in runners.items():
                reps = max(1, int(args.seconds / blocks / t1))
                t = time.perf_counter()
                for _ in range(reps):
                    s.run_with_iobinding(io)
                times[k].append((time.perf_counter() - t) / reps)
        res = {k: summary(v) for k, v in times.items()}
        for k in res:
            res[k]["elements_per_s"] = n / res[k]["median"]
        ratio = lambda a, b: res[a]["median"] / res[b]["median"] if a in res and b in res else None
        row = {"dtype": dtype, "elements": n, "shape": [n // D, D], "results": res,
               "ratio_phi6_vs_gelu": ratio("ort_gelu", "phi6"),
               "ratio_biasphi6_vs_biasgelu": ratio("ort_biasgelu", "biasphi6"),
               "ratio_fallback_vs_gelu": ratio("ort_gelu", "phi6_fallback")}
        rows.append(row)
        del runners
        gc.collect()  # idle sessions' threads must not linger into the next size
        con.print(f"{dtype} {n:>11,d} elements: Phi6/Gelu {_x(row['ratio_phi6_vs_gelu'])}, "
                  f"BiasPhi6/BiasGelu {_x(row['ratio_biasphi6_vs_biasgelu'])}")
    t = Table(title=f"CPU activation ops, {args.threads} threads (median ms per call; x = ORT op time / ours)")
    for c in ("dtype", "elements", "ORT Gelu", "Phi6", "x", "ORT BiasGelu", "BiasPhi6", "x ", "Phi6 as std ops"):
        t.add_column(c, justify="right")
    fmt = lambda R, k: f"{R[k]['median'] * 1e3:.3f}" if k in R else "n/a"
    for r in rows:
        R = r["results"]
        t.add_row(r["dtype"], f"{r['elements']:,}", fmt(R, "ort_gelu"), fmt(R, "phi6"), _x(r["ratio_phi6_vs_gelu"]),
                  fmt(R, "ort_biasgelu"), fmt(R, "biasphi6"), _x(r["ratio_biasphi6_vs_biasgelu"]), fmt(R, "phi6_fallback"))
    con.print(t)
    out = write("activation_cpu", {
        "benchmark": "activation_cpu",
        "method": ("single-node models [N/1024, 1024], ORT_ENABLE_ALL, CPUExecutionProvider, thread spinning off, IO binding "
                   "with preallocated output, warm-up then 10 interleaved blocks per size, each block "
                   f"~{args.seconds / 10:.2f} s per variant; statistics over the 10 block means"),
        "threads": args.threads, "goal": "Phi6 >= 3x ORT Gelu elements/s", "rows": rows,
    })
    con.print(f"wrote {out}")


if __name__ == "__main__":
    main()
