"""Token ids and tokenizers: what the graph itself says about its vocabulary.

- :func:`bounds`: for each integer graph input that indexes an embedding table (a Gather on axis 0
  of an initializer, through casts and reshapes), the table's row count. Random token feeds are
  drawn inside it; :func:`check_ids` refuses user feeds outside it, naming the input and the bound
  (onnxruntime would otherwise fail with a traceback, or read garbage on some providers).
- :func:`default_tokenizer`: the packaged all-MiniLM-L6-v2 tokenizer is used without
  ``--tokenizer`` only when the vocabulary provably matches: the model is the n6onnx zoo MiniLM, or
  its word-embedding table is the packaged model's. Anything else asks for ``--tokenizer``.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Mapping

import numpy as np
import onnx

from .errors import BadArgumentError
from .graph import proto_consumers
from .text import minilm_dir

ZOO_MINILM_TAG = "n6onnx.zoo model=minilm "
# ops an id tensor may pass through on its way to the embedding Gather
_PASS_THROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand"}


def _as_proto(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    return onnx.load(str(model), load_external_data=False)  # row counts are in the dims: no data needed


def bounds(model) -> dict[str, int]:
    """Integer graph input -> rows of the embedding table it indexes (the smallest, if several)."""
    proto = _as_proto(model)
    g = proto.graph
    inits = {t.name: list(t.dims) for t in g.initializer}
    for n in g.node:  # Constant nodes holding tables
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    inits[n.output[0]] = list(a.t.dims)
    consumers = proto_consumers(proto)
    ints = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
            onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}
    out: dict[str, int] = {}
    for inp in g.input:
        if inp.type.tensor_type.elem_type not in ints:
            continue
        stack, seen = [inp.name], set()
        while stack:
            v = stack.pop()
            if v in seen:
                continue
            seen.add(v)
            for n in consumers.get(v, ()):
                if n.op_type == "Gather" and n.domain in ("", "ai.onnx") and len(n.input) == 2 and n.input[1] == v:
                    axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
                    dims = inits.get(n.input[0])
                    if axis == 0 and dims:
                        out[inp.name] = min(out.get(inp.name, dims[0]), dims[0])
                elif n.op_type in _PASS_THROUGH and n.input and n.input[0] == v:
                    stack.extend(n.output)
    return out


def check_ids(batches: Iterable[Mapping[str, np.ndarray]], limits: Mapping[str, int], where: str = "feeds") -> None:
    """Every id of a bounded input lies in [0, rows); else one line naming the input and the bound."""
    for k, feeds in enumerate(batches):
        for name, rows in limits.items():
            if name not in feeds:
                continue
            a = np.asarray(feeds[name])
            if not a.size or not np.issubdtype(a.dtype, np.integer):
                continue
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi >= rows:
                bad = hi if hi >= rows else lo
                raise BadArgumentError(
                    f"{where}: input {name!r} holds token id {bad} (batch {k}), outside the embedding table the "
                    f"model gathers it from: ids must be in [0, {rows}) (is this data, or its tokenizer, for this model?)"
                )


def _packaged_vocab_size() -> int | None:
    try:
        words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except Exception:  # noqa: BLE001 - the package is optional
        return None
    return len(words)


def _same_embeddings(proto: onnx.ModelProto, table: str, base: pathlib.Path | None) -> bool:
    """The model's ``table`` initializer equals the packaged MiniLM's word embeddings."""
    try:
        from safetensors.numpy import load_file  # optional (comes with transformers): only here

        ref = load_file(str(minilm_dir() / "model.safetensors"))
        ref = next(v for k, v in ref.items() if k.endswith("word_embeddings.weight"))
        t = next(t for t in proto.graph.initializer if t.name == table)
        arr = onnx.numpy_helper.to_array(t, base_dir=str(base) if base else "")
    except Exception:  # noqa: BLE001 - no package, no table, unreadable data: not provable
        return False
    return arr.shape == ref.shape and np.array_equal(arr.astype(ref.dtype), ref)


def _table_of(proto: onnx.ModelProto, name: str) -> str | None:
    for n in proto.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[1] == name:
            return n.input[0]
    return None


def default_tokenizer(model, option: str = "--tokenizer") -> pathlib.Path:
    """The packaged MiniLM tokenizer folder when ``model``'s vocabulary provably is its vocabulary;
    otherwise BadArgumentError asking for ``option``."""
    proto = _as_proto(model)
    base = pathlib.Path(model).parent if isinstance(model, (str, os.PathLike)) else None
    size = _packaged_vocab_size()
    rows = bounds(proto).get("input_ids")
    ask = (f"text data needs the model's own tokenizer: give {option} DIR (a Hugging Face tokenizer folder, "
           "or the folder of its tokenizer.json)")
    if size is None:
        raise BadArgumentError(f"{ask}; the packaged all-MiniLM-L6-v2 tokenizer is not installed")
    if rows is None:
        raise BadArgumentError(f"{ask}; n6onnx cannot see which embedding table input_ids indexes, so it cannot "
                               "tell whether the packaged all-MiniLM-L6-v2 tokenizer fits")
    if rows != size:
        raise BadArgumentError(f"{ask}; the model's vocabulary has {rows} entries, the packaged all-MiniLM-L6-v2 "
                               f"tokenizer's {size}")
    if proto.doc_string.startswith(ZOO_MINILM_TAG) or _same_embeddings(proto, _table_of(proto, "input_ids") or "", base):
        return minilm_dir()
    raise BadArgumentError(f"{ask}; the model's vocabulary has as many entries as the packaged all-MiniLM-L6-v2 "
                           "tokenizer's, but its embeddings are not the packaged model's, so the match is not proven")
