"""Quantization-aware healing on all-MiniLM-L6-v2 (issues 16 and 17): int8 rows side by side in one
run, held-out fidelity against the fp32 original and CPU latency against ORT's best fp32.

Rows:
- fp32 original (the latency baseline: ORT with its transformer fusions);
- ORT per-channel dynamic int8 of the original (``--quantize int8`` = quantize_dynamic per channel);
- that int8 model healed under fake quantization (``n6onnx heal`` on the quantized file: dequantize,
  heal against the int8 path, quantize again to the same graph);
- calibrated gelu=phi6, float and + ``--quantize int8``;
- calibrated gelu=phi6 healed in float, then ``--quantize int8`` (``--heal --no-heal-fake-quant``);
- calibrated gelu=phi6 healed under fake quantization, then ``--quantize int8`` (``--heal``);
- the original with ``--quantize int4`` (MatMulNBits, block 32) and ``--quantize int8:static`` (QDQ, MinMax on
  the first ``--calib-samples`` sentences of DATA), each plain and healed against its own quantized path
  (``rewrite --quantize MODE --heal``: rows ``int4``, ``int4_heal``, ``static``, ``static_heal``); int4 plain is
  round to nearest (``--quantize-fit none``);
- ``int4_fit``: ``--quantize int4 --calibrate`` with its default fit (refit on the int4 path + GPTQ onto
  MatMulNBits' grid, on the first ``--calib-samples`` sentences), and ``int4_fit_heal``: that model healed
  under fake quantization (``n6onnx heal`` on the int4 file).

Data (the splits of benchmarks/heal.py): held-out = corpus sentences 1000..1255 (256; ``--held N``:
1000..1000+N-1), never seen by calibration or healing; DATA = the first ``--samples`` other sentences; the closed-form fit uses its
first ``--calib-samples``; healing uses all of DATA (its last 10%, at most ``--holdout-batches``, held out for
early stopping). Fidelity: n6onnx validate, mean-pooled embedding cosine and NN agreement. Latency:
n6onnx bench, 2 threads, interleaved blocks against the fp32 original; a healed model has exactly the
nodes of its unhealed row, so only one of each graph is timed. Writes
benchmarks/results/heal_quant_minilm.json.
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
from n6onnx import quantize as Q  # noqa: E402
from n6onnx.heal.run import heal_file  # noqa: E402
from n6onnx.heal.train import HealConfig  # noqa: E402

from _common import write  # noqa: E402
from heal import DIMS, texts  # noqa: E402  (the same data splits)

GOALS = {"calibrated gelu=phi6 + --quantize int8 cosine (issue 17)": 0.985}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=pathlib.Path, help="default: zoo.export('minilm', 'dynamo20', dynamic=True)")
    ap.add_argument("--samples", type=int, default=2000, help="calibration + healing sentences")
    ap.add_argument("--calib-samples", type=int, default=256, help="cap of the closed-form fit")
    ap.add_argument("--minutes", type=float, default=4.0, help="heal budget per healed row")
    ap.add_argument("--eval-every", type=int, default=10, help="steps between held-out checks (the best checked "
                    "weights are written: slow steps need frequent checks)")
    ap.add_argument("--local", type=float, default=HealConfig.local, help="share of the budget in block-local phase")
    ap.add_argument("--lr", type=float, default=HealConfig.lr, help="global-phase step")
    ap.add_argument("--ranges", type=float, default=HealConfig.ranges, help="int8:static: share of the budget that "
                    "trains the activation ranges (HealConfig.ranges)")
    ap.add_argument("--ranges-lr", type=float, default=HealConfig.ranges_lr, help="their step (HealConfig.ranges_lr)")
    ap.add_argument("--holdout-batches", type=int, default=8, help="held-out batches of DATA for early stopping")
    ap.add_argument("--bench-seconds", type=float, default=4.0, help="per timed model (0: no timing)")
    ap.add_argument("--only", action="append", help="row keys to run (orig, orig_heal, phi6, phi6_float, phi6_fq, "
                    "int4, int4_fit, int4_fit_heal, int4_heal, static, static_heal, static_heal_fixed)")
    ap.add_argument("--floor-falls", type=int, default=HealConfig.floor_falls,
                    help="falls at the smallest step before a heal phase ends (HealConfig.floor_falls)")
    ap.add_argument("--int8-guard", default="per-tensor", choices=["per-channel", "per-tensor"],
                    help="the gelu=phi6 calibration's int8 guard (per-tensor: what rewrite --heal --quantize int8 "
                    "calibrates; per-channel: what rewrite --quantize int8 calibrates where the int8 fit runs)")
    ap.add_argument("--out", default="heal_quant_minilm", help="result name under benchmarks/results/")
    ap.add_argument("--note", default="shared 2-core machine, other developers working: timing is noisy")
    ap.add_argument("--held", type=int, default=256, help="held-out corpus sentences 1000..1000+N-1 (at most 1803); "
                    "DATA then comes from the rest of the corpus and the standard-library docstrings")
    a = ap.parse_args()
    if a.model is None:
        from n6onnx.testing import zoo

        a.model = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    src = a.model
    want = set(a.only or ["orig", "orig_heal", "phi6", "phi6_float", "phi6_fq"])
    cfg = HealConfig(minutes=a.minutes, threads=2, eval_every=a.eval_every, holdout_batches=a.holdout_batches,
                     local=a.local, lr=a.lr, floor_falls=a.floor_falls, ranges=a.ranges, ranges_lr=a.ranges_lr)
    rows: list[dict] = []

    def save() -> None:
        write(a.out, _payload(a, rows))
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        train, held_t = texts(a.samples) if a.held == 256 else held_split(a.samples, a.held)
        data, held = work / "data.txt", work / "held.txt"
        data.write_text("\n".join(train))
        held.write_text("\n".join(held_t))
        dims = [f"{k}={v}" for k, v in DIMS.items()]

        def row(label: str, path: pathlib.Path, timed: bool = False, **extra) -> None:
            r = n6onnx.validate(src, path, text=held, threads=2, dims=dims).to_json()
            e = r["outputs"]["last_hidden_state"]["embedding"]
            out = {"variant": label, "cosine_mean": e["cosine_mean"], "cosine_min": e["cosine_min"],
                   "nn_agreement": e["nn_agreement"], **extra}
            if timed and a.bench_seconds > 0:
                b = n6onnx.bench(path, src, threads=2, seconds=a.bench_seconds, window=2.0, dims=dims).to_json()
                out.update(latency_ms=b["latency_ms"], baseline_latency_ms=b["baseline"]["latency_ms"],
                           speed_vs_fp32=b["ratio"]["latency_p50"])
            rows.append(out)
            save()  # after every row: a run cut short keeps what it finished
            print(f"{label:70s} cos {out['cosine_mean']:.4f} nn {out['nn_agreement']:.3f} "
                  f"speed {out.get('speed_vs_fp32', {}).get('median', '-')}", flush=True)

        def healed(model: pathlib.Path, out: pathlib.Path, **kw) -> dict:
            rep = heal_file(model, src, data, out, dims=DIMS, config=HealConfig(**{**cfg.__dict__, **kw}))
            return {"healing": {k: v for k, v in rep.to_json().items() if k != "curve"},
                    "curve": rep.to_json()["curve"]}

        if "orig" in want or "orig_heal" in want:
            row("fp32 original", src, timed=True)
            Q.quantize(src, work / "orig_q.onnx", "int8")
            row("ORT per-channel int8 of the original (--quantize int8)", work / "orig_q.onnx", timed=True)
        if "orig_heal" in want:
            h = healed(work / "orig_q.onnx", work / "orig_qh.onnx")
            row("int8 original healed under fake-quant (n6onnx heal on the int8 model)", work / "orig_qh.onnx",
                speed_as="ORT per-channel int8 of the original (same graph)", **h)
        if want & {"phi6", "phi6_float", "phi6_fq"}:
            t = time.perf_counter()
            n6onnx.rewrite(src, work / "phi6.onnx", ["gelu=phi6"], calibrate=data, calib_samples=a.calib_samples,
                           dims=DIMS, int8_guard=a.int8_guard)
            cal_s = round(time.perf_counter() - t, 1)
            Q.quantize(work / "phi6.onnx", work / "phi6_q.onnx", "int8")
            row("calibrated gelu=phi6, float", work / "phi6.onnx", timed=True, calibrate_seconds=cal_s)
            row("calibrated gelu=phi6 + --quantize int8", work / "phi6_q.onnx", timed=True)
        if "phi6_float" in want:
            h = healed(work / "phi6.onnx", work / "phi6_hf.onnx")  # float heal (no quantize given)
            row("calibrated gelu=phi6 + heal (float), float", work / "phi6_hf.onnx", **h)
            Q.quantize(work / "phi6_hf.onnx", work / "phi6_hf_q.onnx", "int8")
            row("calibrated gelu=phi6 + heal (float) + --quantize int8 (--no-heal-fake-quant)",
                work / "phi6_hf_q.onnx", speed_as="calibrated gelu=phi6 + --quantize int8 (same graph)")
        if "phi6_fq" in want:
            h = healed(work / "phi6.onnx", work / "phi6_hq.onnx", quantize="int8")  # heal against the int8 path
            Q.quantize(work / "phi6_hq.onnx", work / "phi6_hq_q.onnx", "int8")
            row("calibrated gelu=phi6 + heal under fake-quant + --quantize int8 (--heal)", work / "phi6_hq_q.onnx",
                speed_as="calibrated gelu=phi6 + --quantize int8 (same graph)", **h)
        for key, mode in (("int4", "int4"), ("static", "int8:static")):
            if key in want or f"{key}_heal" in want:
                plain = work / f"{key}.onnx"
                n6onnx.rewrite(src, plain, [], calibrate=data, calib_samples=a.calib_samples, dims=DIMS, quantize=mode,
                               quantize_fit="none")
                row(f"the original + --quantize {mode}" + (" --quantize-fit none (round to nearest)"
                                                           if key == "int4" else ""), plain, timed=True)
            if key == "int4" and want & {"int4_fit", "int4_fit_heal"}:  # the default with --calibrate: refit + GPTQ
                t = time.perf_counter()
                _, rep = n6onnx.rewrite(src, work / "int4_fit.onnx", [], calibrate=data, calib_samples=a.calib_samples,
                                        dims=DIMS, quantize=mode)
                row("the original + --quantize int4 --calibrate (int4 fit: refit + GPTQ, the default)",
                    work / "int4_fit.onnx", seconds=round(time.perf_counter() - t, 1), fit=rep.quantization.fit,
                    speed_as="the original + --quantize int4 (same graph)")
            if key == "int4" and "int4_fit_heal" in want:
                h = healed(work / "int4_fit.onnx", work / "int4_fit_h.onnx")
                row("that int4 fit, healed under its fake quantization (n6onnx heal on the int4 model)",
                    work / "int4_fit_h.onnx", speed_as="the original + --quantize int4 (same graph)", **h)
            # static_heal_fixed: the activation ranges stay calibration's (HealConfig.ranges 0, the weights heal for
            # the whole budget, MinMax again on write-out); static_heal: the default, ranges trained last
            for tag, kw, what in ((f"{key}_heal_fixed", {"ranges": 0.0}, ", activation ranges fixed (--heal-ranges 0)"),
                                  (f"{key}_heal", {}, "")):
                if tag not in want or (kw and key != "static"):
                    continue
                t = time.perf_counter()
                _, rep = n6onnx.rewrite(src, work / f"{tag}.onnx", [], calibrate=data, calib_samples=a.calib_samples,
                                        dims=DIMS, quantize=mode, heal=True,
                                        heal_config=HealConfig(**{**cfg.__dict__, **kw}))
                h = rep.healing.to_json()
                row(f"the original + --quantize {mode} --heal (healed under its fake quantization{what})",
                    work / f"{tag}.onnx", speed_as=f"the original + --quantize {mode} (same graph)",
                    seconds=round(time.perf_counter() - t, 1),
                    healing={k: v for k, v in h.items() if k not in ("curve", "ranges")}, curve=h["curve"])
    save()
    print(json.dumps([(r["variant"], round(r["cosine_mean"], 4)) for r in rows], indent=1))


def held_split(samples: int, held: int) -> tuple[list[str], list[str]]:
    """DATA (``samples`` sentences) and ``held`` held-out corpus sentences from 1000 on, disjoint."""
    from n6onnx.testing import corpus
    from recovery import extended_sentences

    held_t = corpus.sentences()[1000:1000 + held]
    return extended_sentences(set(held_t))[:samples], held_t


def _payload(a, rows: list[dict]) -> dict:
    return {
        "benchmark": "heal_quant_minilm",
        "model": "all-MiniLM-L6-v2, dynamic-axes dynamo export, opset 20", "batch": DIMS,
        "int8_guard": a.int8_guard,
        "method": (f"held-out = {a.held} corpus sentences (1000..{999 + a.held}) never seen by calibration or healing; "
                   f"DATA = the first {a.samples} other sentences (the corpus, then standard-library docstrings), "
                   "closed-form fit on the first "
                   f"{a.calib_samples}, healing on all of DATA (last 10% held out for early "
                   f"stopping, at most {a.holdout_batches} batches, checked every {a.eval_every} steps); heal budget "
                   f"{a.minutes} min per healed row, block-local share {a.local} then global at lr {a.lr}, HealConfig "
                   "defaults otherwise (relative parametrisation, streams+output loss), 2 threads, seed 0; fake-quant = "
                   "the MatMuls --quantize MODE quantizes run as onnxruntime runs them (int8: per-channel int8 weight "
                   "grid and DynamicQuantizeLinear's uint8 activation grid; int4: MatMulNBits' symmetric 4-bit block "
                   "grid and its int8 block activations; int8:static: per-channel weights and the QDQ graph's fixed "
                   "uint8 activation ranges (static_heal: trained in the last HealConfig.ranges of the budget and written as "
                   "trained; static_heal_fixed: fixed, recalibrated on write-out)), straight-through backward, their weights and "
                   "biases trained too; fidelity = n6onnx validate (mean-pooled embedding cosine against ORT running "
                   "the fp32 original, NN agreement); speed = n6onnx bench latency ratio p50 (median and quartiles "
                   f"over blocks) against the fp32 original with ORT's fusions, 2 threads, {a.bench_seconds} s per "
                   f"model. Timing taken on: {a.note}. One run per row (no repetitions)."),
        "goals": GOALS, "rows": rows}


if __name__ == "__main__":
    main()
