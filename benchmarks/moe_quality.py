"""Quality, latency and energy of the MoE rewrites on the project's trained small MoE.

Needs ``python benchmarks/moe_train.py`` first (build/moe/charlm-topk.onnx and data.npz; for the
trained-routing comparison also ``--routing egyptian`` and ``--routing equal3``).

Variants of the top-2-trained character LM (every MoE layer rewritten by ``n6onnx rewrite``,
calibrated on the calibration split where the pass uses data):

- ``original``: the TorchScript export (dense loop over the 8 experts, top-2);
- ``moe=sparse``: n6onnx.MoE, exact;
- ``moe=egyptian``: 1/2, 1/3, 1/6 on the router's best three experts;
- ``equal3``: 1/3 each on the best three (moe=egyptian's model with a graph edit: the op's logits
  become 0 for the best three and -1e4 elsewhere, routing top-3: the softmax gives 1/3 each);
- ``moe=phi:DROP`` (DROP = 0..4): 24 sub-experts of width 4D/3, DROP per token dropped by
  routing weight x calibrated importance.

Quality: mean next-character cross-entropy (nats) and accuracy over every position of the
held-out evaluation windows (and of the calibration windows), through onnxruntime (with the
custom-op library when found, else the op's function fallback: the same numbers within float
tolerance). Active expert
parameters per token come from the pass reports. The separately trained ``--routing egyptian``
and ``equal3`` models are evaluated the same way (their exports as they are): the sources' claim
compares routings used in training.

Latency and energy: ``n6onnx bench`` of each rewritten model against the ORT-best original, CPU,
2 threads, interleaved ABBA blocks (``--bench-seconds`` per variant), with the custom-op library
when one is found (``N6ONNX_LIBRARY``; else the function fallback is timed, and the file says so).

    python benchmarks/moe_quality.py [--bench-seconds 8] [--no-bench]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _common  # noqa: E402

DROPS = (0, 1, 2, 3, 4)


def equal3(src: pathlib.Path, dst: pathlib.Path) -> None:
    """moe=egyptian's model -> equal weights 1/3 on the best three (see the module doc)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(str(src))
    g = m.graph
    g.initializer.extend([numpy_helper.from_array(np.array([3], np.int64), "eq3/k"),
                          numpy_helper.from_array(np.array([2], np.int64), "eq3/two"),
                          numpy_helper.from_array(np.array([3], np.int64), "eq3/three"),
                          numpy_helper.from_array(np.array([1], np.int64), "eq3/axis"),
                          numpy_helper.from_array(np.array(0.0, np.float32), "eq3/zero"),
                          numpy_helper.from_array(np.array(-1e4, np.float32), "eq3/low")])
    nodes = []
    for n in g.node:
        if n.domain == "n6onnx" and n.op_type == "MoE":
            p, lg = n.name, n.input[1]
            nodes += [helper.make_node("TopK", [lg, "eq3/k"], [f"{p}/v", f"{p}/i"], axis=-1),
                      helper.make_node("Slice", [f"{p}/v", "eq3/two", "eq3/three", "eq3/axis"], [f"{p}/third"]),
                      helper.make_node("GreaterOrEqual", [lg, f"{p}/third"], [f"{p}/best"]),
                      helper.make_node("Where", [f"{p}/best", "eq3/zero", "eq3/low"], [f"{p}/eq_logits"])]
            n.input[1] = f"{p}/eq_logits"
            for a in n.attribute:
                if a.name == "routing":
                    a.s = b"topk"
            n.attribute.extend([helper.make_attribute("k", 3), helper.make_attribute("normalize", 1)])
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(dst))


def load_trained(d: pathlib.Path):
    """(the top-2 model, calibration windows, evaluation windows, DATA for ``--calibrate``: the calibration
    windows as 16-row ``input_ids`` batches, written to d/calib.npz) from ``moe_train.py``'s folder; None, with
    the reason on stderr, when it has not been trained."""
    orig = d / "charlm-topk.onnx"
    if not orig.is_file() or not (d / "data.npz").is_file():
        print(f"error: {orig} or data.npz missing: run python benchmarks/moe_train.py first", file=sys.stderr)
        return None
    data = np.load(d / "data.npz")
    cal_w, ev_w = data["calibration"], data["evaluation"]
    calib = d / "calib.npz"
    ids = cal_w[: (len(cal_w) // 16) * 16, :-1]
    np.savez(calib, **{f"input_ids/{k}": ids[16 * k: 16 * k + 16] for k in range(len(ids) // 16)})
    return orig, cal_w, ev_w, calib


def evaluate(path: pathlib.Path, windows: np.ndarray, batch: int = 16) -> tuple[dict, bool]:
    """Loss (nats/char), accuracy and the argmax per position over ``windows`` [n, CTX + 1];
    and whether the custom-op library ran the n6 nodes."""
    from n6onnx.runtime import InferenceSession

    sess = InferenceSession(str(path), threads=2)
    n = (len(windows) // batch) * batch
    nll, hits, preds = [], [], []
    for i in range(0, n, batch):
        w = windows[i:i + batch]
        logits = sess.run(None, {"input_ids": w[:, :-1]})[0].astype(np.float64)
        m = logits.max(-1, keepdims=True)
        logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        tgt = w[:, 1:]
        nll.append(-np.take_along_axis(logp, tgt[..., None], -1)[..., 0])
        p = logits.argmax(-1)
        hits.append(p == tgt)
        preds.append(p)
    nll, hits = np.concatenate(nll), np.concatenate(hits)
    return {"loss": float(nll.mean()), "accuracy": float(hits.mean()), "positions": int(nll.size),
            "preds": np.concatenate(preds)}, sess.uses_library


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=pathlib.Path, default=ROOT / "build" / "moe")
    ap.add_argument("--bench-seconds", type=float, default=8.0)
    ap.add_argument("--window", type=float, default=1.0)
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--output", default="moe_quality")
    a = ap.parse_args(argv)

    import torch

    import n6onnx
    from n6onnx._library import library_path

    d = a.dir
    loaded = load_trained(d)
    if loaded is None:
        return 2
    orig, cal_w, ev_w, calib = loaded
    ckpt = torch.load(d / "charlm-topk.pt", weights_only=False)
    library = library_path()

    t0 = time.perf_counter()
    variants = [("original (top-2)", None, orig)]
    reports = {}
    for opt in ["sparse", "egyptian"] + [f"phi:{k}" for k in DROPS]:
        out = d / f"charlm-topk.{opt.replace(':', '-')}.onnx"
        _, rep = n6onnx.rewrite(orig, out, [f"moe={opt}"], calibrate=calib, calib_samples=len(cal_w))
        reports[opt] = rep.reports["moe"].to_json()
        variants.append((f"moe={opt}", opt, out))
        print(f"rewrote moe={opt}: {rep.reports['moe'].rewritten} blocks, {rep.seconds:.1f} s", flush=True)
    eq = d / "charlm-topk.equal3.onnx"
    equal3(d / "charlm-topk.egyptian.onnx", eq)
    variants.insert(3, ("equal3 (1/3 each on top-3)", "equal3", eq))

    rows = []
    base = None
    for name, opt, path in variants:
        ev, used_lib = evaluate(path, ev_w)
        ca, _ = evaluate(path, cal_w)
        if base is None:
            base = ev
        rep = reports.get(opt if opt != "equal3" else "egyptian")
        sites = rep["sites"] if rep else []
        active = sum(s["active_expert_params_per_token"] for s in sites) if sites else None
        row = {
            "variant": name, "option": opt,
            "experts_per_token": {None: 2, "sparse": 2, "egyptian": 3, "equal3": 3}.get(opt, None),
            "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"],
            "eval_loss_change_pct": 100 * (ev["loss"] / base["loss"] - 1),
            "eval_accuracy_change_pct": 100 * (ev["accuracy"] / base["accuracy"] - 1),
            "top1_agreement_with_original": float((ev["preds"] == base["preds"]).mean()),
            "calib_loss": ca["loss"], "calib_accuracy": ca["accuracy"],
            "evaluated_with": "custom-op library" if used_lib and opt else "onnxruntime" if not opt else "function fallback",
        }
        if opt and opt.startswith("phi"):
            row["sub_experts_per_token"] = 6 - int(opt.split(":")[1])
        if sites:
            row["active_expert_params_per_token"] = active
            row["active_fraction_vs_top2"] = round(active / sum(s["original_active_expert_params_per_token"]
                                                                for s in sites), 4)
            cal = [s.get("calibration", {}).get("rel_l2_err") for s in sites]
            if all(c is not None for c in cal) and opt != "equal3":
                row["calibration_block_rel_l2_err"] = cal
        else:
            row["active_fraction_vs_top2"] = 1.0 if opt is None else None
        rows.append(row)
        print(f"{name:32s} loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}", flush=True)

    trained = []
    labels = {"topk": "trained: 8 experts x 4D, top-2", "egyptian": "trained: 8 x 4D, Egyptian 1/2,1/3,1/6 on top-3",
              "equal3": "trained: 8 x 4D, equal 1/3 on top-3", "phi24": "trained: 24 experts x 4D/3, top-2 (Phi MoE)"}
    for variant in labels:
        for ckpt_path in sorted(d.glob(f"charlm-{variant}.pt")) + sorted(d.glob(f"charlm-{variant}-s*.pt")):
            p = ckpt_path.with_suffix(".onnx")
            if not p.is_file():
                continue
            ck = torch.load(ckpt_path, weights_only=False)
            ev, _ = evaluate(p, ev_w)
            c = ck["config"]
            per_token = (2 if ck["routing"] == "topk" else 3) * (2 * c["d"] * c["hidden"] + c["hidden"] + c["d"]) * c["layers"]
            trained.append({"variant": f"{labels[variant]}, seed {ck['seed']}", "name": variant, "seed": ck["seed"],
                            "routing": ck["routing"], "steps": ck["steps"], "experts": c["experts"], "hidden": c["hidden"],
                            "active_expert_params_per_token": per_token,
                            "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"],
                            "train_seconds": round(ck["train_seconds"], 1)})
            print(f"trained {variant:9s} seed {ck['seed']} loss {ev['loss']:.4f} acc {ev['accuracy']:.4f}", flush=True)
    top_params = next((t["active_expert_params_per_token"] for t in trained if t["name"] == "topk"), None)
    for t in trained:
        if top_params:
            t["active_fraction_vs_top2"] = round(t["active_expert_params_per_token"] / top_params, 4)

    bench = {}
    if not a.no_bench:
        bench_feeds = d / "bench_feeds.npz"  # one evaluation batch (random ids would leave the vocabulary)
        np.savez(bench_feeds, input_ids=ev_w[:16, :-1])
        for name, opt, path in variants[1:]:
            r = n6onnx.bench(path, orig, provider="cpu", threads=2, seconds=a.bench_seconds, window=a.window,
                             warmup=1.0, feeds=bench_feeds).to_json()
            bench[opt] = r
            for row in rows:
                if row["option"] == opt:
                    row["latency_ratio"] = r["ratio"]["latency_p50"]
                    row["latency_p50_ms"] = r["latency_ms"]["p50"]
                    row["baseline_latency_p50_ms"] = r["baseline"]["latency_ms"]["p50"]
                    row["energy_ratio"] = r["ratio"].get("energy")
                    row["custom_op_library"] = r["session"]["custom_op_library"]
            print(f"bench {name}: latency ratio {r['ratio']['latency_p50']['median']:.3f} "
                  f"(library {r['session']['custom_op_library']})", flush=True)

    by = {r["option"]: r for r in rows}
    seeds = {}
    for t in trained:
        seeds.setdefault(t["name"], {})[t["seed"]] = t
    common = sorted(set.intersection(*(set(v) for v in seeds.values()))) if seeds else []

    def mean(name, key):  # over the seeds every trained variant has
        return float(np.mean([seeds[name][k][key] for k in common]))
    summary = {
        "routing": {
            "claim": "+8.8% accuracy vs equal routing",
            "inference_swap_on_top2_model": {
                "egyptian_accuracy": by["egyptian"]["eval_accuracy"], "equal3_accuracy": by["equal3"]["eval_accuracy"],
                "egyptian_vs_equal3_accuracy_change_pct":
                    100 * (by["egyptian"]["eval_accuracy"] / by["equal3"]["eval_accuracy"] - 1)},
        },
        "phi_moe": {
            "claim": "65% fewer active params/token, -1.76% loss",
            "rows": [{"drop": k, "active_fraction_vs_top2": by[f"phi:{k}"]["active_fraction_vs_top2"],
                      "eval_loss_change_pct": by[f"phi:{k}"]["eval_loss_change_pct"],
                      "eval_accuracy_change_pct": by[f"phi:{k}"]["eval_accuracy_change_pct"]} for k in DROPS],
        },
    }
    if common and "egyptian" in seeds and "equal3" in seeds:
        summary["routing"]["trained_with_each_routing"] = {
            "seeds": common,
            "egyptian_accuracy": mean("egyptian", "eval_accuracy"), "equal3_accuracy": mean("equal3", "eval_accuracy"),
            "egyptian_vs_equal3_accuracy_change_pct":
                100 * (mean("egyptian", "eval_accuracy") / mean("equal3", "eval_accuracy") - 1),
            "per_seed_change_pct": [100 * (seeds["egyptian"][k]["eval_accuracy"] / seeds["equal3"][k]["eval_accuracy"] - 1)
                                    for k in common],
            "egyptian_loss": mean("egyptian", "eval_loss"), "equal3_loss": mean("equal3", "eval_loss")}
    if common and "topk" in seeds and "phi24" in seeds:
        summary["phi_moe"]["trained_24x4D/3_top2_vs_8x4D_top2"] = {
            "seeds": common,
            "active_fraction": seeds["phi24"][common[0]]["active_fraction_vs_top2"],
            "eval_loss_change_pct": 100 * (mean("phi24", "eval_loss") / mean("topk", "eval_loss") - 1),
            "eval_accuracy_change_pct": 100 * (mean("phi24", "eval_accuracy") / mean("topk", "eval_accuracy") - 1),
            "per_seed_loss_change_pct": [100 * (seeds["phi24"][k]["eval_loss"] / seeds["topk"][k]["eval_loss"] - 1)
                                         for k in common]}
    payload = {
        "benchmark": "moe_quality",
        "model": {"what": "character-level LM trained by benchmarks/moe_train.py on n6onnx.testing.corpus text",
                  **ckpt["config"], "vocab": len(ckpt["vocab"]), "steps": ckpt["steps"],
                  "train_seconds": round(ckpt["train_seconds"], 1), "custom_op_library": str(library) if library else None,
                  "onnx": str(orig.relative_to(ROOT)),
                  "exporter": "torchscript (expert loop unrolled, dense)"},
        "data": {"evaluation_positions": int((len(ev_w) // 16) * 16 * (ev_w.shape[1] - 1)),
                 "calibration_positions": int((len(cal_w) // 16) * 16 * (cal_w.shape[1] - 1)),
                 "split": "sentences of n6onnx.testing.corpus in order: 85% train, 5% calibration, 10% evaluation"},
        "method": ("Quality: mean next-character cross-entropy (nats) and top-1 accuracy over every position of the "
                   "held-out windows, onnxruntime CPU. Changes are relative to the original "
                   "top-2 model. Active expert parameters per token from the pass reports (weights and biases of "
                   "the experts a token runs, summed over layers; router excluded). Latency/energy: n6onnx bench "
                   "vs the ORT-best original, CPU, 2 threads, interleaved ABBA blocks; energy is the CPU-time "
                   "estimate (no RAPL here). The machine is shared with other jobs: latency spreads are wide."),
        "rows": rows, "trained_routing": trained, "summary": summary,
        "pass_reports": reports, "bench": bench, "seconds": round(time.perf_counter() - t0, 1),
    }
    print("wrote", _common.write(a.output, payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
