"""Model inputs for validate, bench and calibration: from an .npz, from text through a Hugging Face
tokenizer, or random feeds that respect the graph's input types. Dynamic dimensions come from
``--dim name=value``; every mismatch is a clear error (``BadArgumentError``).

Every builder returns a :class:`FeedBatches`: a list of feed dicts (one per ``session.run``) that
also records how many rows of each batch are real samples. A model with a static batch size runs
the last partial batch padded with repeats of its last real row; callers trim outputs to
``batches.rows[k]`` so the repeats never count twice in a metric.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from .errors import BadArgumentError

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Token ids of random feeds are drawn from [1, DEFAULT_ID_HIGH) unless the caller knows the vocab.
DEFAULT_ID_HIGH = 1000


class FeedBatches(list):
    """A list of feed dicts (one per run) plus ``rows``: how many rows of each batch are real.

    ``rows[k] < batch size`` only for a last batch padded with repeats to a static batch size.
    ``available``: how many samples the source held (``calibrate.load_batches`` sets it; None: unknown).
    """

    available: int | None = None

    def __init__(self, batches: Iterable[dict[str, np.ndarray]] = (), rows: Sequence[int] | None = None,
                 source: str = "") -> None:
        super().__init__(batches)
        self.rows = list(rows) if rows is not None else [batch_rows(b) for b in self]
        if len(self.rows) != len(self):
            raise ValueError("one row count per batch expected")
        self.source = source

    @property
    def samples(self) -> int:
        """Real samples over all batches (padding repeats excluded)."""
        return sum(self.rows)

    @property
    def last_rows(self) -> int:
        """Real rows in the last batch (0 when there is no batch)."""
        return self.rows[-1] if self.rows else 0

    def head(self, samples: int | None) -> "FeedBatches":
        """The first whole batches that hold at least ``samples`` real rows (all of them when None or when
        there are fewer)."""
        if samples is None or samples >= self.samples:
            return self
        n = 0
        for k, r in enumerate(self.rows):
            n += r
            if n >= samples:
                break
        out = FeedBatches(self[:k + 1], self.rows[:k + 1], source=self.source)
        out.available = self.available
        return out


def batch_rows(feeds: Mapping[str, np.ndarray]) -> int:
    for a in feeds.values():
        a = np.asarray(a)
        if a.ndim:
            return int(a.shape[0])
    return 1


def parse_dims(dims: Iterable[str] | Mapping[str, int] | None) -> dict[str, int]:
    """``["batch=8", "seq=128"]`` (or a mapping) -> ``{"batch": 8, "seq": 128}``; sizes must be > 0."""
    if dims is None:
        return {}
    items = dims.items() if isinstance(dims, Mapping) else None
    out: dict[str, int] = {}
    if items is not None:
        for name, value in items:
            out[str(name)] = _positive(f"{name}={value}", value)
        return out
    for d in dims:
        name, sep, value = str(d).partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadArgumentError(f"--dim expects name=integer, got {d!r}")
        out[name] = _positive(d, value)
    return out


def _positive(text: str, value) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise BadArgumentError(f"--dim expects name=integer, got {text!r}") from None
    if v <= 0:
        raise BadArgumentError(f"--dim {text!r}: the size must be positive")
    return v


def input_specs(session: ort.InferenceSession) -> list[tuple[str, type, list]]:
    """``(name, numpy dtype, shape)`` per graph input; shape entries are ints, names or None."""
    specs = []
    for i in session.get_inputs():
        if i.type not in _ORT_TYPES:
            raise BadArgumentError(f"input {i.name!r} has type {i.type}, which n6onnx cannot feed")
        specs.append((i.name, _ORT_TYPES[i.type], list(i.shape)))
    return specs


def proto_input_specs(proto, outputs: bool = False) -> list[tuple[str, type, list]]:
    """:func:`input_specs` read from an ``onnx.ModelProto`` (graph inputs that are not initializers;
    with ``outputs``, the graph outputs)."""
    inits = {t.name for t in proto.graph.initializer}
    specs = []
    for i in (proto.graph.output if outputs else proto.graph.input):
        if i.name in inits:
            continue
        tt = i.type.tensor_type
        dt = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.float32
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        specs.append((i.name, np.dtype(dt).type, shape))
    return specs


def _fits(shape: Sequence, actual: Sequence[int]) -> bool:
    return len(shape) == len(actual) and not any(
        isinstance(d, int) and d >= 0 and d != s for d, s in zip(shape, actual))


def own_state(specs: Sequence[tuple[str, type, list]], feeds: Mapping[str, np.ndarray]) -> dict:
    """``feeds`` for a model whose state inputs may be laid out differently from the model the
    feeds were made for: an EMPTY feed (no elements: the empty past of a prefill) that does not fit
    the declared shape becomes an empty array of this model's own layout (dim 0 the feed's batch,
    other dynamic dims 0), as a generation loop builds its first past. A rewrite may change what a
    KV-cache input holds (docs/decoders.md) but never its name; non-empty feeds are left alone."""
    out = dict(feeds)
    for name, dtype, shape in specs:
        a = out.get(name)
        if a is None or np.asarray(a).size != 0 or _fits(shape, np.shape(a)):
            continue
        a = np.asarray(a)
        out[name] = empty_like_declared(shape, dtype, a.shape[0] if a.ndim else 1)
    return out


def empty_like_declared(shape: Sequence, dtype, batch: int) -> np.ndarray:
    """The empty tensor a generation loop starts from for an input declared with ``shape``: dim 0 is
    ``batch``, static sizes as declared, every other dynamic dim 0."""
    dims = [batch if k == 0 else (d if isinstance(d, int) and d >= 0 else 0) for k, d in enumerate(shape)]
    return np.zeros(dims, dtype)


def relaid(a: Sequence[tuple[str, type, list]], b: Sequence[tuple[str, type, list]]) -> list[str]:
    """Inputs (or outputs) of both models whose declared layouts differ (rank or a static size): the
    KV-cache tensors a rewrite re-laid out. Only an empty feed (a prefill) can be given to both."""
    sb = {n: s for n, _, s in b}
    out = []
    for name, _, shape in a:
        other = sb.get(name)
        if other is not None and (len(shape) != len(other) or any(
                isinstance(x, int) and isinstance(y, int) and x >= 0 and y >= 0 and x != y
                for x, y in zip(shape, other))):
            out.append(name)
    return out


def dynamic_dims(session: ort.InferenceSession) -> dict[str, list[str]]:
    """Named dynamic dimensions -> the inputs that use them."""
    out: dict[str, list[str]] = {}
    for name, _, shape in input_specs(session):
        for d in shape:
            if isinstance(d, str) and d:
                out.setdefault(d, []).append(name)
    return out


def check_dims(session: ort.InferenceSession, dims: Mapping[str, int]) -> None:
    """Every ``--dim`` must name a dynamic dimension of the model (catches typos)."""
    known = dynamic_dims(session)
    for name in dims:
        if name not in known:
            have = ", ".join(sorted(known)) if known else "none: every input shape is static"
            raise BadArgumentError(f"--dim {name}: the model has no dynamic dimension {name!r} (it has {have})")


def dims_of(specs: Sequence[tuple[str, type, list]], feeds: Mapping[str, np.ndarray],
            dims: Mapping[str, int] | None = None) -> dict[str, int]:
    """``dims`` completed with the size every other named dynamic dimension has in ``feeds`` (a batch
    of the user's .npz: its shapes are the ones the user runs)."""
    out = dict(dims or {})
    for name, _, shape in specs:
        a = feeds.get(name)
        if a is None or np.ndim(a) != len(shape):
            continue
        for d, size in zip(shape, np.shape(a)):
            if isinstance(d, str) and d and d not in out:
                out[d] = int(size)
    return out


def resolve_shape(name: str, shape: Sequence, dims: Mapping[str, int]) -> tuple[int, ...]:
    out = []
    for k, d in enumerate(shape):
        if isinstance(d, int) and d >= 0:
            out.append(d)
        elif isinstance(d, str) and d in dims:
            out.append(dims[d])
        elif isinstance(d, str) and d:
            raise BadArgumentError(f"input {name!r} has a dynamic dimension {d!r}; give its size with --dim {d}=N")
        else:
            raise BadArgumentError(
                f"input {name!r} has an unnamed dynamic dimension at axis {k}; export with static or named shapes, "
                "or use --feeds"
            )
    return tuple(out)


def _batch_size(specs, dims: Mapping[str, int]) -> int:
    """The batch size: axis 0 of the first input that has axes (1 when none has)."""
    for n, _, s in specs:
        if len(s):
            return resolve_shape(n, s, dims)[0]
    return 1


def random_samples(session: ort.InferenceSession, samples: int, dims: Mapping[str, int] | None = None,
                   seed: int = 0, id_high: Mapping[str, int] | None = None) -> FeedBatches:
    """``samples`` random samples, batched by the model's batch size (axis 0; ``--dim`` when dynamic).

    Float inputs are standard normal; bool inputs and integer inputs named like masks are ones;
    integer inputs named like token-type ids are zeros; other integer inputs are ids drawn from
    ``[1, id_high[name])`` (default ``DEFAULT_ID_HIGH``). The last batch of a static batch size is
    padded with repeats of its last real row.
    """
    if samples <= 0:
        raise BadArgumentError(f"--random expects a positive number of samples, got {samples}")
    dims = dict(dims or {})
    specs = input_specs(session)
    batch = _batch_size(specs, dims)
    n_batches = -(-samples // batch)
    out = random_feeds(session, n_batches, dims, seed, id_high)
    rows = [batch] * n_batches
    rows[-1] = samples - batch * (n_batches - 1)
    if rows[-1] < batch:  # repeat the last real row, like text_feeds
        for a in out[-1].values():
            if a.ndim and a.shape[0] == batch:
                a[rows[-1]:] = a[rows[-1] - 1]
    return FeedBatches(out, rows, source=f"random (seed {seed})")


def random_feeds(session: ort.InferenceSession, n: int, dims: Mapping[str, int] | None = None,
                 seed: int = 0, id_high: Mapping[str, int] | None = None) -> FeedBatches:
    """``n`` full batches of random feeds (see :func:`random_samples` for what they contain)."""
    dims = dict(dims or {})
    id_high = dict(id_high or {})
    rng = np.random.default_rng(seed)
    specs = input_specs(session)
    batches = []
    for _ in range(n):
        feeds = {}
        for name, dtype, shape in specs:
            shape = resolve_shape(name, shape, dims)
            lname = name.lower()
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype == np.bool_ or "mask" in lname:
                feeds[name] = np.ones(shape, dtype)
            elif "type" in lname:
                feeds[name] = np.zeros(shape, dtype)
            else:
                high = max(2, min(id_high.get(name, DEFAULT_ID_HIGH), int(np.iinfo(dtype).max)))
                feeds[name] = rng.integers(1, high, size=shape).astype(dtype)
        batches.append(feeds)
    return FeedBatches(batches, source=f"random (seed {seed})")


def load_npz(path: str | os.PathLike, session: ort.InferenceSession | None = None) -> FeedBatches:
    """Feeds from an .npz: arrays named after the inputs (one batch), or ``NAME/K`` for batch K.

    With a session, every batch is checked against the model's inputs (names, dtypes, ranks and
    static sizes); an array that names no input is an error (a typo would otherwise go unnoticed).
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadArgumentError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
    try:
        data = np.load(p, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("this is a single .npy array, not an .npz archive")
        with data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # numpy reads a file that is no archive and no array as pickled data, and suggests allow_pickle=True:
        # neither the right diagnosis nor a safe fix
        why = "neither an .npz archive nor a numpy array" if "pickle" in str(e) else str(e)
        raise BadArgumentError(f"{p}: cannot read feeds (.npz expected, as written by numpy.savez): {why}") from None
    if not arrays:
        raise BadArgumentError(f"{p}: the .npz holds no arrays")
    batches: dict[int, dict[str, np.ndarray]] = {}
    for key, arr in arrays.items():
        name, sep, idx = key.rpartition("/")
        if not sep or not idx.isdigit():
            name, idx = key, "0"
        batches.setdefault(int(idx), {})[name] = arr
    order = sorted(batches)
    out = FeedBatches([batches[k] for k in order], source=str(p))
    if session is not None:
        wanted = [s[0] for s in input_specs(session)]
        for k, feeds in zip(order, out):
            where = f"{p}" if len(out) == 1 else f"{p} (batch {k})"
            extra = sorted(set(feeds) - set(wanted))
            if extra:
                raise BadArgumentError(
                    f"{where}: array(s) {extra} name no model input (the model's inputs are {wanted}; "
                    "name arrays after the inputs, or NAME/K for batch K)"
                )
            check_feeds(session, feeds, where)
        out.rows = [batch_rows({n: f[n] for n in wanted}) for f in out]
    return out


def check_feeds(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray], where: str = "feeds") -> None:
    """Names, dtypes, ranks, static sizes, and one size per named dynamic dimension."""
    specs = input_specs(session)
    seen: dict[str, tuple[int, str]] = {}
    for name, dtype, shape in specs:
        if name not in feeds:
            raise BadArgumentError(f"{where}: missing input {name!r} (the model needs {[s[0] for s in specs]})")
        a = np.asarray(feeds[name])
        if a.dtype != dtype:
            raise BadArgumentError(
                f"{where}: input {name!r} has dtype {a.dtype}, the model needs {np.dtype(dtype)} "
                f"(convert it with .astype(np.{np.dtype(dtype).name}))"
            )
        if len(a.shape) != len(shape) or any(isinstance(d, int) and d >= 0 and d != s for d, s in zip(shape, a.shape)):
            raise BadArgumentError(f"{where}: input {name!r} has shape {list(a.shape)}, the model needs {shape}")
        for d, s in zip(shape, a.shape):
            if isinstance(d, str) and d:
                if d in seen and seen[d][0] != s:
                    raise BadArgumentError(
                        f"{where}: dimension {d!r} is {seen[d][0]} in input {seen[d][1]!r} but {s} in {name!r}"
                    )
                seen.setdefault(d, (s, name))


def read_text(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (one sample per line)."""
    p = pathlib.Path(path)
    try:
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError as e:
        raise BadArgumentError(f"{p}: cannot read text: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise BadArgumentError(f"{p}: cannot read text: {e.strerror or e}") from None
    lines = [ln for ln in lines if ln]
    if not lines:
        raise BadArgumentError(f"{p}: no text lines")
    return lines


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """A Hugging Face tokenizer from a local folder or a tokenizer.json file (never downloads)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    p = pathlib.Path(tokenizer_dir)
    if not p.exists():
        raise BadArgumentError(f"{p}: no such tokenizer folder or tokenizer.json")
    if p.is_file():
        try:
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
            if tok.pad_token is None:  # a bare tokenizer.json names no padding token: use the usual one
                vocab = tok.get_vocab()
                pad = next((t for t in ("[PAD]", "<pad>", "<|endoftext|>", "</s>", "<unk>") if t in vocab), None)
                if pad is not None:
                    tok.pad_token = pad
            return tok
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types for a bad file
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BadArgumentError(f"{p}: not a tokenizer.json file: {first}") from None
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover
        raise BadArgumentError("--text needs the `transformers` package (pip install transformers)") from None
    try:
        import transformers

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            return AutoTokenizer.from_pretrained(str(p))
        finally:
            transformers.logging.set_verbosity(verbosity)
    except Exception as e:  # transformers raises OSError, ValueError, KeyError, ... for a bad folder
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BadArgumentError(f"{p}: not a Hugging Face tokenizer folder: {first}") from None


TEXT_BATCH = 16  # texts per batch when the model's batch dimension is dynamic
# the sizes random feeds give a named dynamic dimension without --dim: batch-like (axis 0) and others
DEFAULT_BATCH, DEFAULT_SEQ = 1, 128


def _dim_or_none(name: str, axis: int, d, dims: Mapping[str, int]) -> int | None:
    if isinstance(d, int) and d >= 0:
        return d
    if isinstance(d, str) and d in dims:
        return dims[d]
    if isinstance(d, str) and d:
        return None  # taken from the data
    raise BadArgumentError(f"input {name!r} has an unnamed dynamic dimension at axis {axis}; export with static or "
                           "named shapes, or use --feeds")


def _max_length(tok) -> int:
    m = getattr(tok, "model_max_length", None)
    return int(m) if isinstance(m, int) and 0 < m <= 1_000_000 else 512


def default_dims(session: ort.InferenceSession, dims: Mapping[str, int] | None = None) -> tuple[dict[str, int], dict[str, int]]:
    """``dims`` completed for random feeds: a named dynamic dimension not given gets DEFAULT_BATCH
    when it is some input's axis 0, else DEFAULT_SEQ. Returns (all dims, the defaulted ones)."""
    dims = dict(dims or {})
    chosen: dict[str, int] = {}
    for _, _, shape in input_specs(session):
        for k, d in enumerate(shape):
            if isinstance(d, str) and d and d not in dims:
                if k == 0:
                    chosen[d] = DEFAULT_BATCH
                else:
                    chosen.setdefault(d, DEFAULT_SEQ)
    return {**dims, **chosen}, chosen


def text_feeds(texts: Sequence[str], tokenizer_dir_or_tokenizer, session: ort.InferenceSession,
               dims: Mapping[str, int] | None = None) -> FeedBatches:
    """Tokenise ``texts`` into batches shaped like the model's token inputs.

    Each text is padded (or truncated) to the model's sequence length; with a static batch size the
    last partial batch is padded with repeats of its last text, and ``result.rows[-1]``
    (``result.last_rows``) says how many of its rows are real. Dynamic dimensions without ``dims``
    are taken from the data: TEXT_BATCH texts a batch, every text padded to the longest one. Inputs the tokenizer does not produce get zeros
    (``token_type_ids``) or ones (``attention_mask``).
    """
    if not texts:
        raise BadArgumentError("no text to tokenise")
    tok = (load_tokenizer(tokenizer_dir_or_tokenizer)
           if isinstance(tokenizer_dir_or_tokenizer, (str, os.PathLike)) else tokenizer_dir_or_tokenizer)
    specs = input_specs(session)
    names = [s[0] for s in specs]
    dtypes = {s[0]: s[1] for s in specs}
    if not set(names) <= set(TOKEN_INPUTS) or "input_ids" not in names:
        raise BadArgumentError(
            f"--text needs a model whose inputs are token ids ({', '.join(TOKEN_INPUTS)}); this one has {names}"
        )
    for n in names:
        if not np.issubdtype(dtypes[n], np.integer):
            raise BadArgumentError(f"--text: input {n!r} has dtype {np.dtype(dtypes[n])}; token inputs must be integers")
    dims = dict(dims or {})
    shapes = {n: tuple(_dim_or_none(n, k, d, dims) for k, d in enumerate(s)) for n, _, s in specs}
    if len(shapes["input_ids"]) != 2:
        raise BadArgumentError(f"--text: input_ids must be [batch, sequence]; the model's is {list(shapes['input_ids'])}")
    for n, s in shapes.items():
        if len(s) != 2 or any(a is not None and b is not None and a != b for a, b in zip(s, shapes["input_ids"])):
            raise BadArgumentError(f"--text: input {n!r} has shape {list(s)} but input_ids {list(shapes['input_ids'])}")
    # a dynamic batch or sequence is taken from the data: batches of up to TEXT_BATCH texts, padded to
    # the longest text (up to the tokenizer's maximum length), no padding repeats
    batch = next((s[0] for s in shapes.values() if s[0] is not None), None)
    seq = next((s[1] for s in shapes.values() if s[1] is not None), None)
    step = batch or TEXT_BATCH
    if seq is None:  # the longest text of the data (every batch gets the same length)
        try:
            lengths = tok(list(texts), truncation=True, max_length=_max_length(tok))["input_ids"]
        except Exception as e:
            raise BadArgumentError(f"the tokenizer failed: {type(e).__name__}: {e}") from None
        seq = max(len(x) for x in lengths)
    out, rows = [], []
    for i in range(0, len(texts), step):
        chunk = list(texts[i : i + step])
        rows.append(len(chunk))
        if batch is not None:
            chunk += [chunk[-1]] * (batch - len(chunk))
        try:
            enc = tok(chunk, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
        except Exception as e:
            raise BadArgumentError(f"the tokenizer failed: {type(e).__name__}: {e}") from None
        shape = np.asarray(enc["input_ids"]).shape
        feeds = {}
        for n in names:
            if n in enc:
                feeds[n] = np.asarray(enc[n]).astype(dtypes[n])
            else:
                feeds[n] = (np.ones if n == "attention_mask" else np.zeros)(shape, dtypes[n])
        out.append(feeds)
    return FeedBatches(out, rows, source="text")
