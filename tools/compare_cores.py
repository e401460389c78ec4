#!/usr/bin/env python3
"""Check that two rewrites of one model agree on a provider (e.g. the fused and mha cores of
attention=egyptian on CUDA), with an all-ones attention mask and with a padded one.

    python tools/compare_cores.py original.onnx "attention=egyptian:by-index" "attention=egyptian:by-index:mha" --provider cuda
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    import numpy as np

    import n6onnx
    from n6onnx import feeds

    from n6onnx.bench.run import SessionConfig

    providers = SessionConfig(args.provider).providers
    tmp = pathlib.Path(tempfile.mkdtemp())
    sessions = []
    for k, spec in enumerate((args.a, args.b)):
        out = tmp / f"{k}.onnx"
        n6onnx.rewrite(args.model, out, [spec])
        sessions.append(n6onnx.InferenceSession(out, providers=providers))
    feed = feeds.random_feeds(sessions[0], 1)[0]
    cases = [("as generated", feed)]
    if "attention_mask" in feed:
        ones = {**feed, "attention_mask": np.ones_like(feed["attention_mask"])}
        pad = {**feed, "attention_mask": np.ones_like(feed["attention_mask"])}
        pad["attention_mask"][..., -max(1, pad["attention_mask"].shape[-1] // 8):] = 0
        cases = [("all-ones mask", ones), ("padded mask", pad)]
    worst = 0.0
    for name, f in cases:
        ya, yb = (s.run(None, f)[0].astype(np.float32) for s in sessions)
        err = float(np.abs(ya - yb).max() / max(float(np.abs(ya).max()), 1e-30))
        worst = max(worst, err)
        print(f"{name}: max |a - b| / max |a| = {err:.2e}")
    sys.exit(0 if worst < 1e-2 else 1)


if __name__ == "__main__":
    main()
