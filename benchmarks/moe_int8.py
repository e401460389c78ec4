"""The Phi MoE rewrite of the project's trained MoE LM next to the tool a user would pick instead:
onnxruntime's own dynamic per-channel int8 of the original, side by side in one run.

    python benchmarks/moe_train.py            # first: build/moe/charlm-topk.onnx and data.npz
    python benchmarks/moe_int8.py [--seconds 30] [--drop 2]

Variants, each fused as onnxruntime runs it best (``tune.measure.fuse``, the same options for all): fp32
(the top-2 original, the TorchScript export), int8 and int8_first (``quantize_dynamic`` per channel, QInt8,
weights rounded to nearest: fused then quantized, and quantized then fused), ``moe=phi:DROP`` (calibrated on
the calibration windows, as ``moe_quality.py`` rewrites it) and ``moe=phi:DROP`` + ``--quantize int8``
(n6onnx's int8 stage with its default fit on the same windows; the MoE op's experts stay float). Quality:
mean next-character cross-entropy, accuracy and top-1 agreement with the original over every position of the
held-out evaluation windows (``moe_quality.evaluate``). Timing and estimated energy: interleaved blocks of
one evaluation batch (16 x 64), order rotated each round, 2 threads, the n6 library registered
(``_sidebyside.side_by_side``); ratios are per-round block medians with their spread. Writes
benchmarks/results/moe_int8.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402

from _common import write  # noqa: E402
from _sidebyside import int8_anchor, int8_variants, side_by_side  # noqa: E402
from moe_quality import evaluate, load_trained  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=pathlib.Path, default=ROOT / "build" / "moe")
    ap.add_argument("--drop", type=int, default=2, help="moe=phi:DROP, sub-experts dropped per token")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    ap.add_argument("--conditions", default="shared 2-core machine: timing is noisy")
    ap.add_argument("--name", default="moe_int8")
    a = ap.parse_args()
    d = a.dir
    loaded = load_trained(d)
    if loaded is None:
        return 2
    orig, cal_w, ev_w, calib = loaded

    work = d / "int8"
    work.mkdir(parents=True, exist_ok=True)
    cfg = SessionConfig("cpu", 0, a.threads)
    variants, fuse, fusion = int8_variants(orig, cfg, work)
    opt = f"phi:{a.drop}"
    reports = {}
    for label, quant in ((f"moe={opt}", None), (f"moe={opt} + --quantize int8", "int8")):
        out = work / f"{label.replace(' + --quantize ', '-').replace('=', '-').replace(':', '-')}.onnx"
        _, rep = n6onnx.rewrite(orig, out, [f"moe={opt}"], calibrate=calib, calib_samples=len(cal_w), quantize=quant)
        reports[label] = {"rewritten": rep.rewritten,
                          "quantization": None if rep.quantization is None else rep.quantization.to_json()}
        variants[label] = fuse(out)

    quality, base = {}, None
    for name, path in variants.items():
        ev, used_lib = evaluate(path, ev_w)
        base = base or ev
        quality[name] = {"eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"],
                         "eval_loss_change_pct": 100 * (ev["loss"] / base["loss"] - 1),
                         "eval_accuracy_change_pct": 100 * (ev["accuracy"] / base["accuracy"] - 1),
                         "top1_agreement_with_original": float((ev["preds"] == base["preds"]).mean()),
                         "positions": ev["positions"], "n6_library": used_lib}
        print(f"{name:34s} loss {ev['loss']:.4f} acc {ev['accuracy']:.4f} "
              f"top-1 {quality[name]['top1_agreement_with_original']:.4f}", flush=True)
    feed = {"input_ids": np.ascontiguousarray(ev_w[:16, :-1])}
    sbs = side_by_side(variants, orig, None, threads=a.threads, dims={}, seconds=a.seconds, feed=feed)
    runs = sbs["variants"]
    anchor = int8_anchor(runs)
    for name, r in runs.items():
        quality[name].update({"speedup_vs_fp32": r["speedup_vs_fp32"], f"speedup_vs_{anchor}": r.get(f"speedup_vs_{anchor}"),
                              "energy": r["energy"]})
        vs = r.get(f"speedup_vs_{anchor}")
        print(f"{name:34s} x{r['speedup_vs_fp32']['median']:.2f} fp32" + (f", x{vs['median']:.2f} {anchor}" if vs else ""))
    out = write(a.name, {
        "benchmark": "moe_int8", "model": "character-level MoE LM trained by benchmarks/moe_train.py (top-2, 8 experts)",
        "onnx": str(orig.relative_to(ROOT)), "threads": a.threads, "fusion": fusion, "conditions": a.conditions,
        "anchor": anchor, "method": __doc__.split("\n\n")[2].replace("\n", " "),
        "evaluation_positions": base["positions"], "rewrites": reports, "table": quality, "side_by_side": sbs})
    print(f"anchor: {anchor}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
