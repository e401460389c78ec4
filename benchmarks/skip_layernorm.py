"""ORT's fused skip-and-normalize nodes against their parts, ORT's SkipLayerNormFusion disabled:
SkipLayerNormalization against Add + LayerNormalization on all-MiniLM-L6-v2 (dynamic-axes dynamo
export, opset 20; fp32 and per-channel dynamic int8, quantized then fused; batch 8 x 64), or
SkipSimplifiedLayerNormalization (RMSNorm) against Add + SimplifiedLayerNormalization on a
random-weight Llama decoder (--model llama: hidden 512, 4 layers, SwiGLU 1376, 8 heads / 4 KV
heads, vocab 8000, dynamo export, opset 20; fp32 and int8; prefill of batch 1 x 256).

    python benchmarks/skip_layernorm.py [--model minilm|llama] [--threads 2] [--rounds 15] [--block 1.0]

Each model is fused as bench fuses its baseline (baseline.fuse), then split by bench.layernorm.split;
the sessions (IO binding, ORT_ENABLE_ALL, the n6 library registered) run interleaved blocks of
--block seconds, the order rotated each round; ratios are fused / split block medians per round.
Also times one fused node against its parts alone at the model's width (8 x 64 x 384 for MiniLM,
1 x 256 x 512 for Llama). Writes benchmarks/results/skip_layernorm_<model>.json.
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto as T  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper  # noqa: E402

import n6onnx  # noqa: E402
from n6onnx import feeds as feeds_mod  # noqa: E402
from n6onnx import io  # noqa: E402
from n6onnx.bench import latency as latency_mod  # noqa: E402
from n6onnx.bench import layernorm  # noqa: E402
from n6onnx.bench.session import Runner, SessionConfig  # noqa: E402
from n6onnx.tune import measure  # noqa: E402

from _common import minilm_split, side_parser, write  # noqa: E402

MODELS = {  # dims, the one-node shape, its op and inputs
    "minilm": ({"batch": 8, "seq": 64}, [8, 64, 384], "SkipLayerNormalization", ("g", "b", "bias"), 1e-12),
    "llama": ({"batch": 1, "seq": 256}, [1, 256, 512], layernorm.SIMPLIFIED, ("g",), 1e-6),
}
LLAMA = dict(hidden=512, layers=4, intermediate=1376, heads=8, kv_heads=4, vocab=8000)


def _one_node(work: pathlib.Path, model: str) -> pathlib.Path:
    """One fused node (MiniLM: SkipLayerNormalization with beta and bias; Llama: SkipSimplifiedLayerNormalization)."""
    _, shape, op, params, eps = MODELS[model]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape[-1]).astype(np.float32), n) for n in params]
    node = h.make_node(op, ["x", "skip", *params], ["y"], domain="com.microsoft", epsilon=eps)
    g = h.make_graph([node], "sln", [h.make_tensor_value_info(n, T.FLOAT, shape) for n in ("x", "skip")],
                     [h.make_tensor_value_info("y", T.FLOAT, shape)], inits)
    out = work / f"one-{op}.onnx"
    io.save(h.make_model(g, opset_imports=[h.make_opsetid("", 20), h.make_opsetid("com.microsoft", 1)]), out)
    return out


def main() -> None:
    ap = side_parser(__doc__, "skip_layernorm", "skip_layernorm_<model>")
    ap.add_argument("--model", choices=sorted(MODELS), default="minilm")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--block", type=float, default=1.0, help="seconds per block")
    a = ap.parse_args()
    work = a.workdir / a.model
    work.mkdir(parents=True, exist_ok=True)
    dims, shape = MODELS[a.model][:2]
    if a.model == "minilm":
        src, _, _ = minilm_split(work, 8, 8)
        described = "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20"
    else:
        from llm_memory import export_llama, llama_config

        src = export_llama(work / "llama.onnx", llama_config(**LLAMA))
        described = f"random-weight LlamaModel {LLAMA}, dynamo export, opset 20"
    cfg = SessionConfig("cpu", 0, a.threads)
    split_cfg = dataclasses.replace(cfg, disabled_optimizers=(layernorm.FUSION,))
    fp32, chosen, kw = measure.fuse(src, cfg, work / "fused")
    n6onnx.rewrite(src, work / "int8.onnx", [], quantize="int8", quantize_fit="none")
    int8, chosen8, _ = measure.fuse(work / "int8.onnx", cfg, work / "fused-int8", kw)
    one = _one_node(work, a.model)
    models = {"fp32": fp32, "int8": int8, "one node": one}
    feed = feeds_mod.random_feeds(cfg.session(src)[0], 1, dims)[0]
    rng = np.random.default_rng(1)
    one_feed = {k: rng.normal(size=shape).astype(np.float32) for k in ("x", "skip")}
    runners, nodes = {}, {}
    for name, path in models.items():
        f = one_feed if name == "one node" else feed
        nodes[name] = layernorm.count(onnx.load(str(path)))  # fused files hold onnxruntime-only ops
        runners[f"{name}, fused"] = Runner(cfg.session(path)[0], f, cfg)
        runners[f"{name}, parts"] = Runner(split_cfg.session(layernorm.split_file(path, work))[0], f, split_cfg)
    for r in runners.values():
        latency_mod.warm_up(r, 1.0)
    order = list(runners)
    blocks = {k: [] for k in order}
    for i in range(a.rounds):
        for k in order[i % len(order):] + order[:i % len(order)]:
            blocks[k].append(latency_mod.run_block(k, runners[k], a.block))
    rows = {}
    for name in models:
        fb, sb = blocks[f"{name}, fused"], blocks[f"{name}, parts"]
        rows[name] = {"skip_layernorm_nodes": nodes[name],
                      "fused_ms": latency_mod.summary([b.median * 1e3 for b in fb]),
                      "split_ms": latency_mod.summary([b.median * 1e3 for b in sb]),
                      "split_speedup": latency_mod.ratio_summary([b.median for b in fb], [b.median for b in sb])}
        r = rows[name]
        print(f"{name:9s} {nodes[name]:2d} nodes: fused {r['fused_ms']['median']:.3f} ms, split "
              f"{r['split_ms']['median']:.3f} ms, split speed-up {r['split_speedup']['median']:.3f}x "
              f"[{r['split_speedup']['q1']:.3f}, {r['split_speedup']['q3']:.3f}]")
    write(a.name.replace("<model>", a.model), {
                   "benchmark": "skip_layernorm", "model": described, "fused_op": MODELS[a.model][2],
                   "dims": dims, "threads": a.threads, "fusion": {"fp32": chosen, "int8": chosen8},
                   "rounds": a.rounds, "block_seconds": a.block, "conditions": a.conditions,
                   "method": " ".join(__doc__.split("\n\n")[2].split()), "rows": rows})


if __name__ == "__main__":
    main()
