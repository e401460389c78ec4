"""Does the redundancy score pick the right layers? all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20, 8 x 64).

`attention=fftmix:N`, `attention=drop:N` and `block=drop:N` take the N blocks that `inspect --calibrate`
scores most redundant (input and output most alike). This script rewrites every single block by index
(`:@I`) and, for N = 2, every pair, each calibrated on the same sentences, and measures held-out fidelity
of each, so the redundancy pick is read against the best choice measured on held-out data (which no
rewrite can use: it is the answer, not a method).

    python benchmarks/layer_choice.py                    # fftmix, attention drop, block drop; fftmix pairs
    python benchmarks/layer_choice.py --kinds block=drop --pairs none

DATA and held-out sentences are benchmarks/heal.py's: the closed-form fit on the first 256 of its 2000
sentences, fidelity on its 256 held-out sentences (corpus 1000..1255). Writes
benchmarks/results/layer_choice_minilm.json.
"""

from __future__ import annotations

import argparse
import itertools
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402

import heal as hb  # noqa: E402  (its splits and its fidelity figure)
from _common import check_passes, write  # noqa: E402


def measure(src, spec: str, data, held: dict, work: pathlib.Path) -> dict:
    t = time.perf_counter()
    _, rep = n6onnx.rewrite(src, work / "c.onnx", [spec], calibrate=data, calib_samples=256, dims=hb.DIMS)
    blocks = sorted(s["index"] for r in rep.to_json()["reports"].values() for s in r["sites"] if "index" in s)
    row = {"rewrite": spec, "blocks": blocks, **hb.fidelity(src, work / "c.onnx", held),
           "seconds": round(time.perf_counter() - t, 1)}
    print(f"{spec:28s} blocks {blocks}  cosine {row['cosine']:.4f}  NN {row['nn']:.3f}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["attention=fftmix", "attention=drop", "block=drop"])
    ap.add_argument("--pairs", nargs="+", default=["attention=fftmix"], help="kinds whose pairs are measured too "
                    "('none': no pairs)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--name", default="layer_choice_minilm")
    ap.add_argument("--conditions", default="dev VM, 2 threads")
    a = ap.parse_args()
    check_passes(ap, [f"{k}:1" for k in a.kinds] + [f"{k}:@0" for k in a.kinds])
    stray = sorted(set(a.pairs) - set(a.kinds) - {"none"})
    if stray:
        ap.error(f"--pairs {' '.join(stray)}: not among --kinds ({' '.join(a.kinds)})")
    from n6onnx.testing import zoo

    src = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    train, held_t = hb.texts(2000)
    kinds = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        (work / "data.txt").write_text("\n".join(train))
        (work / "held.txt").write_text("\n".join(held_t))
        data, held = work / "data.txt", {"text": work / "held.txt"}
        reference = hb.int8_row(src, held, work)  # what a user would pick instead, on the same sentences
        print(f"{reference['rewrite']}: cosine {reference['fidelity']['cosine']:.4f}", flush=True)
        for kind in a.kinds:
            n_sets = [1] + ([2] if kind in a.pairs else [])
            out = {}
            for n in n_sets:
                pick = measure(src, f"{kind}:{n}", data, held, work)
                rows = [measure(src, f"{kind}:@{','.join(map(str, c))}", data, held, work)
                        for c in itertools.combinations(range(a.layers), n)]
                best = max(rows, key=lambda r: r["cosine"])
                out[str(n)] = {"redundancy_pick": pick, "by_index": rows, "best_measured": best["rewrite"],
                               "best_minus_pick": round(best["cosine"] - pick["cosine"], 4)}
            kinds[kind] = out
    write(a.name, {"benchmark": __doc__.splitlines()[0], "conditions": a.conditions,
                   "method": "each rewrite calibrated on the first 256 of benchmarks/heal.py's 2000 DATA sentences; "
                             "fidelity = n6onnx validate on its 256 held-out sentences (mean-pooled embedding cosine, "
                             "NN agreement); deterministic, one run",
                   "ort_int8": reference, "kinds": kinds})


if __name__ == "__main__":
    main()
