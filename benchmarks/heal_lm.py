"""Decoder healing benchmark: the project's byte-level GPT-2 (benchmarks/lm_train.py, trained when
missing) rewritten with ``gelu=phi6``: uncalibrated -> calibrated (``--calibrate DATA``) -> healed
(``--calibrate DATA --heal``), through the public API (``n6onnx.rewrite``, the path of ``n6onnx rewrite``).
``--lm moe`` does the same for the project's character-level MoE LM (benchmarks/moe_train.py: 2 layers,
8 experts, top-2; trained when missing) with ``moe=egyptian`` and ``moe=phi:2`` (``--pass`` to choose):
DATA is moe_train's calibration split, held-out its evaluation split.

Measured on held-out text that neither the LM's training nor calibration nor healing saw (lm_train's
split): next-byte top-1 agreement with the original (argmax of the logits at every position), mean KL
(original || candidate) and per-sequence logits cosine (``n6onnx.validate``), and each model's next-byte
accuracy and cross-entropy (nats) against the real text. ORT's per-channel dynamic int8 of the original is the anchor, in the same
run. DATA: lm_train's ``data.npz`` (feed batches of 16 x 64 bytes); healing holds its last 10% out for
early stopping.

    python benchmarks/heal_lm.py                         # default heal settings
    python benchmarks/heal_lm.py --heal "local=0" --heal "minutes=6,lr=1e-3"   # more heal rows (HealConfig fields)
    python benchmarks/heal_lm.py --lm moe --minutes 4.5 --pass moe=egyptian --pass moe=phi:2
    python benchmarks/heal_lm.py --no-uncalibrated --heal "minutes=6" --out part1.json   # parallel runs ...
    python benchmarks/heal_lm.py --merge part1.json part2.json   # ... merged into heal_lm.json, its rows kept
    python benchmarks/heal_lm.py --quantize int4 --no-passes --out benchmarks/results/heal_lm_int4.json
        # the original with --quantize MODE, plain and healed against that path (rewrite --quantize MODE --heal);
        # int8 and int4 also without their default fit (--quantize-fit none), and with --fit-heal the fitted
        # model healed (n6onnx heal on the quantized file)

Writes benchmarks/results/heal_lm.json (``--lm moe``: heal_moe.json; ``--out`` to write elsewhere). A trained
LM under build/lm (or build/moe) is reused, not retrained (lm_train's stamp).
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
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import n6onnx  # noqa: E402
from n6onnx.feeds import load_npz  # noqa: E402
from n6onnx.heal.train import HealConfig  # noqa: E402
from n6onnx.heal.run import heal_file  # noqa: E402
from n6onnx.quantize import parse_mode, qfit  # noqa: E402
from n6onnx.io import atomic_path, atomic_write  # noqa: E402
from n6onnx.runtime import InferenceSession  # noqa: E402

import lm_train  # noqa: E402  (benchmarks/)
import moe_train  # noqa: E402

PASSES = {"gpt2": ["gelu=phi6"], "moe": ["moe=egyptian", "moe=phi:2"]}
GOAL = 0.97  # issue 16: healed gelu=phi6 next-token top-1 agreement on held-out text (the GPT-2)


def scores(src, cand, held: pathlib.Path, labels: np.ndarray) -> dict:
    """Held-out fidelity of ``cand`` against ``src`` (n6onnx.validate), its next-token accuracy and
    cross-entropy (nats) against ``labels`` (the next token of every position)."""
    rep = n6onnx.validate(src, cand, feeds=str(held), threads=2).to_json()["outputs"]["logits"]
    sess = InferenceSession(str(cand), threads=2)
    hits, nll = [], []
    for f, lab in zip(load_npz(held), _label_batches(labels, held)):
        logits = sess.run(["logits"], f)[0].astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        nll.append(-np.take_along_axis(logp, lab[..., None], -1)[..., 0])
        hits.append(logits.argmax(-1) == lab)
    return {"top1_agreement": round(rep["logits"]["top1_agreement"], 5),
            "kl": round(rep["logits"]["kl_divergence"], 6), "cosine": round(rep["cosine_mean"], 6),
            "accuracy": round(float(np.concatenate(hits).mean()), 5),
            "loss": round(float(np.concatenate(nll).mean()), 5)}


class Rows(list):
    """A run's rows: ``rows(name, path, **extra)`` scores the model at ``path`` against ``src`` on the held-out
    text (``scores``), prints the row and keeps it."""

    def __init__(self, src, held: pathlib.Path, labels: np.ndarray):
        super().__init__()
        self.src, self.held, self.labels = src, held, labels

    def __call__(self, name: str, path, **extra) -> dict:
        r = {"model": name, **extra, "held_out": scores(self.src, path, self.held, self.labels)}
        print(r, flush=True)
        self.append(r)
        return r


def _label_batches(labels: np.ndarray, held: pathlib.Path):
    """``labels`` [n, seq] split like the held-out feeds' batches (in their order)."""
    k = 0
    for f in load_npz(held):
        b = next(iter(f.values())).shape[0]
        yield labels[k:k + b]
        k += b
    if k != len(labels):
        raise SystemExit(f"{held}: {k} held-out sequences but {len(labels)} label rows")


def moe_source(out: pathlib.Path = ROOT / "build" / "moe") -> dict:
    """benchmarks/moe_train.py's top-2 MoE LM (trained and exported when missing) and its splits as
    ``--calibrate`` feeds: DATA = the calibration windows, held-out = the evaluation windows (batches
    of 16 x 64, the export's static shape), labels = their next characters."""
    name = moe_train.file_name("topk", 0)
    if not (out / f"{name}.pt").is_file():
        moe_train.train("topk", 1500, out)
    model = out / f"{name}.onnx"
    if not model.is_file():
        moe_train.export(out, name)
    moe_train.save_data(out)
    w = np.load(out / "data.npz")
    b = moe_train.BATCH_EXPORT
    files = {}
    for split, fname in (("calibration", "heal-data.npz"), ("evaluation", "heal-held.npz")):
        win = w[split][: (len(w[split]) // b) * b]
        with atomic_path(out / fname) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
            np.savez(fh, **{f"input_ids/{k}": win[k * b:(k + 1) * b, :-1] for k in range(len(win) // b)})
        files[split] = (out / fname, win)
    ckpt = torch.load(out / f"{name}.pt", weights_only=False)
    return {"model": model, "data": files["calibration"][0], "held": files["evaluation"][0],
            "labels": files["evaluation"][1][:, 1:],
            "description": (f"character-level MoE LM trained by benchmarks/moe_train.py ({ckpt['steps']} steps, seed "
                            f"{ckpt['seed']}, {ckpt['train_seconds']:.0f} s): {ckpt['config']}, vocab "
                            f"{len(ckpt['vocab'])}; TorchScript export (expert loop unrolled, dense), static [16, 64]"),
            "training": {"final": ckpt["log"][-1], "log": ckpt["log"]},
            "sizes": {"data_sequences": len(files["calibration"][1]), "held_sequences": len(files["evaluation"][1]),
                      "held_positions": int(files["evaluation"][1][:, 1:].size),
                      "split": "sentences of n6onnx.testing.corpus in order: 85% train, 5% DATA (calibration), "
                               "10% held-out (evaluation)"}}


def gpt2_source(steps: int) -> dict:
    lm = lm_train.ensure(steps=steps)
    return {**lm, "labels": np.load(lm["labels"]),
            "description": (f"byte-level GPT2LMHeadModel trained by benchmarks/lm_train.py ({lm['steps']} steps, "
                            f"seed {lm['seed']}, {lm['train_seconds']} s): {lm_train.CONFIG}; dynamo export opset "
                            "20, no KV cache"),
            "training": {"final": lm["log"][-1], "text_bytes": lm["text_bytes"], "log": lm["log"]}}


def parse_heal(spec: str) -> HealConfig:
    """``"minutes=6,lr=1e-3,local=0"`` -> HealConfig (``_common.heal_fields``)."""
    from _common import heal_fields

    return HealConfig(**heal_fields(spec))


def merge_rows(old: dict, parts: list[dict]) -> dict:
    """``old``'s payload with the rows of ``parts`` merged in: a part's row replaces an old row of the same
    model name (a re-measure), else is added; each part row carries its run ({generated, note, hardware})."""
    rows = list(old.get("rows", []))
    for part in parts:
        run = {"generated": part.get("generated"), "note": part.get("note", ""), "hardware": part.get("hardware")}
        for r in part["rows"]:
            rows = [o for o in rows if o["model"] != r["model"]] + [{**r, "run": run}]
    notes = [n for n in [old.get("note", "")] + [p.get("note", "") for p in parts] if n]
    base = parts[-1] if not old else old
    return {**base, "note": "; ".join(dict.fromkeys(notes)), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lm", choices=tuple(PASSES), default="gpt2",
                    help="gpt2: lm_train's byte-level GPT-2; moe: moe_train's character-level top-2 MoE LM")
    ap.add_argument("--pass", dest="passes", action="append", default=None,
                    help="a rewrite to heal (repeatable; default gelu=phi6 for gpt2, moe=egyptian and moe=phi:2 for moe)")
    ap.add_argument("--heal", action="append", default=None,
                    help="a heal row: comma-separated HealConfig fields (default: one row with the defaults, "
                         "minutes=--minutes)")
    ap.add_argument("--minutes", type=float, default=8.0, help="heal budget of each row without minutes=")
    ap.add_argument("--calib-samples", type=int, default=256, help="cap of the closed-form fit (sequences)")
    ap.add_argument("--steps", type=int, default=1200, help="LM training steps (lm_train)")
    ap.add_argument("--no-uncalibrated", action="store_true", help="skip the uncalibrated rows")
    ap.add_argument("--quantize", action="append", default=[], metavar="MODE",
                    help="also the original with --quantize MODE (int8, int8:static, int4[:BLOCK]), plain and healed "
                         "against its quantized path (repeatable)")
    ap.add_argument("--no-passes", action="store_true", help="skip the pass rows (with --quantize: its rows only)")
    ap.add_argument("--fit-heal", action="store_true", help="with --quantize int8/int4: also the fitted model healed "
                    "under its fake quantization (n6onnx heal on the quantized file)")
    ap.add_argument("--out", type=pathlib.Path, help="write the JSON here instead of benchmarks/results/heal_lm.json (heal_moe.json)")
    ap.add_argument("--note", default="", help="where and how this ran")
    ap.add_argument("--merge", type=pathlib.Path, nargs="+",
                    help="merge these --out files into the result: its existing rows are kept, a row of the same "
                         "model name is replaced by the re-measure; each merged row records its run's note")
    a = ap.parse_args(argv)
    from _common import RESULTS, check_passes, hardware, write

    check_passes(ap, a.passes or ())
    for spec in a.heal or ():  # a bad --heal row ends the run here, not after the LM is trained
        parse_heal(spec)

    if a.merge:
        name = "heal_lm" if a.lm == "gpt2" else "heal_moe"
        target = a.out or RESULTS / f"{name}.json"
        merged = merge_rows(json.loads(target.read_text()) if target.is_file() else {},
                            [json.loads(p.read_text()) for p in a.merge])
        if a.out:
            atomic_write(a.out, json.dumps(merged, indent=2) + "\n")
        else:
            write(name, {k: v for k, v in merged.items() if k not in ("generated", "hardware")})
        return 0

    t0 = time.perf_counter()
    lm = moe_source() if a.lm == "moe" else gpt2_source(a.steps)
    src, data, held, labels = lm["model"], lm["data"], lm["held"], lm["labels"]
    passes = a.passes or PASSES[a.lm]
    rows = row = Rows(src, held, labels)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        row("original", src)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(work / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
        row("ORT int8 (quantize_dynamic, per_channel=True)", work / "int8.onnx")
        for mode in a.quantize:
            fits = parse_mode(mode).kind in qfit.MODES  # with --calibrate the default fits it (refit + GPTQ)
            if fits:
                n6onnx.rewrite(src, work / "q0.onnx", [], calibrate=data, calib_samples=a.calib_samples, quantize=mode,
                               quantize_fit="none")
                row(f"--quantize {mode} --quantize-fit none (round to nearest)", work / "q0.onnx")
            _, rep = n6onnx.rewrite(src, work / "q.onnx", [], calibrate=data, calib_samples=a.calib_samples,
                                    quantize=mode)
            row(f"--quantize {mode}" + (" (its default fit: refit + GPTQ)" if fits else ""), work / "q.onnx",
                fit=rep.quantization.fit)
            cfg = dataclasses.replace(parse_heal(f"minutes={a.minutes}"), threads=2)
            if fits and a.fit_heal:  # heal the fitted model: n6onnx heal on the quantized file
                t = time.perf_counter()
                hrep = heal_file(work / "q.onnx", src, data, work / "qfh.onnx", config=cfg)
                row(f"--quantize {mode} (fit), healed under its fake quantization (n6onnx heal)", work / "qfh.onnx",
                    heal_seconds=round(time.perf_counter() - t, 1),
                    healing={k: v for k, v in hrep.to_json().items() if k != "curve"})
            t = time.perf_counter()
            _, rep = n6onnx.rewrite(src, work / "qh.onnx", [], calibrate=data, calib_samples=a.calib_samples,
                                    quantize=mode, heal=True, heal_config=cfg)
            row(f"--quantize {mode} --heal (healed under its fake quantization)", work / "qh.onnx",
                calibrate_and_heal_seconds=round(time.perf_counter() - t, 1), healing=rep.to_json().get("healing") or {},
                quantization=rep.to_json().get("quantization"))
        for pass_ in [] if a.no_passes else passes:
            if not a.no_uncalibrated:
                n6onnx.rewrite(src, work / "plain.onnx", [pass_])
                row(f"{pass_} uncalibrated", work / "plain.onnx")
            t = time.perf_counter()
            _, rep = n6onnx.rewrite(src, work / "cal.onnx", [pass_], calibrate=data, calib_samples=a.calib_samples)
            row(f"{pass_} calibrated", work / "cal.onnx", calibrate_seconds=round(time.perf_counter() - t, 1),
                rewritten=rep.rewritten)
            for spec in a.heal or [""]:
                cfg = parse_heal(spec if "minutes=" in spec else f"minutes={a.minutes}," + spec)
                cfg = dataclasses.replace(cfg, threads=cfg.threads or 2)
                t = time.perf_counter()
                _, rep = n6onnx.rewrite(src, work / "healed.onnx", [pass_], calibrate=data,
                                        calib_samples=a.calib_samples, heal=True, heal_config=cfg)
                h = rep.to_json().get("healing") or {}
                row(f"{pass_} healed" + (f" ({spec})" if spec else " (defaults)"), work / "healed.onnx",
                    calibrate_and_heal_seconds=round(time.perf_counter() - t, 1), healing=h,
                    **({"goal": GOAL} if pass_ == "gelu=phi6" and a.lm == "gpt2" else {}))
    d = load_npz(data)
    payload = {
        "model": lm["description"],
        "lm_training": lm["training"],
        "method": ("held-out = the LM's held-out split (gpt2: lm_train's every 20th docstring sentence; moe: "
                   "moe_train's evaluation split), never seen by the LM's training, calibration or healing; top-1 "
                   "agreement / KL(original || candidate) / per-sequence logits cosine from n6onnx.validate over every "
                   "position; accuracy = argmax == the next token of the text, loss = its mean cross-entropy (nats); "
                   "DATA = --calibrate for the fit and the heal, healing holds out the last 10% of DATA for early "
                   "stopping; validation at 2 threads, heal threads in each row's healing.config (default 2); one "
                   "run per row"),
        "data": {"calibration_sequences": d.samples, "calib_samples": a.calib_samples, **(lm["sizes"] or {})},
        "passes": passes,
        **({"goal": {"top1_agreement": GOAL, "rewrite": "gelu=phi6"}} if a.lm == "gpt2" else {}),
        "note": a.note, "seconds": round(time.perf_counter() - t0, 1), "rows": rows,
    }
    if a.out:
        atomic_write(a.out, json.dumps({"generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hardware": hardware(),
                                        **payload}, indent=2) + "\n")
    else:
        write("heal_lm" if a.lm == "gpt2" else "heal_moe", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
