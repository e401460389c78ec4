"""Op-level benchmark of the attention replacements: FFTMix and EgyptianAttention (our kernels,
libn6ops / libn6ops_cuda) against onnxruntime's best attention op on the same provider,
com.microsoft MultiHeadAttention, at D = 768, 12 heads, B = 1, L = 512, 2048, 4096, 8192.

What is compared (every variant is one ONNX model, inputs already on the provider's device):
  mha             MultiHeadAttention(Q, K, V), Q/K/V [1, L, 768], 12 heads (no mask): attention
                  only, no projections.
  fftmix          FFTMix(X, F6, F12, F24) -> [1, L, 2304]: the token mixer alone.
  fftmix_linear   FFTMix + its Linear(3D -> D) (MatMul [2304, 768] + Add): what replaces the
                  attention sub-layer.
  mha_block       the attention sub-layer FFTMix+Linear replaces: X -> MatMul+Add (QKV projection
                  [768, 2304]) -> Split -> MultiHeadAttention -> MatMul+Add (output projection).
  egyptian        EgyptianAttention(Q, K, V), 12 heads split 6 full / 4 local (window 64) / 2 global
                  (the reference's split), no mask.
  egyptian_full   EgyptianAttention with all 12 heads full: the same kernel family doing full
                  attention, so egyptian vs egyptian_full is the saving of the head split itself.
  egyptian_mha    the egyptian split as `attention=egyptian:...:mha` emits it: the 6 full heads
                  through MultiHeadAttention, the 4 local + 2 global through EgyptianAttention
                  (Slices of Q/K/V, Concat of the two outputs).
Ratios: mha / fftmix, mha / fftmix_linear, mha_block / fftmix_linear, and for Egyptian attention
the time saving 1 - t(egyptian) / t(egyptian_full) and 1 - t(egyptian) / t(mha), next to the
analytic FLOP saving of the split (exact key counts per query) and the sources' claim (48.9%).

Method: sessions with ORT_ENABLE_ALL; CPU: intra_op_num_threads (default 2), thread spinning off
(idle sessions would otherwise steal the cores from the one being timed), inputs and outputs
bound with IO binding (preallocated outputs, so no allocation or page faults are timed); CUDA:
provider defaults (TF32 allowed in cuBLAS, as ORT runs best; our kernels never use it), inputs and
outputs bound on the GPU, each run ends with ORT's stream synchronisation.
Repetitions are interleaved (round r times variant 1, 2, ... in turn) after warm-up; reported:
median and quartiles of the per-run wall time. On CUDA each model holds `copies` identical nodes
(independent outputs, run back to back on one stream) and the time per node is the run time /
copies, so ORT's per-run overhead (~tens of us) is amortised (common-subexpression elimination is
disabled so ORT cannot merge the copies); --copies 1 gives single-node times.
CUDA graphs (CUDA, on by default): each variant also as a one-node model captured into a CUDA graph
(provider option enable_cuda_graph) and replayed: GPU time without ORT's per-node host overhead
("ms_cuda_graph", "ratios_cuda_graph"); a variant that cannot be captured records the error.
Energy (CUDA, --energy-seconds > 0, NVML available): whole-board energy over windows of
back-to-back runs at L = 4096, per run.

    python3 benchmarks/attention_ops.py                      # CPU, 2 threads (~3-5 min here)
    PYTHONPATH=/tmp/site:. N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so \\
        python3 benchmarks/attention_ops.py --provider cuda
Writes benchmarks/results/attention_ops_cpu.json or attention_ops_cuda.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

import n6onnx  # noqa: E402
from n6onnx.ops import DOMAIN, REGISTRY  # noqa: E402

from _common import summary, write  # noqa: E402

D, HEADS, WINDOW = 768, 12, 64
LENGTHS = (512, 2048, 4096, 8192)
KINDS_632 = [0] * 6 + [1] * 4 + [2] * 2
CLAIMED_SAVING = 0.489
VARIANTS = ("mha", "fftmix", "fftmix_linear", "mha_block", "egyptian", "egyptian_full", "egyptian_mha")
OURS = {"fftmix", "fftmix_linear", "egyptian", "egyptian_full", "egyptian_mha"}
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ET = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16}


def analytic_saving(L: int, window: int = WINDOW, kinds=KINDS_632) -> dict:
    """Attention FLOPs (Q.K^T and P.V: 4 * keys * dh per query) of the split vs all heads full."""
    i = np.arange(L)
    local_keys = (np.minimum(L, i + window // 2 + 1) - np.maximum(0, i - window // 2)).sum()
    per_head = {0: L * L, 1: int(local_keys), 2: L * min(L, 2)}
    split = sum(per_head[k] for k in kinds)
    full = len(kinds) * L * L
    return {"flops_split": 4 * split * (D // HEADS), "flops_full": 4 * full * (D // HEADS),
            "saving": 1 - split / full}


def _inputs(variant: str, L: int, dtype: str) -> dict:
    """name -> shape of the graph inputs (bound at run time) of a variant."""
    if variant in ("fftmix", "fftmix_linear", "mha_block"):
        return {"X": [1, L, D]}
    return {"Q": [1, L, D], "K": [1, L, D], "V": [1, L, D]}


def model(variant: str, L: int, dtype: str, copies: int) -> tuple[bytes, dict, dict]:
    """(model, input shapes, output shapes) with `copies` independent copies of the variant."""
    if variant == "egyptian_mha":  # the pass's own transformation of the egyptian model
        import onnx
        import onnx_ir as ir

        from n6onnx.passes.attention.heads import split_full_heads
        from n6onnx.passes.finalize import finalize

        m, ins, outs = model("egyptian", L, dtype, copies)
        irm = ir.from_proto(onnx.load_from_string(m))
        split_full_heads(irm)
        finalize(irm)
        return ir.to_proto(irm).SerializeToString(), ins, outs
    rng = np.random.default_rng(0)
    et, npd = ET[dtype], np.dtype(dtype)
    ins = _inputs(variant, L, dtype)
    inits, nodes, outs = [], [], {}

    def const(name, shape, scale):
        inits.append(helper.make_tensor(name, et, shape, rng.uniform(-scale, scale, shape).astype(npd).tobytes(), raw=True))
        return name

    if variant.startswith("fftmix"):
        fs = [const(f"F{w}", [w // 2 + 1, D], 1.0) for w in (6, 12, 24)]
    if variant in ("fftmix_linear", "mha_block"):
        w_lin = const("W_lin", [3 * D, D] if variant == "fftmix_linear" else [D, 3 * D], 0.03)
        b_lin = const("b_lin", [D] if variant == "fftmix_linear" else [3 * D], 0.03)
    if variant == "mha_block":
        w_out, b_out = const("W_out", [D, D], 0.03), const("b_out", [D], 0.03)
        split = helper.make_tensor("split", TensorProto.INT64, [3], [D, D, D])
        inits.append(split)
    for c in range(copies):
        y = f"Y{c}"
        if variant == "mha":
            nodes.append(helper.make_node("MultiHeadAttention", ["Q", "K", "V"], [y], domain="com.microsoft",
                                          num_heads=HEADS))
            outs[y] = [1, L, D]
        elif variant == "fftmix":
            nodes.append(helper.make_node("FFTMix", ["X", *fs], [y], domain=DOMAIN))
            outs[y] = [1, L, 3 * D]
        elif variant == "fftmix_linear":
            nodes += [helper.make_node("FFTMix", ["X", *fs], [f"mix{c}"], domain=DOMAIN),
                      helper.make_node("MatMul", [f"mix{c}", w_lin], [f"lin{c}"]),
                      helper.make_node("Add", [f"lin{c}", b_lin], [y])]
            outs[y] = [1, L, D]
        elif variant == "mha_block":
            nodes += [helper.make_node("MatMul", ["X", w_lin], [f"qkv{c}"]),
                      helper.make_node("Add", [f"qkv{c}", b_lin], [f"qkvb{c}"]),
                      helper.make_node("Split", [f"qkvb{c}", "split"], [f"q{c}", f"k{c}", f"v{c}"], axis=2),
                      helper.make_node("MultiHeadAttention", [f"q{c}", f"k{c}", f"v{c}"], [f"att{c}"],
                                       domain="com.microsoft", num_heads=HEADS),
                      helper.make_node("MatMul", [f"att{c}", w_out], [f"o{c}"]),
                      helper.make_node("Add", [f"o{c}", b_out], [y])]
            outs[y] = [1, L, D]
        else:
            kinds = KINDS_632 if variant == "egyptian" else [0] * HEADS
            nodes.append(helper.make_node("EgyptianAttention", ["Q", "K", "V"], [y], domain=DOMAIN,
                                          num_heads=HEADS, window=WINDOW, head_kinds=kinds))
            outs[y] = [1, L, D]
    g = helper.make_graph(nodes, variant, [helper.make_tensor_value_info(n, et, s) for n, s in ins.items()],
                          [helper.make_tensor_value_info(n, et, s) for n, s in outs.items()], initializer=inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1), helper.make_opsetid("com.microsoft", 1)]
    functions = [REGISTRY[n].function(18) for n in ("FFTMix", "EgyptianAttention")]
    m = helper.make_model(g, opset_imports=opsets, functions=functions, ir_version=10)
    return m.SerializeToString(), ins, outs


class Runner:
    def __init__(self, variant, L, dtype, copies, provider, device_id, threads, feeds_dev, profile_prefix=None,
                 cuda_graph=False):
        self.variant = variant
        self.copies = copies
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        if provider == CPU:  # idle interleaved sessions' spinning workers would steal the cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if profile_prefix:
            so.enable_profiling = True
            so.profile_file_prefix = profile_prefix
        if variant in OURS:
            so.register_custom_ops_library(str(n6onnx.library_path("cuda" if provider == CUDA else "cpu")))
        cuda_opts = {"device_id": device_id}
        if cuda_graph:  # the whole run replayed as one CUDA graph: no per-node host overhead
            cuda_opts["enable_cuda_graph"] = "1"
        provs = [(CUDA, cuda_opts), CPU] if provider == CUDA else [CPU]
        m, ins, outs = model(variant, L, dtype, copies)
        # CSE off: it would merge the identical copies' shared subgraphs (e.g. mha_block's QKV projection)
        self.sess = ort.InferenceSession(m, so, providers=provs, disabled_optimizers=["CommonSubexpressionElimination"])
        self.io = self.sess.io_binding()
        for n in ins:
            self.io.bind_ortvalue_input(n, feeds_dev[n])
        dev = "cuda" if provider == CUDA else "cpu"
        self.outs = {n: ort.OrtValue.ortvalue_from_shape_and_type(s, np.dtype(dtype), dev, device_id)
                     for n, s in outs.items()}
        for n, v in self.outs.items():
            self.io.bind_ortvalue_output(n, v)

    def run(self, reps: int = 1) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            self.sess.run_with_iobinding(self.io)
        return (time.perf_counter() - t) / reps / self.copies

    def placement(self) -> dict:
        prof = self.sess.end_profiling()
        ran = {}
        for e in json.load(open(prof)):
            a = e.get("args", {})
            if e.get("cat") == "Node" and "op_name" in a and "provider" in a:
                ran[e["name"].rsplit("_kernel_time", 1)[0]] = (a["op_name"], a["provider"])
        os.unlink(prof)
        return {"nodes": sorted({f"{o}@{p}" for o, p in ran.values()})}


def energy_window(nvml, runner, seconds: float) -> dict:
    runs, e0, t0 = 0, nvml.energy_mj(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        runner.run(5)
        runs += 5
    t1, e1 = time.perf_counter(), nvml.energy_mj()
    return {"seconds": t1 - t0, "runs": runs, "mj_per_node": (e1 - e0) / (runs * runner.copies),
            "watts": (e1 - e0) / 1000 / (t1 - t0)}


def reps_for(provider: str, L: int, quick: bool) -> int:
    if provider == CUDA:
        return 5 if quick else 15
    return {512: 15, 2048: 9, 4096: 5, 8192: 3}[L] if not quick else 3


def run(provider: str = CPU, dtypes=("float32",), lengths=LENGTHS, threads: int = 2, device_id: int = 0,
        copies: int = 1, quick: bool = False, energy_seconds: float = 0.0, variants=VARIANTS,
        full_max_len: int = 8192, out_name: str | None = None, cuda_graph: bool = True) -> dict:
    dev = "cuda" if provider == CUDA else "cpu"
    results, placements, energy = {}, {}, {}
    nvml = None
    if provider == CUDA and energy_seconds > 0:
        try:
            from activation_cuda import Nvml  # same NVML wrapper as the activation benchmark

            nvml = Nvml(device_id)
            if not nvml.ok:
                energy["why"] = nvml.why
                nvml = None
        except Exception as e:  # noqa: BLE001
            energy["why"] = f"{type(e).__name__}: {e}"
    t_start = time.time()
    for dtype in dtypes:
        for L in lengths:
            rng = np.random.default_rng(L)
            host = {n: rng.normal(0, 1, (1, L, D)).astype(dtype) for n in ("X", "Q", "K", "V")}
            feeds_dev = {n: ort.OrtValue.ortvalue_from_numpy(v, dev, device_id) for n, v in host.items()}
            vs = [v for v in variants if not (v == "egyptian_full" and L > full_max_len)]
            runners = {}
            with tempfile.TemporaryDirectory() as td:
                for v in vs:
                    try:
                        r = Runner(v, L, dtype, copies, provider, device_id, threads, feeds_dev,
                                   os.path.join(td, v) if L == lengths[0] else None)
                        r.run(2)  # warm-up
                        if L == lengths[0]:
                            placements[f"{v}/{dtype}"] = r.placement()
                        runners[v] = r
                    except Exception as e:  # noqa: BLE001  one variant failing must not stop the rest
                        results.setdefault(f"{dtype}/L{L}", {})[v] = {"error": f"{type(e).__name__}: {e}"[:500]}
            times = {v: [] for v in runners}
            reps = reps_for(provider, L, quick)
            inner = 1 if provider == CPU else 3
            for _ in range(reps):
                for v, r in runners.items():
                    times[v].append(r.run(inner) * 1e3)
            row = results.setdefault(f"{dtype}/L{L}", {})
            for v, ts in times.items():
                row[v] = {"ms": summary(ts)}
            med = {v: row[v]["ms"]["median"] for v in times}

            def ratio(a, b):
                return med[a] / med[b] if a in med and b in med else None

            row["ratios"] = {
                "mha_over_fftmix": ratio("mha", "fftmix"),
                "mha_over_fftmix_linear": ratio("mha", "fftmix_linear"),
                "mha_block_over_fftmix_linear": ratio("mha_block", "fftmix_linear"),
                "egyptian_saving_vs_egyptian_full": (1 - med["egyptian"] / med["egyptian_full"])
                if "egyptian" in med and "egyptian_full" in med else None,
                "egyptian_saving_vs_mha": (1 - med["egyptian"] / med["mha"]) if "egyptian" in med and "mha" in med else None,
                "egyptian_mha_saving_vs_mha": (1 - med["egyptian_mha"] / med["mha"])
                if "egyptian_mha" in med and "mha" in med else None,
            }
            row["analytic_flop_saving_632"] = analytic_saving(L)["saving"]
            row["reps"] = reps
            print(f"{provider} {dtype} L={L}: " + ", ".join(f"{v} {m:.3f} ms" for v, m in med.items()) +
                  f" | mha/fftmix {row['ratios']['mha_over_fftmix'] or float('nan'):.1f}x", flush=True)
            if nvml is not None and L == 4096:
                energy[dtype] = {v: energy_window(nvml, r, energy_seconds) for v, r in runners.items()}
            del runners
            gc.collect()
    if provider == CUDA and cuda_graph:
        # GPU time without ORT's per-node host overhead: one node per model, captured once into a CUDA
        # graph and replayed (IO binding at fixed addresses). Last, so that a capture failure cannot
        # disturb the timings above.
        for dtype in dtypes:
            for L in lengths:
                rng = np.random.default_rng(L)
                host = {n: rng.normal(0, 1, (1, L, D)).astype(dtype) for n in ("X", "Q", "K", "V")}
                feeds_dev = {n: ort.OrtValue.ortvalue_from_numpy(v, dev, device_id) for n, v in host.items()}
                vs = [v for v in variants if not (v == "egyptian_full" and L > full_max_len)]
                row = results.setdefault(f"{dtype}/L{L}", {})
                reps = reps_for(provider, L, quick)
                graphs = {}
                for v in vs:
                    try:
                        r = Runner(v, L, dtype, 1, provider, device_id, threads, feeds_dev, cuda_graph=True)
                        r.run(3)  # warm-up and capture
                        graphs[v] = r
                    except Exception as e:  # noqa: BLE001
                        row.setdefault(v, {})["cuda_graph_error"] = f"{type(e).__name__}: {e}"[:300]
                gt = {v: [] for v in graphs}
                for _ in range(reps):
                    for v, r in graphs.items():
                        gt[v].append(r.run(10) * 1e3)
                for v, ts in gt.items():
                    row.setdefault(v, {})["ms_cuda_graph"] = summary(ts)
                gm = {v: row[v]["ms_cuda_graph"]["median"] for v in gt}

                def gratio(a, b):
                    return gm[a] / gm[b] if a in gm and b in gm else None

                row["ratios_cuda_graph"] = {
                    "mha_over_fftmix": gratio("mha", "fftmix"),
                    "mha_over_fftmix_linear": gratio("mha", "fftmix_linear"),
                    "mha_block_over_fftmix_linear": gratio("mha_block", "fftmix_linear"),
                    "egyptian_saving_vs_egyptian_full": (1 - gm["egyptian"] / gm["egyptian_full"])
                    if "egyptian" in gm and "egyptian_full" in gm else None,
                    "egyptian_saving_vs_mha": (1 - gm["egyptian"] / gm["mha"]) if "egyptian" in gm and "mha" in gm else None,
                    "egyptian_mha_saving_vs_mha": (1 - gm["egyptian_mha"] / gm["mha"])
                    if "egyptian_mha" in gm and "mha" in gm else None,
                }
                print("  cuda graph: " + ", ".join(f"{v} {m:.4f} ms" for v, m in gm.items()), flush=True)
                del graphs
                gc.collect()
    payload = {
        "what": "FFTMix / EgyptianAttention kernels vs com.microsoft MultiHeadAttention (benchmarks/attention_ops.py)",
        "method": __doc__.split("Method:", 1)[1].split("\n\n")[0].strip(),
        "compared": __doc__.split("What is compared", 1)[1].split("Method:", 1)[0].strip(),
        "provider": provider,
        "threads": threads if provider == CPU else None,
        "copies_per_model": copies,
        "D": D, "heads": HEADS, "window": WINDOW, "batch": 1,
        "claimed_egyptian_saving": CLAIMED_SAVING,
        "analytic_L2048": analytic_saving(2048),
        "results": results,
        "placement": placements,
        "energy_L4096": energy if provider == CUDA else "not measured on CPU",
        "seconds": round(time.time() - t_start, 1),
        "note": ("shared, noisy machine (2 cores, other jobs running); medians and ratios are from one "
                 "interleaved run" if provider == CPU else "medians and ratios from one interleaved run"),
    }
    out = write(out_name or f"attention_ops_{'cuda' if provider == CUDA else 'cpu'}", payload)
    print(f"wrote {out}")
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--copies", type=int, default=None, help="nodes per model (default: 1 on CPU, 8 on CUDA)")
    ap.add_argument("--energy-seconds", type=float, default=1.0, help="CUDA only; 0 disables")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--full-max-len", type=int, default=8192, help="skip egyptian_full above this L")
    ap.add_argument("--no-cuda-graph", action="store_true", help="CUDA: skip the CUDA-graph timings")
    args = ap.parse_args()
    provider = CUDA if args.provider == "cuda" else CPU
    if provider not in ort.get_available_providers():
        sys.exit(f"this onnxruntime has no {provider}")
    run(provider, dtypes=("float32", "float16") if provider == CUDA else ("float32",),
        lengths=tuple(int(x) for x in args.lengths.split(",")), threads=args.threads, device_id=args.device_id,
        copies=args.copies or (8 if provider == CUDA else 1), quick=args.quick,
        energy_seconds=args.energy_seconds if provider == CUDA else 0.0, full_max_len=args.full_max_len,
        cuda_graph=not args.no_cuda_graph)


if __name__ == "__main__":
    main()
