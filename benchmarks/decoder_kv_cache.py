"""KV-cache bytes of the decoder zoo's cached exports after the causal attention rewrites, measured.

For each model (n6onnx.testing.zoo_decoder, random weights) and rewrite, the rewritten cached export
decodes a prompt of CONTEXT - 1 tokens (one prefill call) and then one more token (a decode step)
from an empty past built from the graph's declared shapes; the figure is the sum of the ``present.*``
outputs' bytes after that step (what a generation loop keeps between steps), against the original
export's at the same context, and the decode step's logits are checked against the full run of the
same rewritten model (max abs difference recorded). Runs on CPU with whatever n6 library is
configured (N6ONNX_LIBRARY; none = the pure-ONNX function fallbacks).

    python benchmarks/decoder_kv_cache.py [--context 4096] [--models llama,qwen2,gemma]

(GPT-2 has learned positions for 256 tokens only: measure it with --context 256 or less.)
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import write  # noqa: E402

import n6onnx  # noqa: E402
from n6onnx.runtime import InferenceSession  # noqa: E402
from n6onnx.testing import zoo_decoder as zd  # noqa: E402

PASSES = ("original", "attention=egyptian", "attention=fftmix:@0,1")


def _runner(path):
    s = InferenceSession(str(path), threads=2)
    names = [o.name for o in s.get_outputs()]
    return lambda feeds: dict(zip(names, s.run(None, feeds)))


def measure(model: str, path, context: int) -> dict:
    run = _runner(path)
    ids = zd.example_inputs(model, batch=1, seq=context, seed=3)["input_ids"]
    past = zd.empty_past(path, 1)
    step = zd.decode(run, model, ids, [context - 1, 1], past=past)
    kv = sum(int(v.nbytes) for k, v in step.items() if k.startswith("present."))
    return {"kv_bytes": kv, "present_shapes": {k: list(v.shape) for k, v in step.items() if k.startswith("present.0")},
            "last_logits": step["logits"][:, -1]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--models", default="llama,qwen2,gemma")
    ap.add_argument("--cache", default="build/test-models")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            src = zd.export(model, args.cache)
            base = None
            for p in PASSES:
                path = src if p == "original" else pathlib.Path(tmp) / f"{model}.onnx"
                if p != "original":
                    n6onnx.rewrite(src, path, [p])
                r = measure(model, path, args.context)
                full = _runner(path)(  # the last position of one full-sequence call of the same model
                    {**{k: v for k, v in zd.example_inputs(model, 1, args.context, seed=3).items()
                        if not k.startswith("past_")}, **zd.empty_past(path, 1)})["logits"][:, -1]
                if p == "original":
                    base = r["kv_bytes"]
                rows.append({"model": model, "rewrite": p, "kv_bytes": r["kv_bytes"],
                             "ratio_to_original": round(r["kv_bytes"] / base, 4),
                             "bytes_per_token": round(r["kv_bytes"] / args.context, 1),
                             "present_0_shapes": r["present_shapes"],
                             "decode_step_vs_full_max_abs": float(np.abs(r["last_logits"] - full).max())})
                print(rows[-1])
    out = write("decoder_kv_cache", {
        "method": f"zoo_decoder cached exports (random weights, float32, batch 1): prefill {args.context - 1} tokens, "
                  "then one decode step; kv_bytes = sum of present.* bytes after the step (exact, not timed); "
                  "decode_step_vs_full_max_abs: the step's logits against one full-sequence call of the same model",
        "context": args.context, "rows": rows})
    print(out)


if __name__ == "__main__":
    main()
