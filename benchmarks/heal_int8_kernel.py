"""The int8 original of all-MiniLM-L6-v2 healed under fake quantization, for each int8 kernel the student can
mirror (``--heal-int8-kernel``), measured on this CPU's onnxruntime next to the stock quantizer's int8.

Each row is ``n6onnx rewrite MODEL --quantize MODE --calibrate DATA --heal --heal-int8-kernel KERNEL`` (no pass:
the int8 original healed from its float weights), then ``n6onnx validate`` on held-out feeds that neither the
heal nor its early stopping saw. On a CPU whose u8s8 kernel clips pair sums (x86 without VNNI) ``auto`` mirrors
that clipping and ``exact`` does not, so the ``exact`` row is what a heal trained for a VNNI server gives when
it runs here; on a VNNI CPU the roles swap. ``--mode int8:static`` does the same for static QDQ int8 (its
first row: the same model quantized without a heal), whose integer MatMuls are those onnxruntime fuses into
QGemm or QLinearMatMul.

    python benchmarks/heal_int8_kernel.py --data CARRY/data.npz --held CARRY/held.npz --model CARRY/minilm.onnx
        [--mode int8] [--minutes 10] [--kernels exact,saturating] [--name heal_int8_kernel_minilm]

Each row records which kernel it mirrored and whether that is this CPU's (``matches_this_cpu``).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402
from n6onnx.feeds import load_npz  # noqa: E402
from n6onnx.heal.config import INT8_KERNELS  # noqa: E402
from n6onnx.heal.train import HealConfig  # noqa: E402
from n6onnx.quantize import kernel  # noqa: E402

from heal import DIMS, fidelity, int8_row  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=pathlib.Path, required=True, help="the float MiniLM (heal_carry.py restore)")
    ap.add_argument("--data", type=pathlib.Path, required=True, help="pre-tokenised DATA (.npz), 8 x 64")
    ap.add_argument("--held", type=pathlib.Path, required=True, help="pre-tokenised held-out feeds (.npz)")
    ap.add_argument("--minutes", type=float, default=10.0, help="heal budget per row")
    ap.add_argument("--kernels", default="exact,saturating", help="comma-separated, of " + "/".join(INT8_KERNELS))
    ap.add_argument("--mode", default="int8", choices=["int8", "int8:static"], help="--quantize of every row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="heal_int8_kernel_minilm", help="benchmarks/results/NAME.json")
    ap.add_argument("--note", default="", help="where and how this ran")
    a = ap.parse_args()
    kernels = [k.strip() for k in a.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in INT8_KERNELS]
    if bad or not kernels:
        ap.error(f"--kernels: {', '.join(bad) or 'none given'}; choose from {', '.join(INT8_KERNELS)}")
    for p in (a.model, a.data, a.held):
        if not p.is_file():
            ap.error(f"{p}: no such file")
    from _common import write

    held = {"feeds": str(a.held)}
    here = kernel.kind()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        rows.append(int8_row(a.model, held, work))
        print(json.dumps(rows[-1]), flush=True)
        if a.mode != "int8":  # the mode's own start: the original quantized by it, not healed
            t = time.perf_counter()
            n6onnx.rewrite(a.model, work / "quantized.onnx", [], calibrate=a.data, dims=DIMS, quantize=a.mode)
            rows.append({"rewrite": a.mode, "seconds": round(time.perf_counter() - t, 1),
                         "fidelity": fidelity(a.model, work / "quantized.onnx", held)})
            print(json.dumps(rows[-1]), flush=True)
        for k in kernels:
            out = work / f"healed-{k}.onnx"
            t = time.perf_counter()
            _, rep = n6onnx.rewrite(a.model, out, [], calibrate=a.data, dims=DIMS, quantize=a.mode, heal=True,
                                    heal_config=HealConfig(minutes=a.minutes, int8_kernel=k, threads=a.threads))
            h = rep.healing.to_json()
            rows.append({"rewrite": f"{a.mode} + heal", "int8_kernel": k, "mirrored": h["int8_kernel"],
                         "matches_this_cpu": h["int8_kernel"] == here, "seconds": round(time.perf_counter() - t, 1),
                         "healing": {key: h[key] for key in ("steps", "start", "best", "lowest", "stopped",
                                                              "train_samples", "heldout_samples", "fake_quantized",
                                                              "curve")},
                         "fidelity": fidelity(a.model, out, held)})
            print(json.dumps(rows[-1]), flush=True)
    write(a.name, {"model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20", "batch": DIMS, "mode": a.mode,
                   "this_cpu_int8_kernel": here, "samples": load_npz(a.data).samples, "heal_minutes": a.minutes,
                   "method": "held-out feeds never seen by the heal or its early stopping; fidelity = n6onnx validate "
                             f"(mean-pooled embedding cosine, NN agreement) on this CPU's onnxruntime; {a.threads} "
                             "threads; one run per row, the rows one after another",
                   "note": a.note, "rows": rows})


if __name__ == "__main__":
    main()
