"""Where the time of an int8 MiniLM goes, per op type, and what each n6 pass removes from it: the bound on
what any recipe can gain over int8 alone. all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20), 8 x 64.

    python benchmarks/op_breakdown.py [--threads 2] [--runs 60]

Variants (each then fused by ORT as ``bench`` fuses its baseline): the fp32 original; per-channel dynamic int8
of the export (quantized, then fused: tune's int8 anchor on this machine); and the calibrated n6 rewrites that
replace an op group of the int8 model (``gelu=phi6``, ``ffn=phi-bottleneck:4/3``, ``attention=fftmix:2``),
each with ``--quantize int8``. Op times: ORT's profiler (kernel time per op type per inference, the first
run dropped, RUNS runs), with the n6 library registered. Writes benchmarks/results/op_breakdown_minilm.json.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx import feeds as feeds_mod  # noqa: E402
from n6onnx.bench import session as session_mod  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402
from n6onnx.tune import measure  # noqa: E402

from _common import minilm_split, side_parser, write  # noqa: E402

DIMS = {"batch": 8, "seq": 64}
REWRITES = ("gelu=phi6", "ffn=phi-bottleneck:4/3", "attention=fftmix:2")


def main() -> None:
    ap = side_parser(__doc__, "op_breakdown", "op_breakdown_minilm")
    ap.add_argument("--runs", type=int, default=60)
    a = ap.parse_args()

    work = a.workdir
    src, data, _ = minilm_split(work, 256, 0)
    cfg = SessionConfig("cpu", 0, a.threads)
    fp32, _, kw = measure.fuse(src, cfg, work / "fused")
    variants = {"fp32": fp32}
    n6onnx.rewrite(src, work / "int8.onnx", [], quantize="int8", quantize_fit="none")
    variants["int8"], _, _ = measure.fuse(work / "int8.onnx", cfg, work / "fused-int8", kw)
    for spec in REWRITES:
        tag = spec.split("=")[0]
        out = work / f"{tag}-int8.onnx"
        n6onnx.rewrite(src, out, [spec], calibrate=str(data), dims=DIMS, quantize="int8", quantize_fit="none")
        variants[f"{spec} + int8"], _, _ = measure.fuse(out, cfg, work / f"fused-{tag}", kw)
    sess, _ = cfg.session(fp32)
    feed = feeds_mod.random_feeds(sess, 1, DIMS)[0]
    del sess
    rows = {}
    for name, path in variants.items():
        p = session_mod.profile(path, feed, cfg, runs=a.runs, seconds=1e9)["op_time"]
        rows[name] = {"path": str(path), "kernel_ms": round(p["kernel_ms"], 3), "runs": p["runs"],
                      "by_op_type_ms": {k: round(v, 3) for k, v in p["by_op_type_ms"].items()},
                      "share": p["share"]}
        top = ", ".join(f"{k} {v:.1f}" for k, v in list(p["by_op_type_ms"].items())[:6])
        print(f"{name:32s} {p['kernel_ms']:6.1f} ms: {top}", flush=True)
    write(a.name, {"benchmark": "op_breakdown", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                   "dims": DIMS, "threads": a.threads, "conditions": a.conditions,
                   "method": __doc__.split("\n\n")[2].replace("\n", " "), "variants": rows})


if __name__ == "__main__":
    main()
