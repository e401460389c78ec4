"""int8 / int4 on all-MiniLM-L6-v2 and on its calibrated gelu=phi6 rewrite (issue 17): held-out
fidelity and CPU latency, against ORT running the original.

Variants: the fp32 original (the latency baseline: ORT's transformer fusions), onnxruntime's stock
quantize_dynamic of the original (per tensor, per channel) and its int4 (MatMulNBits, block 32);
calibrated gelu=phi6 before the int8 fix (no centring, no balance: the collapse), with the per-channel int8
guard (centring + balance: what `rewrite --quantize int8` calibrates), and with the per-tensor guard (the
default without --quantize: centring + balance + equal W1 column ranges with the gain in a Mul + outlier units
in a detour FFN: n6onnx.calibrate.quantfit / outliers), each in float, with stock per-tensor and per-channel
int8, and through n6onnx's int8 stage (quantize_dynamic per channel; --quantize-fit none);
ffn=phi-bottleneck:4/3 + --quantize int8.

Fidelity: n6onnx validate, mean-pooled embedding cosine and nearest-neighbour agreement over 255
held-out corpus sentences (1000..1254; calibration uses sentences 0..254), batch 8 x 64, on the
dynamic-axes dynamo export. Latency: n6onnx bench, 2 threads, interleaved blocks against the
original, median and spread. Writes benchmarks/results/quantize_minilm.json.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx import calibrate as cal  # noqa: E402
from n6onnx.quantize import kernel  # noqa: E402
from n6onnx import quantize as Q  # noqa: E402

from _common import minilm_split, write  # noqa: E402

DIMS = ["batch=8", "seq=64"]


def stock(src: pathlib.Path, dst: pathlib.Path, per_channel: bool) -> pathlib.Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def carry_split(carry: pathlib.Path, work: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """The model, calibration feeds and held-out feeds of a heal_carry.py folder (its float32 model restored there
    if needed, as heal_gpu.sh restores it)."""
    import numpy as np

    from heal_carry import restore

    missing = [n for n in ("data.npz", "held.npz", "minilm16.onnx") if not (carry / n).is_file()]
    if missing:
        raise SystemExit(f"--carry {carry}: no {', '.join(missing)} (python benchmarks/heal_carry.py pack {carry})")
    if not (carry / "minilm.onnx").is_file():
        restore(carry)
    work.mkdir(parents=True, exist_ok=True)
    d = np.load(carry / "data.npz")
    calib = work / "calib.npz"
    np.savez(calib, **{k: d[k] for k in d.files if int(k.rsplit("/", 1)[1]) < 32})
    return carry / "minilm.onnx", calib, carry / "held.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-seconds", type=float, default=4.0, help="per model in each bench (0: no timing)")
    ap.add_argument("--note", default="shared 2-core machine, ~7 developers working: timing is noisy",
                    help="what the timing was taken on")
    ap.add_argument("--name", default="quantize_minilm", help="benchmarks/results/NAME.json")
    ap.add_argument("--carry", type=pathlib.Path, help="a heal_carry.py folder instead of the packaged model and "
                    "text (a host without them): its model, the first 32 batches of its data.npz (256 sentences) "
                    "to calibrate, its held.npz (256 held-out sentences) to validate")
    args = ap.parse_args()
    work = ROOT / "build" / "quantize"
    if args.carry:
        src, calib, held = carry_split(args.carry, work)
        dims, held_kw = None, {"feeds": str(held)}
    else:
        src, calib, held = minilm_split(work)
        dims, held_kw = n6onnx.feeds.parse_dims(DIMS), {"text": held, "dims": DIMS}
    rows = []

    def row(label: str, path: pathlib.Path, timed: bool = True, **extra) -> None:
        r = n6onnx.validate(src, path, threads=2, **held_kw).to_json()
        e = r["outputs"]["last_hidden_state"]["embedding"]
        out = {"variant": label, "cosine_mean": e["cosine_mean"], "cosine_min": e["cosine_min"],
               "nn_agreement": e["nn_agreement"], "size_mb": round(path.stat().st_size / 2**20, 1), **extra}
        if args.bench_seconds > 0 and timed:
            b = n6onnx.bench(path, src, threads=2, seconds=args.bench_seconds, window=2.0, dims=dims and DIMS).to_json()
            out.update(latency_ms=b["latency_ms"], baseline_latency_ms=b["baseline"]["latency_ms"],
                       latency_ratio=b["ratio"]["latency_p50"])
        rows.append(out)
        print(f"{label:55s} cos {out['cosine_mean']:.4f} nn {out['nn_agreement']:.3f} "
              f"ratio {out.get('latency_ratio')}", flush=True)

    row("fp32 original", src)  # its latency ratio: the original against its own fused version
    row("original + stock int8 per tensor", stock(src, work / "orig_pt.onnx", False), timed=False)
    row("original + stock int8 per channel", stock(src, work / "orig_pc.onnx", True))
    Q.quantize(src, work / "orig_int4.onnx", "int4")
    row("original + int4 (MatMulNBits, block 32)", work / "orig_int4.onnx")

    # orient=False: each centred unit as the fit leaves it, without the sign that puts its longer tail positive
    # (calibrate.quantfit.orientation: x86 without VNNI clips pairs of high uint8 bytes)
    for tag, kw, guard, slug in (("before fix", {"centre": False, "balance": None}, "per-tensor", "old"),
                                 ("per-channel guard, unoriented", {"orient": False}, "per-channel", "unoriented"),
                                 ("per-tensor guard, unoriented", {"orient": False}, "per-tensor", "unoriented"),
                                 ("per-channel guard: centre + balance", {}, "per-channel", "fix"),
                                 ("per-tensor guard: + W1 gain Mul + outlier detour", {}, "per-tensor", "fix")):
        saved = dict(cal.calibrate_swap.__kwdefaults__)
        cal.calibrate_swap.__kwdefaults__.update(kw)
        try:
            f = work / f"phi6_{guard}_{slug}.onnx"
            n6onnx.rewrite(src, f, ["gelu=phi6"], calibrate=calib, dims=dims, int8_guard=guard)
        finally:
            cal.calibrate_swap.__kwdefaults__.update(saved)
        # the --quantize int8 stage on the calibrated float model (``rewrite --quantize int8`` runs it last, on
        # the per-channel guard's float model)
        q = work / f"{f.stem}_q.onnx"
        Q.quantize(f, q, "int8")
        timed = slug == "fix"
        row(f"calibrated gelu=phi6 ({tag}), float", f, timed=timed and guard == "per-tensor")
        row(f"calibrated gelu=phi6 ({tag}) + stock int8 per tensor", stock(f, work / "phi6_pt.onnx", False), timed=False)
        row(f"calibrated gelu=phi6 ({tag}) + stock int8 per channel", stock(f, work / "phi6_pc.onnx", True), timed=False)
        row(f"calibrated gelu=phi6 ({tag}) + n6onnx's int8 stage (quantize_dynamic per channel)", q, timed=timed,
            int8_guard=guard)
    b = work / "bottleneck_q.onnx"
    n6onnx.rewrite(src, b, ["ffn=phi-bottleneck:4/3"], calibrate=calib, dims=dims, quantize="int8")
    row("ffn=phi-bottleneck:4/3 (calibrated) + --quantize int8", b)

    write(args.name, {
        "benchmark": args.name,
        "method": ("all-MiniLM-L6-v2, torch dynamo export with dynamic axes (opset 20), run at batch 8 x 64; "
                   + ("calibration = the carry's first 256 DATA sentences; fidelity = n6onnx validate on its 256 "
                      "held-out sentences (1000..1255), against ORT running its fp16-rounded float32 model: "
                      if args.carry else "calibration = corpus sentences 0..254; fidelity = n6onnx validate on 255 "
                      "held-out sentences (1000..1254): ")
                   + "mean-pooled embedding cosine against ORT running the fp32 original, nearest-neighbour "
                   "agreement; stock = onnxruntime.quantization.quantize_dynamic (QInt8 weights, MatMul/"
                   "Gemm); --quantize int8 = n6onnx's stage (quantize_dynamic per channel); latency = n6onnx bench, "
                   f"CPU 2 threads, interleaved blocks against the original with ORT's fusions, {args.bench_seconds} s "
                   f"per model, median and quartiles. Timing taken on: {args.note}."),
        "int8_kernel": "pair sums clipped to int16 (x86 without VNNI)" if kernel.pairs_saturate() else "exact",
        "goals": {"phi6 + stock int8 (per tensor and per channel) cosine": 0.98, "phi6 + --quantize int8 cosine": 0.985,
                  "phi6 float cosine": 0.989},
        "rows": rows,
    })


if __name__ == "__main__":
    main()
