"""Causal Egyptian attention on the project's byte-level GPT-2 (benchmarks/lm_train.py, trained when
missing): the head kinds per KV group by index against by measured locality (``attention=egyptian``
with ``--calibrate DATA``: the mass the original's causal softmax puts on the last ``window`` keys and
on the sinks + own key, the by-index counts kept; docs/decoders.md), through ``n6onnx.rewrite``.

Scored on lm_train's held-out text (never seen by the LM's training or by the locality measurement) as
benchmarks/heal_lm.py scores: next-byte top-1 agreement with the original, KL, logits cosine
(``n6onnx.validate``) and next-byte accuracy; ORT's per-channel dynamic int8 of the original in the same
run. One run per row. The model's context is 64 bytes, the op's window 64: at this context a local head
sees every earlier key (it is exact), so what the assignment decides here is which group is global.

    python benchmarks/egyptian_locality_lm.py       # writes benchmarks/results/egyptian_locality_lm.json
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402
from n6onnx.feeds import load_npz  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib-samples", type=int, default=256, help="sequences of DATA the locality is measured on")
    ap.add_argument("--steps", type=int, default=1200, help="LM training steps (lm_train)")
    ap.add_argument("--note", default="", help="where and how this ran")
    a = ap.parse_args(argv)

    from _common import hardware, write
    import lm_train
    from heal_lm import scores
    from onnxruntime.quantization import QuantType, quantize_dynamic

    t0 = time.perf_counter()
    lm = lm_train.ensure(steps=a.steps)
    src, data, held = lm["model"], lm["data"], lm["held"]
    labels = np.load(lm["labels"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)

        def row(name: str, path, **extra) -> None:
            r = {"model": name, **extra, "held_out": scores(src, path, held, labels)}
            print(r, flush=True)
            rows.append(r)

        def kinds(rep) -> list:
            return [{"layer": s.detail["index"], "head_kinds": s.detail["head_kinds"],
                     "assignment": s.detail["assignment"], **({"locality": s.detail["locality"]}
                                                              if "locality" in s.detail else {})}
                    for s in rep.reports["attention"].sites]

        row("original", src)
        quantize_dynamic(str(src), str(work / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
        row("ORT int8 (quantize_dynamic, per_channel=True)", work / "int8.onnx")
        _, rep = n6onnx.rewrite(src, work / "idx.onnx", ["attention=egyptian:by-index"])
        row("attention=egyptian:by-index", work / "idx.onnx", blocks=kinds(rep))
        t = time.perf_counter()
        _, rep = n6onnx.rewrite(src, work / "loc.onnx", ["attention=egyptian"], calibrate=data,
                                calib_samples=a.calib_samples)
        row("attention=egyptian --calibrate DATA (locality)", work / "loc.onnx", blocks=kinds(rep),
            calibrate_seconds=round(time.perf_counter() - t, 1))
    d = load_npz(data)
    write("egyptian_locality_lm", {
        "model": (f"byte-level GPT2LMHeadModel trained by benchmarks/lm_train.py ({lm['steps']} steps, seed "
                  f"{lm['seed']}): {lm_train.CONFIG}; dynamo export opset 20, no KV cache"),
        "method": ("held-out = lm_train's held-out split (every 20th docstring sentence), never seen by the LM's "
                   "training or the locality measurement; top-1 agreement / KL(original || candidate) / logits "
                   "cosine from n6onnx.validate over every position; accuracy = argmax == the next byte; locality "
                   f"measured on the first {a.calib_samples} DATA sequences; validation at 2 threads; one run per row"),
        "data": {"calibration_sequences": d.samples, "calib_samples": a.calib_samples, **(lm["sizes"] or {})},
        "caveat": ("context 64 = the op's window 64: local heads are exact at this context, the assignment only "
                   "chooses the global (sink + own key) group; the default split of 4 heads is full, full, local, "
                   "global"),
        "note": a.note, "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
