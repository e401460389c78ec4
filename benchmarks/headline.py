"""The README's results table for all-MiniLM-L6-v2 on a CPU, measured in one run side by side with the tool a
user would pick instead: onnxruntime's own dynamic per-channel int8 of the original.

    python benchmarks/headline.py [--threads 2] [--seconds 30] [--held 1803] [--calib 1000]

Model: the dynamic-axes dynamo export of all-MiniLM-L6-v2 (opset 20), batch 8 x 64. Variants, each fused
as onnxruntime runs it best (``tune.measure.fuse``, the same fusion options for all): fp32 (the original),
int8 and int8_first (the original through ``quantize_dynamic`` per channel, QInt8, weights rounded to
nearest: fused then quantized, and quantized then fused; the faster is the anchor), and the rewrites of the
README's rows: gelu=phi6 uncalibrated, gelu=phi6 calibrated, gelu=phi6 calibrated + ``--quantize int8``
(n6onnx's int8 stage with its default fit), ffn=phi-bottleneck:4/3 calibrated and attention=fftmix:1
calibrated. Calibration: the first ``--calib`` corpus sentences outside the held-out range (``rewrite
--calibrate`` with ``--calib-samples`` as many). Fidelity: ``n6onnx validate`` on corpus sentences
1000..1000+held-1 (never seen by a fit): mean-pooled embedding cosine and nearest-neighbour agreement
against onnxruntime running the fp32 original. Timing and estimated energy: interleaved blocks, order
rotated each round, the same session options and threads for every variant, the n6 library registered
(``_sidebyside.side_by_side``); ratios are per-round block medians with their spread. Writes
benchmarks/results/headline_minilm_cpu.json.
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx import calibrate as cal  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402

from _common import minilm_split, side_parser, write  # noqa: E402
from _sidebyside import int8_anchor, int8_variants, side_by_side  # noqa: E402

DIMS = {"batch": 8, "seq": 64}
# variant name -> (passes, calibrated, --quantize)
ROWS = {
    "gelu=phi6, uncalibrated": (["gelu=phi6"], False, None),
    "gelu=phi6, calibrated": (["gelu=phi6"], True, None),
    "gelu=phi6, calibrated + --quantize int8": (["gelu=phi6"], True, "int8"),
    "ffn=phi-bottleneck:4/3, calibrated": (["ffn=phi-bottleneck:4/3"], True, None),
    "attention=fftmix:1, calibrated": (["attention=fftmix:1"], True, None),
}


def main() -> None:
    ap = side_parser(__doc__, "headline", "headline_minilm_cpu")
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    ap.add_argument("--held", type=int, default=1803, help="held-out sentences 1000..1000+N-1 (at most 1803)")
    ap.add_argument("--calib", type=int, default=cal.SAMPLES,
                    help="calibration sentences (outside the held-out range; default: rewrite's --calib-samples default)")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help="which rewrite rows (default: all)")
    a = ap.parse_args()
    unknown = sorted(set(a.rows) - set(ROWS))
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {list(ROWS)}")

    work = a.workdir
    src, calib, held = minilm_split(work, a.calib, a.held)
    cfg = SessionConfig("cpu", 0, a.threads)
    variants, fuse, fusion = int8_variants(src, cfg, work)
    rewrites = {}
    for name in a.rows:
        passes, calibrated, quant = ROWS[name]
        out = work / (name.replace(", ", "_").replace(" + ", "_").replace(" ", "").replace("=", "-")
                      .replace(":", "-").replace("/", "_") + ".onnx")
        kw_rw = {"calibrate": calib, "dims": DIMS, "calib_samples": a.calib} if calibrated else {}
        _, rep = n6onnx.rewrite(src, out, passes, quantize=quant, **kw_rw)
        rewrites[name] = {"passes": passes, "calibrated": calibrated, "quantize": quant,
                          "rewritten": rep.rewritten}
        variants[name] = fuse(out)  # quantized (where it is), then fused: the graph order rewrite writes
    sbs = side_by_side(variants, src, held, threads=a.threads, dims=DIMS, seconds=a.seconds)
    runs = sbs["variants"]
    anchor = int8_anchor(runs)
    table = {}
    for name, r in runs.items():
        f = r["fidelity"] or {}
        row = {"cosine": f.get("cosine"), "nn": f.get("nn"), "speedup_vs_fp32": r["speedup_vs_fp32"],
               f"speedup_vs_{anchor}": r.get(f"speedup_vs_{anchor}")}
        en = r["energy"].get("cpu-estimate", {}).get("mj_per_inference")
        if en:
            row["energy_mj_per_inference_estimated"] = en
        table[name] = row
    out = write(a.name, {
        "benchmark": "headline", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20", "dims": DIMS,
        "threads": a.threads, "fusion": fusion, "conditions": a.conditions,
        "calibration": f"the first {a.calib} corpus sentences outside the held-out range",
        "heldout": f"corpus sentences 1000..{999 + a.held}", "anchor": anchor,
        "method": __doc__.split("\n\n")[2].replace("\n", " "), "rewrites": rewrites, "table": table,
        "side_by_side": sbs})
    for name, row in table.items():
        vs = row[f"speedup_vs_{anchor}"]
        print(f"{name:42s} cos {row['cosine'] or float('nan'):.4f} NN {row['nn'] or float('nan'):.3f} "
              f"x{row['speedup_vs_fp32']['median']:.2f} fp32" + (f", x{vs['median']:.2f} {anchor}" if vs else ""))
    print(f"anchor: {anchor}; wrote {out}")


if __name__ == "__main__":
    main()
