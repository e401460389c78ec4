"""Run the original and the candidate model on the same feeds, compare every output, apply gates.

Samples are rows of axis 0. Metrics are accumulated batch by batch (only per-sample numbers and
pooled embeddings are kept), so long runs do not hold every output in memory. Padding rows that
only fill a static batch size are trimmed before anything is measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import feeds as feeds_mod
from .. import io
from .. import runtime
from .. import vocab as vocab_mod
from ..errors import BadArgumentError, BadModelError, N6Error
from ..quantize import kernel
from ..quantize.hostile import hostile_activations
from ..runtime import InferenceSession
from . import metrics as M
from .report import Gate, OutputReport, ValidateReport

ZOO_MINILM_TAG = vocab_mod.ZOO_MINILM_TAG


# --------------------------------------------------------------------------------------------------
# Report


# --------------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class _Model:
    role: str
    path: str
    session: Any
    doc_string: str
    vocab: dict[str, int]  # input name -> rows of the embedding table it indexes (when visible)
    hostile: list[str] = dataclasses.field(default_factory=list)  # quantize.hostile warnings
    int8: bool = False  # it has int8 products (MatMulInteger, or a QDQ DequantizeLinear)


def _open(path: str | os.PathLike, role: str, threads: int | None, provider: str = "cpu", device_id: int = 0,
          exact_int8: bool = False) -> _Model:
    import onnx
    from google.protobuf.message import DecodeError

    p = pathlib.Path(path)
    if not p.exists():
        raise BadModelError(f"{p} ({role}): no such file")
    if not p.is_file():
        raise BadModelError(f"{p} ({role}): not a file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as e:
        raise BadModelError(f"{p} ({role}): not a readable ONNX model: {e}") from None
    if not proto.HasField("graph"):
        raise BadModelError(f"{p} ({role}): not an ONNX model (no graph; truncated or another format?)")
    providers = runtime.providers_for(provider, device_id)
    int8 = any(n.op_type in ("MatMulInteger", "DequantizeLinear") for n in proto.graph.node)
    integer = int8 or any(n.op_type in kernel.INTEGER_OPS for n in proto.graph.node)
    try:  # a float model has no int8 products to emulate: loaded as it is
        sess = _exact_session(p, threads, providers) if exact_int8 and integer else \
            InferenceSession(str(p), threads=threads, providers=providers)
    except N6Error:
        raise
    except Exception as e:  # onnxruntime's Fail / InvalidGraph / NotImplemented / ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        opset = io.proto_opset(proto)
        hint = (f" (its opset {opset} is older than n6onnx supports, {io.MIN_OPSET}; convert it first, e.g. with "
                "onnx.version_converter)" if opset is not None and opset < io.MIN_OPSET else "")
        raise BadModelError(f"{p} ({role}): onnxruntime cannot load it{hint}: {first}") from None
    runtime.check_placed(sess, provider, f"{p} ({role})")
    return _Model(role, str(p), sess, proto.doc_string, _vocab_sizes(proto), hostile_activations(proto), int8)


def _exact_session(p: pathlib.Path, threads: int | None, providers) -> InferenceSession:
    """The int8 model at ``p`` as an exact int8 kernel (VNNI, AMX, ARM) computes it, on a CPU whose kernel clips
    pair sums: its MatMulIntegers as exact products (``kernel.exact_products``), its QDQ MatMuls left unfused
    (dequantized float products) instead of onnxruntime's QGemm / QLinearMatMul."""
    import onnxruntime as ort

    proto = io.load_proto(p)
    fused = sorted({n.op_type for n in proto.graph.node if n.op_type in kernel.INTEGER_OPS and n.op_type != "MatMulInteger"})
    if fused:
        raise BadArgumentError(f"{p} (candidate): --int8-kernel exact needs the quantizer's own graph (MatMulInteger or "
                               f"QuantizeLinear/DequantizeLinear), not onnxruntime's fused {', '.join(fused)}")
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    return runtime.session_for(kernel.exact_products(proto), so, threads=threads, providers=providers)


def _emulates_exact(int8_kernel: str, provider: str) -> bool:
    """Whether the candidate's int8 products must be computed exactly where this CPU's kernel clips them."""
    if int8_kernel not in ("auto", "exact", "saturating"):
        raise BadArgumentError(f"--int8-kernel: expected auto, exact or saturating, got {int8_kernel!r}")
    if int8_kernel != "auto" and provider != "cpu":
        raise BadArgumentError("--int8-kernel names a CPU int8 kernel; the candidate runs on --provider " + provider)
    here = kernel.kind()
    if int8_kernel == "saturating" and here != "saturating":
        raise BadArgumentError(f"--int8-kernel saturating: this CPU's int8 kernel is {here}, and a clipping one is not "
                               "emulated; validate on an x86 CPU without VNNI")
    return int8_kernel == "exact" and here != "exact"  # a kernel n6onnx does not know is not taken to be exact


def _vocab_sizes(proto) -> dict[str, int]:
    """Token-id inputs -> rows of the embedding table they index (n6onnx.vocab.bounds)."""
    return vocab_mod.bounds(proto)


def _check_compatible(a: _Model, b: _Model) -> dict[str, tuple[list, list]]:
    """Raises unless the models take and give the same names and types; returns the inputs whose
    layouts differ, with their declared shapes (original, candidate): KV-cache inputs a rewrite
    re-laid out can be fed only empty, a prefill."""
    sa, sb = feeds_mod.input_specs(a.session), feeds_mod.input_specs(b.session)
    other, moved = {n: t for n, _, t in sb}, set(feeds_mod.relaid(sa, sb))
    state = {n: (s, other[n]) for n, _, s in sa if n in moved}

    def io(sess, kind):
        items = sess.get_inputs() if kind == "inputs" else sess.get_outputs()
        return {i.name: i for i in items}

    for kind in ("inputs", "outputs"):
        ia, ib = io(a.session, kind), io(b.session, kind)
        if set(ia) != set(ib):
            only_a = sorted(set(ia) - set(ib))
            only_b = sorted(set(ib) - set(ia))
            raise BadArgumentError(
                f"the models' {kind} differ: only the original has {only_a or 'none'}, "
                f"only the candidate has {only_b or 'none'} (validate compares models with the same {kind})"
            )
        if kind == "outputs":
            break
        for name in ia:
            if ia[name].type != ib[name].type:
                raise BadArgumentError(
                    f"input {name!r} has type {ia[name].type} in the original but {ib[name].type} in the candidate"
                )
    return state


def _check_state_feeds(batches, state: dict[str, tuple[list, list]]) -> None:
    for k, fd in enumerate(batches):
        full = [n for n in state if n in fd and np.asarray(fd[n]).size]
        if full:
            shapes = "; ".join(f"input {n!r} has shape {state[n][0]} in the original but {state[n][1]} in the "
                               f"candidate" for n in full)
            raise BadArgumentError(
                f"{shapes}: validate can "
                f"feed them only when they are empty (batch {k} is not): for a rewritten KV cache "
                f"(docs/decoders.md) give prefill feeds with an empty past, or compare cached decoding in your "
                f"own generation loop")


# --------------------------------------------------------------------------------------------------
# Inputs


def _labels(path: str | os.PathLike, samples: int) -> np.ndarray:
    p = pathlib.Path(path)
    if not p.is_file():
        raise BadArgumentError(f"{p}: no such labels file" if not p.exists() else f"{p}: not a file")
    if p.suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise BadArgumentError(f"{p}: cannot read labels (.npy): {e}") from None
        arr = np.asarray(arr)
        if arr.ndim != 1:
            raise BadArgumentError(f"{p}: labels must be a 1-D array, this one has shape {list(arr.shape)}")
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                arr = arr.astype(np.int64)
            else:
                raise BadArgumentError(f"{p}: labels must be integers, this array has dtype {arr.dtype}")
        labels = arr.astype(np.int64)
    else:
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise BadArgumentError(f"{p}: cannot read labels: {e}") from None
        vals = []
        for k, ln in enumerate(lines, 1):
            if not ln.strip():
                continue
            try:
                vals.append(int(ln.strip()))
            except ValueError:
                raise BadArgumentError(f"{p}:{k}: expected one integer label per line, got {ln.strip()!r}") from None
        labels = np.array(vals, dtype=np.int64)
    if labels.shape[0] != samples:
        raise BadArgumentError(f"{p}: {labels.shape[0]} labels for {samples} samples (one label per sample expected)")
    if labels.size and labels.min() < 0:
        raise BadArgumentError(f"{p}: labels must be class indices >= 0 (found {int(labels.min())})")
    return labels


def _build_feeds(orig: _Model, cand: _Model, *, feeds, text, tokenizer, random, dims, seed, notes: list[str]):
    given = [n for n, v in (("--feeds", feeds), ("--text", text), ("--random", random)) if v is not None]
    if len(given) != 1:
        raise BadArgumentError(
            "give exactly one input option: --feeds FILE.npz, --text FILE or --random N"
            + (f" (got {', '.join(given)})" if given else "")
        )
    if tokenizer is not None and text is None:
        raise BadArgumentError("--tokenizer only applies to --text")
    sess = orig.session
    dims = feeds_mod.parse_dims(dims)
    feeds_mod.check_dims(sess, dims)
    info: dict[str, Any] = {"dims": dims}
    if feeds is not None:
        if dims:
            raise BadArgumentError("--dim applies to --text and --random; with --feeds the arrays' shapes are used")
        if isinstance(feeds, (str, os.PathLike)):
            batches = feeds_mod.load_npz(feeds, sess)
            info.update(kind="npz", source=str(feeds))
        else:
            seq = [feeds] if isinstance(feeds, Mapping) else list(feeds)
            for k, f in enumerate(seq):
                feeds_mod.check_feeds(sess, f, f"feeds (batch {k})")
            batches = feeds_mod.FeedBatches([dict(f) for f in seq], source="<arrays>")
            info.update(kind="arrays", source="<arrays>")
    elif text is not None:
        texts = feeds_mod.read_text(text)
        tok_dir = tokenizer
        if tok_dir is None:
            tok_dir = vocab_mod.default_tokenizer(orig.path)
            info["tokenizer_default"] = True
            notes.append("--tokenizer not given: using the packaged all-MiniLM-L6-v2 tokenizer (the original's "
                         "vocabulary is provably its vocabulary)")
        batches = feeds_mod.text_feeds(texts, tok_dir, sess, dims)
        info.update(kind="text", source=str(text), tokenizer=str(tok_dir))
    else:
        try:
            n = int(random)
        except (TypeError, ValueError):
            raise BadArgumentError(f"--random expects a number of samples, got {random!r}") from None
        vocab = {k: min(orig.vocab.get(k, v), cand.vocab.get(k, v)) for k, v in {**cand.vocab, **orig.vocab}.items()}
        dims, chosen = feeds_mod.default_dims(sess, dims)
        if chosen:
            info["dims_default"] = chosen
            notes.append("random inputs: dynamic dimension(s) " + ", ".join(f"{k}={v}" for k, v in chosen.items())
                         + " by default (give --dim NAME=SIZE to choose)")
        batches = feeds_mod.random_samples(sess, n, dims, seed=seed, id_high=vocab)
        info.update(kind="random", source=f"seed {seed}", seed=seed)
        if vocab:
            info["id_high"] = vocab
    limits = {k: min(orig.vocab.get(k, v), cand.vocab.get(k, v)) for k, v in {**cand.vocab, **orig.vocab}.items()}
    vocab_mod.check_ids(batches, limits, str(info.get("source", "feeds")))
    info.update(samples=batches.samples, batches=len(batches))
    if not batches or batches.samples == 0:
        raise BadArgumentError("no samples to run")
    first = ("kind", "source", "samples", "batches")
    return batches, {**{k: info[k] for k in first}, **{k: v for k, v in info.items() if k not in first}}


# --------------------------------------------------------------------------------------------------
# Accumulation


class _Acc:
    """Streaming metrics of one output."""

    def __init__(self, name: str, kind: str, token_mask: bool, pool: bool, dtypes: dict) -> None:
        self.name, self.kind, self.token_mask, self.pool, self.dtypes = name, kind, token_mask, pool, dtypes
        self.shape: list | None = None
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.sq_diff = 0.0
        self.sq_orig = 0.0
        self.cos: list[np.ndarray] = []
        self.nonfinite = {"original": 0, "candidate": 0}
        self.equal = 0
        self.elements = 0
        self.samples = 0
        self.emb_o: list[np.ndarray] = []
        self.emb_c: list[np.ndarray] = []
        self.top1 = 0.0
        self.kl = 0.0
        self.rows = 0.0
        self.pred_o: list[np.ndarray] = []
        self.pred_c: list[np.ndarray] = []

    @staticmethod
    def _nanmax(cur: float, new: float) -> float:
        return math.nan if math.isnan(cur) or math.isnan(new) else max(cur, new)

    def add(self, o: np.ndarray, c: np.ndarray, mask: np.ndarray | None) -> None:
        if self.shape is None:
            self.shape = list(o.shape)
        o64, c64 = o.astype(np.float64), c.astype(np.float64)
        self.nonfinite["original"] += int(np.size(o64) - np.isfinite(o64).sum())
        self.nonfinite["candidate"] += int(np.size(c64) - np.isfinite(c64).sum())
        self.max_abs = self._nanmax(self.max_abs, M.max_abs_err(o64, c64))
        self.elements += o.size
        self.samples += o.shape[0] if o.ndim >= 2 else 1  # as in metrics.per_sample_cosine
        if self.kind == "exact":
            self.equal += int(np.sum(o == c))
            return
        self.max_rel = self._nanmax(self.max_rel, M.max_rel_err(o64, c64))
        self.sq_diff += float(np.sum((c64 - o64) ** 2))
        self.sq_orig += float(np.sum(o64 ** 2))
        self.cos.append(M.per_sample_cosine(o64, c64))
        if self.kind == "embedding":
            if self.pool:
                self.emb_o.append(M.mean_pool(o64, mask))
                self.emb_c.append(M.mean_pool(c64, mask))
            else:
                self.emb_o.append(o64)
                self.emb_c.append(c64)
        elif self.kind == "logits":
            w = mask.astype(np.float64) if self.token_mask else np.ones(o.shape[:-1])
            self.top1 += float((M.top1_rows(o64, c64) * w).sum())
            self.kl += float((M.kl_rows(o64, c64) * w).sum())
            self.rows += float(w.sum())
            if o.ndim == 2:
                self.pred_o.append(np.argmax(o64, axis=-1))
                self.pred_c.append(np.argmax(c64, axis=-1))

    def report(self, labels: np.ndarray | None) -> OutputReport:
        cos = np.concatenate(self.cos) if self.cos else np.zeros(0)
        worst = int(np.nanargmin(cos)) if cos.size and not np.isnan(cos).all() else None
        rep = OutputReport(
            name=self.name, kind=self.kind, shape=self.shape or [], dtype=self.dtypes,
            samples=self.samples,
            max_abs_err=self.max_abs,
            max_rel_err=None if self.kind == "exact" else self.max_rel,
            rel_l2_err=None if self.kind == "exact" else (
                (0.0 if self.sq_diff == 0 else math.inf) if self.sq_orig == 0 else math.sqrt(self.sq_diff / self.sq_orig)),
            cosine_mean=float(np.mean(cos)) if cos.size else None,
            cosine_min=float(np.min(cos)) if cos.size else None,
            cosine_min_sample=worst,
            nonfinite=self.nonfinite,
        )
        if self.kind == "exact":
            rep.equal_fraction = self.equal / self.elements if self.elements else None
        if self.kind == "embedding":
            eo, ec = np.concatenate(self.emb_o), np.concatenate(self.emb_c)
            ecos = M.cosine_rows(eo, ec)
            rep.embedding = {
                "pooling": "mean over attention_mask" if self.pool else "none (the output is pooled)",
                "samples": int(eo.shape[0]),
                "cosine_mean": float(np.mean(ecos)),
                "cosine_min": float(np.min(ecos)),
                "cosine_min_sample": int(np.nanargmin(ecos)) if not np.isnan(ecos).all() else None,
                "nn_agreement": M.nn_agreement(eo, ec),
            }
        if self.kind == "logits":
            rep.logits = {
                "rows": int(self.rows),
                "masked": self.token_mask,
                "top1_agreement": self.top1 / self.rows if self.rows else None,
                "kl_divergence": self.kl / self.rows if self.rows else None,
                "accuracy": None,
            }
            if labels is not None and self.pred_o:
                po, pc = np.concatenate(self.pred_o), np.concatenate(self.pred_c)
                if po.shape != labels.shape:
                    raise N6Error(f"output {self.name!r}: {po.size} predictions for {labels.size} labels")
                rep.logits["accuracy"] = {
                    "original": float(np.mean(po == labels)), "candidate": float(np.mean(pc == labels)),
                    "labels": int(labels.size),
                }
        return rep


def _classify(name: str, o: np.ndarray, c: np.ndarray, mask: np.ndarray | None) -> tuple[str, bool, bool]:
    """(kind, token_mask, pool) for an output, from the first batch."""
    if not (np.issubdtype(o.dtype, np.floating) and np.issubdtype(c.dtype, np.floating)):
        return "exact", False, False
    has_mask = mask is not None and mask.ndim == 2 and o.ndim == 3 and tuple(mask.shape) == o.shape[:2]
    if M.looks_like_logits(name, o.shape, o.dtype):
        return "logits", has_mask, False
    if has_mask:
        return "embedding", False, True
    if M.looks_like_pooled_embedding(name, o.shape, o.dtype):
        return "embedding", False, False
    return "tensor", False, False


def _progress(enabled, total: int):
    import contextlib

    if not enabled or total <= 1:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = enabled if not isinstance(enabled, bool) else Console(stderr=True)
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=True)


def _run(model: _Model, names: list[str], feeds: dict, k: int) -> dict[str, np.ndarray]:
    feeds = feeds_mod.own_state(feeds_mod.input_specs(model.session), feeds)
    try:
        outs = model.session.run(names, feeds)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise N6Error(f"onnxruntime failed to run the {model.role} ({model.path}) on batch {k}: {first}") from None
    return dict(zip(names, outs))


# --------------------------------------------------------------------------------------------------
# Entry point


def validate(
    original: str | os.PathLike,
    candidate: str | os.PathLike,
    *,
    feeds: str | os.PathLike | Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]] | None = None,
    text: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    random: int | None = None,
    dims: Iterable[str] | Mapping[str, int] | None = None,
    labels: str | os.PathLike | None = None,
    min_cosine: float | None = None,
    max_abs_err: float | None = None,
    min_top1: float | None = None,
    seed: int = 0,
    threads: int | None = None,
    provider: str = "cpu",
    device_id: int = 0,
    progress: Any = False,
    int8_kernel: str = "auto",
) -> ValidateReport:
    """Compare ``candidate`` with ``original`` on the same inputs; see ``n6onnx validate --help``.

    Exactly one of ``feeds`` (an .npz path, a feed dict or a list of them), ``text`` (a file, one
    sample per line) or ``random`` (a number of samples). Raises ``N6Error`` subclasses for bad input;
    gate results are in the report (``report.passed``, ``report.failed``). ``provider`` (``cpu`` or
    ``cuda``, on ``device_id``) is where the candidate runs, as it is deployed; the original is the
    reference and runs on onnxruntime's CPU provider either way. ``int8_kernel``: the u8s8 kernel the candidate's
    int8 products are computed with: ``auto`` this CPU's; ``exact`` an exact kernel's (VNNI, AMX, ARM) on a CPU whose
    kernel clips pair sums too; ``saturating`` only where this CPU's is (a clipping kernel is not emulated).
    """
    t0 = time.perf_counter()
    if threads is not None and int(threads) < 1:
        raise BadArgumentError(f"--threads must be at least 1, got {threads}")
    if int(seed) < 0:
        raise BadArgumentError(f"--seed must be >= 0, got {seed}")
    gates: list[Gate] = []
    for value, metric, option, op, lo, hi in (
        (min_cosine, "cosine_mean", "--min-cosine", ">=", -1.0, 1.0),
        (max_abs_err, "max_abs_err", "--max-abs-err", "<=", 0.0, math.inf),
        (min_top1, "top1_agreement", "--min-top1", ">=", 0.0, 1.0),
    ):
        if value is None:
            continue
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise BadArgumentError(f"{option} expects a number, got {value!r}") from None
        if not (lo <= value <= hi):
            raise BadArgumentError(f"{option} {value:g} is out of range [{lo:g}, {hi:g}]")
        gates.append(Gate(metric, option, op, value))

    runtime.providers_for(provider, device_id)  # an unknown or unavailable provider: refused before any work
    exact_int8 = _emulates_exact(int8_kernel, provider)
    orig = _open(original, "original", threads)
    cand = _open(candidate, "candidate", threads, provider, device_id, exact_int8)
    state = _check_compatible(orig, cand)
    notes: list[str] = [f"candidate: {w}" for w in cand.hostile]
    if exact_int8:
        notes.append("candidate: int8 products computed as an exact int8 kernel (VNNI, AMX, ARM) computes them, "
                     f"not with this CPU's ({kernel.kind()}) kernel (--int8-kernel exact)" if cand.int8 else
                     "candidate: --int8-kernel exact changed nothing: it has no int8 MatMul (MatMulInteger or "
                     "DequantizeLinear)")
    batches, info = _build_feeds(orig, cand, feeds=feeds, text=text, tokenizer=tokenizer, random=random,
                                 dims=dims, seed=seed, notes=notes)
    _check_state_feeds(batches, state)
    skipped: dict[str, tuple[list, list]] = {}  # outputs not compared: the candidate's cache layout differs
    y = _labels(labels, batches.samples) if labels is not None else None
    names = [o.name for o in orig.session.get_outputs()]

    accs: dict[str, _Acc] = {}
    with _progress(progress, len(batches)) as bar:
        task = bar.add_task("validating", total=len(batches)) if bar is not None else None
        for k, (fd, rows) in enumerate(zip(batches, batches.rows)):
            batch = feeds_mod.batch_rows(fd)
            out_o = _run(orig, names, fd, k)
            out_c = _run(cand, names, fd, k)
            mask = fd.get("attention_mask")
            if mask is not None:
                mask = np.asarray(mask)
                if mask.ndim == 2 and rows < batch:
                    mask = mask[:rows]
            for name in names:
                o, c = np.asarray(out_o[name]), np.asarray(out_c[name])
                if name in skipped or (state and o.shape != c.shape and name not in accs):
                    skipped.setdefault(name, (list(o.shape), list(c.shape)))
                    continue
                if o.shape != c.shape:
                    raise N6Error(f"output {name!r}: the original gives shape {list(o.shape)}, "
                                  f"the candidate {list(c.shape)} (batch {k})")
                if rows < batch and o.ndim >= 1 and o.shape[0] == batch:
                    o, c = o[:rows], c[:rows]
                if name not in accs:
                    kind, token_mask, pool = _classify(name, o, c, mask)
                    accs[name] = _Acc(name, kind, token_mask, pool, {"original": str(o.dtype), "candidate": str(c.dtype)})
                accs[name].add(o, c, mask)
            if k == 0:
                _check_requests(accs, gates, y)
            if bar is not None:
                bar.advance(task)

    outputs = {n: accs[n].report(y) for n in names if n not in skipped}
    for n, (so, sc) in skipped.items():
        notes.append(f"{n}: not compared, the candidate's KV-cache layout differs (shape {sc} against the "
                     f"original's {so}; docs/decoders.md)")
    cos_src, cos_val = None, None
    emb = next((r for r in outputs.values() if r.embedding), None)
    first_float = next((r for r in outputs.values() if r.kind != "exact"), None)
    if emb is not None:
        pooled = emb.embedding["pooling"].startswith("mean")
        cos_src = f"{emb.name}: {'mean-pooled ' if pooled else ''}embedding cosine"
        cos_val = emb.embedding["cosine_mean"]
    elif first_float is not None:
        cos_src, cos_val = f"{first_float.name}: per-sample cosine", first_float.cosine_mean
    errs = [r.max_abs_err for r in outputs.values()]
    max_err = (math.nan if any(math.isnan(e) for e in errs) else max(errs)) if errs else None
    gates = _expand_gates(gates, outputs)
    for g in gates:
        if g.metric == "cosine_mean":
            g.evaluate(cos_val)
        elif g.metric == "max_abs_err":
            g.evaluate(max_err)
        else:
            g.evaluate(outputs[g.output].logits["top1_agreement"])
    for r in outputs.values():
        if r.nonfinite["candidate"] > r.nonfinite["original"]:
            notes.append(f"{r.name}: the candidate produced {r.nonfinite['candidate']} non-finite values "
                         f"(the original {r.nonfinite['original']})")
        if r.embedding and r.embedding["nn_agreement"] is None:
            notes.append(f"{r.name}: nearest-neighbour agreement needs at least 2 samples")
    return ValidateReport(
        original=orig.path, candidate=cand.path, inputs=info, outputs=outputs, cosine_mean=cos_val,
        cosine_source=cos_src, max_abs_err=max_err, gates=gates,
        uses_library={"original": orig.session.uses_library, "candidate": cand.session.uses_library},
        seconds=time.perf_counter() - t0, notes=notes,
        providers={"original": orig.session.get_providers()[0], "candidate": cand.session.get_providers()[0]},
    )


def _check_requests(accs: dict[str, _Acc], gates: list[Gate], labels: np.ndarray | None) -> None:
    """After the first batch: gates and labels that cannot apply are errors, not silent passes."""
    logits = [a for a in accs.values() if a.kind == "logits"]
    rule = ("a float output of rank 2 [B, C] with C >= 2 not named like an embedding, or of rank 3 "
            "[B, L, C] with 'logit' in its name")
    kinds = ", ".join(f"{a.name} {a.shape} ({a.kind})" for a in accs.values())
    if any(g.metric == "top1_agreement" for g in gates) and not logits:
        raise BadArgumentError(f"--min-top1: no output looks like logits ({rule}); the outputs are {kinds}")
    if labels is not None and not any(len(a.shape) == 2 for a in logits):
        raise BadArgumentError(f"--labels needs an output of logits [B, C] ({rule}); the outputs are {kinds}")
    if any(g.metric == "cosine_mean" for g in gates) and all(a.kind == "exact" for a in accs.values()):
        raise BadArgumentError(f"--min-cosine: no floating-point output to compare; the outputs are {kinds}")


def _expand_gates(gates: list[Gate], outputs: dict[str, OutputReport]) -> list[Gate]:
    out = []
    for g in gates:
        if g.metric != "top1_agreement":
            out.append(g)
            continue
        for r in outputs.values():
            if r.logits is not None:
                out.append(dataclasses.replace(g, output=r.name))
    return out
