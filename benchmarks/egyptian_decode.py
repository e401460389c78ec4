"""Op-level benchmark of one cached decode step of causal Egyptian attention (with grouped-query
attention) against onnxruntime's own decoder attention, com.microsoft GroupQueryAttention, on the
CPU provider (float32) or the CUDA provider (float16: ORT's CUDA GroupQueryAttention takes no
float32): a Llama-style attention shape (32 query heads, 8 KV heads, head size 64, B = 1),
at past contexts of 1024, 4096 and 8192 tokens.

Each variant is one ONNX graph doing what a decoder layer's attention core does per token: take
the new token's q / k / v and the past cache, append the new k / v, attend, and output the
present cache. No projections (they are the same for every variant).
  ort_gqa            GroupQueryAttention(q, k, v, past_key, past_value [1, 8, P, 64], seqlens_k,
                     total_sequence_length) -> y, present_key / present_value [1, 8, P+1, 64].
  egyptian_full      Concat(past [1, P, 512], new) -> K / V (the present), EgyptianAttention
                     causal=1, kv_heads=8, all heads full: the same kernel doing full attention.
  egyptian_onecache  the same graph with the default kinds per KV group (4 full, 2 local
                     (window 64), 2 global (1 sink)) on one full cache: the saving of the kernel
                     alone, the cache still grows for every group.
  egyptian_caches    one node per kind on its own cache, as a decoder that shrinks its cache runs
                     it: full groups [1, P, 256], local groups the last 63 tokens [1, 63, 128],
                     global groups the sink [1, 1, 128]; present: full Concat, local its last 63
                     rows (Slice), global unchanged (13 nodes). Checked at every context before
                     timing: on the same tokens its outputs equal egyptian_onecache's ("check").
  egyptian_packed    the same shrunk caches as attention=egyptian stores them (one packed tensor
                     per K / V, [1, 1, 4P + 2*63 + 2*1, 64]) in ONE EgyptianAttention node in cache
                     mode: past + new rows in, attention and the packed presents out (the node
                     appends to its own cache). Checked the same way (its Y and its presents
                     against egyptian_onecache's, packed).
Reported per variant and context: the step time (median and quartiles of the per-run wall time,
repetitions interleaved across variants after warm-up) and the KV-cache bytes the step outputs
(the present tensors' sizes), with ratios against ort_gqa.

Method: ORT_ENABLE_ALL, CPU: intra_op_num_threads (default 2), thread spinning off; inputs and
outputs bound with IO binding (preallocated outputs, on the GPU for CUDA; each CUDA run ends with
ORT's stream synchronisation). Timings on a shared machine are noisy: read the quartiles.

On CUDA each variant is also timed as one CUDA graph replay (provider option enable_cuda_graph;
"ms_cuda_graph"): the GPU time without onnxruntime's per-node host overhead (--no-cuda-graph skips
it). With --profile each variant also runs in a separate profiled session (onnxruntime's
SessionOptions.enable_profiling): the per-node times go into the JSON ("profile"), to show where
a step's time goes (the host-side Compute time of each node; GPU kernel times where onnxruntime
was built with CUDA profiling).

    python3 benchmarks/egyptian_decode.py [--threads 2] [--quick] [--profile]
    N6ONNX_CUDA_LIBRARY=build/cuda/libn6ops_cuda.so python3 benchmarks/egyptian_decode.py --provider cuda
Writes benchmarks/results/egyptian_decode_cpu.json or egyptian_decode_cuda.json.
"""

from __future__ import annotations

import argparse
import json
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
from n6onnx.ops.egyptian_attention import FULL, GLOBAL, LOCAL, default_group_kinds  # noqa: E402
from n6onnx.ops.egyptian_cache import pack, packed_rows  # noqa: E402

from _common import summary, write  # noqa: E402

H, HKV, DH, WINDOW, SINKS = 32, 8, 64, 64, 1
G = H // HKV
CONTEXTS = (1024, 4096, 8192)
VARIANTS = ("ort_gqa", "egyptian_full", "egyptian_onecache", "egyptian_caches", "egyptian_packed")
KINDS = default_group_kinds(H, HKV)  # 4 full groups, 2 local, 2 global
GROUPS = [KINDS[g * (H // HKV)] for g in range(HKV)]
ET = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int32": TensorProto.INT32}
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _vi(name, shape, dtype):
    return helper.make_tensor_value_info(name, ET["int32" if name == "mask" else dtype], shape)


def _groups(kind):
    return [g for g in range(HKV) if KINDS[g * G] == kind]


def model(variant: str, P: int, dtype: str = "float32") -> tuple[bytes, dict, list, list]:
    """(model, input name -> shape, present-cache output names)."""
    nodes, ins, outs, presents, inits = [], {}, [], [], []
    if variant == "ort_gqa":
        ins = {"q": [1, 1, H * DH], "k": [1, 1, HKV * DH], "v": [1, 1, HKV * DH],
               "pk": [1, HKV, P, DH], "pv": [1, HKV, P, DH]}
        inits = [helper.make_tensor("sl", TensorProto.INT32, [1], [P]), helper.make_tensor("tl", TensorProto.INT32, [], [P + 1])]
        nodes.append(helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "sl", "tl"], ["y", "K", "V"],
                                      domain="com.microsoft", num_heads=H, kv_num_heads=HKV))
        outs, presents = [("y", [1, 1, H * DH]), ("K", [1, HKV, P + 1, DH]), ("V", [1, HKV, P + 1, DH])], ["K", "V"]
    elif variant in ("egyptian_full", "egyptian_onecache"):
        ins = {"q": [1, 1, H * DH], "k": [1, 1, HKV * DH], "v": [1, 1, HKV * DH], "pk": [1, P, HKV * DH], "pv": [1, P, HKV * DH]}
        nodes += [helper.make_node("Concat", ["pk", "k"], ["K"], axis=1), helper.make_node("Concat", ["pv", "v"], ["V"], axis=1)]
        kinds = [FULL] * H if variant == "egyptian_full" else KINDS
        nodes.append(helper.make_node("EgyptianAttention", ["q", "K", "V"], ["y"], domain=DOMAIN, num_heads=H,
                                      kv_heads=HKV, causal=1, window=WINDOW, sinks=SINKS, head_kinds=kinds))
        outs, presents = [("y", [1, 1, H * DH]), ("K", [1, P + 1, HKV * DH]), ("V", [1, P + 1, HKV * DH])], ["K", "V"]
    elif variant == "egyptian_packed":
        S, S1 = packed_rows(GROUPS, P, WINDOW, SINKS), packed_rows(GROUPS, P + 1, WINDOW, SINKS)
        ins = {"q": [1, 1, H * DH], "k": [1, 1, HKV * DH], "v": [1, 1, HKV * DH], "mask": [1, P + 1],
               "pk": [1, 1, S, DH], "pv": [1, 1, S, DH]}
        node = helper.make_node("EgyptianAttention", ["q", "k", "v", "mask", "pk", "pv"], ["y", "K", "V"], domain=DOMAIN,
                                num_heads=H, kv_heads=HKV, causal=1, window=WINDOW, sinks=SINKS, head_kinds=KINDS)
        node.overload = "cache_present"
        nodes.append(node)
        outs, presents = [("y", [1, 1, H * DH]), ("K", [1, 1, S1, DH]), ("V", [1, 1, S1, DH])], ["K", "V"]
    else:
        keep = {FULL: P, LOCAL: WINDOW - 1, GLOBAL: SINKS}
        for kind, tag in ((FULL, "f"), (LOCAL, "l"), (GLOBAL, "g")):
            n = len(_groups(kind))
            ins.update({f"q{tag}": [1, 1, n * G * DH], f"k{tag}": [1, 1, n * DH], f"v{tag}": [1, 1, n * DH],
                        f"pk{tag}": [1, keep[kind], n * DH], f"pv{tag}": [1, keep[kind], n * DH]})
            for x in "kv":
                nodes.append(helper.make_node("Concat", [f"p{x}{tag}", f"{x}{tag}"], [f"{x.upper()}{tag}"], axis=1))
            nodes.append(helper.make_node("EgyptianAttention", [f"q{tag}", f"K{tag}", f"V{tag}"], [f"y{tag}"], domain=DOMAIN,
                                          num_heads=n * G, kv_heads=n, causal=1, window=WINDOW, sinks=SINKS,
                                          head_kinds=[kind] * (n * G)))
            outs.append((f"y{tag}", [1, 1, n * G * DH]))
            if kind == FULL:
                outs += [(f"K{tag}", [1, P + 1, n * DH]), (f"V{tag}", [1, P + 1, n * DH])]
                presents += [f"K{tag}", f"V{tag}"]
            elif kind == LOCAL:  # the last window - 1 rows
                inits += [helper.make_tensor(f"s{tag}", TensorProto.INT64, [1], [1]),
                          helper.make_tensor(f"e{tag}", TensorProto.INT64, [1], [WINDOW]),
                          helper.make_tensor(f"a{tag}", TensorProto.INT64, [1], [1])]
                for x in "KV":
                    nodes.append(helper.make_node("Slice", [f"{x}{tag}", f"s{tag}", f"e{tag}", f"a{tag}"], [f"P{x}{tag}"]))
                    outs.append((f"P{x}{tag}", [1, WINDOW - 1, n * DH]))
                    presents.append(f"P{x}{tag}")
            else:  # the sinks: the past cache as it is
                for x in "kv":
                    nodes.append(helper.make_node("Identity", [f"p{x}{tag}"], [f"P{x}{tag}"]))
                    outs.append((f"P{x}{tag}", [1, SINKS, n * DH]))
                    presents.append(f"P{x}{tag}")
    g = helper.make_graph(nodes, variant, [_vi(n, s, dtype) for n, s in ins.items()], [_vi(n, s, dtype) for n, s in outs],
                          initializer=inits)
    spec = REGISTRY["EgyptianAttention"]
    m = helper.make_model(g, ir_version=10, functions=[spec.function(18), spec.function(18, "cache_present")],
                          opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1),
                                         helper.make_opsetid("com.microsoft", 1)])
    return m.SerializeToString(), ins, outs, presents


class Runner:
    def __init__(self, variant: str, P: int, threads: int, rng, provider: str = CPU, dtype: str = "float32",
                 profile_dir: str | None = None, cuda_graph: bool = False):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.intra_op_num_threads = threads
        if profile_dir is not None:
            so.enable_profiling = True
            so.profile_file_prefix = str(pathlib.Path(profile_dir) / variant)
        if provider == CPU:  # idle interleaved sessions' spinning workers would steal the cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.register_custom_ops_library(str(n6onnx.library_path("cuda" if provider == CUDA else "cpu")))
        m, ins, outs, self.presents = model(variant, P, dtype)
        cuda_opts = {"enable_cuda_graph": "1"} if cuda_graph else {}  # the whole run replayed as one CUDA graph
        self.sess = ort.InferenceSession(m, so, providers=[(CUDA, cuda_opts), CPU] if provider == CUDA else [CPU])
        dev = "cuda" if provider == CUDA else "cpu"
        self.io = self.sess.io_binding()
        self.feeds = {n: ort.OrtValue.ortvalue_from_numpy(np.ones(s, np.int32) if n == "mask"
                                                          else rng.normal(0, 1, s).astype(dtype), dev, 0)
                      for n, s in ins.items()}
        for n, v in self.feeds.items():
            self.io.bind_ortvalue_input(n, v)
        self.outs = {n: ort.OrtValue.ortvalue_from_shape_and_type(s, np.dtype(dtype), dev, 0) for n, s in outs}
        for n, v in self.outs.items():
            self.io.bind_ortvalue_output(n, v)
        self.cache_bytes = int(sum(np.prod(self.outs[n].shape()) * np.dtype(dtype).itemsize for n in self.presents))

    def run(self, reps: int) -> float:
        t = time.perf_counter()
        for _ in range(reps):
            self.sess.run_with_iobinding(self.io)
        return (time.perf_counter() - t) / reps


def profile(variant: str, P: int, threads: int, provider: str, dtype: str, runs: int = 50) -> dict:
    """onnxruntime's profile of `runs` steps of one variant (a separate, profiled session; after 5
    warm-up runs): per node, the median over runs of its `_kernel_time` event (the time onnxruntime
    spends in the node's Compute on the host: on CUDA the launches, not the GPU time, unless
    onnxruntime was built with CUDA profiling, whose GPU kernel events ("Kernel") are listed too),
    and the median model_run time."""
    with tempfile.TemporaryDirectory() as tmp:
        r = Runner(variant, P, threads, np.random.default_rng(P), provider, dtype, profile_dir=tmp)
        r.run(5 + runs)
        events = json.loads(pathlib.Path(r.sess.end_profiling()).read_text())
    nodes, kernels, model_run = {}, {}, []
    for e in events:
        name, cat, args = e.get("name", ""), e.get("cat"), e.get("args", {})
        if cat == "Node" and name.endswith("_kernel_time"):
            key = f"{name[:-len('_kernel_time')]} ({args.get('op_name', '?')}, {args.get('provider', '?')})"
            nodes.setdefault(key, []).append(e["dur"])
        elif cat == "Kernel":
            kernels.setdefault(f"{name} ({args.get('op_name', '?')})", []).append(e["dur"])
        elif cat == "Session" and name == "model_run":
            model_run.append(e["dur"])

    def med(xs):  # the last `runs` events: the warm-up runs come first
        return float(np.median(xs[-runs:]))

    return {"method": f"onnxruntime profiling (SessionOptions.enable_profiling), {runs} runs after 5 warm-up, "
                      "medians in microseconds; node times are host-side Compute times",
            "model_run_us": med(model_run) if model_run else None,
            "node_us": {k: med(v) for k, v in nodes.items()},
            "gpu_kernel_us": {k: med(v) for k, v in kernels.items()}}


def graph_times(res: dict, P: int, threads: int, dtype: str, rounds: int, inner: int) -> None:
    """GPU time without onnxruntime's per-node host overhead: each variant captured once into a CUDA
    graph (provider option enable_cuda_graph, IO binding at fixed addresses) and replayed, rounds
    interleaved; "ms_cuda_graph" per variant, or "cuda_graph_error" where the capture fails."""
    graphs = {}
    for v in VARIANTS:
        try:
            r = Runner(v, P, threads, np.random.default_rng(P), CUDA, dtype, cuda_graph=True)
            r.run(3)  # warm-up and capture
            graphs[v] = r
        except Exception as e:  # noqa: BLE001 (recorded: a variant that cannot be captured)
            res[v]["cuda_graph_error"] = f"{type(e).__name__}: {e}"[:300]
    times = {v: [] for v in graphs}
    for _ in range(rounds):
        for v, r in graphs.items():
            times[v].append(r.run(inner) * 1e3)
    for v, ts in times.items():
        res[v]["ms_cuda_graph"] = summary(ts)


def check_caches(P: int, threads: int, provider: str, dtype: str) -> float:
    """Max |difference| between egyptian_caches and egyptian_onecache on the same tokens (the
    per-kind caches cut from the full one); raises if it is not within float rounding."""
    rng = np.random.default_rng(1)
    one, caches = (Runner(v, P, threads, rng, provider, dtype) for v in ("egyptian_onecache", "egyptian_caches"))
    feeds = {n: v.numpy() for n, v in one.feeds.items()}
    keep = {"f": (0, P), "l": (P - (WINDOW - 1), P), "g": (0, SINKS)}
    cut = {}
    c0 = 0
    for kind, tag in ((FULL, "f"), (LOCAL, "l"), (GLOBAL, "g")):
        gs = _groups(kind)
        assert gs == list(range(gs[0], gs[0] + len(gs)))  # contiguous groups: column ranges
        k0, k1 = gs[0] * DH, (gs[-1] + 1) * DH
        cut[f"q{tag}"] = feeds["q"][..., k0 * G:k1 * G]
        for x in "kv":
            cut[f"{x}{tag}"] = feeds[x][..., k0:k1]
            a, b = keep[tag]
            cut[f"p{x}{tag}"] = np.ascontiguousarray(feeds[f"p{x}"][:, a:b, k0:k1])
        c0 = k1
    assert c0 == HKV * DH
    y = one.sess.run(["y"], feeds)[0]
    ys = caches.sess.run(["yf", "yl", "yg"], cut)
    diff = float(np.abs(y.astype(np.float64) - np.concatenate(ys, axis=-1).astype(np.float64)).max())
    if diff > (1e-5 if dtype == "float32" else 2e-3):
        raise AssertionError(f"egyptian_caches differs from egyptian_onecache by {diff} at P={P}")
    return diff


def check_packed(P: int, threads: int, provider: str, dtype: str) -> float:
    """Max |difference| of egyptian_packed's Y against egyptian_onecache's on the same tokens (its
    packed past cut from the full one); raises unless within float rounding or unless its presents
    are the packed layout of the full cache after the step."""
    rng = np.random.default_rng(2)
    one, packed = (Runner(v, P, threads, rng, provider, dtype) for v in ("egyptian_onecache", "egyptian_packed"))
    feeds = {n: v.numpy() for n, v in one.feeds.items()}
    y, K, V = one.sess.run(["y", "K", "V"], feeds)
    got = packed.sess.run(["y", "K", "V"], {"q": feeds["q"], "k": feeds["k"], "v": feeds["v"],
                                            "mask": np.ones((1, P + 1), np.int32),
                                            "pk": pack(feeds["pk"], GROUPS, WINDOW, SINKS),
                                            "pv": pack(feeds["pv"], GROUPS, WINDOW, SINKS)})
    diff = float(np.abs(y.astype(np.float64) - got[0].astype(np.float64)).max())
    if diff > (1e-5 if dtype == "float32" else 2e-3):
        raise AssertionError(f"egyptian_packed differs from egyptian_onecache by {diff} at P={P}")
    for full, present in zip((K, V), got[1:]):
        if not np.array_equal(pack(full, GROUPS, WINDOW, SINKS), present):
            raise AssertionError(f"egyptian_packed's presents are not the packed cache at P={P}")
    return diff


def run(threads: int = 2, contexts=CONTEXTS, rounds: int = 15, inner: int = 20, provider: str = CPU,
        dtype: str = "float32", profiled: bool = False, cuda_graph: bool = True) -> dict:
    results = {}
    for P in contexts:
        rng = np.random.default_rng(P)
        runners = {v: Runner(v, P, threads, rng, provider, dtype) for v in VARIANTS}
        for r in runners.values():
            r.run(5)  # warm-up
        times = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            for v, r in runners.items():
                times[v].append(r.run(inner) * 1e3)
        base = runners["ort_gqa"]
        res = {}
        for v, r in runners.items():
            s = summary(times[v])
            res[v] = {"ms": s, "kv_cache_bytes": r.cache_bytes,
                      "kv_cache_vs_ort_gqa": r.cache_bytes / base.cache_bytes,
                      "step_speedup_vs_ort_gqa": summary(times["ort_gqa"])["median"] / s["median"]}
        res["check"] = {"max_abs_diff_caches_vs_onecache": check_caches(P, threads, provider, dtype),
                        "max_abs_diff_packed_vs_onecache": check_packed(P, threads, provider, dtype)}
        if profiled:
            for v in VARIANTS:
                res[v]["profile"] = profile(v, P, threads, provider, dtype)
        if provider == CUDA and cuda_graph:  # last: a failed capture cannot disturb the timings above
            graph_times(res, P, threads, dtype, rounds, inner)
        results[str(P)] = res
        print(P, {v: (round(x["ms"]["median"], 3), round(x["kv_cache_vs_ort_gqa"], 3)) for v, x in res.items()
                  if v != "check"}, res["check"], flush=True)
        graph = {v: round(res[v]["ms_cuda_graph"]["median"], 4) if "ms_cuda_graph" in res[v]
                 else res[v].get("cuda_graph_error")
                 for v in VARIANTS if "ms_cuda_graph" in res[v] or "cuda_graph_error" in res[v]}
        if graph:
            print("  CUDA graph replay ms:", graph, flush=True)
        for v in VARIANTS if profiled else ():
            print(f"  {v} profile:", {k: round(t, 1) for k, t in {**res[v]["profile"]["node_us"],
                                                                   **res[v]["profile"]["gpu_kernel_us"]}.items()},
                  "model_run", res[v]["profile"]["model_run_us"], flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, contexts 1024 and 4096")
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=tuple(ET), default=None, help="default: float32 on CPU, float16 on CUDA")
    ap.add_argument("--profile", action="store_true",
                    help="also onnxruntime's per-node profile of each variant (separate sessions) into the JSON")
    ap.add_argument("--no-cuda-graph", action="store_true", help="CUDA: skip the CUDA-graph replay timings")
    a = ap.parse_args()
    provider = CUDA if a.provider == "cuda" else CPU
    dtype = a.dtype or ("float16" if provider == CUDA else "float32")
    contexts = CONTEXTS[:2] if a.quick else CONTEXTS
    rounds, inner = (5, 5) if a.quick else (15, 20)
    res = run(a.threads, contexts, rounds, inner, provider, dtype, a.profile, not a.no_cuda_graph)
    where = f"CUDA provider, {dtype}" if provider == CUDA else f"CPU provider, {dtype}, {a.threads} intra-op threads, spinning off"
    out = write(f"egyptian_decode_{a.provider}" + ("" if dtype == "float32" or provider == CUDA else f"_{dtype}"), {
        "method": (f"one decode step (B=1, 1 new token) of the attention core with its KV-cache update, {where}, "
                   f"IO binding; {rounds} interleaved rounds x {inner} runs per variant after 5 warm-up runs; "
                   "per-round mean step time, median and quartiles over rounds"
                   + ("; ms_cuda_graph: the same, each variant replayed as one CUDA graph (no per-node host overhead)"
                      if provider == CUDA and not a.no_cuda_graph else "")),
        "provider": provider, "dtype": dtype,
        "shape": {"num_heads": H, "kv_heads": HKV, "head_size": DH, "window": WINDOW, "sinks": SINKS,
                  "head_kinds": KINDS},
        "threads": a.threads, "results": res})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
