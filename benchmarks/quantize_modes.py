"""Which of onnxruntime's quantization modes pays on this CPU: all-MiniLM-L6-v2 (dynamic-axes dynamo export,
opset 20), batch 8 x 64, side by side in one run (interleaved blocks, same threads and session options).

    python benchmarks/quantize_modes.py [--threads 2] [--seconds 30]

Variants: the fp32 original with ORT's fusions (the baseline), and each ``--quantize`` mode of the original
(``n6onnx.quantize``: ``int8`` dynamic per channel, ``int8:static`` QDQ MinMax calibrated on corpus sentences
0..255, ``int4:32`` and ``int4:128`` weight-only MatMulNBits, accuracy level 4) in both graph orders where a
fusion applies: quantized then fused (every MatMul quantized) and fused then quantized (a fused attention
keeps its projections float). Fidelity: n6onnx validate on corpus sentences 1000..1255 (mean-pooled
embedding cosine, NN agreement). Writes benchmarks/results/quantize_modes_minilm.json.
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

MODES = ("int8", "int8:static", "int4:32", "int4:128")
DIMS = {"batch": 8, "seq": 64}


def main() -> None:
    ap = side_parser(__doc__, "quantize_modes", "quantize_modes_minilm")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    a = ap.parse_args()

    work = a.workdir
    src, data, held = minilm_split(work, 256, 256)
    cfg = SessionConfig("cpu", 0, a.threads)
    fp32, chosen, kw = measure.fuse(src, cfg, work / "fused")
    variants = {"fp32": fp32}
    for mode in a.modes:
        tag = mode.replace(":", "_")
        q = work / f"{tag}-first.onnx"
        calib = {"calibrate": str(data), "dims": DIMS} if mode == "int8:static" else {}
        # no pass: the original quantized alone (int8's closed-form int8-path fit off, to time the stock tool)
        n6onnx.rewrite(src, q, [], quantize=mode, quantize_fit="none", **calib)
        variants[f"{tag} (quantized, then fused)"], _, _ = measure.fuse(q, cfg, work / f"fused-{tag}", kw)
        f = work / f"{tag}-fused-first.onnx"
        n6onnx.rewrite(fp32, f, [], quantize=mode, quantize_fit="none", **calib)
        variants[f"{tag} (fused, then quantized)"] = f
    sbs = side_by_side(variants, src, held, threads=a.threads, dims=DIMS, seconds=a.seconds)
    write(a.name, {"benchmark": "quantize_modes", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                   "dims": DIMS, "threads": a.threads, "fusion": chosen, "conditions": a.conditions,
                   "method": __doc__.split("\n\n")[1].replace("\n", " "), "side_by_side": sbs})
    for name, v in sbs["variants"].items():
        f = v["fidelity"] or {}
        print(f"{name:32s} cos {f.get('cosine', float('nan')):.4f} NN {f.get('nn') or float('nan'):.3f} "
              f"p50 {v['latency_ms']['median']:.2f} ms  x{v['speedup_vs_fp32']['median']:.2f} vs fp32")


if __name__ == "__main__":
    main()
