"""Decoder healing benchmark: the project's byte-level GPT-2 (benchmarks/lm_train.py, trained when
missing) rewritten with ``gelu=phi6``: uncalibrated -> calibrated (``--calibrate DATA``) -> healed
(``--calibrate DATA --heal``), through the public API (``n6onnx.rewrite``, the path of ``n6onnx rewrite``).

Measured on held-out text that neither the LM's training nor calibration nor healing saw (lm_train's
split): next-byte top-1 agreement with the original (argmax of the logits at every position), mean KL
(original || candidate) and per-sequence logits cosine (``n6onnx.validate``), and each model's next-byte
accuracy against the real text. ORT's per-channel dynamic int8 of the original is the anchor, in the same
run. DATA: lm_train's ``data.npz`` (feed batches of 16 x 64 bytes); healing holds its last 10% out for
early stopping.

    python benchmarks/heal_lm.py                         # default heal settings
    python benchmarks/heal_lm.py --heal "local=0" --heal "minutes=6,lr=1e-3"   # more heal rows (HealConfig fields)

Writes benchmarks/results/heal_lm.json (``--out`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from n6onnx.heal.train import HealConfig  # noqa: E402
from n6onnx.io import atomic_write  # noqa: E402
from n6onnx.runtime import InferenceSession  # noqa: E402

PASS = "gelu=phi6"
GOAL = 0.97  # issue 16: healed gelu=phi6 next-token top-1 agreement on held-out text


def scores(src, cand, held: pathlib.Path, labels: np.ndarray) -> dict:
    """Held-out fidelity of ``cand`` against ``src`` (n6onnx.validate) and its next-byte accuracy."""
    rep = n6onnx.validate(src, cand, feeds=str(held), threads=2).to_json()["outputs"]["logits"]
    sess = InferenceSession(str(cand), threads=2)
    pred = np.concatenate([sess.run(["logits"], f)[0].argmax(-1) for f in load_npz(held)])
    return {"top1_agreement": round(rep["logits"]["top1_agreement"], 5),
            "kl": round(rep["logits"]["kl_divergence"], 6), "cosine": round(rep["cosine_mean"], 6),
            "accuracy": round(float(np.mean(pred == labels)), 5)}


def parse_heal(spec: str) -> HealConfig:
    """``"minutes=6,lr=1e-3,local=0"`` -> HealConfig (numbers as int where they parse so, else float;
    ``none`` -> None; anything else a string)."""
    kw = {}
    for item in filter(None, spec.split(",")):
        k, v = item.split("=", 1)
        if k not in HealConfig.__dataclass_fields__:
            raise SystemExit(f"--heal: unknown HealConfig field {k!r}")
        for conv in (int, float):
            try:
                kw[k] = conv(v)
                break
            except ValueError:
                kw[k] = None if v == "none" else v
    return HealConfig(**kw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heal", action="append", default=None,
                    help="a heal row: comma-separated HealConfig fields (default: one row with the defaults, "
                         "minutes=--minutes)")
    ap.add_argument("--minutes", type=float, default=8.0, help="heal budget of each row without minutes=")
    ap.add_argument("--calib-samples", type=int, default=256, help="cap of the closed-form fit (sequences)")
    ap.add_argument("--steps", type=int, default=1200, help="LM training steps (lm_train)")
    ap.add_argument("--out", type=pathlib.Path, help="write the JSON here instead of benchmarks/results/heal_lm.json")
    ap.add_argument("--note", default="", help="where and how this ran")
    a = ap.parse_args(argv)

    from _common import hardware, write
    import lm_train

    t0 = time.perf_counter()
    lm = lm_train.ensure(steps=a.steps)
    src, data, held = lm["model"], lm["data"], lm["held"]
    labels = np.load(lm["labels"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)

        def row(name: str, path, **extra) -> dict:
            r = {"model": name, **extra, "held_out": scores(src, path, held, labels)}
            print(r, flush=True)
            rows.append(r)
            return r

        row("original", src)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(work / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
        row("ORT int8 (quantize_dynamic, per_channel=True)", work / "int8.onnx")
        n6onnx.rewrite(src, work / "plain.onnx", [PASS])
        row(f"{PASS} uncalibrated", work / "plain.onnx")
        t = time.perf_counter()
        _, rep = n6onnx.rewrite(src, work / "cal.onnx", [PASS], calibrate=data, calib_samples=a.calib_samples)
        row(f"{PASS} calibrated", work / "cal.onnx", calibrate_seconds=round(time.perf_counter() - t, 1),
            rewritten=rep.rewritten)
        for spec in a.heal or [""]:
            cfg = parse_heal(spec if "minutes=" in spec else f"minutes={a.minutes}," + spec)
            cfg = dataclasses.replace(cfg, threads=cfg.threads or 2)
            t = time.perf_counter()
            _, rep = n6onnx.rewrite(src, work / "healed.onnx", [PASS], calibrate=data, calib_samples=a.calib_samples,
                                    heal=True, heal_config=cfg)
            h = rep.to_json().get("healing") or {}
            row(f"{PASS} healed" + (f" ({spec})" if spec else " (defaults)"), work / "healed.onnx",
                calibrate_and_heal_seconds=round(time.perf_counter() - t, 1), healing=h,
                goal=GOAL)
    d = load_npz(data)
    payload = {
        "model": (f"byte-level GPT2LMHeadModel trained by benchmarks/lm_train.py ({lm['steps']} steps, seed "
                  f"{lm['seed']}, {lm['train_seconds']} s): {lm_train.CONFIG}; dynamo export opset 20, no KV cache"),
        "lm_training": {"final": lm["log"][-1], "text_bytes": lm["text_bytes"], "log": lm["log"]},
        "method": ("held-out = lm_train's held-out split (every 20th docstring sentence), never seen by the LM's "
                   "training, calibration or healing; top-1 agreement / KL(original || candidate) / per-sequence "
                   "logits cosine from n6onnx.validate over every position; accuracy = argmax == the next byte of "
                   "the text; healing holds out the last 10% of DATA for early stopping; validation at 2 threads, heal "
                   "threads in each row's healing.config (default 2); one run per row"),
        "data": {"calibration_sequences": d.samples, "calib_samples": a.calib_samples, **(lm["sizes"] or {})},
        "goal": {"top1_agreement": GOAL, "rewrite": PASS},
        "note": a.note, "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    if a.out:
        atomic_write(a.out, json.dumps({"hardware": hardware(), **payload}, indent=2) + "\n")
    else:
        write("heal_lm", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
