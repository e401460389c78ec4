"""ORT's best version of a model: the transformer fusions, whichever optimizer fuses more.

Three attempts are made on the original graph, each in its own try (a crash is recorded, never
fatal):

- ``onnxscript``: ``onnxscript.rewriter.ort_fusions.optimize_for_ort`` (fuses the attention that
  torch's dynamo exporter emits, SkipLayerNormalization, BiasGelu, RMSNorm, rotary, GQA, ...);
- ``ort_transformers``: ``onnxruntime.transformers.optimizer.optimize_model`` at ``opt_level=0``
  (its Python fusions only: the session applies ORT_ENABLE_ALL itself, for the provider it runs
  on), with ``model_type`` inferred from the graph (bert / gpt2 / vit) and ``num_heads`` /
  ``hidden_size`` inferred from it too (0 lets ORT detect);
- ``onnxscript+ort_transformers``: the second on the result of the first.

Each result is checked: it must load and run on the bench's provider and agree with the original's
outputs. A quantized graph is a discontinuous function of its float values (a difference in the
last bit, e.g. from a fused attention, can flip an activation's int8 rounding, and the flip grows
through the later layers), so for such graphs the caller may give further probe feeds: a result that
disagrees on the first feed is accepted when it agrees, to the same tolerance, on one of them (the
fusion is then exact wherever no rounding flips; a wrong fusion agrees on none). Of those that pass,
the one with the most fused ``com.microsoft`` ops wins (ties: fewer nodes, then the order above); if
none passes, the original is used as is. The counts of every attempt, and any error, are reported.

Model-local functions of the n6 domain are taken out of the graph while an optimizer runs (the
onnxscript optimizer inlines every function, which would turn each n6 node back into standard
ops) and put back afterwards; an attempt that loses an n6 node is rejected. That way a rewritten
candidate can get exactly the same fusions as its baseline.

Fused models are cached in ``$N6ONNX_CACHE`` (default: ``<tmp>/n6onnx-bench``), keyed by the
model's bytes, the optimizer versions and the options. The cache is bounded (``prune_cache``): past
``$N6ONNX_CACHE_MB`` (default 4096) the entries used longest ago go first, never one used within the
last hour.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io as _io
import json
import logging
import os
import pathlib
import tempfile
import time
from typing import Callable, Sequence

import numpy as np
import onnx

from .. import feeds as feeds_mod
from .. import io
from .. import vocab
from ..quantize import int8graph
from .._version import __version__
from ..errors import BadArgumentError
from ..ops import DOMAIN

MS_DOMAIN = "com.microsoft"
OPTIMIZERS = ("onnxscript", "ort_transformers", "onnxscript+ort_transformers")
ORT_MODEL_TYPES = ("bert", "gpt2", "vit")
CACHE_VERSION = "1"

RunFn = Callable[[pathlib.Path], Sequence[np.ndarray]]


@dataclasses.dataclass
class Attempt:
    optimizer: str
    fused: dict[str, int] | None = None  # com.microsoft op type -> count
    nodes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    max_abs_diff: float | None = None
    path: pathlib.Path | None = None
    probe: int = 0  # the feed it agreed on: 0 the first, k the k-th probe (dynamic quantization); -1 none, but
    # as faithful to the float original as the unfused graph (fuse's ``faithful``)

    @property
    def fused_total(self) -> int:
        return sum((self.fused or {}).values())

    @property
    def ok(self) -> bool:
        return self.error is None and self.path is not None

    def to_json(self) -> dict:
        return {"optimizer": self.optimizer, "fused_ops": self.fused_total if self.fused is not None else None,
                "fused": self.fused, "nodes": self.nodes, "seconds": round(self.seconds, 3),
                "max_abs_diff": self.max_abs_diff, "error": self.error, "probe": self.probe}


@dataclasses.dataclass
class FusionResult:
    source: str
    path: pathlib.Path  # the model to run (the original when nothing passed)
    chosen: str  # an optimizer name, or "none"
    attempts: list[Attempt]
    original: Attempt  # counts of the input as given
    model_type: str
    num_heads: int
    hidden_size: int
    cached: bool = False

    @property
    def fused(self) -> dict[str, int]:
        if self.chosen == "none":
            return self.original.fused or {}
        return next(a.fused for a in self.attempts if a.optimizer == self.chosen) or {}

    def to_json(self) -> dict:
        return {
            "source": self.source, "fused_model": str(self.path), "chosen": self.chosen,
            "fused_ops": sum(self.fused.values()), "fused": self.fused,
            "original": {"fused_ops": self.original.fused_total, "fused": self.original.fused,
                         "nodes": self.original.nodes},
            "attempts": [a.to_json() for a in self.attempts],
            "ort_transformers_args": {"model_type": self.model_type, "num_heads": self.num_heads,
                                      "hidden_size": self.hidden_size, "opt_level": 0},
            "cached": self.cached,
        }


# --------------------------------------------------------------------------------------------------
# Counting


def count_ops(proto: onnx.ModelProto, domain: str = MS_DOMAIN) -> dict[str, int]:
    """Op type -> count of the main graph's nodes in ``domain`` (com.microsoft: ORT's fused ops)."""
    c = collections.Counter(n.op_type for n in proto.graph.node if n.domain == domain)
    return dict(sorted(c.items()))


def _n6_nodes(proto: onnx.ModelProto) -> dict[str, int]:
    return count_ops(proto, DOMAIN)


# --------------------------------------------------------------------------------------------------
# Inferring the ORT optimizer's arguments


def infer_model_type(proto: onnx.ModelProto) -> str:
    """bert / gpt2 / vit for onnxruntime.transformers.optimizer, from the inputs and ops."""
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    for i in inputs:
        t = i.type.tensor_type
        if t.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and len(t.shape.dim) == 4:
            return "vit"
    names = {i.name for i in inputs}
    if "token_type_ids" in names:
        return "bert"
    ops = {n.op_type for n in proto.graph.node}
    # GPT-2: a causal mask (Trilu), Conv1D projections exported as Gemm, tanh GELU.
    if "Trilu" in ops or ("Gemm" in ops and "Tanh" in ops) or any("causal" in n.name.lower() for n in proto.graph.node):
        return "gpt2"
    return "bert"


def _constants(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {}
    for t in proto.graph.initializer:
        if len(t.dims) <= 1 and t.data_type == onnx.TensorProto.INT64:
            out[t.name] = numpy_helper.to_array(t)
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.INT64 and len(a.t.dims) <= 1:
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def infer_heads_hidden(proto: onnx.ModelProto) -> tuple[int, int]:
    """(num_heads, hidden_size) from the graph, 0 where unknown (ORT then tries to detect).

    hidden: the most common LayerNormalization scale length; heads: the most common h of a
    constant 4-D Reshape target [.., .., h, d] with h*d == hidden.
    """
    init = {t.name: t for t in proto.graph.initializer}
    sizes = collections.Counter()
    for n in proto.graph.node:
        if n.op_type in ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization") and len(n.input) > 1:
            t = init.get(n.input[1] if n.op_type != "SkipLayerNormalization" else n.input[2])
            if t is not None and len(t.dims) == 1:
                sizes[int(t.dims[0])] += 1
    if not sizes:
        return 0, 0
    hidden = sizes.most_common(1)[0][0]
    consts = _constants(proto)
    heads = collections.Counter()
    for n in proto.graph.node:
        if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in consts:
            s = [int(v) for v in consts[n.input[1]].ravel()]
            if len(s) != 4 or s[3] <= 0:
                continue
            if s[2] > 1 and s[2] * s[3] == hidden:
                heads[s[2]] += 1
            elif s[2] == -1 and hidden % s[3] == 0 and hidden // s[3] > 1:  # [B, S, -1, head_dim]
                heads[hidden // s[3]] += 1
    if not heads:
        return 0, 0  # ORT wants both or neither
    return heads.most_common(1)[0][0], hidden


# --------------------------------------------------------------------------------------------------
# The optimizers


@contextlib.contextmanager
def _quiet():
    """The optimizers print and log freely (onnxruntime.transformers under top-level logger names):
    keep stdout clean for ``--json`` and their warnings out of the way while they run."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(_io.StringIO()):
            yield
    finally:
        logging.disable(previous)


def _hide_n6_functions(proto: onnx.ModelProto) -> list[onnx.FunctionProto]:
    keep, hidden = [], []
    for f in proto.functions:
        (hidden if f.domain == DOMAIN else keep).append(f)
    if hidden:
        del proto.functions[:]
        proto.functions.extend(keep)
    return hidden


def _restore_n6_functions(proto: onnx.ModelProto, funcs: list[onnx.FunctionProto], opsets: dict[str, int]) -> None:
    have = {(f.domain, f.name) for f in proto.functions}
    proto.functions.extend(f for f in funcs if (f.domain, f.name) not in have)
    imported = {o.domain for o in proto.opset_import}
    for dom, ver in opsets.items():
        if dom not in imported:
            proto.opset_import.append(onnx.helper.make_opsetid(dom, ver))


def _onnxscript(proto: onnx.ModelProto, **_) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    m = ir.serde.deserialize_model(proto)
    m, _counts = ort_fusions.optimize_for_ort(m)
    return ir.serde.serialize_model(m)


def _ort_transformers(proto: onnx.ModelProto, *, model_type: str, num_heads: int, hidden_size: int,
                      use_gpu: bool) -> onnx.ModelProto:
    from onnxruntime.transformers.optimizer import optimize_model

    m = optimize_model(proto, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                       opt_level=0, use_gpu=use_gpu).model
    # on a graph with no contrib op yet (e.g. one quantize_dynamic wrote) the optimizer adds its
    # com.microsoft nodes without importing the domain: onnxruntime runs it, onnx's checker refuses it
    imported = {o.domain for o in m.opset_import}
    for dom in sorted({n.domain for n in m.graph.node} - imported - {"ai.onnx"}):
        m.opset_import.append(onnx.helper.make_opsetid(dom, 1))
    return m


_STEPS = {
    "onnxscript": (_onnxscript,),
    "ort_transformers": (_ort_transformers,),
    "onnxscript+ort_transformers": (_onnxscript, _ort_transformers),
}


# --------------------------------------------------------------------------------------------------
# Checking results


def outputs_agree(got: Sequence[np.ndarray], ref: Sequence[np.ndarray], tol: float) -> tuple[bool, float]:
    """(agree, max abs diff): each float output within ``tol`` x max(1, max|ref|) of the reference;
    integer and bool outputs exactly; no NaN where the reference has none."""
    worst = 0.0
    ok = len(got) == len(ref)
    for g, r in zip(got, ref):
        g, r = np.asarray(g), np.asarray(r)
        if g.shape != r.shape:
            return False, float("inf")
        if not np.issubdtype(r.dtype, np.floating):
            d = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
            ok &= d == 0
            worst = max(worst, d)
            continue
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        if np.isnan(g64).any() and not np.isnan(r64).any():
            return False, float("nan")
        fin = np.isfinite(r64)
        d = float(np.max(np.abs(g64[fin] - r64[fin]))) if fin.any() else 0.0
        scale = max(1.0, float(np.max(np.abs(r64[fin]))) if fin.any() else 1.0)
        ok &= d <= tol * scale
        worst = max(worst, d)
    return bool(ok), worst


# --------------------------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
    d = os.environ.get("N6ONNX_CACHE")
    return pathlib.Path(d) if d else pathlib.Path(tempfile.gettempdir()) / "n6onnx-bench"


CACHE_MB = 4096  # default bound of a cache directory ($N6ONNX_CACHE_MB)
CACHE_MIN_AGE = 3600.0  # seconds: an entry used more recently than this is never pruned


def touch(*paths: pathlib.Path) -> None:
    """Mark cache files as used now (``prune_cache`` removes the entries used longest ago)."""
    for p in paths:
        try:
            os.utime(p)
        except OSError:
            pass


def prune_cache(cdir: pathlib.Path, max_bytes: int | None = None, min_age: float = CACHE_MIN_AGE) -> list[str]:
    """Bound the cache in ``cdir``: while its files take more than ``max_bytes`` (default
    ``$N6ONNX_CACHE_MB`` MB, else ``CACHE_MB``), remove whole entries (the files sharing a 24-character
    key prefix: the record, its fused models, their split forms and external data), the one used
    longest ago first (newest modification time of its files; a cache hit touches them), but none used
    within ``min_age`` seconds. Returns the keys removed."""
    if max_bytes is None:
        max_bytes = int(float(os.environ.get("N6ONNX_CACHE_MB", CACHE_MB)) * (1 << 20))
    groups: dict[str, list[tuple[pathlib.Path, os.stat_result]]] = collections.defaultdict(list)
    try:
        for p in cdir.iterdir():
            if p.is_file():
                groups[p.name[:24]].append((p, p.stat()))
    except OSError:
        return []
    total = sum(st.st_size for g in groups.values() for _, st in g)
    now, removed = time.time(), []
    for key, files in sorted(groups.items(), key=lambda kv: max(st.st_mtime for _, st in kv[1])):
        if total <= max_bytes:
            break
        if now - max(st.st_mtime for _, st in files) < min_age:
            break  # every later entry is younger still
        for p, st in files:
            p.unlink(missing_ok=True)
            total -= st.st_size
        removed.append(key)
    return removed


def file_key(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    for extra in sorted(path.parent.glob(path.name + ".data")):  # external data beside it
        st = extra.stat()
        h.update(f"{extra.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _versions() -> str:
    import onnxruntime
    import onnxscript

    return f"ort{onnxruntime.__version__}-onnxscript{onnxscript.__version__}-n6onnx{__version__}-c{CACHE_VERSION}"


PROBES = 7  # probe feeds for a graph with dynamic quantization


def probe_feeds(path: str | os.PathLike, open_session: Callable, n: int = PROBES,
                like: dict | None = None) -> list[dict]:
    """The random feeds of ``quantized_probes`` for ``path``, whatever the graph (see there)."""
    proto = onnx.load(str(path), load_external_data=False)
    sess = open_session(path)
    dims = {d: 2 for d in feeds_mod.dynamic_dims(sess)}
    if like is not None:
        dims.update(feeds_mod.dims_of(feeds_mod.input_specs(sess), like))
    return list(feeds_mod.random_feeds(sess, n, dims, seed=1, id_high=vocab.bounds(proto)))


def quantized_probes(path: str | os.PathLike, open_session: Callable, n: int = PROBES,
                     like: dict | None = None, feeds: list[dict] | None = None) -> list[tuple[RunFn, list]]:
    """fuse's ``probes`` for ``path``: for a quantized graph (``int8graph.is_quantized``: its activations
    are rounded at run time, so its outputs jump where a rounding flips), ``n`` (run, reference) pairs
    on random feeds (seed 1; token ids inside their tables; every dynamic dimension the size it has in
    ``like``, the feed the check runs on, else 2), ``open_session(path)`` giving the session to run
    on (the bench's provider and options); none for any other graph. ``like`` keeps dimensions that
    must agree consistent: a KV-cache decoder's attention mask spans past + new tokens, which 2
    everywhere breaks (an onnxruntime index error). ``feeds``: the probe feeds, already made by
    ``probe_feeds`` for a graph known to be quantized (the check and the feeds are then not repeated)."""
    if feeds is None:
        if not int8graph.is_quantized(onnx.load(str(path))):  # a fused file may hold onnxruntime-only ops
            return []
        feeds = probe_feeds(path, open_session, n, like)

    def runner(feed):
        return lambda p: open_session(p).run(None, feed)

    return [(r, r(path)) for r in map(runner, feeds)]


def agreeing_feed(path, run: RunFn, reference, probes, tol: float) -> tuple[int | None, float]:
    """(k, max abs diff on the first feed): the first feed on which ``path`` agrees with its reference
    (0: ``reference``, k: the k-th probe), or None where it agrees on none."""
    ok, diff = outputs_agree(run(path), reference, tol)
    if ok:
        return 0, diff
    for k, (run_k, ref_k) in enumerate(probes, 1):
        if outputs_agree(run_k(path), ref_k, tol)[0]:
            return k, diff
    return None, diff


def default_tol(proto: onnx.ModelProto, provider: str) -> float:
    """The agreement tolerance of a rewritten graph: 1e-3 x the output's scale on CPU, 1e-2 on CUDA or
    for float16 outputs."""
    fp16 = any(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in proto.graph.output)
    return 1e-2 if (provider == "cuda" or fp16) else 1e-3


def fuse(
    model: str | os.PathLike,
    run: RunFn | None = None,
    reference: Sequence[np.ndarray] | None = None,
    *,
    provider: str = "cpu",
    tol: float | None = None,
    model_type: str | None = None,
    num_heads: int | None = None,
    hidden_size: int | None = None,
    optimizers: Sequence[str] = OPTIMIZERS,
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
    probes: Sequence[tuple[RunFn, Sequence[np.ndarray]]] = (),
    faithful: Callable[[pathlib.Path], bool] | None = None,
) -> FusionResult:
    """Make ORT's best version of ``model`` (see the module docstring).

    ``run(path)`` runs a model file on the bench's provider and returns its outputs; with
    ``reference`` (the outputs of ``model`` itself for the same feeds) each result must agree
    within ``tol`` (default 1e-3 on CPU, 1e-2 on CUDA or for float16 outputs) relative to the
    output's scale. Without ``run`` results are only checked to load. ``probes``: further
    (run, reference) pairs on other feeds, for a quantized graph (``quantized_probes``):
    a result that disagrees on the first feed is accepted if it agrees on one of them.
    ``faithful(path)``: for a quantized graph, whose outputs jump where an int8 rounding flips, accepts
    a result that agrees on no feed but is as faithful to the float original as ``model`` itself
    (``tune.measure.fuse`` builds it from bench.layernorm.faithfulness).
    """
    src = pathlib.Path(model)
    proto = io.load_proto(src)
    n6_before = _n6_nodes(proto)
    n6_opsets = {o.domain: o.version for o in proto.opset_import if o.domain == DOMAIN}
    original = Attempt("none", count_ops(proto), len(proto.graph.node), path=src)
    inf_heads, inf_hidden = infer_heads_hidden(proto)
    model_type = model_type or infer_model_type(proto)
    if model_type not in _ort_model_types():
        raise BadArgumentError(f"unknown model type {model_type!r} for the ORT transformers optimizer "
                               f"(one of {', '.join(_ort_model_types())})")
    if num_heads is None and hidden_size is None:
        num_heads, hidden_size = inf_heads, inf_hidden
    elif num_heads is None or hidden_size is None:
        raise BadArgumentError("give both --num-heads and --hidden-size, or neither (inferred from the graph)")
    use_gpu = provider == "cuda"
    if tol is None:
        tol = default_tol(proto, provider)

    key = hashlib.sha256(json.dumps([file_key(src), _versions(), model_type, num_heads, hidden_size,
                                     use_gpu, list(optimizers), len(probes), faithful is not None]
                                    ).encode()).hexdigest()[:24]
    cdir = pathlib.Path(cache) if cache else cache_dir()
    cdir.mkdir(parents=True, exist_ok=True)
    record = cdir / f"{key}.json"

    def result(attempts, cached):
        ok = [a for a in attempts if a.ok]
        best = max(ok, key=lambda a: (a.fused_total, -(a.nodes or 0), -OPTIMIZERS.index(a.optimizer)), default=None)
        if best is None or best.fused_total <= original.fused_total:
            return FusionResult(str(src), src, "none", attempts, original, model_type, num_heads, hidden_size, cached)
        return FusionResult(str(src), best.path, best.optimizer, attempts, original, model_type, num_heads,
                            hidden_size, cached)

    if use_cache and record.is_file():
        try:
            attempts = [Attempt(**{**a, "path": pathlib.Path(a["path"]) if a.get("path") else None})
                        for a in json.loads(record.read_text())]
            if all(a.path is None or a.path.is_file() for a in attempts):
                touch(record, *(a.path for a in attempts if a.path is not None))
                res = result(attempts, True)
                if run is None or reference is None or res.chosen == "none":
                    return res
                if agreeing_feed(res.path, run, reference, probes, tol)[0] is not None:  # still agrees
                    return res
                if faithful is not None and faithful(res.path):
                    return res
        except (OSError, ValueError, TypeError, KeyError):
            pass

    attempts = []
    for name in optimizers:
        a = Attempt(name)
        attempts.append(a)
        t0 = time.perf_counter()
        try:
            p = onnx.ModelProto()
            p.CopyFrom(proto)
            hidden = _hide_n6_functions(p)
            with _quiet():
                for step in _STEPS[name]:
                    p = step(p, model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, use_gpu=use_gpu)
            _restore_n6_functions(p, hidden, n6_opsets)
            a.fused, a.nodes = count_ops(p), len(p.graph.node)
            if _n6_nodes(p) != n6_before:
                raise RuntimeError(f"the optimizer changed the n6 nodes ({n6_before} -> {_n6_nodes(p)})")
            out = cdir / f"{key}-{name.replace('+', '-')}.onnx"
            io.save(p, out)
            a.path = out
            if run is not None and reference is None:
                run(out)
            elif run is not None:
                k, a.max_abs_diff = agreeing_feed(out, run, reference, probes, tol)
                if k is None and faithful is not None and faithful(out):
                    k = -1  # int8 roundings differ, the fidelity to the float original does not
                if k is None:
                    raise RuntimeError(f"outputs differ from the original's (max abs diff {a.max_abs_diff:.3g}, "
                                       f"tolerance {tol:g} x output scale" +
                                       (f", and on each of {len(probes)} probe feeds)" if probes else ")"))
                a.probe = k
        except Exception as e:  # an optimizer crash, an invalid or wrong result: record, go on
            a.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            if a.path is not None:
                a.path.unlink(missing_ok=True)
                a.path = None
        a.seconds = time.perf_counter() - t0
    io.atomic_write(record, json.dumps([{**dataclasses.asdict(a), "path": str(a.path) if a.path else None}
                                        for a in attempts]))
    prune_cache(cdir)
    return result(attempts, False)


def _ort_model_types() -> tuple[str, ...]:
    try:
        from onnxruntime.transformers.optimizer import MODEL_TYPES

        return tuple(MODEL_TYPES)
    except ImportError:  # pragma: no cover
        return ORT_MODEL_TYPES
