#!/usr/bin/env python3
"""Where the time goes in an ONNX model under onnxruntime: ``n6onnx bench``'s profiling pass
(ORT_ENABLE_ALL, the n6 library registered, IO binding, the first run dropped) on one model,
printed as kernel time per op type and node placement.

    python tools/ort_profile.py model.onnx [more.onnx ...] [--provider cuda] [--runs 20]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="+", type=pathlib.Path)
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    from n6onnx import feeds
    from n6onnx.bench import session

    cfg = session.SessionConfig(args.provider)
    for model in args.model:
        sess, _ = cfg.session(model)
        feed = feeds.random_feeds(sess, 1)[0]
        del sess
        p = session.profile(model, feed, cfg, runs=args.runs, seconds=60.0)
        t = p["op_time"]
        print(f"== {model} ({args.provider}): kernels {t['kernel_ms']:.3f} ms per run over {t['runs']} runs; "
              f"nodes by provider {p['placement']['by_provider']}")
        for op, ms in t["by_op_type_ms"].items():
            print(f"  {op:36s} {ms:8.3f} ms")


if __name__ == "__main__":
    main()
