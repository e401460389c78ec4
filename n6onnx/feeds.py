"""Model inputs for validate, bench and calibration: from an .npz, from text through a Hugging Face
tokenizer, or random feeds that respect the graph's input types. Dynamic dimensions come from
``--dim name=value``; every mismatch is a clear error."""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from .errors import BadArgumentError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def parse_dims(dims: Iterable[str]) -> dict[str, int]:
    out = {}
    for d in dims:
        name, sep, value = d.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = int(value)
        except ValueError:
            raise BadArgumentError(f"--dim expects name=integer, got {d!r}") from None
        if out[name.strip()] <= 0:
            raise BadArgumentError(f"--dim {d!r}: the size must be positive")
    return out


def input_specs(session: ort.InferenceSession) -> list[tuple[str, type, list]]:
    specs = []
    for i in session.get_inputs():
        if i.type not in _ORT_TYPES:
            raise BadArgumentError(f"input {i.name!r} has type {i.type}, which n6onnx cannot feed")
        specs.append((i.name, _ORT_TYPES[i.type], list(i.shape)))
    return specs


def resolve_shape(name: str, shape: Sequence, dims: Mapping[str, int]) -> tuple[int, ...]:
    out = []
    for k, d in enumerate(shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(dims[d])
        else:
            label = d if isinstance(d, str) and d else f"axis {k}"
            raise BadArgumentError(
                f"input {name!r} has a dynamic dimension {label!r}; give its size with --dim {label}=N"
                if isinstance(d, str) and d else
                f"input {name!r} has an unnamed dynamic dimension at axis {k}; export with static or named shapes"
            )
    return tuple(out)


def random_feeds(session: ort.InferenceSession, n: int, dims: Mapping[str, int] | None = None,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` batches of random feeds. Integer inputs named like token ids get small ids, masks get
    ones; float inputs are standard normal."""
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(n):
        feeds = {}
        for name, dtype, shape in input_specs(session):
            shape = resolve_shape(name, shape, dims)
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_:
                feeds[name] = np.ones(shape, dtype)
            elif "mask" in name:
                feeds[name] = np.ones(shape, dtype)
            elif "type" in name:
                feeds[name] = np.zeros(shape, dtype)
            else:
                feeds[name] = rng.integers(1, 1000, size=shape).astype(dtype)
        batches.append(feeds)
    return batches


def load_npz(path: str | os.PathLike, session: ort.InferenceSession | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds from an .npz: arrays named after the inputs (one batch), or ``NAME/K`` for batch K."""
    p = pathlib.Path(path)
    try:
        data = np.load(p, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise BadArgumentError(f"{p}: cannot read feeds (.npz expected): {e}") from None
    batches: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        name, _, idx = key.partition("/")
        batches.setdefault(int(idx) if idx.isdigit() else 0, {})[name] = arr
    out = [batches[k] for k in sorted(batches)]
    if session is not None:
        for feeds in out:
            check_feeds(session, feeds, str(p))
    return out


def check_feeds(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], where: str = "feeds") -> None:
    for name, dtype, shape in input_specs(session):
        if name not in feeds:
            raise BadArgumentError(f"{where}: missing input {name!r} (the model needs {[s[0] for s in input_specs(session)]})")
        a = feeds[name]
        if a.dtype != dtype:
            raise BadArgumentError(f"{where}: input {name!r} has dtype {a.dtype}, the model needs {np.dtype(dtype)}")
        if len(a.shape) != len(shape) or any(isinstance(d, int) and d >= 0 and d != s for d, s in zip(shape, a.shape)):
            raise BadArgumentError(f"{where}: input {name!r} has shape {list(a.shape)}, the model needs {shape}")


def read_text(path: str | os.PathLike) -> list[str]:
    p = pathlib.Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise BadArgumentError(f"{p}: cannot read text: {e}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise BadArgumentError(f"{p}: no text lines")
    return lines


def text_feeds(texts: Sequence[str], tokenizer_dir: str | os.PathLike, session: ort.InferenceSession,
               dims: Mapping[str, int] | None = None) -> list[dict[str, np.ndarray]]:
    """Tokenise ``texts`` into batches shaped like the model's token inputs (padding to the
    sequence length; the last partial batch is padded with repeats and trimmed by the caller)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover
        raise BadArgumentError("--text needs the `transformers` package (pip install transformers)") from None
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    except (OSError, ValueError) as e:
        raise BadArgumentError(f"{tokenizer_dir}: not a tokenizer folder: {e}") from None
    specs = input_specs(session)
    names = [s[0] for s in specs]
    if not set(names) <= set(TOKEN_INPUTS) or "input_ids" not in names:
        raise BadArgumentError(f"--text needs a model whose inputs are token ids ({', '.join(TOKEN_INPUTS)}); this one has {names}")
    shape = resolve_shape("input_ids", dict((s[0], s[2]) for s in specs)["input_ids"], dims or {})
    batch, seq = shape
    out = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i : i + batch])
        chunk += [chunk[-1]] * (batch - len(chunk))
        enc = tok(chunk, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        out.append({n: enc[n].astype(dict((s[0], s[1]) for s in specs)[n]) if n in enc else np.zeros(shape, np.int64) for n in names})
    return out
