"""Quantization-aware calibration for `--quantize int8` and `--quantize int4` (issue 17, n6onnx.quantize.qfit): held-out fidelity
of all-MiniLM-L6-v2 and its calibrated rewrites under --quantize int8 (or --mode int4[:BLOCK]) with each --quantize-fit method.

Recipes: the original alone (no pass), gelu=phi6, ffn=phi-bottleneck:4/3, attention=fftmix:2, each
calibrated on sentences 0..254 (as `rewrite --calibrate` does), then --quantize int8 with
--quantize-fit none (onnxruntime rounds to nearest: stock per-channel quantize_dynamic, for the original
exactly ORT's own int8), gptq (GPTQ rounding on the int8 path's inputs) and refit (ridge refit on the
int8 path, then GPTQ). A gelu swap is calibrated with --int8-guard (default per-channel: what `rewrite
--quantize int8 --calibrate` does where the fit runs; its `none` rows are then that graph under onnxruntime's
rounding, while `rewrite --quantize-fit none` itself calibrates per-tensor; per-tensor: the rows before). The fit runs on the finished float model, as in `rewrite` (api.rewrite calls the
same qfit.fit_quantized on the same batches). Fidelity: n6onnx validate on 255 held-out sentences
(1000..1254), batch 8 x 64, mean-pooled embedding cosine and nearest-neighbour agreement against ORT
running the fp32 original. No timing: the fit changes weight values only (the graph is the same).
Writes benchmarks/results/quantize_fit_minilm.json.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx import calibrate as cal  # noqa: E402
from n6onnx import io  # noqa: E402
from n6onnx import quantize as Q  # noqa: E402
from n6onnx.quantize import qfit  # noqa: E402

from _common import minilm_split, write  # noqa: E402

DIMS = ["batch=8", "seq=64"]
RECIPES = {"original (no pass)": [], "gelu=phi6": ["gelu=phi6"], "ffn=phi-bottleneck:4/3": ["ffn=phi-bottleneck:4/3"],
           "attention=fftmix:2": ["attention=fftmix:2"]}


def save(rows: list, complete: bool, name: str = "quantize_fit_minilm", held: int = 255, mode: str = "int8",
         calib: int = 255) -> None:
    """Written after every row (a partial run keeps what it measured; ``complete`` says whether it finished)."""
    write(name, {
        "complete": complete,
        "benchmark": "quantize_fit_minilm",
        "mode": mode,
        "method": ("all-MiniLM-L6-v2, torch dynamo export with dynamic axes (opset 20), batch 8 x 64; calibration "
                   f"= the first {calib} corpus sentences outside the held-out range (the passes' calibration and the int8 fit); "
                   "fidelity = n6onnx "
                   f"validate on {held} held-out sentences (1000..{999 + held}): mean-pooled embedding cosine against ORT "
                   "running the fp32 original, nearest-neighbour agreement. quantize_fit none = onnxruntime's "
                   "quantize_dynamic per channel (QInt8) of the float model (for the original: stock ORT int8); "
                   "gptq / refit = n6onnx.quantize.qfit before the same quantize_dynamic (rounded for this CPU's int8 kernel, "
                   "hardware.int8_kernel; METHOD:exact / METHOD:saturating for the one named); exact_kernel = the same "
                   "int8 model validated with --int8-kernel exact (its products as VNNI, AMX or ARM compute them). "
                   "One run, deterministic "
                   f"(no timing). Mode {mode}" + (": MatMulNBits (weight-only 4-bit blocks) instead of quantize_dynamic, "
                   "none = its round to nearest, the fit onto its block grid" if mode.startswith("int4") else "") + "."),
        "rows": rows,
    })



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), help="which recipes (default: all)")
    ap.add_argument("--fits", nargs="*", default=["none", "gptq", "refit"], help="which --quantize-fit methods (METHOD:unrounded: "
                    "the fit's rows without the activation's uint8 rounding; METHOD:exact or METHOD:saturating: rounded for that int8 "
                    "kernel instead of this CPU's; with --mode int4 also ort-gptq and "
                    "ort-gptq:group, onnxruntime's own GPTQ for MatMulNBits, per channel or per block)")
    ap.add_argument("--held", type=int, default=255,
                    help="held-out sentences 1000..1000+N-1 (at most 1803: NN agreement's noise shrinks with N)")
    ap.add_argument("--name", default="quantize_fit_minilm", help="result file name")
    ap.add_argument("--calib", type=int, default=255,
                    help="calibration sentences: the first N of the corpus outside the held-out range (the passes' "
                    "calibration, with --calib-samples N, and the int8 fit)")
    ap.add_argument("--mode", default="int8", help="--quantize mode fitted: int8 or int4[:BLOCK]")
    ap.add_argument("--int8-guard", default="per-channel", choices=["per-channel", "per-tensor"],
                    help="the calibration's int8 guard (per-channel: what rewrite --quantize int8 does where "
                    "the int8 fit runs)")
    args = ap.parse_args()
    work = ROOT / "build" / "quantize_fit"
    src, calib, held = minilm_split(work / (f"calib{args.calib}" if args.calib != 255 else "."), args.calib, args.held)
    dims = n6onnx.feeds.parse_dims(DIMS)
    rows = []

    def embedding(path: pathlib.Path, int8_kernel: str = "auto") -> dict:
        r = n6onnx.validate(src, path, text=held, threads=2, dims=DIMS, int8_kernel=int8_kernel).to_json()
        return r["outputs"]["last_hidden_state"]["embedding"]

    def row(recipe: str, fit: str, path: pathlib.Path, **extra) -> None:
        e = embedding(path)
        if fit != "float" and args.mode == "int8":  # the same model where int8 products are exact (VNNI, AMX, ARM)
            x = embedding(path, "exact")
            extra["exact_kernel"] = {"cosine_mean": x["cosine_mean"], "cosine_min": x["cosine_min"],
                                     "nn_agreement": x["nn_agreement"]}
        rows.append({"recipe": recipe, "quantize_fit": fit, "int8_guard": args.int8_guard, "cosine_mean": e["cosine_mean"],
                     "cosine_min": e["cosine_min"], "nn_agreement": e["nn_agreement"], **extra})
        save(rows, False, args.name, args.held, args.mode, args.calib)
        print(f"{recipe:28s} {fit:6s} cos {e['cosine_mean']:.4f} nn {e['nn_agreement']:.3f} {extra}", flush=True)

    for recipe in args.recipes:
        tag = recipe.split()[0].replace("=", "_").replace(":", "_").replace("/", "_")
        f = work / f"{tag}_float.onnx"
        if RECIPES[recipe]:
            n6onnx.rewrite(src, f, RECIPES[recipe], calibrate=calib, dims=dims, int8_guard=args.int8_guard,
                           calib_samples=max(args.calib, 256))
            row(recipe, "float", f)
        else:
            f = pathlib.Path(src)
        proto = io.load_proto(f)
        batches = cal.load_batches(str(calib), proto, dims=dims)
        for fit in args.fits:
            q = work / f"{tag}_{fit}.onnx"
            t0, rep = time.perf_counter(), None
            p = proto
            if fit.startswith("ort-gptq"):  # onnxruntime's own GPTQ for MatMulNBits (int4 only), [:group] per block
                _ort_gptq(f, q, batches, Q.parse_mode(args.mode).block, per_channel=fit == "ort-gptq")
            else:
                if fit != "none":  # METHOD[:unrounded]: the fit's rows without the activation's uint8 rounding
                    method, _, opt = fit.partition(":")
                    saturate = {"exact": False, "saturating": True}.get(opt)  # METHOD:KERNEL: round for that kernel
                    p, rep = qfit.fit_quantized(proto, batches, compensate=method == "refit",
                                                round_rows=opt != "unrounded", mode=args.mode,
                                                saturate=saturate)
                Q.quantize(p, q, args.mode)
            row(recipe, fit, q, fit_seconds=round(time.perf_counter() - t0, 1),
                **({} if rep is None else {"fit_report": rep.to_json()}))

    save(rows, True, args.name, args.held, args.mode, args.calib)


def _ort_gptq(src: pathlib.Path, dst: pathlib.Path, batches, block: int, per_channel: bool) -> None:
    """onnxruntime's MatMulNBitsQuantizer with its GPTQ config (vendored Neural Compressor code) on the same
    calibration batches, symmetric 4-bit blocks of ``block``, accuracy level 4 (as --quantize int4)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer
    from n6onnx.quantize import _Reader

    cfg = GPTQWeightOnlyQuantConfig(calibration_data_reader=_Reader([dict(b) for b in batches]),
                                    perchannel=per_channel)
    mq = MatMulNBitsQuantizer(str(src), bits=4, block_size=block, is_symmetric=True, accuracy_level=4,
                              op_types_to_quantize=("MatMul",), algo_config=cfg)
    mq.process()
    mq.model.save_model_to_file(str(dst), use_external_data_format=False)


if __name__ == "__main__":
    main()
