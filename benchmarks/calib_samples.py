"""How many calibration samples `rewrite --calibrate` fits on by default (`--calib-samples`, n6onnx.calibrate.SAMPLES):
held-out fidelity, wall time and peak memory of all-MiniLM-L6-v2's calibrated rewrites at each N.

    python benchmarks/calib_samples.py [--samples 256 1000] [--held 1803] [--rows gelu=phi6 phi6+int8 ...]

Rows (``ROWS``): gelu=phi6 in float; gelu=phi6 + ``--quantize int8`` with the int8 fit on the first 256 samples
(``--quantize-fit-samples``' default) and on all N; ffn=phi-bottleneck:4/3, attention=fftmix:2 and attention=egyptian
in float. Each cell is one ``n6onnx rewrite`` process on the first N corpus sentences outside the held-out range,
batch 8 x 64; its wall time and peak RSS are those of that whole process (loading, calibration, fits, writing;
``os.wait4``). Fidelity: ``n6onnx validate`` (2 threads) on held-out corpus sentences 1000..1000+held-1, never seen by
a fit: mean-pooled embedding cosine and nearest-neighbour agreement against onnxruntime running the fp32 original,
beside onnxruntime's per-channel int8 of the original (``rewrite --quantize int8 --quantize-fit none``, i.e.
``quantize_dynamic`` per channel, QInt8) on the same sentences. One run per cell, one after the other.
Writes benchmarks/results/calib_samples_minilm.json (after every cell: a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx.quantize import qfit  # noqa: E402

from _common import fidelity, minilm_split, write  # noqa: E402

DIMS = ["--dim", "batch=8", "--dim", "seq=64"]
# row -> (rewrite arguments, validated): {n} is the row's N
ROWS = {
    "gelu=phi6": (["--pass", "gelu=phi6"], True),
    "phi6+int8": (["--pass", "gelu=phi6", "--quantize", "int8"], True),
    "phi6+int8, fit on all N": (["--pass", "gelu=phi6", "--quantize", "int8", "--quantize-fit-samples", "{n}"], True),
    "ffn=phi-bottleneck:4/3": (["--pass", "ffn=phi-bottleneck:4/3"], False),
    "attention=fftmix:2": (["--pass", "attention=fftmix:2"], False),
    "attention=egyptian": (["--pass", "attention=egyptian"], False),
}


def timed(args: list[str]) -> dict:
    """Run ``n6onnx ARGS`` (this checkout's package) as a process: its wall time and peak RSS; a failure ends the run
    with its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    cmd = [sys.executable, "-c", "import sys; from n6onnx.cli import main; sys.exit(main())", *args]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode:
            err.seek(0)
            raise SystemExit(f"n6onnx {' '.join(args)} failed ({p.returncode}):\n{err.read().decode()[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2)}


def rewrite_args(row: str, n: int, src, calib, out) -> list[str]:
    extra, _ = ROWS[row]
    return ["rewrite", str(src), "-o", str(out), "--calibrate", str(calib), "--calib-samples", str(n),
            *(a.format(n=n) for a in extra), *DIMS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, nargs="*", default=[256, 1000], help="the N compared (at most 1000 with "
                    "--held 1803: the corpus has 2803 sentences)")
    ap.add_argument("--held", type=int, default=1803, help="held-out sentences 1000..1000+N-1 (at most 1803)")
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS), help="which rows (default: all)")
    ap.add_argument("--workdir", default=str(ROOT / "build" / "calib_samples"))
    ap.add_argument("--name", default="calib_samples_minilm", help="result file name under benchmarks/results/")
    ap.add_argument("--conditions", default="dev VM, nothing else running during the run")
    a = ap.parse_args()
    work = pathlib.Path(a.workdir)
    src, calib, held = minilm_split(work, max(a.samples), a.held)
    cells, anchor = [], None

    def save(complete: bool) -> None:
        write(a.name, {"complete": complete, "benchmark": "calib_samples", "conditions": a.conditions,
                       "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20", "dims": {"batch": 8, "seq": 64},
                       "calibration": "the first N corpus sentences outside the held-out range",
                       "heldout": f"corpus sentences 1000..{999 + a.held}", "method": __doc__.split("\n\n", 2)[2].strip(),
                       "int8_anchor": anchor, "cells": cells})

    int8 = work / "int8.onnx"
    timed(["rewrite", str(src), "-o", str(int8), "--quantize", "int8", "--quantize-fit", "none"])
    anchor = fidelity(src, int8, {"text": str(held)})
    for n in a.samples:
        for row in a.rows:
            if row.endswith("fit on all N") and n <= qfit.SAMPLES:
                continue  # the default fit already runs on all of them
            out = work / f"row{list(ROWS).index(row)}_{n}.onnx"
            cell = {"row": row, "samples": n, **timed(rewrite_args(row, n, src, calib, out))}
            if ROWS[row][1]:
                cell["fidelity"] = fidelity(src, out, {"text": str(held)})
            cells.append(cell)
            print(cell, flush=True)
            save(False)
    save(True)


if __name__ == "__main__":
    main()
