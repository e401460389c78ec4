"""Decoder zoo: tiny random-weight causal language models exported as users have them, with a KV cache.

    >>> from n6onnx.testing import zoo_decoder as zd
    >>> path = zd.export("llama", "/tmp/zoo_cache")            # merged KV-cache export (prefill and decode)
    >>> feeds = zd.example_inputs("llama", batch=2, seq=8, past=0)

Models (Hugging Face ``*ForCausalLM`` with random weights, seeded; biases re-initialised to ``randn * 0.02``
as in ``zoo``):

* ``gpt2``  - GPT2LMHeadModel; ``gelu_new`` MLP, Conv1D projections, 4 heads (no GQA).
* ``llama`` - LlamaForCausalLM; SwiGLU MLP, RMSNorm, RoPE, GQA (4 query heads / 2 key-value heads).
* ``qwen2`` - Qwen2ForCausalLM; as llama plus Q/K/V projection biases.
* ``gemma`` - GemmaForCausalLM; GELU-gated MLP (``gelu_pytorch_tanh``), scaled embeddings, GQA 4 / 2.

Forms (``torch.onnx.export(dynamo=True)``, opset 18 or 20, dynamic batch / sequence / past dims):

* ``kv`` - the cached ("merged") form: inputs ``input_ids`` [batch, seq], ``attention_mask`` [batch, total]
  (total = past + seq), ``position_ids`` [batch, seq] and ``past_key_values.{i}.key`` / ``.value``
  [batch, kv_heads, past, head_dim]; outputs ``logits`` [batch, seq, vocab] and ``present.{i}.key`` /
  ``.value`` [batch, kv_heads, past + seq, head_dim]. One graph serves the prefill (past = 0) and every
  decode step (past > 0), as the merged with-past/without-past exports of export tools do.
* ``nokv`` - no cache: inputs ``input_ids``, ``attention_mask``, ``position_ids``; output ``logits``.
"""

from __future__ import annotations

import inspect

import contextlib
import logging
import os
import pathlib
import warnings
from collections.abc import Callable

import numpy as np
import onnx

from .. import feeds
from ..io import atomic_path
from . import zoo
from .zoo import ZooExportError

MODELS = ("gpt2", "llama", "qwen2", "gemma")
# Not among MODELS (the passes refuse its attention): Mistral with a sliding window of 4 tokens, a causal
# mask that is not plain causal.
SLIDING = ("mistral",)
FORMS = ("kv", "nokv")
EXPORTERS = ("dynamo18", "dynamo20")
# Bump when anything that changes the exported graphs changes (configs, wrappers, export settings).
VERSION = "1"

VOCAB = 1000
LAYERS = 2
HEADS = 4
KV_HEADS = {"gpt2": 4, "llama": 2, "qwen2": 2, "gemma": 2, "mistral": 2}
HEAD_DIM = 16
_HIDDEN = 64
_INTER = 256
_OPSET = {"dynamo18": 18, "dynamo20": 20}


def _check(model: str, form: str = "kv", exporter: str = "dynamo20") -> None:
    if model not in MODELS + SLIDING:
        raise ValueError(f"unknown decoder zoo model {model!r}; expected one of {MODELS + SLIDING}")
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; expected one of {FORMS}")
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")


def _config(model: str):
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=_HIDDEN, intermediate_size=_INTER, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, num_key_value_heads=KV_HEADS[model], max_position_embeddings=256,
                  use_cache=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if model == "gpt2":
        return tf.GPT2Config(vocab_size=VOCAB, n_positions=256, n_embd=_HIDDEN, n_layer=LAYERS, n_head=HEADS,
                             n_inner=_INTER, bos_token_id=1, eos_token_id=2, use_cache=True)
    if model == "llama":
        return tf.LlamaConfig(hidden_act="silu", **common)
    if model == "qwen2":
        return tf.Qwen2Config(hidden_act="silu", **common)
    if model == "mistral":
        return tf.MistralConfig(hidden_act="silu", sliding_window=4, head_dim=HEAD_DIM, **common)
    return tf.GemmaConfig(hidden_act="gelu_pytorch_tanh", head_dim=HEAD_DIM, **common)


def load_torch_model(model: str):
    """The ``*ForCausalLM`` module in eval mode; deterministic (same weights on every call)."""
    _check(model)
    import torch
    import transformers as tf

    cls = {"gpt2": tf.GPT2LMHeadModel, "llama": tf.LlamaForCausalLM, "qwen2": tf.Qwen2ForCausalLM,
           "gemma": tf.GemmaForCausalLM, "mistral": tf.MistralForCausalLM}[model]
    torch.manual_seed(0)
    return zoo.randomise_biases(cls(_config(model))).eval()


def past_names(layers: int = LAYERS) -> list[str]:
    return [f"past_key_values.{i}.{k}" for i in range(layers) for k in ("key", "value")]


def present_names(layers: int = LAYERS) -> list[str]:
    return [f"present.{i}.{k}" for i in range(layers) for k in ("key", "value")]


def input_names(form: str = "kv") -> list[str]:
    return ["input_ids", "attention_mask", "position_ids", *(past_names() if form == "kv" else [])]


def output_names(form: str = "kv") -> list[str]:
    return ["logits", *(present_names() if form == "kv" else [])]


def example_inputs(model: str, batch: int = 2, seq: int = 8, past: int = 0, *, form: str = "kv",
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic feeds: random token ids, an all-ones ``attention_mask`` over past + seq, ``position_ids``
    ``past .. past + seq - 1`` and (form ``kv``) random float32 past keys/values of length ``past``."""
    _check(model, form)
    rng = np.random.default_rng(seed)
    feeds = {
        "input_ids": rng.integers(3, VOCAB, size=(batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, past + seq), np.int64),
        "position_ids": np.broadcast_to(np.arange(past, past + seq, dtype=np.int64), (batch, seq)).copy(),
    }
    if form == "kv":
        for n in past_names():
            feeds[n] = rng.standard_normal((batch, KV_HEADS[model], past, HEAD_DIM)).astype(np.float32)
    return feeds


def _wrapper(model: str, m, form: str):
    """A module taking the flat graph inputs positionally and returning the flat graph outputs."""
    import torch
    from transformers import DynamicCache

    # the cache keyword: `cache` (transformers >= 5.2x), `past_key_values` before
    cache_kw = "cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values"

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, *past):
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            if form == "nokv":
                return self.inner(**kw, use_cache=False).logits
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
            cache = DynamicCache(ddp_cache_data=pairs, config=self.inner.config)
            out = self.inner(**kw, **{cache_kw: cache}, use_cache=True)
            done = out.cache if cache_kw == "cache" else out.past_key_values
            present = [t for layer in done.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return _Wrapper(m).eval()


def run_torch(model: str, feeds: dict[str, np.ndarray], *, form: str = "kv") -> dict[str, np.ndarray]:
    """The transformers model's outputs for ``feeds``, by graph output name (the reference for tests)."""
    import torch

    w = _wrapper(model, load_torch_model(model), form)
    with torch.no_grad():
        out = w(*(torch.from_numpy(feeds[n]) for n in input_names(form)))
    out = out if isinstance(out, tuple) else (out,)
    return {n: t.numpy() for n, t in zip(output_names(form), out)}


def cache_path(model: str, cache_dir: str | os.PathLike, *, form: str = "kv",
               exporter: str = "dynamo20") -> pathlib.Path:
    """Where ``export`` caches this combination."""
    return pathlib.Path(cache_dir) / f"decoder-{model}-{form}-{exporter}-v{VERSION}.onnx"


def export(model: str, cache_dir: str | os.PathLike, *, form: str = "kv", exporter: str = "dynamo20") -> pathlib.Path:
    """Path of a cached single-file .onnx of the decoder ``model`` in ``form`` (exported on first call).

    Raises ``zoo.ZooExportError`` naming the model when the export fails.
    """
    _check(model, form, exporter)
    path = cache_path(model, cache_dir, form=form, exporter=exporter)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _export_uncached(model, form, exporter, path)
    except Exception as e:
        raise ZooExportError(f"exporting decoder {model!r} ({form}, {exporter}) failed: {type(e).__name__}: {e}") from e
    return path


def _export_uncached(model: str, form: str, exporter: str, path: pathlib.Path) -> None:
    feeds = example_inputs(model, batch=2, seq=3, past=5 if form == "kv" else 0, form=form)
    export_lm(load_torch_model(model), path, feeds, form=form, exporter=exporter,
              doc=f"n6onnx.zoo_decoder model={model} form={form} exporter={exporter} v{VERSION}")


def export_lm(lm, path: str | os.PathLike, feeds: dict[str, np.ndarray], *, form: str = "nokv",
              exporter: str = "dynamo20", doc: str = "", layers: int = LAYERS) -> pathlib.Path:
    """Export a Hugging Face ``*ForCausalLM`` module ``lm`` (eval mode) as this zoo exports its decoders
    (``form``'s inputs/outputs, dynamic batch / sequence / past, ``exporter``) to ``path``, atomically;
    ``feeds`` are example inputs (``example_inputs``' names) and ``layers`` the model's layer count."""
    import torch

    _check("gpt2", form, exporter)
    path = pathlib.Path(path)
    ins = input_names(form)[:3] + (past_names(layers) if form == "kv" else [])
    outs = ["logits", *(present_names(layers) if form == "kv" else [])]
    w = _wrapper("", lm, form)
    args = [torch.from_numpy(feeds[n]) for n in ins]
    batch = torch.export.Dim("batch", min=1, max=64)
    seq = torch.export.Dim("seq", min=1, max=4096)
    total = torch.export.Dim("total", min=1, max=8192)
    past = torch.export.Dim("past", min=0, max=4096)
    dyn: tuple = ({0: batch, 1: seq}, {0: batch, 1: total if form == "kv" else seq}, {0: batch, 1: seq})
    if form == "kv":
        dyn = (*dyn, tuple({0: batch, 2: past} for _ in range(2 * layers)))
    with atomic_path(path) as tmp:
        reg_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
        old_level = reg_logger.level
        reg_logger.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), torch.no_grad(), open(os.devnull, "w") as devnull, \
                    contextlib.redirect_stdout(devnull):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    w, tuple(args), dynamo=True, opset_version=_OPSET[exporter], input_names=ins,
                    output_names=outs, dynamic_shapes=dyn, external_data=False, optimize=True,
                )
        finally:
            reg_logger.setLevel(old_level)
        proto = prog.model_proto
        proto.doc_string = doc
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return path


def decode(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], model: str,
           input_ids: np.ndarray, chunks: list[int], *, past: dict[str, np.ndarray] | None = None,
           past_len: int = 0) -> dict[str, np.ndarray]:
    """Feed ``input_ids`` [batch, seq] through a ``kv`` graph in chunks of the given sizes (summing to seq),
    each call's presents becoming the next call's past; returns the concatenated ``logits`` and the last
    presents. ``run`` maps a feed dict to an output dict (e.g. an ORT session's ``run`` with names); the past
    starts empty (length 0) unless ``past`` (with its length ``past_len``) is given."""
    b, s = input_ids.shape
    if sum(chunks) != s:
        raise ValueError(f"chunks {chunks} do not sum to the sequence length {s}")
    state = past if past is not None else {
        n: np.zeros((b, KV_HEADS[model], 0, HEAD_DIM), np.float32) for n in past_names()}
    done, logits, out = past_len, [], {}
    t = 0
    for c in chunks:
        feeds = {"input_ids": input_ids[:, t:t + c], "attention_mask": np.ones((b, done + c), np.int64),
                 "position_ids": np.broadcast_to(np.arange(done, done + c, dtype=np.int64), (b, c)).copy(), **state}
        out = run(feeds)
        logits.append(out["logits"])
        state = {p: out[q] for p, q in zip(past_names(), present_names())}
        done, t = done + c, t + c
    return {"logits": np.concatenate(logits, axis=1), **{q: out[q] for q in present_names()}}


def calibration_npz(model: str, path: str | os.PathLike, *, batches: int = 8, batch: int = 2, seq: int = 16,
                    seed: int = 100) -> pathlib.Path:
    """Write prefill feeds (past length 0) for the ``kv`` graph as an .npz of ``NAME/K`` arrays, the form
    ``--calibrate`` / ``validate --feeds`` read; random token ids (the tiny models have no tokenizer)."""
    arrays = {}
    for k in range(batches):
        for name, a in example_inputs(model, batch, seq, past=0, seed=seed + k).items():
            arrays[f"{name}/{k}"] = a
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return path


def empty_past(path: str | os.PathLike, batch: int) -> dict[str, np.ndarray]:
    """The zero-length past a generation loop starts with, shaped as the graph at ``path`` declares its
    past inputs (dim 0 = batch, other symbolic dims 0): a rewrite may change what a past tensor holds
    (``attention=fftmix`` carries its state there, [batch, state, D]) but never its name."""
    specs = feeds.proto_input_specs(onnx.load(str(path), load_external_data=False))
    return {n: feeds.empty_like_declared(shape, np.float32, batch) for n, _, shape in specs
            if n.startswith("past_key_values.")}
