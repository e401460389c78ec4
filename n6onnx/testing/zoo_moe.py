"""MoE test models beyond the zoo's Mixtral: tiny random Qwen2-MoE and OLMoE (Hugging Face, experts
``batched_mm``), and the sources' own MoE module (router Linear with bias, softmax, top-k,
renormalisation, a Python loop over experts with index masks) in a tiny model, exported with the
TorchScript exporter (the loop is unrolled into one dense branch per expert) or with dynamo.

    >>> from n6onnx.testing import zoo_moe
    >>> path = zoo_moe.export("loop", "torchscript", "build/test-models")

Exports are cached like the zoo's (static shapes, batch 2 x seq 16, single output
``last_hidden_state``); torch / transformers are imported lazily.
"""

from __future__ import annotations

import os
import pathlib
import warnings

import numpy as np

from ..io import atomic_path

MODELS = ("qwen2_moe", "olmoe", "loop")
EXPORTERS = ("dynamo18", "dynamo20", "torchscript")
VERSION = "1"
_OPSET = {"dynamo18": 18, "dynamo20": 20, "torchscript": 17}
_VOCAB = 1000

# MoE blocks per model (what ``inspect`` must find); experts and top-k of each.
ARCH = {
    "qwen2_moe": {"moe": 2, "experts": 4, "top_k": 2, "activation": "swiglu", "normalize": 0},
    "olmoe": {"moe": 2, "experts": 4, "top_k": 2, "activation": "swiglu", "normalize": 0},
    "loop": {"moe": 2, "experts": 8, "top_k": 2, "activation": "gelu", "normalize": 1},
}


def _torch():
    import torch

    return torch


def loop_moe_class():
    """The sources' MoE layer (built lazily: torch is an optional dependency)."""
    torch = _torch()
    nn = torch.nn

    class LoopMoE(nn.Module):
        """Router Linear(D, E) with bias -> softmax -> top-k -> renormalise; every expert is
        Linear(D, H) -> GELU -> Linear(H, D); tokens reach an expert through an index mask.
        ``routing``: "topk" (default), "topk_softmax" (top-k of the logits, then a softmax of the k
        values: the same weights, another graph), "egyptian" (1/2, 1/3, 1/6 on the best three) or
        "equal3" (1/3 each on the best three) - the latter two for training comparisons."""

        def __init__(self, d: int, hidden: int, experts: int = 8, k: int = 2, routing: str = "topk"):
            super().__init__()
            self.k, self.routing = k, routing
            self.router = nn.Linear(d, experts)
            self.experts = nn.ModuleList(
                nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)) for _ in range(experts))

        def gates(self, x):
            logits = self.router(x)
            if self.routing == "topk":
                w, idx = torch.softmax(logits, -1).topk(self.k, -1)
                return w / w.sum(-1, keepdim=True), idx
            if self.routing == "topk_softmax":
                v, idx = logits.topk(self.k, -1)
                return torch.softmax(v, -1), idx
            _, idx = logits.topk(3, -1)
            fixed = [1 / 2, 1 / 3, 1 / 6] if self.routing == "egyptian" else [1 / 3] * 3
            return torch.tensor(fixed, dtype=x.dtype).expand(idx.shape), idx

        def forward(self, x):
            w, idx = self.gates(x)
            out = torch.zeros_like(x)
            for e, expert in enumerate(self.experts):
                we = (w * (idx == e).to(w.dtype)).sum(-1, keepdim=True)
                out = out + we * expert(x)
            return out

    return LoopMoE


def char_lm_class():
    """A small pre-norm transformer LM: causal self-attention + a LoopMoE FFN per layer."""
    torch = _torch()
    nn = torch.nn
    LoopMoE = loop_moe_class()

    class Block(nn.Module):
        def __init__(self, d, heads, hidden, experts, k, routing):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
            self.moe = LoopMoE(d, hidden, experts, k, routing)

        def forward(self, x, mask):
            h = self.ln1(x)
            x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
            return x + self.moe(self.ln2(x))

    class CharLM(nn.Module):
        def __init__(self, vocab, d=96, layers=2, heads=4, hidden=384, experts=8, k=2, ctx=64, routing="topk"):
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)
            self.blocks = nn.ModuleList(Block(d, heads, hidden, experts, k, routing) for _ in range(layers))
            self.ln = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab)

        def forward(self, ids):
            L = ids.shape[1]
            mask = torch.triu(torch.full((L, L), float("-inf")), 1)
            x = self.emb(ids) + self.pos[:L]
            for b in self.blocks:
                x = b(x, mask)
            return self.head(self.ln(x))

    return CharLM


def _hf_config(model: str):
    import transformers as tf

    common = dict(vocab_size=_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, use_cache=False,
                  num_experts=4, num_experts_per_tok=2, experts_implementation="batched_mm")
    if model == "qwen2_moe":
        return tf.Qwen2MoeConfig(intermediate_size=128, moe_intermediate_size=96, shared_expert_intermediate_size=64,
                                 decoder_sparse_step=1, **common)
    return tf.OlmoeConfig(intermediate_size=96, **common)


def load_torch_model(model: str):
    torch = _torch()
    torch.manual_seed(0)
    if model == "loop":
        LoopMoE = loop_moe_class()

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(_VOCAB, 64)
                self.ln = torch.nn.ModuleList(torch.nn.LayerNorm(64) for _ in range(2))
                self.moe = torch.nn.ModuleList(LoopMoE(64, 96, 8, 2) for _ in range(2))

            def forward(self, input_ids, attention_mask):
                x = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
                for ln, moe in zip(self.ln, self.moe):
                    x = x + moe(ln(x))
                return x

        return Tiny().eval()
    import transformers as tf

    cls = {"qwen2_moe": tf.Qwen2MoeModel, "olmoe": tf.OlmoeModel}[model]
    m = cls(_hf_config(model))
    if hasattr(m, "set_experts_implementation"):
        m.set_experts_implementation("batched_mm")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return m.eval()


def example_inputs(batch: int = 2, seq: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, _VOCAB, size=(batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def export(model: str, exporter: str, cache_dir: str | os.PathLike) -> pathlib.Path:
    """Cached export of a tiny ``model`` (one of MODELS) with ``exporter`` (one of EXPORTERS)."""
    if model not in MODELS or exporter not in EXPORTERS:
        raise ValueError(f"unknown model/exporter {model!r}/{exporter!r}: {MODELS} x {EXPORTERS}")
    path = pathlib.Path(cache_dir) / f"moe-{model}-{exporter}-b2-s16-v{VERSION}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch = _torch()
    inner = load_torch_model(model)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            if model == "loop":
                return self.inner(input_ids, attention_mask)
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                              return_dict=True).last_hidden_state

    feeds = example_inputs()
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    export_module(Wrapper().eval(), args, list(feeds), path, exporter)
    return path


def export_module(module, args, input_names, path: pathlib.Path, exporter: str,
                  output_names=("last_hidden_state",)) -> None:
    """torch.onnx.export to ``path`` (atomically), static shapes, one file."""
    import contextlib

    import onnx

    torch = _torch()
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter.startswith("dynamo"):
                with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                    prog = torch.onnx.export(module, args, dynamo=True, opset_version=_OPSET[exporter],
                                             input_names=list(input_names), output_names=list(output_names),
                                             external_data=False, optimize=True)
                proto = prog.model_proto
            else:
                torch.onnx.export(module, args, tmp, dynamo=False, opset_version=_OPSET[exporter],
                                  input_names=list(input_names), output_names=list(output_names),
                                  do_constant_folding=True)
                proto = onnx.load(tmp)
        onnx.save_model(proto, tmp, save_as_external_data=False)
