"""Calibrated gelu=phi6 + --quantize int8 with each --int8-guard, against int8 alone: all-MiniLM-L6-v2
(dynamic-axes dynamo export, opset 20), batch 8 x 64, side by side in one run (interleaved blocks, same
threads and session options).

    python benchmarks/int8_guard.py [--threads 2] [--seconds 60]

Variants: the fp32 original with ORT's fusions; ORT's per-channel dynamic int8 of the original (quantized, then
fused: tune's int8 anchor on this CPU); calibrated gelu=phi6 + `rewrite --quantize int8` (the default int8
fit, refit) with the per-channel guard (the default with --quantize: centring and balance) and with the
per-tensor guard (plus the up projection's gain Mul and the outlier detour FFN), each quantized, then fused.
Calibration and the int8 fit: corpus sentences 0..255. Fidelity: n6onnx validate on corpus sentences
1000..1255 (mean-pooled embedding cosine, NN agreement). Ratios against int8 alone. Writes
benchmarks/results/int8_guard_minilm.json.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402
from n6onnx.tune import measure  # noqa: E402

from _common import minilm_split, side_parser, write  # noqa: E402
from _sidebyside import side_by_side  # noqa: E402

DIMS = {"batch": 8, "seq": 64}
INT8 = "int8 alone (quantized, then fused)"


def main() -> None:
    ap = side_parser(__doc__, "int8_guard", "int8_guard_minilm")
    ap.add_argument("--seconds", type=float, default=60.0, help="timed seconds per variant")
    a = ap.parse_args()

    work = a.workdir
    src, data, held = minilm_split(work, 256, 256)
    cfg = SessionConfig("cpu", 0, a.threads)
    fp32, chosen, kw = measure.fuse(src, cfg, work / "fused")
    n6onnx.rewrite(src, work / "int8.onnx", [], quantize="int8", quantize_fit="none")
    variants = {INT8: measure.fuse(work / "int8.onnx", cfg, work / "fused-int8", kw)[0], "fp32": fp32}
    reports = {}
    for guard in ("per-channel", "per-tensor"):
        q = work / f"phi6-{guard}.onnx"
        _, rep = n6onnx.rewrite(src, q, ["gelu=phi6"], calibrate=str(data), dims=DIMS, quantize="int8",
                                int8_guard=guard)
        reports[guard] = {"warnings": rep.warnings, "int8_fit": rep.quantization.fit}
        variants[f"gelu=phi6 + int8, {guard} guard"], _, _ = measure.fuse(q, cfg, work / f"fused-{guard}", kw)
    sbs = side_by_side(variants, src, held, threads=a.threads, dims=DIMS, seconds=a.seconds, reference=INT8)
    write(a.name, {"benchmark": "int8_guard", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                   "dims": DIMS, "threads": a.threads, "fusion": chosen, "conditions": a.conditions,
                   "method": __doc__.split("\n\n")[2].replace("\n", " "), "rewrites": reports, "side_by_side": sbs})
    for name, v in sbs["variants"].items():
        f = v["fidelity"] or {}
        ratio = {k.removeprefix("speedup_vs_"): round(r["median"], 3) for k, r in v.items() if k.startswith("speedup_vs_")}
        print(f"{name:42s} cos {f.get('cosine', float('nan')):.4f} NN {f.get('nn') or float('nan'):.3f} "
              f"p50 {v['latency_ms']['median']:.2f} ms  speed-up {ratio}", flush=True)


if __name__ == "__main__":
    main()
