"""8-bit weights in MatMulNBits against the anchor, onnxruntime's dynamic per-channel int8, on this CPU:
all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20), batch 8 x 64, side by side in one run.

    python benchmarks/quantize_nbits8.py [--threads 2] [--seconds 20]
    python benchmarks/quantize_nbits8.py --model CARRY/minilm.onnx --held CARRY/held.npz   # another machine

Why: dynamic int8 rounds each MatMul's input on one uint8 grid per tensor, and that rounding is most of
int8's fidelity loss on MiniLM (``int8_error_sources.py``). onnxruntime's MatMulNBits with ``bits=8`` and
accuracy level 4 rounds its input per row in blocks of BLOCK along K on the CPU (int8 compute), with int8
weights per column and block, so it should lose far less; the question is its speed on this CPU's kernels.

Variants: fp32 (the original fused as onnxruntime runs it best, ``tune.measure.fuse``), int8 and
int8_first (n6onnx's stock ``--quantize int8 --quantize-fit none``: ``quantize_dynamic`` per channel, fused
then quantized and quantized then fused), and ``MatMulNBitsQuantizer(bits=8, block_size=B, is_symmetric,
accuracy_level=4)`` of the original, then fused (``nbits8:B``; symmetric and asymmetric). Fidelity: the
held-out feeds (``--held``: ``NAME/K`` batches of 8 x 64, as ``heal_carry.py pack`` writes them; default:
corpus sentences 1000..1255 tokenized here) through each variant on this CPU, mean-pooled
``last_hidden_state`` cosine and nearest-neighbour agreement against the unfused fp32 original
(``validate.metrics``). Timing and estimated energy: ``_sidebyside.side_by_side``, interleaved blocks, order
rotated each round, the same session options and threads for all. Writes
benchmarks/results/quantize_nbits8_<amx|vnni|avx2>.json (``--name``), and a copy under ``--copy-to``.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from n6onnx.bench.session import SessionConfig  # noqa: E402
from n6onnx.runtime import InferenceSession  # noqa: E402
from n6onnx.validate import metrics  # noqa: E402

from _common import cpu_info, hardware, minilm_split, side_parser, write  # noqa: E402
from _sidebyside import int8_anchor, int8_variants, side_by_side  # noqa: E402

DIMS = {"batch": 8, "seq": 64}


def held_batches(path: pathlib.Path | None, work: pathlib.Path, src: pathlib.Path) -> list[dict]:
    if path is None:  # corpus sentences 1000..1255 through the model's tokenizer (needs the packaged MiniLM)
        from n6onnx import calibrate as cal

        _, _, held = minilm_split(work, 256, 256)
        return [dict(b) for b in cal.load_batches(str(held), onnx.load(str(src), load_external_data=False),
                                                  dims=DIMS)]
    d = np.load(path)
    names = sorted({k.split("/")[0] for k in d.files})
    if not {"input_ids", "attention_mask"} <= set(names):
        raise SystemExit(f"{path}: expected input_ids/K and attention_mask/K batches, found {names}")
    count = len(d.files) // len(names)
    return [{n: d[f"{n}/{k}"] for n in names} for k in range(count)]


def embeddings(path: pathlib.Path, batches: list[dict], threads: int) -> np.ndarray:
    sess = InferenceSession(str(path), threads=threads)
    wanted = {i.name for i in sess.get_inputs()}
    out = []
    for b in batches:
        h = sess.run(["last_hidden_state"], {k: v for k, v in b.items() if k in wanted})[0]
        out.append(metrics.mean_pool(h, b["attention_mask"]))
    return np.concatenate(out)


def nbits8(src: pathlib.Path, dst: pathlib.Path, block: int, symmetric: bool) -> pathlib.Path:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    mq = MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=block, is_symmetric=symmetric,
                              accuracy_level=4, op_types_to_quantize=("MatMul",))
    mq.process()
    onnx.save(mq.model.model, str(dst))
    return dst


def main() -> None:
    ap = side_parser(__doc__, "quantize_nbits8", "")
    ap.add_argument("--model", type=pathlib.Path, help="the MiniLM export (default: the zoo's dynamic dynamo20)")
    ap.add_argument("--held", type=pathlib.Path, help="held-out feeds, NAME/K batches (default: corpus 1000..1255)")
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per variant")
    ap.add_argument("--blocks", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--copy-to", type=pathlib.Path, help="also copy the result file here")
    a = ap.parse_args()
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    src = a.model or minilm_split(work, 256, 256)[0]
    batches = held_batches(a.held, work, src)
    cfg = SessionConfig("cpu", 0, a.threads)
    variants, fuse, fusion = int8_variants(src, cfg, work)
    for block in a.blocks:
        for sym in (True, False):
            tag = f"nbits8:{block}{'' if sym else ':asym'}"
            variants[tag] = fuse(nbits8(src, work / f"nbits8-{block}-{'sym' if sym else 'asym'}.onnx", block, sym))
    ref = embeddings(src, batches, a.threads)
    fidelity = {}
    for name, path in variants.items():
        e = embeddings(path, batches, a.threads)
        fidelity[name] = {"cosine": float(metrics.cosine_rows(ref, e).mean()), "nn": metrics.nn_agreement(ref, e),
                          "samples": int(len(e))}
        print(f"{name:18s} cos {fidelity[name]['cosine']:.4f} NN {fidelity[name]['nn']:.3f}", flush=True)
    sbs = side_by_side(variants, src, None, threads=a.threads, dims=DIMS, seconds=a.seconds, feed=dict(batches[0]))
    for name, r in sbs["variants"].items():
        r["fidelity"] = fidelity[name]
    runs = sbs["variants"]
    anchor = int8_anchor(runs)
    flags = cpu_info()[1]
    name = a.name or "quantize_nbits8_" + ("amx" if "amx_int8" in flags else "vnni" if {"avx512_vnni", "avx_vnni"} & flags
                                           else "avx2")
    out = write(name, {"benchmark": "quantize_nbits8", "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20",
                       "dims": DIMS, "threads": a.threads, "fusion": fusion, "conditions": a.conditions,
                       "anchor": anchor, "held_out_samples": len(ref), "method": __doc__.split("\n\n")[3].replace("\n", " "),
                       "side_by_side": sbs})
    for n, r in runs.items():
        vs = r.get(f"speedup_vs_{anchor}")
        print(f"{n:18s} cos {r['fidelity']['cosine']:.4f} NN {r['fidelity']['nn']:.3f} "
              f"x{r['speedup_vs_fp32']['median']:.2f} fp32" + (f", x{vs['median']:.2f} {anchor}" if vs else ""))
    print(f"anchor {anchor}; {hardware()['cpu']}; wrote {out}")
    if a.copy_to:
        a.copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, a.copy_to / out.name)


if __name__ == "__main__":
    main()
