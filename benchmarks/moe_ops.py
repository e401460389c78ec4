"""n6onnx.MoE (sparse dispatch) against dense mixture-of-experts graphs, on CPU or CUDA.

Shape (issue 7): E = 24 experts, top-3 softmax routing renormalised, D = 768, expert hidden width
H = 4D/3 = 1024, GELU (tanh form, the one com.microsoft MoE's "gelu" computes), biases on both
expert layers, N = 128 and 2048 tokens. One MoE layer; router logits are a graph input (the
router MatMul is the same in every variant and stays outside the op).

Variants (same weights, same function of the inputs):
  n6_sparse     one n6onnx.MoE node, the n6 custom-op library registered: each expert runs only on
                its tokens (3/24 of the expert FLOPs of the dense forms).
  dense         every expert on every token, as a clean batched graph (what HF's dense MoE or an
                unrolled expert loop computes): MatMul X [N, D] x W1 [E, D, H] -> [E, N, H],
                + b1, GELU, MatMul W2 -> [E, N, D], + b2, times the dense routing weights
                (Softmax / TopK / GatherElements / ScatterElements), ReduceSum over experts;
                ORT_ENABLE_ALL (GELU fusion etc.): ORT's best form of the dense computation.
  n6_sparse_tc  CUDA float16 only: the same node through the opt-in tensor-core GEMMs
                (N6ONNX_MOE_CUDA_TC=1 when the session is created).
  n6_fallback   the same MoE node without the library: its ONNX function fallback (dense too).
  ms_moe        com.microsoft MoE (fc1 [E, H, D], fc2 [E, D, H], k=3, activation_type=gelu,
                normalize_routing_weights=1), when this onnxruntime has a kernel for it.
A "batched_mm gather" export (gather each token's k expert matrices, then a batched matmul) is
not timed: it materialises N * k copies of the weight matrices (19 GB per matrix at 2048 tokens).

Method: one session per variant (intra_op_num_threads = --threads on CPU); warm-up runs, then
--rounds interleaved rounds, each timing every variant once in a rotating order; medians and
quartiles per variant, ratios of medians from the same run. CUDA: inputs and output bound on the
device (IO binding), TF32 off, fp32 and fp16, NVML energy per run over a time window when
available. Outputs are checked against each other before timing (max |diff| recorded).

    PYTHONPATH=. N6ONNX_LIBRARY=build/.../libn6ops.so python benchmarks/moe_ops.py
    PYTHONPATH=/tmp/site:. N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so \\
        python benchmarks/moe_ops.py --provider cuda
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
for p in (str(ROOT), str(ROOT / "benchmarks")):
    if p not in sys.path:
        sys.path.insert(0, p)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from _common import summary, write  # noqa: E402
from n6onnx import _library  # noqa: E402
from n6onnx.ops import DOMAIN, REGISTRY  # noqa: E402

E, K, D, H = 24, 3, 768, 1024  # H = 4D/3
ACT = "gelu_tanh"
OPSET = 18
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def weights(dtype: str, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "W1": (rng.normal(0, 1 / math.sqrt(D), (E, D, H))).astype(dtype),
        "b1": rng.normal(0, 0.1, (E, H)).astype(dtype),
        "W2": (rng.normal(0, 1 / math.sqrt(H), (E, H, D))).astype(dtype),
        "b2": rng.normal(0, 0.1, (E, D)).astype(dtype),
    }


def _inits(w: dict, names=("W1", "b1", "W2", "b2")) -> list:
    return [numpy_helper.from_array(w[n], n) for n in names]


def _io(n: int, dtype: str):
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    ins = [helper.make_tensor_value_info("X", et, [n, D]), helper.make_tensor_value_info("logits", et, [n, E])]
    return ins, [helper.make_tensor_value_info("Y", et, [n, D])]


def model_n6(n: int, dtype: str, w: dict) -> bytes:
    ins, outs = _io(n, dtype)
    node = helper.make_node("MoE", ["X", "logits", "W1", "b1", "W2", "b2"], ["Y"], domain=DOMAIN, k=K, normalize=1,
                            activation=ACT, routing="topk")
    g = helper.make_graph([node], "n6_moe", ins, outs, initializer=_inits(w))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=[REGISTRY["MoE"].function(OPSET)], ir_version=10)
    return m.SerializeToString()


def model_dense(n: int, dtype: str, w: dict) -> bytes:
    ins, outs = _io(n, dtype)
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    cf = lambda name, v: numpy_helper.from_array(np.asarray(v, dtype=dtype), name)  # noqa: E731
    inits = _inits(w) + [c("k", np.array([K], np.int64)), c("ax1", np.array([1], np.int64)),
                         c("ax0", np.array([0], np.int64)), c("ax2", np.array([2], np.int64)),
                         cf("half", 0.5), cf("one", 1.0), cf("c0", math.sqrt(2 / math.pi)), cf("c1", 0.044715),
                         c("zshape", np.array([n, E], np.int64))]
    nodes = [
        helper.make_node("Softmax", ["logits"], ["p"], axis=-1),
        helper.make_node("TopK", ["logits", "k"], ["_v", "idx"], axis=-1),
        helper.make_node("GatherElements", ["p", "idx"], ["sel"], axis=1),
        helper.make_node("ReduceSum", ["sel", "ax1"], ["ssum"], keepdims=1),
        helper.make_node("Div", ["sel", "ssum"], ["wsel"]),
        helper.make_node("ConstantOfShape", ["zshape"], ["z"],
                         value=numpy_helper.from_array(np.zeros(1, dtype=dtype))),
        helper.make_node("ScatterElements", ["z", "idx", "wsel"], ["wd"], axis=1),  # [N, E]
        helper.make_node("Transpose", ["wd"], ["wt"], perm=[1, 0]),
        helper.make_node("Unsqueeze", ["wt", "ax2"], ["wt3"]),  # [E, N, 1]
        helper.make_node("Unsqueeze", ["b1", "ax1"], ["b1u"]),
        helper.make_node("Unsqueeze", ["b2", "ax1"], ["b2u"]),
        helper.make_node("MatMul", ["X", "W1"], ["h0"]),  # [E, N, H]
        helper.make_node("Add", ["h0", "b1u"], ["h"]),
        # GELU, tanh form: 0.5 h (1 + tanh(c0 (h + c1 h^3)))  (ORT fuses it)
        helper.make_node("Mul", ["h", "h"], ["h2"]), helper.make_node("Mul", ["h2", "h"], ["h3"]),
        helper.make_node("Mul", ["h3", "c1"], ["h3c"]), helper.make_node("Add", ["h", "h3c"], ["inner"]),
        helper.make_node("Mul", ["inner", "c0"], ["inner2"]), helper.make_node("Tanh", ["inner2"], ["t"]),
        helper.make_node("Add", ["t", "one"], ["t1"]), helper.make_node("Mul", ["h", "half"], ["hh"]),
        helper.make_node("Mul", ["hh", "t1"], ["a"]),
        helper.make_node("MatMul", ["a", "W2"], ["o0"]),  # [E, N, D]
        helper.make_node("Add", ["o0", "b2u"], ["o"]),
        helper.make_node("Mul", ["o", "wt3"], ["ow"]),
        helper.make_node("ReduceSum", ["ow", "ax0"], ["Y"], keepdims=0),
    ]
    g = helper.make_graph(nodes, "dense_moe", ins, outs, initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10).SerializeToString()


def model_ms(n: int, dtype: str, w: dict) -> bytes:
    ins, outs = _io(n, dtype)
    msw = {"fc1": np.ascontiguousarray(w["W1"].transpose(0, 2, 1)), "fc1_b": w["b1"],
           "fc2": np.ascontiguousarray(w["W2"].transpose(0, 2, 1)), "fc2_b": w["b2"]}
    node = helper.make_node("MoE", ["X", "logits", "fc1", "fc1_b", "fc2", "fc2_b"], ["Y"], domain="com.microsoft",
                            k=K, activation_type="gelu", normalize_routing_weights=1)
    g = helper.make_graph([node], "ms_moe", ins, outs, initializer=_inits(msw, ("fc1", "fc1_b", "fc2", "fc2_b")))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)], ir_version=10)
    return m.SerializeToString()


BUILDERS = {"n6_sparse": model_n6, "n6_sparse_tc": model_n6, "dense": model_dense, "n6_fallback": model_n6,
            "ms_moe": model_ms}


def session(variant: str, model: bytes, provider: str, threads: int, device_id: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if provider == CPU:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if variant.startswith("n6_sparse"):
        so.register_custom_ops_library(str(_library.library_path("cuda" if provider == CUDA else "cpu")))
    providers = [(CUDA, {"device_id": device_id, "use_tf32": "0"}), CPU] if provider == CUDA else [CPU]
    # the kernel reads N6ONNX_MOE_CUDA_TC when the session creates it
    os.environ["N6ONNX_MOE_CUDA_TC"] = "1" if variant == "n6_sparse_tc" else "0"
    try:
        return ort.InferenceSession(model, so, providers=providers)
    finally:
        os.environ.pop("N6ONNX_MOE_CUDA_TC", None)


class Runner:
    def __init__(self, sess: ort.InferenceSession, feeds: dict, provider: str, device_id: int, n: int, dtype: str):
        self.sess = sess
        self.feeds = feeds
        self.io = None
        if provider == CUDA:
            self.io = sess.io_binding()
            for k, v in feeds.items():
                self.io.bind_ortvalue_input(k, ort.OrtValue.ortvalue_from_numpy(v, "cuda", device_id))
            self.y = ort.OrtValue.ortvalue_from_shape_and_type([n, D], np.dtype(dtype), "cuda", device_id)
            self.io.bind_ortvalue_output("Y", self.y)

    def run(self, reps: int = 1) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            if self.io is not None:
                self.sess.run_with_iobinding(self.io)
            else:
                self.sess.run(None, self.feeds)
        return (time.perf_counter() - t) / reps

    def output(self) -> np.ndarray:
        if self.io is not None:
            self.sess.run_with_iobinding(self.io)
            return self.y.numpy()
        return self.sess.run(None, self.feeds)[0]


class Nvml:
    def __init__(self, device_id: int):
        self.ok = False
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv, self.h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_id)
            self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
            self.ok = True
        except Exception as e:  # no NVML: timing still runs
            self.why = repr(e)

    def window(self, runner: Runner, seconds: float) -> dict:
        runs = 0
        e0 = self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            runner.run(5)
            runs += 5
        dt = time.perf_counter() - t0
        e1 = self.nv.nvmlDeviceGetTotalEnergyConsumption(self.h)
        return {"seconds": dt, "runs": runs, "joules": (e1 - e0) / 1000, "mj_per_run": (e1 - e0) / runs,
                "watts": (e1 - e0) / 1000 / dt}


def bench(provider: str, tokens: list[int], dtypes: list[str], rounds: dict, threads: int, device_id: int,
          variants: list[str], energy_s: float) -> tuple[list, dict]:
    rows, notes = [], {}
    nvml = Nvml(device_id) if provider == CUDA and energy_s > 0 else None
    for dtype in dtypes:
        w = weights(dtype)
        for n in tokens:
            rng = np.random.default_rng(n)
            feeds = {"X": rng.normal(0, 1, (n, D)).astype(dtype), "logits": rng.normal(0, 2, (n, E)).astype(dtype)}
            runners, skipped = {}, {}
            for v in variants:
                if v == "n6_sparse_tc" and (provider != CUDA or dtype != "float16"):
                    continue  # the tensor-core path exists for float16 on CUDA only
                try:
                    s = session(v, BUILDERS[v](n, dtype, w), provider, threads, device_id)
                    runners[v] = Runner(s, feeds, provider, device_id, n, dtype)
                    runners[v].run(1)
                except Exception as e:  # e.g. no com.microsoft MoE kernel for this provider / dtype
                    skipped[v] = str(e).splitlines()[0][:300]
            if not runners:  # nothing could run (e.g. the models were rejected): record why, go on
                rows.append({"tokens": n, "dtype": dtype, "skipped": skipped})
                print(f"{provider[:4]} {dtype:8s} N={n:5d} nothing ran: {skipped}", flush=True)
                continue
            outs = {v: r.output().astype(np.float64) for v, r in runners.items()}
            base = outs.get("dense")
            check = {v: float(np.abs(o - base).max()) for v, o in outs.items() if base is not None}
            for r in runners.values():  # warm-up
                r.run(2)
            times = {v: [] for v in runners}
            names = list(runners)
            reps = rounds[n]
            for k in range(reps):
                for v in names[k % len(names):] + names[:k % len(names)]:
                    times[v].append(runners[v].run(1) * 1e3)
            stats = {v: summary(t) for v, t in times.items()}
            row = {"tokens": n, "dtype": dtype, "ms": stats, "max_abs_diff_vs_dense": check, "skipped": skipped}
            if "n6_sparse" in stats:
                sp = stats["n6_sparse"]["median"]
                row["speedup_of_n6_sparse"] = {v: s["median"] / sp for v, s in stats.items() if v != "n6_sparse"}
                if "ms_moe" in stats:
                    row["n6_sparse_over_ms_moe"] = sp / stats["ms_moe"]["median"]
                    if "n6_sparse_tc" in stats:
                        row["n6_sparse_tc_over_ms_moe"] = stats["n6_sparse_tc"]["median"] / stats["ms_moe"]["median"]
            if nvml is not None and nvml.ok and n == max(tokens):
                row["energy"] = {v: nvml.window(runners[v], energy_s) for v in runners if v != "n6_fallback"}
            rows.append(row)
            sp = row.get("speedup_of_n6_sparse", {})
            print(f"{provider[:4]} {dtype:8s} N={n:5d} " +
                  " ".join(f"{v}={s['median']:.3f}ms" for v, s in stats.items()) +
                  f" | dense/sparse={sp.get('dense', float('nan')):.2f}x" +
                  (f" sparse/ms_moe={row['n6_sparse_over_ms_moe']:.2f}" if "n6_sparse_over_ms_moe" in row else "") +
                  (f" skipped={list(skipped)}" if skipped else ""), flush=True)
            del runners
    if nvml is not None and not nvml.ok:
        notes["energy"] = f"NVML unavailable: {nvml.why}"
    return rows, notes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--tokens", default="128,2048")
    ap.add_argument("--dtypes", default=None, help="default: float32 on CPU, float32,float16 on CUDA")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds-small", type=int, default=15, help="interleaved rounds at <= 128 tokens")
    ap.add_argument("--rounds-large", type=int, default=5, help="interleaved rounds above 128 tokens")
    ap.add_argument("--variants", default="n6_sparse,n6_sparse_tc,dense,n6_fallback,ms_moe")
    ap.add_argument("--energy-seconds", type=float, default=1.0, help="NVML window per variant (largest N)")
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--out-name", default=None)
    ap.add_argument("--out-dir", default=None, help="also copy the JSON here (e.g. $OUT)")
    args = ap.parse_args(argv)
    provider = CUDA if args.provider == "cuda" else CPU
    if provider == CUDA and CUDA not in ort.get_available_providers():
        raise SystemExit("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
    if _library.library_path("cuda" if provider == CUDA else "cpu") is None:
        raise SystemExit("the n6 custom-op library was not found: build it and set N6ONNX_LIBRARY / N6ONNX_CUDA_LIBRARY")
    ort.set_default_logger_severity(3)
    dtypes = (args.dtypes or ("float32,float16" if provider == CUDA else "float32")).split(",")
    tokens = [int(t) for t in args.tokens.split(",")]
    rounds = {n: (args.rounds_small if n <= 128 else args.rounds_large) for n in tokens}
    if provider == CUDA:
        rounds = {n: max(r, 15) for n, r in rounds.items()}
    t0 = time.time()
    rows, notes = bench(provider, tokens, dtypes, rounds, args.threads, args.device_id,
                        args.variants.split(","), args.energy_seconds if provider == CUDA else 0)
    payload = {
        "benchmark": "moe_ops",
        "provider": provider,
        "shape": {"experts": E, "top_k": K, "d_model": D, "expert_hidden": H, "expert_hidden_rule": "4D/3",
                  "activation": "GELU (tanh form)", "biases": True, "routing": "softmax top-3, renormalised"},
        "method": ("one session per variant, ORT_ENABLE_ALL; warm-up then interleaved rounds (rotating order), "
                   "one run per variant per round; medians and quartiles in ms; speedups are ratios of medians "
                   "from this run" + (f"; CPU: intra_op_num_threads={args.threads}, spinning off" if provider == CPU
                                      else "; CUDA: IO binding, TF32 off, NVML energy windows")),
        "goals": {"dense_over_n6_sparse": ">= 8x", "n6_sparse_over_ms_moe": "<= 1.2 (CUDA)"},
        "variants": __doc__.split("Variants")[1].split("Method:")[0].strip(),
        "noise": ("the CPU machine is shared with other concurrent jobs (2 cores): absolute times are noisy; "
                  "the interleaving keeps ratios comparable") if provider == CPU else "",
        "rounds": rounds,
        "rows": rows,
        "notes": notes,
        "seconds": round(time.time() - t0, 1),
    }
    name = args.out_name or f"moe_ops_{'cuda' if provider == CUDA else 'cpu'}"
    out = write(name, payload)
    print(f"wrote {out}")
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        pathlib.Path(args.out_dir, out.name).write_text(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
