"""Op-level CUDA benchmark: our Phi6 / BiasPhi6 / ZetaLn2 / BiasZetaLn2 kernels (libn6ops_cuda)
against onnxruntime's CUDA Gelu (ONNX opset 20) and BiasGelu (com.microsoft).

Method (also written into the JSON):
- Models: [rows, D] tensors, float32 and float16; shapes from ~1e5 elements to 8192x4096, plus the
  FFN activations of MiniLM ([8*128, 1536]) and BERT-base ([8*128, 3072]). The bias is a graph
  input of length D (bound on the device like X).
- Sessions: CUDAExecutionProvider (device 0, then CPU), ORT_ENABLE_ALL; our ops with
  libn6ops_cuda registered; "phi6_fallback" is Phi6 as the standard ops of its function body
  (Cast, Clip, Mul, Sub, Add) without the library. Every variant's nodes are checked to run on
  CUDAExecutionProvider (ORT profiling) and the result says where each ran.
- IO binding: X (and bias) resident on the GPU, Y preallocated on the GPU; nothing crosses PCIe.
- Two timing modes, both wall-clock (time.perf_counter) over blocks of back-to-back runs:
    single  one node per model; every run ends with ORT's stream synchronisation, so a run's time
            is the kernel plus ORT's per-run overhead (the way GPU.md's ORT Gelu reference was taken);
    chain   16 identical nodes chained in one model (X -> op -> op -> ... -> Y); the time per node
            is the run time / 16, so ORT's per-run overhead is amortised and the figure approaches
            the kernel time wherever kernels outlast their launch (not below ~1e6 elements).
  Variants are interleaved: R rounds, each timing one block (~block_s) of every variant in turn.
  Reported: median time per run (per node in chain mode) with q1/q3 over the blocks, effective
  bandwidth = (bytes of X + bias + Y) / time, and the ratio ORT op time / our time.
- Energy: NVML total-energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ, ~100 ms updates)
  read around windows of at least --energy-seconds (default 5 s) of back-to-back runs at
  8192x4096; windows interleaved over variants and repeated (--energy-rounds); energy per run =
  energy / runs (whole board, idle power included; the idle power measured over the same window
  length is reported too, with energy per run above idle).

Usage (GPU machine; onnxruntime-gpu and nvidia-ml-py importable, repo root as working dir):
    PYTHONPATH=/tmp/site:. N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so \\
        python3 benchmarks/activation_cuda.py            # ~5 minutes on an H100
    ... python3 benchmarks/activation_cuda.py --quick    # ~1 minute
Writes benchmarks/results/activation_cuda.json (activation_cuda_quick.json with --quick).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper  # noqa: E402

import n6onnx  # noqa: E402
from n6onnx.ops import DOMAIN, REGISTRY  # noqa: E402

from _common import summary, write  # noqa: E402

CUDA = "CUDAExecutionProvider"
CHAIN = 16
# --cpu-dry-run (tests this script without a GPU): the CPU provider stands in for CUDA.
DEVICE = {"provider": CUDA, "device": "cuda"}
OURS = {"phi6": "Phi6", "biasphi6": "BiasPhi6", "zetaln2": "ZetaLn2", "biaszetaln2": "BiasZetaLn2",
        "phi6_fallback": "Phi6"}
VARIANTS = ["ort_gelu", "phi6", "zetaln2", "phi6_fallback", "ort_biasgelu", "biasphi6", "biaszetaln2"]
BASELINE = {"phi6": "ort_gelu", "zetaln2": "ort_gelu", "phi6_fallback": "ort_gelu",
            "biasphi6": "ort_biasgelu", "biaszetaln2": "ort_biasgelu"}
# name -> (rows, D)
SHAPES = {
    "1e5": (98, 1024),
    "1e6": (977, 1024),
    "minilm_ffn_b8x128": (8 * 128, 1536),
    "bert_base_ffn_b8x128": (8 * 128, 3072),
    "1e7": (9766, 1024),
    "8192x4096": (8192, 4096),
}
HEADLINE = "8192x4096"


def has_bias(variant: str) -> bool:
    return "bias" in variant


def model(variant: str, rows: int, d: int, dtype: str, chain: int) -> bytes:
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    ins = [helper.make_tensor_value_info("X", et, [rows, d])]
    if has_bias(variant):
        ins.append(helper.make_tensor_value_info("B", et, [d]))
    opsets = [helper.make_opsetid("", 20)]
    funcs = []
    if variant == "ort_gelu":
        op, domain = "Gelu", ""
    elif variant == "ort_biasgelu":
        op, domain = "BiasGelu", "com.microsoft"
        opsets.append(helper.make_opsetid("com.microsoft", 1))
    else:
        op, domain = OURS[variant], DOMAIN
        funcs = [REGISTRY[op].function(20)]
        opsets.append(helper.make_opsetid(DOMAIN, 1))
    nodes = []
    prev = "X"
    for k in range(chain):
        out = "Y" if k == chain - 1 else f"t{k}"
        inputs = [prev, "B"] if has_bias(variant) else [prev]
        nodes.append(helper.make_node(op, inputs, [out], domain=domain, name=f"{variant}_{k}"))
        prev = out
    g = helper.make_graph(nodes, variant, ins, [helper.make_tensor_value_info("Y", et, [rows, d])])
    return helper.make_model(g, opset_imports=opsets, functions=funcs, ir_version=10).SerializeToString()


def providers(device_id: int) -> list:
    if DEVICE["provider"] != CUDA:
        return ["CPUExecutionProvider"]
    return [(CUDA, {"device_id": device_id}), "CPUExecutionProvider"]


def options(variant: str, profile_prefix: str | None = None) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if variant in OURS and variant != "phi6_fallback":
        so.register_custom_ops_library(str(n6onnx.library_path("cuda")))
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


class Runner:
    """A session with X, bias and Y bound on the GPU."""

    def __init__(self, variant: str, rows: int, d: int, dtype: str, chain: int, x_dev, b_dev, device_id: int):
        self.variant = variant
        self.sess = ort.InferenceSession(model(variant, rows, d, dtype, chain), options(variant),
                                         providers=providers(device_id))
        self.io = self.sess.io_binding()
        self.io.bind_ortvalue_input("X", x_dev)
        if has_bias(variant):
            self.io.bind_ortvalue_input("B", b_dev)
        self.y = ort.OrtValue.ortvalue_from_shape_and_type([rows, d], np.dtype(dtype), DEVICE["device"], device_id)
        self.io.bind_ortvalue_output("Y", self.y)

    def run(self, reps: int) -> float:
        """Seconds for `reps` runs (each run synchronises the stream)."""
        run = self.sess.run_with_iobinding
        io = self.io
        t = time.perf_counter()
        for _ in range(reps):
            run(io)
        return time.perf_counter() - t


def placement(variant: str, dtype: str, device_id: int, tmp: str) -> dict:
    """Which provider ran each node of a small model of this variant (ORT profiling)."""
    rows, d = 64, 1024
    so = options(variant, os.path.join(tmp, f"p_{variant}_{dtype}"))
    s = ort.InferenceSession(model(variant, rows, d, dtype, 1), so, providers=providers(device_id))
    feeds = {"X": np.ones((rows, d), dtype)}
    if has_bias(variant):
        feeds["B"] = np.ones(d, dtype)
    s.run(None, feeds)
    prof = s.end_profiling()
    ran = {}
    for e in json.load(open(prof)):
        a = e.get("args", {})
        if e.get("cat") == "Node" and "op_name" in a and "provider" in a:
            ran[e["name"].rsplit("_kernel_time", 1)[0]] = (a["op_name"], a["provider"])
    os.unlink(prof)
    ops = sorted({f"{o}@{p}" for o, p in ran.values()})
    return {"nodes": ops, "all_on_cuda": bool(ran) and all(p == DEVICE["provider"] for _, p in ran.values())}


class Nvml:
    def __init__(self, device_id: int):
        self.ok = False
        self.why = ""
        try:
            import pynvml  # nvidia-ml-py

            pynvml.nvmlInit()
            self.nv = pynvml
            self.h = pynvml.nvmlDeviceGetHandleByIndex(device_id)
            self.energy_mj()  # raises when unsupported
            self.ok = True
        except Exception as e:  # no NVML / no energy counter: timing still runs
            self.why = f"{type(e).__name__}: {e}"

    def energy_mj(self) -> int:
        return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)

    def info(self) -> dict:
        if not self.ok:
            return {"nvml": False, "why": self.why}
        nv, h = self.nv, self.h

        def s(v):
            return v.decode() if isinstance(v, bytes) else v

        out = {"nvml": True, "name": s(nv.nvmlDeviceGetName(h)), "driver": s(nv.nvmlSystemGetDriverVersion())}
        for key, fn in (("power_limit_w", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
                        ("max_sm_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_SM)),
                        ("max_mem_clock_mhz", lambda: nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)),
                        ("memory_total_gib", lambda: nv.nvmlDeviceGetMemoryInfo(h).total / 2**30)):
            try:
                out[key] = fn()
            except Exception:
                pass
        return out


def energy_window(nvml: Nvml, runner: Runner | None, seconds: float, reps_per_check: int) -> dict:
    """Energy over >= `seconds` of back-to-back runs (runner None: idle)."""
    runs = 0
    e0 = nvml.energy_mj()
    t0 = time.perf_counter()
    while True:
        if runner is None:
            time.sleep(0.05)
        else:
            runner.run(reps_per_check)
            runs += reps_per_check
        if time.perf_counter() - t0 >= seconds:
            break
    t1 = time.perf_counter()
    e1 = nvml.energy_mj()
    joules = (e1 - e0) / 1000.0
    return {"seconds": t1 - t0, "joules": joules, "runs": runs, "watts": joules / (t1 - t0),
            "mj_per_run": (e1 - e0) / runs if runs else None}


def fmt_row(name, dtype, v, r) -> str:
    def f(mode):
        m = r.get(mode)
        return f"{m['median_ms']:9.4f} {m['tb_per_s']:6.2f}" if m else f"{'n/a':>9} {'':>6}"
    return f"{name:22s} {dtype:8s} {v:14s} {f('single')} | {f('chain')}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~1 minute: fewer shapes, rounds and energy windows")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--dtypes", default="float32,float16")
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--block-s", type=float, default=0.04, help="seconds per timed block")
    ap.add_argument("--energy-seconds", type=float, default=5.0)
    ap.add_argument("--energy-rounds", type=int, default=3)
    ap.add_argument("--out-name", default=None)
    ap.add_argument("--cpu-dry-run", action="store_true", help="test this script without a GPU (writes nothing)")
    args = ap.parse_args()
    if args.cpu_dry_run:
        DEVICE.update(provider="CPUExecutionProvider", device="cpu")
    if args.quick:
        args.shapes = "1e6,bert_base_ffn_b8x128,8192x4096"
        args.rounds = 3
        args.energy_rounds = 1
    if DEVICE["provider"] not in ort.get_available_providers():
        raise SystemExit("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if n6onnx.library_path("cuda") is None:
        raise SystemExit("libn6ops_cuda.so not found: build it and set N6ONNX_CUDA_LIBRARY")
    ort.set_default_logger_severity(3)  # ORT 1.31 warns about plugin EP devices on every CUDA session
    dev = args.device_id
    dtypes = [d for d in args.dtypes.split(",") if d]
    shapes = {k: SHAPES[k] for k in args.shapes.split(",") if k}
    nvml = Nvml(dev)
    t_start = time.perf_counter()
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        where = {f"{v}/{dt}": placement(v, dt, dev, tmp) for v in VARIANTS for dt in dtypes}
    for k, p in where.items():
        if not p["all_on_cuda"]:
            print(f"WARNING: {k} does not run entirely on CUDA: {p['nodes']}")

    rows_out = []
    print(f"{'shape':22s} {'dtype':8s} {'variant':14s} {'single ms':>9} {'TB/s':>6} | {'chain ms':>9} {'TB/s':>6}")
    for sname, (r, d) in shapes.items():
        for dtype in dtypes:
            es = np.dtype(dtype).itemsize
            x = rng.uniform(-4, 4, size=(r, d)).astype(dtype)
            b = rng.uniform(-1, 1, size=d).astype(dtype)
            x_dev = ort.OrtValue.ortvalue_from_numpy(x, DEVICE["device"], dev)
            b_dev = ort.OrtValue.ortvalue_from_numpy(b, DEVICE["device"], dev)
            res = {v: {} for v in VARIANTS}
            for mode, chain in (("single", 1), ("chain", CHAIN)):
                runners = {v: Runner(v, r, d, dtype, chain, x_dev, b_dev, dev) for v in VARIANTS}
                reps = {}
                for v, rn in runners.items():  # warm-up, then size the blocks
                    rn.run(3)
                    t1 = rn.run(5) / 5
                    reps[v] = max(1, int(args.block_s / max(t1, 1e-7)))
                times = {v: [] for v in VARIANTS}
                for k in range(args.rounds):
                    order = VARIANTS[k % len(VARIANTS):] + VARIANTS[:k % len(VARIANTS)]
                    for v in order:
                        times[v].append(runners[v].run(reps[v]) / reps[v] / chain)
                for v in VARIANTS:
                    st = summary(times[v])
                    nbytes = (2 * r * d + (d if has_bias(v) else 0)) * es
                    res[v][mode] = {
                        "median_ms": st["median"] * 1e3, "q1_ms": st["q1"] * 1e3, "q3_ms": st["q3"] * 1e3,
                        "blocks": st["n"], "runs_per_block": reps[v],
                        "tb_per_s": nbytes / st["median"] / 1e12, "bytes_per_node": nbytes,
                    }
                del runners
                gc.collect()
            for v in VARIANTS:
                base = BASELINE.get(v)
                if base:
                    for mode in ("single", "chain"):
                        res[v][mode]["speedup_vs_" + base] = res[base][mode]["median_ms"] / res[v][mode]["median_ms"]
                print(fmt_row(sname, dtype, v, res[v]), flush=True)
            rows_out.append({"shape_name": sname, "shape": [r, d], "dtype": dtype, "elements": r * d, "results": res})
            del x_dev, b_dev
            gc.collect()

    energy = {"available": nvml.ok}
    if nvml.ok and HEADLINE in SHAPES:
        r, d = SHAPES[HEADLINE]
        e_variants = ["ort_gelu", "phi6", "ort_biasgelu", "biasphi6"]
        plans = [(dt, "single", 1, e_variants) for dt in dtypes]
        if not args.quick:
            plans.append(("float32", "chain", CHAIN, ["ort_gelu", "phi6"]))
        else:
            plans = [("float32", "single", 1, ["ort_gelu", "phi6"])]
        idle = [energy_window(nvml, None, args.energy_seconds, 1) for _ in range(1 if args.quick else 2)]
        idle_w = statistics.median(w["watts"] for w in idle)
        energy.update({"window_s_min": args.energy_seconds, "idle_windows": idle, "idle_watts": idle_w,
                       "shape": [r, d], "results": []})
        for dtype, mode, chain, vs in plans:
            x_dev = ort.OrtValue.ortvalue_from_numpy(rng.uniform(-4, 4, size=(r, d)).astype(dtype), DEVICE["device"], dev)
            b_dev = ort.OrtValue.ortvalue_from_numpy(rng.uniform(-1, 1, size=d).astype(dtype), DEVICE["device"], dev)
            runners = {v: Runner(v, r, d, dtype, chain, x_dev, b_dev, dev) for v in vs}
            for rn in runners.values():
                rn.run(20)
            wins = {v: [] for v in vs}
            for k in range(args.energy_rounds):
                for v in vs[k % len(vs):] + vs[:k % len(vs)]:
                    wins[v].append(energy_window(nvml, runners[v], args.energy_seconds, 200 if chain == 1 else 20))
            for v in vs:
                per_run = [w["mj_per_run"] / chain for w in wins[v]]  # per node
                secs_per_run = [w["seconds"] / w["runs"] / chain for w in wins[v]]
                above = [(w["joules"] - idle_w * w["seconds"]) * 1000 / w["runs"] / chain for w in wins[v]]
                entry = {"variant": v, "dtype": dtype, "mode": mode, "windows": wins[v],
                         "mj_per_node_run": summary(per_run), "mj_per_node_run_above_idle": summary(above),
                         "ms_per_node_run": statistics.median(secs_per_run) * 1e3,
                         "watts": statistics.median(w["watts"] for w in wins[v])}
                energy["results"].append(entry)
                print(f"energy {HEADLINE} {dtype} {mode:6s} {v:14s} {entry['mj_per_node_run']['median']:8.2f} mJ/run "
                      f"({entry['mj_per_node_run_above_idle']['median']:7.2f} above idle) "
                      f"{entry['watts']:6.1f} W, {entry['ms_per_node_run']:.4f} ms/run", flush=True)
            del runners, x_dev, b_dev
            gc.collect()
        for e in energy["results"]:
            base = BASELINE.get(e["variant"])
            if base:
                b = next((f for f in energy["results"] if f["variant"] == base and f["dtype"] == e["dtype"]
                          and f["mode"] == e["mode"]), None)
                if b:
                    e["energy_ratio_vs_" + base] = e["mj_per_node_run"]["median"] / b["mj_per_node_run"]["median"]
    elif not nvml.ok:
        energy["why"] = nvml.why

    # the goals, at 8192x4096 fp32
    goals = {}
    head = next((x for x in rows_out if x["shape_name"] == HEADLINE and x["dtype"] == "float32"), None)
    if head:
        for mode in ("single", "chain"):
            p = head["results"]["phi6"][mode]
            goals[mode] = {
                "phi6_tb_per_s": p["tb_per_s"], "goal_tb_per_s": 2.7,
                "phi6_speedup_vs_ort_gelu": p["speedup_vs_ort_gelu"], "goal_speedup": 1.25,
                "biasphi6_speedup_vs_ort_biasgelu": head["results"]["biasphi6"][mode]["speedup_vs_ort_biasgelu"],
            }
        e = next((e for e in energy.get("results", []) if e["variant"] == "phi6" and e["dtype"] == "float32"
                  and e["mode"] == "single"), None)
        if e and "energy_ratio_vs_ort_gelu" in e:
            goals["energy_ratio_phi6_vs_ort_gelu_single"] = e["energy_ratio_vs_ort_gelu"]
            goals["goal_energy_ratio"] = 0.8

    payload = {
        "benchmark": "activation_cuda",
        "method": " ".join(__doc__.split("Method (also written into the JSON):", 1)[1].split("Usage")[0].split()),
        "gpu": nvml.info(),
        "library": str(n6onnx.library_path("cuda")),
        "quick": args.quick,
        "chain_length": CHAIN,
        "rounds": args.rounds,
        "block_s": args.block_s,
        "placement": where,
        "rows": rows_out,
        "energy": energy,
        "goals_8192x4096_fp32": goals,
        "wall_s": time.perf_counter() - t_start,
    }
    if args.cpu_dry_run:
        print(json.dumps(payload, indent=1, default=str)[:3000])
        return
    out = write(args.out_name or ("activation_cuda_quick" if args.quick else "activation_cuda"), payload)
    print(f"goals: {json.dumps(goals)}")
    print(f"wrote {out} in {payload['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
