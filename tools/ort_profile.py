#!/usr/bin/env python3
"""Where the time goes in an ONNX model under onnxruntime: runs it with ORT's profiler (n6 library
registered, ORT_ENABLE_ALL) and prints the kernel time per op type, summed over nodes, median run.

    python tools/ort_profile.py model.onnx [--provider cuda] [--runs 20]
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="+")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    import onnxruntime as ort

    from n6onnx import feeds, runtime

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.provider == "cuda" else ["CPUExecutionProvider"]
    for model in args.model:
        tmp = tempfile.mkdtemp()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = True
        so.profile_file_prefix = str(pathlib.Path(tmp) / "prof")
        sess = runtime.InferenceSession(model, so, providers=providers)
        feed = feeds.random_feeds(sess, 1)[0]
        for _ in range(5):
            sess.run(None, feed)
        for _ in range(args.runs):
            sess.run(None, feed)
        events = json.loads(pathlib.Path(sess.end_profiling()).read_text())
        per_run: dict[str, list[float]] = collections.defaultdict(list)
        runs = [e for e in events if e.get("name") == "model_run"]
        nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
        for r in runs[-args.runs:]:
            t0, t1 = r["ts"], r["ts"] + r["dur"]
            acc: dict[str, float] = collections.defaultdict(float)
            for e in nodes:
                if t0 <= e["ts"] <= t1:
                    acc[e["args"].get("op_name", "?")] += e["dur"]
            for k, v in acc.items():
                per_run[k].append(v)
        total = statistics.median(r["dur"] for r in runs[-args.runs:])
        print(f"== {model}: model_run median {total / 1000:.3f} ms over {args.runs} runs ({args.provider})")
        for k, v in sorted(per_run.items(), key=lambda kv: -statistics.median(kv[1])):
            print(f"  {k:36s} {statistics.median(v) / 1000:8.3f} ms")


if __name__ == "__main__":
    main()
