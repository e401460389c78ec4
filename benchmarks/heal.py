"""Healing benchmark: all-MiniLM-L6-v2 (dynamic-axes dynamo export, opset 20) at batch 8 x 64.

Per rewrite: held-out fidelity (mean-pooled embedding cosine and nearest-neighbour agreement, via
n6onnx.validate) uncalibrated -> calibrated -> healed, calibration and healing time, data size and
peak memory, next to onnxruntime's per-channel dynamic int8 of the original in the same run.
Calibration data: the first N corpus sentences (plus the standard-library docstring pool of
benchmarks/recovery.py when N exceeds the corpus); held-out: 256 sentences disjoint from them.

    python benchmarks/heal.py                       # every rewrite, one after the other
    python benchmarks/heal.py --only gelu=phi6 --part out/phi6.json   # one rewrite (parallel runs)
    python benchmarks/heal.py --merge out/*.json    # merge parts into benchmarks/results/heal_minilm.json
    python benchmarks/heal.py --only "ffn=phi-bottleneck:3+int8"   # quantized, healed against the int8 path
    bash benchmarks/heal_parallel.sh CARRY          # every row at once, 2 pinned cores each (device host)

Data can be given pre-tokenised (--data X.npz --held H.npz) for machines without transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import resource
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402
from n6onnx.feeds import load_npz  # noqa: E402
from n6onnx.io import atomic_write  # noqa: E402
from n6onnx.heal.train import HealConfig  # noqa: E402

from _common import fidelity  # noqa: E402,F401  (the scripts that import heal take it from here too)

REWRITES = ["gelu=phi6", "ffn=phi-bottleneck:4/3", "attention=fftmix:2", "attention=egyptian",
            "gelu=phi6+ffn=phi-bottleneck:4/3+attention=fftmix:2"]
GOALS = {"gelu=phi6": (0.998, 0.97), "ffn=phi-bottleneck:4/3": (0.99, 0.93), "attention=fftmix:2": (0.99, 0.93),
         "attention=egyptian": (0.99, None), "gelu=phi6+ffn=phi-bottleneck:4/3+attention=fftmix:2": (0.985, None)}
DIMS = {"batch": 8, "seq": 64}
DEADLINE: float | None = None


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one(src, spec: str, data, held: dict, work: pathlib.Path, cfg: HealConfig, samples: int | None,
        calib_samples: int) -> dict:
    parts = spec.split("+")
    passes = [p for p in parts if p != "int8"]
    quant = "int8" if "int8" in parts else None  # '+int8': healed against the int8 path
    row = {"rewrite": spec, "goal": GOALS.get(spec)}
    if not any(k in spec for k in ("fftmix", "egyptian", "drop")) and passes:  # those rank by data: calibrated only
        n6onnx.rewrite(src, work / "plain.onnx", passes, quantize=quant)
        row["uncalibrated"] = fidelity(src, work / "plain.onnx", held)
    t = time.perf_counter()
    # with int8: the calibrated rewrite quantized by onnxruntime's stock rounding (no int8-path fit), the start
    # that heal_file turns back into float, heals under fake quantization and quantizes again
    _, rep = n6onnx.rewrite(src, work / "cal.onnx", passes, calibrate=data, calib_samples=calib_samples, dims=DIMS,
                            quantize=quant, quantize_fit="none")
    row["calibrate_seconds"] = round(time.perf_counter() - t, 1)
    if passes and not sum(rep.rewritten.values()):  # nothing to heal: record the pass's reasons
        row["refused"] = sorted({m["reason"] for r in rep.to_json()["reports"].values() for m in r["near_misses"]})
        return row
    row["calibrated"] = fidelity(src, work / "cal.onnx", held)
    from n6onnx.heal.run import heal_file

    if DEADLINE is not None:  # leave a minute for the last validation
        cfg = dataclasses.replace(cfg, minutes=max(0.5, min(cfg.minutes, (DEADLINE - time.time() - 60) / 60)))
    rep = heal_file(work / "cal.onnx", src, data, work / "healed.onnx", samples=samples, dims=DIMS, config=cfg)
    row["heal_seconds"] = round(rep.seconds, 1)
    row["calibrate_and_heal_seconds"] = round(row["calibrate_seconds"] + rep.seconds, 1)
    row["healing"] = rep.to_json()
    row["healed"] = fidelity(src, work / "healed.onnx", held)
    row["peak_rss_mb"] = round(peak_mb(), 1)
    return row


def int8_row(src, held: dict, work: pathlib.Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = work / "int8.onnx"
    quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return {"rewrite": "ORT int8 (quantize_dynamic, per_channel=True)", "fidelity": fidelity(src, out, held)}


def texts(n: int) -> tuple[list[str], list[str]]:
    from n6onnx.testing import corpus

    s = corpus.sentences()
    held = s[1000:1256]
    pool = s[:1000] + s[1256:]
    if n > len(pool):
        from recovery import extended_sentences

        pool = extended_sentences(set(held))
    return pool[:n], held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=pathlib.Path, help="default: zoo.export('minilm', 'dynamo20', dynamic=True)")
    ap.add_argument("--samples", type=int, help="calibration + healing sentences (default 2000; with --data: all of "
                    "it, or its first SAMPLES)")
    ap.add_argument("--calib-samples", type=int, default=256, help="cap of the closed-form fit")
    ap.add_argument("--data", type=pathlib.Path, help="pre-tokenised DATA (.npz) instead of sentences")
    ap.add_argument("--held", type=pathlib.Path, help="pre-tokenised held-out feeds (.npz)")
    ap.add_argument("--minutes", type=float, default=8.0, help="heal budget per rewrite")
    ap.add_argument("--lr", type=float, default=HealConfig.lr)
    ap.add_argument("--param", default=HealConfig.param)
    ap.add_argument("--loss", default=HealConfig.loss)
    ap.add_argument("--train", default=HealConfig.train)
    ap.add_argument("--eval-every", type=int, default=HealConfig.eval_every, help="steps between held-out checks")
    ap.add_argument("--local", type=float, default=HealConfig.local, help="share of the budget in block-local phase")
    ap.add_argument("--local-lr", type=float, default=HealConfig.local_lr)
    ap.add_argument("--local-input", default=HealConfig.local_input)
    ap.add_argument("--local-mode", default=HealConfig.local_mode, help="block-local phase: sequential, parallel")
    ap.add_argument("--local-output", action="store_true", help="sequential blocks' loss also holds the outputs")
    ap.add_argument("--backtrack", type=lambda v: v if v == "auto" else float(v), default=HealConfig.backtrack,
                    help="backtrack margin: a number or auto (the held-out check's noise)")
    ap.add_argument("--local-lr-start", type=lambda v: None if v == "off" else float(v),
                    default=HealConfig.local_lr_start, help="adaptive block-local step's start (off: fixed)")
    ap.add_argument("--refit", default=HealConfig.refit, help="sequential refit: none, phase, eval")
    ap.add_argument("--local-eval-every", type=int, default=HealConfig.local_eval_every)
    ap.add_argument("--warmup", type=int, default=HealConfig.warmup)
    ap.add_argument("--prime", type=int, default=HealConfig.prime)
    ap.add_argument("--cache-mb", type=int, default=HealConfig.cache_bytes >> 20, help="teacher cache budget")
    ap.add_argument("--only", action="append", help="rewrite(s) to run (default: all); 'int8' for the baseline; "
                    "a '+int8' suffix (e.g. 'ffn=phi-bottleneck:3+int8') quantizes the calibrated rewrite and heals "
                    "it against the int8 path (n6onnx heal on the int8 file)")
    ap.add_argument("--part", type=pathlib.Path, help="write this run's rows here (to --merge later)")
    ap.add_argument("--merge", type=pathlib.Path, nargs="+", help="merge part files into the result")
    ap.add_argument("--name", default="heal_minilm", help="result file name (benchmarks/results/NAME.json)")
    ap.add_argument("--note", default="", help="where and how this ran (hardware, cores)")
    ap.add_argument("--deadline", type=float, help="seconds this process may run: the heal budget shrinks to fit")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads of the heal")
    ap.add_argument("--set", default="", help="more HealConfig fields, e.g. 'train_dtype=bfloat16,refit=none'")
    a = ap.parse_args()

    from _common import check_passes, heal_fields, write

    check_passes(ap, a.only or (), also=("int8",))
    extra = heal_fields(a.set)  # a bad --set ends the run here, before any work
    global DEADLINE
    if a.deadline:
        DEADLINE = time.time() + a.deadline

    if a.merge:
        parts = [json.loads(p.read_text()) for p in a.merge]
        # each row keeps its run's tag (the note up to the first ';'), the merged note every run's note
        rows = [{**r, "run": r.get("run") or p.get("note", "").split(";")[0]} for p in parts for r in p["rows"]]
        notes = list(dict.fromkeys(p.get("note", "") for p in parts if p.get("note")))
        write(a.name, {**parts[0], "note": " | ".join(notes), "rows": rows})
        return
    if a.model is None:
        from n6onnx.testing import zoo

        a.model = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        if a.data is not None:
            data, held = a.data, {"feeds": str(a.held)}
            used = min(a.samples or 1 << 62, load_npz(a.data).samples)
        else:
            used = a.samples or 2000
            train, held_t = texts(used)
            (work / "data.txt").write_text("\n".join(train))
            (work / "held.txt").write_text("\n".join(held_t))
            data, held = work / "data.txt", {"text": work / "held.txt"}
        cfg = HealConfig(minutes=a.minutes, lr=a.lr, param=a.param, loss=a.loss, train=a.train, threads=a.threads,
                         eval_every=a.eval_every, local=a.local, local_lr=a.local_lr, local_input=a.local_input,
                         warmup=a.warmup, prime=a.prime, cache_bytes=a.cache_mb << 20, refit=a.refit,
                         local_eval_every=a.local_eval_every, local_mode=a.local_mode, local_output=a.local_output,
                         backtrack=a.backtrack, local_lr_start=a.local_lr_start)
        cfg = dataclasses.replace(cfg, **extra)
        rows = []
        for spec in a.only or (["int8"] + REWRITES):
            d = work / spec.replace("/", "_").replace("=", "_").replace(":", "_").replace("+", "_")
            d.mkdir()
            rows.append(int8_row(a.model, held, d) if spec == "int8" else
                        one(a.model, spec, data, held, d, cfg, a.samples, a.calib_samples))
            print(json.dumps(rows[-1])[:400], flush=True)
            if a.part:  # after every row: a run cut short keeps what it finished
                a.part.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(a.part, json.dumps({"rows": rows}, indent=2))
    payload = {"model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20", "batch": DIMS,
               "method": ("held-out = 256 corpus sentences never seen by calibration or healing; fidelity = "
                          "n6onnx validate (mean-pooled embedding cosine, NN agreement); healing holds out the "
                          f"last 10% of DATA for early stopping; {a.threads} thread(s) per run"),
               "samples": used, "calib_samples": a.calib_samples, "heal_minutes": a.minutes,
               "note": a.note, "rows": rows}
    if a.part:
        a.part.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(a.part, json.dumps(payload, indent=2))
    else:
        write(a.name, payload)


if __name__ == "__main__":
    main()
