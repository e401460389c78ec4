"""The combined claim ("60-70% less inference energy per token" for the n6 techniques together),
measured end to end: several passes in one model, plus int8, against ORT's best fp32 original and
against int8 alone, side by side in one run, with held-out fidelity.

    python benchmarks/combined.py                                   # CPU, 2 threads (energy: estimated)
    python benchmarks/combined.py --from-tune                       # the recipe tune_minilm.json chose
    python benchmarks/combined.py --prepare-gpu build/gpu-combined  # CPU machine: weightless graphs to carry
    bash benchmarks/gpu_combined.sh                                 # GPU machine: NVML energy (measured)

Variants: fp32 (the original fused as ORT runs it best), int8 (that, quantized dynamic per channel) and
int8_first (the export quantized, then fused), passes (the rewrite, fused, fp32), combined (the rewrite,
fused, then int8) and combined_first (quantized, then fused). The verdict takes the cheaper of each pair. On cuda int8 is off
by default (onnxruntime's dynamic int8 ops are CPU ops: --quantize int8 measures the fallback); the
GPU's low-precision stages are ``--quantize fp16`` (the fused graph converted by onnxruntime.transformers'
float16 converter, inputs and outputs kept float32: one order, as ORT's optimizer flow does it) and
``--quantize int4`` (MatMulNBits, block 32, which has a CUDA kernel; both orders). The reduced-precision
variants are named after the mode (fp16, int4, int4_first); ``--name`` sets the result file.
``--heal-minutes M`` adds combined_healed: the rewrite healed on the calibration sentences against the
quantized path (``rewrite --quantize MODE --heal``: fake quantization), quantized, then fused; the
verdict reports it beside the unhealed pick (same graph as combined_first, healed weights).
Calibration: corpus sentences 0..999; fidelity: sentences 1000..1255. Writes
benchmarks/results/combined_<provider>.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx.testing import corpus, zoo  # noqa: E402
from n6onnx.bench.session import SessionConfig  # noqa: E402
from n6onnx.tune import measure, stages  # noqa: E402

from _common import RESULTS, check_passes, write  # noqa: E402
from _sidebyside import side_by_side  # noqa: E402

sys.path.insert(0, str(ROOT / "tools"))
import weightless  # noqa: E402

DEFAULT_PASSES = "block=drop:1,attention=drop:1,ffn=phi-bottleneck:3"
CLAIM = "60-70% less inference energy per token (the n6 techniques combined)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--original", type=pathlib.Path, help="an exported MiniLM (default: the zoo's dynamic dynamo20)")
    ap.add_argument("--passes", default=DEFAULT_PASSES, help="comma-separated passes")
    ap.add_argument("--from-tune", action="store_true", help="use the recipe in results/tune_minilm.json")
    ap.add_argument("--quantize", choices=["int8", "int4", "fp16", "none"], help="default: int8 on cpu, none on cuda")
    ap.add_argument("--name", help="result file stem (default combined_<provider>)")
    ap.add_argument("--heal-minutes", type=float, default=0.0,
                    help="also the rewrite healed on the calibration sentences for this long, against the --quantize "
                         "path (fake quantization), then quantized, then fused: variant combined_healed (0: off)")
    ap.add_argument("--threads", type=int, help="default: 2 on cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=30.0, help="timed seconds per variant")
    ap.add_argument("--block-seconds", type=float, default=5.0, help="block = energy window (NVML: >= 5 s)")
    ap.add_argument("--sentences", type=pathlib.Path,
                    help="the corpus, one sentence a line (default: n6onnx.testing.corpus, which depends on the "
                         "Python version: carry this machine's to another so both calibrate and hold out the same)")
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "build" / "combined")
    ap.add_argument("--conditions", default="", help="machine load during the run (recorded)")
    ap.add_argument("--prepare-gpu", type=pathlib.Path, metavar="DIR",
                    help="CPU machine: rewrite with the real weights, write DIR/{original,rewritten}.weightless.onnx "
                         "and DIR/recipe.json for benchmarks/gpu_combined.sh, and stop")
    ap.add_argument("--rewritten", type=pathlib.Path, help="use this rewrite of --original (no rewrite here)")
    ap.add_argument("--weights-regrown", action="store_true",
                    help="the models carry regrown random weights (tools/weightless.py): no fidelity here; it is "
                         "the CPU run's (combined_cpu.json), same recipe")
    args = ap.parse_args()

    quant = args.quantize or ("int8" if args.provider == "cpu" else "none")
    threads = args.threads if args.threads is not None else (2 if args.provider == "cpu" else None)
    check_passes(ap, [args.passes], sep=",")
    passes = args.passes.split(",")
    if args.from_tune:
        chosen = json.loads((RESULTS / "tune_minilm.json").read_text())["tune"]["chosen"]
        if not chosen:
            ap.error("tune_minilm.json has no chosen recipe")
        passes, quant = chosen["passes"], chosen["quantize"] or "none"
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = args.original or zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    s = args.sentences.read_text().splitlines() if args.sentences else corpus.sentences()
    calib, held = work / "calib.txt", work / "heldout.txt"
    calib.write_text("\n".join(s[:1000]) + "\n")
    held.write_text("\n".join(s[1000:1256]) + "\n")
    dims = {"batch": args.batch, "seq": args.seq}
    cfg = SessionConfig(args.provider, 0, threads)

    if args.rewritten is not None:
        rewritten, rw_summary = args.rewritten, {"given": str(args.rewritten)}
    else:
        rewritten = work / "passes-unfused.onnx"
        _, rw = n6onnx.rewrite(src, rewritten, passes, calibrate=calib, dims=dims)
        rw_summary = rw.rewritten
    if args.prepare_gpu is not None:
        d = args.prepare_gpu
        d.mkdir(parents=True, exist_ok=True)
        weightless.strip(str(src), str(d / "original.weightless.onnx"))
        weightless.strip(str(rewritten), str(d / "rewritten.weightless.onnx"))
        (d / "recipe.json").write_text(json.dumps({"passes": passes, "quantize": quant, "rewritten": rw_summary,
                                                   "calibration": "corpus sentences 0..999"}, indent=2, default=str))
        print(f"wrote {d}: carry it to the GPU machine and run benchmarks/gpu_combined.sh")
        return
    fp32, base_fusion, kw = measure.fuse(src, cfg, work / "fused")
    passes_fused, cand_fusion, _ = measure.fuse(rewritten, cfg, work / "fused", kw)
    variants = {"fp32": fp32}

    def fuse(p):
        return measure.fuse(p, cfg, work / "fused", kw)[0]

    # int8 in both graph orders (as tune's references): fused, then quantized (a fused attention keeps its
    # projections float) and quantized, then fused (every MatMul int8); the rewrite likewise
    if quant != "none":
        q = _reduced(src, fp32, fuse, work, quant, quant)
        variants[quant] = q[stages.FUSED_FIRST]
        if stages.QUANTIZED_FIRST in q:
            variants[f"{quant}_first"] = q[stages.QUANTIZED_FIRST]
    variants["passes"] = passes_fused
    if quant != "none":
        q = _reduced(rewritten, passes_fused, fuse, work, quant, "combined")
        variants["combined"] = q[stages.FUSED_FIRST]
        if stages.QUANTIZED_FIRST in q:
            variants["combined_first"] = q[stages.QUANTIZED_FIRST]
    healing = None
    if args.heal_minutes > 0 and quant != "none" and args.rewritten is None:
        from n6onnx.heal.train import HealConfig

        healed = work / "combined-healed-quantized.onnx"  # rewrite, calibrate, heal, quantize: quantized first
        _, hrep = n6onnx.rewrite(src, healed, passes, calibrate=calib, dims=dims, quantize=quant, heal=True,
                                 heal_config=HealConfig(minutes=args.heal_minutes, threads=threads))
        variants["combined_healed"] = fuse(healed)
        healing = {k: v for k, v in hrep.healing.to_json().items() if k != "curve"}
    sbs = side_by_side(variants, src, None if args.weights_regrown else held, threads=threads, dims=dims, provider=args.provider,
                       seconds=args.seconds, block_seconds=args.block_seconds)
    runs = sbs["variants"]
    primary = next(iter(runs["fp32"]["energy"]), None)

    def cost(k: str) -> float:  # the lower the better: energy on the primary meter, else latency
        return runs[k]["energy"][primary]["mj_per_inference"]["median"] if primary else runs[k]["latency_ms"]["median"]

    best = min((k for k in ("combined", "combined_first") if k in variants), key=cost, default="passes")  # unhealed
    ref = min((k for k in (quant, f"{quant}_first") if k in variants), key=cost, default=None)
    v = runs[best]
    verdict = {"claim": CLAIM, "variant": best, "passes": passes, "quantize": quant, "meter": primary,
               "int8_reference": ref, "reference_label": f"{quant} alone"}
    if primary is not None:
        e = {k: runs[k]["energy"][primary]["mj_per_inference"]["median"] for k in variants}
        verdict["energy_mj_per_inference"] = e
        verdict["method"] = v["energy"][primary]["method"]
        verdict["energy_saving_vs_fp32"] = 1 - e[best] / e["fp32"]
        if ref is not None:
            verdict["energy_saving_vs_int8"] = 1 - e[best] / e[ref]
        verdict["claim_met"] = verdict["energy_saving_vs_fp32"] >= 0.60
    verdict["fidelity"] = v["fidelity"]
    if "combined_healed" in variants:  # the same recipe healed: its own energy and fidelity beside the verdict's
        h = runs["combined_healed"]
        verdict["healed"] = {"variant": "combined_healed", "fidelity": h["fidelity"], "healing": healing,
                             "speedup_vs_fp32": h["speedup_vs_fp32"]}
        if primary is not None:
            verdict["healed"]["energy_saving_vs_fp32"] = 1 - e["combined_healed"] / e["fp32"]
            if ref is not None:
                verdict["healed"]["energy_saving_vs_int8"] = 1 - e["combined_healed"] / e[ref]
    if args.weights_regrown:
        verdict["fidelity_note"] = ("not measured on this run (regrown random weights, tools/weightless.py): the "
                                    "same recipe's held-out fidelity is in combined_cpu.json")
    out = write(args.name or f"combined_{args.provider}", {
        "benchmark": "combined", "model": "all-MiniLM-L6-v2", "original": str(src), "dims": dims, "threads": threads,
        "conditions": args.conditions, "rewritten": rw_summary, "weights_regrown": args.weights_regrown, "fusion": {"fp32": base_fusion, "passes": cand_fusion},
        "calibration": "corpus sentences 0..999", "heldout": "corpus sentences 1000..1255",
        "side_by_side": sbs, "verdict": verdict})
    for name, r in sbs["variants"].items():
        f = r["fidelity"] or {}
        en = r["energy"].get(primary, {}).get("mj_per_inference", {}).get("median") if primary else None
        print(f"{name:8s} cos {f.get('cosine') or float('nan'):.4f} NN {f.get('nn') or float('nan'):.3f} "
              f"p50 {r['latency_ms']['median']:.2f} ms x{r['speedup_vs_fp32']['median']:.2f} vs fp32 "
              f"energy {en if en is None else round(en, 2)} mJ/inf ({primary})")
    print(verdict)
    print(f"wrote {out}")


def _reduced(src: pathlib.Path, fused: pathlib.Path, fuse, work: pathlib.Path, quant: str, stem: str) -> dict:
    """``src`` at reduced precision: int8 and int4 in both graph orders (tune's references), fp16 as ORT's
    optimizer flow makes it (fuse, then convert; inputs and outputs stay float32)."""
    if quant == "int8":
        return stages.quantize_both_orders(src, fused, fuse, work, quant, stem)
    if quant == "int4":
        a, b = work / f"{stem}-int4-fused-first.onnx", work / f"{stem}-int4-quantized-first.onnx"
        from n6onnx.quantize import quantize

        quantize(fused, a, "int4")
        quantize(src, b, "int4")
        return {stages.FUSED_FIRST: a, stages.QUANTIZED_FIRST: fuse(b)}
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = work / f"{stem}-fp16.onnx"
    m = convert_float_to_float16(onnx.load(str(fused)), keep_io_types=True)
    onnx.save(m, str(out))
    return {stages.FUSED_FIRST: out}


if __name__ == "__main__":
    main()
