#!/usr/bin/env python3
"""Export a BERT-base-shaped encoder at a long sequence length, with random weights, for the GPU
end-to-end Egyptian-attention benchmark (benchmarks/gpu_egyptian_long.sh).

Hidden 768, 12 heads, FFN 3072, LAYERS layers (default 4), max positions = L, eager attention (so
the export has the MatMul/Softmax core the attention pass rewrites), batch 1, static [1, L]
inputs. Weights are random (seeded): only latency and energy are measured with this model. Writes
the graph without its large weights (tools/weightless.py) next to OUT, ready to travel:

    python tools/long_encoder.py build/gpu-e2e/bert-long-L4096.onnx --seq 4096 --fp16
    python tools/long_encoder.py build/gpu-e2e/bert-long-L4096-nomask.onnx --seq 4096 --fp16 --no-mask
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--no-mask", action="store_true",
                    help="no attention_mask input (unpadded inputs: the attention runs without a key-padding mask)")
    ap.add_argument("--fp16", action="store_true",
                    help="also write OUT-fp16 (onnxruntime.transformers.float16 conversion, float16 inputs/outputs)")
    args = ap.parse_args()

    import numpy as np
    import onnx
    import torch
    import transformers as tf

    import weightless

    cfg = tf.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=args.layers, num_attention_heads=12,
                        intermediate_size=3072, max_position_embeddings=args.seq, type_vocab_size=2,
                        attn_implementation="eager")
    torch.manual_seed(0)
    model = tf.BertModel(cfg).eval()

    class Wrapped(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    class Unmasked(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, token_type_ids):
            return self.m(input_ids=input_ids, token_type_ids=token_type_ids).last_hidden_state

    rng = np.random.default_rng(0)
    ids = torch.from_numpy(rng.integers(1000, 30000, (1, args.seq)).astype(np.int64))
    mask = torch.ones((1, args.seq), dtype=torch.int64)
    types = torch.zeros((1, args.seq), dtype=torch.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        if args.no_mask:
            prog = torch.onnx.export(Unmasked(model), (ids, types), dynamo=True, opset_version=18,
                                     input_names=["input_ids", "token_type_ids"],
                                     output_names=["last_hidden_state"], external_data=False, optimize=True)
        else:
            prog = torch.onnx.export(Wrapped(model), (ids, mask, types), dynamo=True, opset_version=18,
                                     input_names=["input_ids", "attention_mask", "token_type_ids"],
                                     output_names=["last_hidden_state"], external_data=False, optimize=True)
    onnx.save_model(prog.model_proto, str(args.out))
    outs = [args.out]
    if args.fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        half = args.out.with_name(f"{args.out.stem}-fp16.onnx")
        onnx.save_model(convert_float_to_float16(prog.model_proto, keep_io_types=False), str(half))
        outs.append(half)
    for path in outs:
        light = path.with_suffix(".weightless.onnx")
        weightless.strip(str(path), str(light))
        print(f"wrote {path} and {light} ({light.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    main()
