"""Peak memory of `n6onnx inspect` and `n6onnx rewrite` on an LLM-sized export (issue 20, item 5).

Model: a random-weight Llama-style decoder (transformers LlamaModel, SwiGLU MLPs, RMSNorm, RoPE,
grouped-query attention), exported with torch's dynamo exporter under no_grad with its tensors in
an external data file (as large exports are shipped). Default config ~1 B parameters: hidden 2048,
16 layers, intermediate 5632, 32 query / 4 key-value heads, vocabulary 32000; ``--layers`` and
``--hidden`` shrink it where a machine cannot hold the export.

Each command runs in a child process (the ``n6onnx`` CLI of this tree); its peak resident set size is
the child's ``ru_maxrss`` (resource.getrusage(RUSAGE_CHILDREN) after it exits: each command runs
in a fresh wrapper process, so the figure is that command's alone). Peak RSS is set against the model's
size on disk (.onnx + external data). Commands: inspect; rewrite --pass ffn=phi-bottleneck:4/3
(uncalibrated and with --calibrate on a few short sequences); rewrite --pass gelu=phi6 (Llama has no
GELU: nothing matches, but the model is still loaded, canonicalised and saved); each repeated
``--repeats`` times. Writes benchmarks/results/llm_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx.io import atomic_path  # noqa: E402
from n6onnx.testing import corpus  # noqa: E402

from _common import hardware, write  # noqa: E402


def llama_config(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int, vocab: int):
    import transformers as tf

    return tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                          intermediate_size=intermediate, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          max_position_embeddings=4096, use_cache=False, hidden_act="silu")


def export_llama(path: pathlib.Path, config, *, seq: int = 16) -> pathlib.Path:
    """Export a random-weight LlamaModel (dynamic batch and sequence) to ``path`` with external data
    ``path.name + '.data'``; skipped when it exists. Atomic: written in a temporary folder, then renamed."""
    import torch
    import transformers as tf

    if path.is_file():
        return path
    torch.manual_seed(0)
    with torch.device("meta"):
        model = tf.LlamaModel(config)
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for p in model.parameters():  # random weights, cheaper than transformers' init
            if p.ndim == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    model.rotary_emb = type(model.rotary_emb)(config)  # its buffers are computed, not random

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    ids = torch.randint(0, config.vocab_size, (1, seq))
    mask = torch.ones(1, seq, dtype=torch.int64)
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2, max=4096)}
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with torch.no_grad():
            torch.onnx.export(Wrapper(model), (ids, mask), str(tmpdir / path.name), dynamo=True, opset_version=20,
                              input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                              dynamic_shapes=(dims, dims), external_data=True, optimize=True)
        for f in sorted(tmpdir.iterdir(), key=lambda f: f.name == path.name):  # the .onnx last
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return path
