"""Accuracy recovery without training.

Calibrated activation swap: for each FFN whose GELU became an n6 activation, fit per hidden unit
j the affine y_j = alpha_j * act(a_j * z_j + c_j) + beta_j to the original GELU on calibration
data, fold (a, c) into the up projection's weights and bias and (alpha, beta) into the down
projection's, then (optionally) refit the down projection and its bias by ridge least squares
against the original model. Layers are processed in graph order; each layer's inputs come from
the model with every earlier layer already rewritten, and its target is what the original model
adds to the residual stream there (original residual + original FFN output - current residual),
so upstream errors are compensated rather than compounded. Every fit is weighted per token by
1 / var of the original residual stream after the FFN's add (``stream_weights``): that is what the
next LayerNorm divides by, so an error there costs |e|^2 / var downstream, and tokens with massive
activations would otherwise dominate the fits. The rewritten graph has exactly the nodes of an
uncalibrated rewrite: the calibration costs nothing at inference. Gated FFNs (act(z) * u) are the
exception: (alpha P + beta) * u = (P + beta / alpha) * (alpha u), so alpha folds into the linear
projection but beta / alpha needs one explicit Add before the product (reported in ``explicit``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from typing import Callable, Sequence

import numpy as np
import onnx_ir as ir

from .. import feeds, vocab
from ..blocks import FFNBlock, Projection, find_ffn_blocks
from ..errors import BadArgumentError
from ..graph import UPSCALE_TAG, add_initializer, is_const
from ..ops import DOMAIN, REGISTRY
from ..runtime import InferenceSession, session_for
from . import collect, fit, outliers, quantfit

# the calibration samples `rewrite` fits on by default (--calib-samples): on MiniLM (docs/calibration-measurements.md)
# 1000 sentences over 256 raise gelu=phi6 from 0.9887 to 0.9907 held-out cosine (0.9846 -> 0.9866 with --quantize
# int8) and the 4/3 bottleneck from 0.8962 to 0.9168, at up to 2.5 GB and under 2 minutes a pass on 2 cores. `tune`
# calibrates every trial and keeps TUNE_SAMPLES.
SAMPLES = 1000
TUNE_SAMPLES = 256
# fewer real tokens than this per FFN unit and the per-channel fit and the ridge refit are underdetermined
MIN_ROWS_PER_UNIT = 2
ACTS = {"Phi6": REGISTRY["Phi6"].reference, "ZetaLn2": REGISTRY["ZetaLn2"].reference}


@dataclasses.dataclass
class LayerFit:
    block: str
    rows: int
    activation_r2: float  # mean over channels: how well the affine act reproduces GELU
    rel_err_folded: float  # calibration error of the layer's residual contribution, folded fit only
    rel_err: float  # ... after the ridge refit of the down projection (== folded without refit)
    ridge: float | None
    explicit: list[str]
    centred: bool = False  # the activation's output is centred before the down projection (see quantfit)
    # the fitted per-channel affine y = alpha * act(a z + c) + beta (not in the JSON)
    affine: dict = dataclasses.field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "affine"}


@dataclasses.dataclass
class CalibrationReport:
    samples: int
    batches: int
    rows: int
    seconds: float
    refit: bool
    layers: list[LayerFit]
    available: int | None = None  # samples in DATA (more than ``samples`` when --calib-samples capped them)
    warnings: list[str] = dataclasses.field(default_factory=list)
    int8_guard: str | None = None  # the int8 quantizer the output was made to survive (see api.rewrite)

    def to_json(self) -> dict:
        return {"samples": self.samples, "available": self.available, "batches": self.batches, "rows": self.rows,
                "seconds": round(self.seconds, 2), "refit": self.refit, "int8_guard": self.int8_guard,
                "layers": [l.to_json() for l in self.layers], "warnings": self.warnings}


def _np(v: ir.Value) -> np.ndarray:
    return ir.convenience.get_const_tensor(v).numpy()


def _set_input(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, name: str) -> ir.Value:
    """Replace node.inputs[index] by a new initializer holding ``array`` (never edits a shared one)."""
    old = node.inputs[index]
    v = add_initializer(graph, array, name)
    node.replace_input_with(index, v)
    if old is not None and not old.uses() and not old.is_graph_input() and not old.is_graph_output() \
            and graph.initializers.get(old.name) is old:
        graph.initializers.pop(old.name)  # unused now; a weight kept on disk gives its mapped pages back
        if isinstance(old.const_value, ir.ExternalTensor):
            with contextlib.suppress(BufferError):  # a caller still holds a view: freed with it
                old.const_value.release()
    return v


def _bias_slot(proj: Projection, act: ir.Node | None = None) -> tuple[ir.Node, int] | None:
    if act is not None and act.domain == DOMAIN and act.op_type.startswith("Bias"):
        return act, 1
    if proj.bias_add is not None:
        idx = [i for i, v in enumerate(proj.bias_add.inputs) if v is proj.bias][0]
        return proj.bias_add, idx
    if proj.node.op_type == "Gemm" and len(proj.node.inputs) > 2 and proj.node.inputs[2] is not None:
        return proj.node, 2
    return None


def _weight_hd(proj: Projection) -> np.ndarray:
    """Weight as [in, out] (MatMul orientation)."""
    w = _np(proj.weight).astype(np.float32)
    return w.T if proj.transposed else w


def _store_weight(graph, proj: Projection, w_in_out: np.ndarray, dtype, tag: str) -> None:
    w = w_in_out.T if proj.transposed else w_in_out
    _set_input(graph, proj.node, 1, np.ascontiguousarray(w).astype(dtype), f"{proj.weight.name}_{tag}")


def calibrate_swap(model: ir.Model, original: ir.Model, batches: Sequence[dict], *, refit: bool = True,
                   threads: int | None = None, progress: Callable[[str], None] | None = None,
                   centre: bool = True, balance: float | None = 0.8, outlier_ratio: float | None = 16.0,
                   outlier_cap: int = 32, up_scale: bool = True, orient: bool = True) -> CalibrationReport:
    """Fit and fold the calibrated activation swap into ``model`` (rewritten by the gelu pass) in place.

    ``centre``: subtract the activation's calibration mean before the down projection (one Add per
    non-gated FFN, folded back into its bias), so that int8 quantization survives: see ``quantfit``.
    ``balance`` (with ``centre``): also scale each centred unit by a constant folded out of the down
    projection's row (one Mul per FFN), the migration strength of ``quantfit.balance_scales``; None: no Mul.
    MiniLM held-out, stock per-channel / per-tensor int8: centring only 0.952 / 0.582, balance 0.5
    0.956 / 0.817, balance 0.8 0.984 / 0.683 (float 0.990 in all). ``outlier_ratio`` (with
    ``balance``): the units whose range product exceeds that many times the median (at most
    ``outlier_cap`` per FFN) move to a detour FFN of their own (``outliers``); None: no detour.
    ``up_scale`` (Bias* activations): W1's columns at equal ranges, the fit's per-unit gain in a Mul
    before the activation (see ``quantfit``). MiniLM held-out, balance 0.8, stock per-tensor /
    per-channel int8: neither 0.678 / 0.984, up_scale only 0.827 / 0.983, detour only 0.838 /
    0.984, both 0.981 / 0.984 (float 0.989 in all; benchmarks/quantize.py has the final figures).
    ``orient`` (with ``balance``): each centred unit's sign, in its balance scale (and the detour's), puts its
    longer tail positive (``quantfit.orientation``), so the down projections' uint8 bytes stay low where x86
    without VNNI clips pairs of high bytes. MiniLM, 64 held-out sentences, on such a CPU (AVX2), stock per-channel
    / per-tensor int8: 0.077 / 0.083 without, 0.984 / 0.983 with (float 0.990)."""
    t0 = time.perf_counter()
    blocks, _, _ = find_ffn_blocks(model)
    todo = []
    for b in blocks:
        op = b.act.op_type.removeprefix("Bias")
        if b.act.domain != DOMAIN or op not in ACTS or b.shift:
            continue  # not an n6 activation, or already calibrated (its centring Add is in place)
        todo.append(b)
    if not todo:
        return CalibrationReport(_samples(batches), len(batches), 0, time.perf_counter() - t0, refit, [],
                                 getattr(batches, "available", None))

    orig = original_streams(original, todo, batches, threads)
    layers = []
    graph = model.graph
    sweep = collect.Sweep(batches, threads)
    for i, b in enumerate(todo):
        if progress:
            progress(f"FFN {i + 1}/{len(todo)} ({b.act.name})")
        op = b.act.op_type.removeprefix("Bias")
        act = ACTS[op]
        variant = b.act.metadata_props.get("n6onnx.variant", "erf")
        slot = _bias_slot(b.up, b.act)
        b1 = _np(slot[0].inputs[slot[1]]).astype(np.float32) if slot else None
        # the up-projection output already contains a Gemm's C; a separate bias is added here
        separate_bias = slot is not None and slot[0] is not b.up.node
        upv = b.up.node.outputs[0].name
        res = b.residual.name if b.residual is not None else None
        # gated FFN: act(z) * u, u the other projection's output (with its bias)
        uv = _gate_value(b)
        cur = sweep.step(model, [upv] + ([uv.name] if uv is not None else []) + ([res] if res else []), res)
        z = cur[upv] + (b1 if separate_bias else 0)
        explicit = []
        dtype = _np(b.up.weight).dtype
        w1 = _weight_hd(b.up)
        b1_total = b1
        wts = stream_weights(orig, b)
        af = fit.fit_affine_activation(z, lambda x: fit.gelu(x, variant), act, weights=wts)
        # (alpha, beta) into the down projection, then the refit. The folded graph's activation
        # outputs P = act(a z + c); the down projection sees P, so P is the regression input.
        Y = act((af.a * z + af.c).astype(np.float32))
        w2 = _weight_hd(b.down)
        dslot = _bias_slot(b.down)
        b2 = _np(dslot[0].inputs[dslot[1]]).astype(np.float32) if dslot else np.zeros(w2.shape[1], np.float32)
        if uv is None:
            w2f = af.alpha[:, None] * w2
            b2f = b2 + af.beta @ w2
        else:
            # (alpha P + beta) * u = (P + beta / alpha) * (alpha u): alpha goes into the gate
            # projection, beta / alpha is an explicit Add before the product (nothing can absorb it)
            alpha = _safe_scale(af.alpha)
            shift = (af.beta / alpha).astype(np.float32)
            Y = (Y + shift) * (cur[uv.name] * alpha)
            w2f, b2f = w2, b2
        target = layer_target(orig, cur, b)
        var = weighted_var(target, wts)
        if refit:
            rf = fit.ridge_refit(Y, target, w2f, b2f, weights=wts)
            w2n, b2n, err_f, err, lam = rf.W, rf.b, rf.err_prior, rf.err, rf.lam
        else:
            w2n, b2n = w2f, b2f
            err_f = err = weighted_mse(Y @ w2f + b2f - target, wts)
            lam = None
        centred = centre and uv is None
        split = np.zeros(0, np.int64)  # outlier units moved to a detour (see outliers)
        if centred:
            mean = quantfit.activation_mean(Y, wts)
            b2n = (b2n + mean @ w2n).astype(np.float32)
            centred_v = _insert_add(graph, b.act.outputs[0], (-mean).astype(dtype), f"{b.act.name}_n6cal_centre")
            if balance is not None:
                # each unit's longer tail positive: a low uint8 byte range, which no-VNNI x86 does not clip
                sign = quantfit.orientation(Y - mean) if orient else np.ones(Y.shape[1], np.float32)
                scale = quantfit.balance_scales(Y - mean, w2n, balance) * sign
                if outlier_ratio is not None and b.residual is not None:
                    split = outliers.select(Y - mean, w2n, outlier_ratio, outlier_cap)
                if split.size:
                    w2_split, mean_split, sign_split = w2n[split].copy(), mean[split], sign[split]
                    w2n = w2n.copy()
                    w2n[split] = 0.0
                    scale[split] = 1.0  # (the rows are 0: any finite scale; 0 below, in the graph)
                w2n = (w2n / scale[:, None]).astype(np.float32)
                scale[split] = 0.0
                _insert_add(graph, centred_v, scale.astype(dtype),
                            f"{b.act.name}_n6cal_scale", op="Mul")
        # fold (a, c) into the up projection
        w1f = w1 * af.a[None, :]
        if up_scale and uv is None and slot is not None and slot[0] is b.act:
            # equal column ranges in W1 (per-tensor int8), the per-unit gain in a Mul after it
            cmax = np.abs(w1f).max(0)
            r = np.where(cmax > 0, cmax / max(float(cmax.max()), 1e-30), 1.0).astype(np.float32)
            _store_weight(graph, b.up, w1f / r[None, :], dtype, "n6cal")
            scaled = _insert_add(graph, b.up.node.outputs[0], r.astype(dtype), f"{b.act.name}_n6cal_upscale", op="Mul")
            scaled.producer().metadata_props[UPSCALE_TAG] = b.act.name
        else:
            _store_weight(graph, b.up, w1f, dtype, "n6cal")
        new_b1 = (af.a * (b1_total if b1_total is not None else 0) + af.c).astype(dtype)
        if slot is not None:
            _set_input(graph, slot[0], slot[1], new_b1, f"{slot[0].inputs[slot[1]].name}_n6cal")
        else:
            explicit.append("up-projection bias (added as an explicit Add)")
            _insert_add(graph, b.up.node.outputs[0], new_b1, f"{b.act.name}_n6cal_bias")
        if split.size:
            res_add = next(n for n, _ in b.out.uses() if b.residual in n.inputs)
            outliers.insert_detour(graph, b.act, b.x, res_add, b.residual, w1f[:, split], new_b1[split],
                                   mean_split, w2_split, dtype, sign_split)
            explicit.append(f"{split.size} outlier units in a detour FFN (int8 per tensor)")
        if uv is not None:
            _store_weight(graph, b.gate, _weight_hd(b.gate) * alpha[None, :], _np(b.gate.weight).dtype, "n6cal")
            gslot = _bias_slot(b.gate)
            if gslot is not None:
                gb = _np(gslot[0].inputs[gslot[1]]).astype(np.float32)
                _set_input(graph, gslot[0], gslot[1], (gb * alpha).astype(gb.dtype), f"{gslot[0].inputs[gslot[1]].name}_n6cal")
            explicit.append("activation offset beta/alpha (an explicit Add before the gate product)")
            _insert_add(graph, b.act.outputs[0], shift.astype(dtype), f"{b.act.name}_n6cal_offset")
        _store_weight(graph, b.down, w2n, _np(b.down.weight).dtype, "n6cal")
        if dslot is not None:
            _set_input(graph, dslot[0], dslot[1], b2n.astype(dtype), f"{dslot[0].inputs[dslot[1]].name}_n6cal")
        else:
            explicit.append("down-projection bias (added as an explicit Add)")
            _insert_add(graph, b.down.node.outputs[0], b2n.astype(dtype), f"{b.act.name}_n6cal_out_bias")
        layers.append(LayerFit(b.act.name, int(len(z)), float(af.r2.mean()), err_f / var, err / var, lam, explicit,
                               centred, {"a": af.a, "c": af.c, "alpha": af.alpha, "beta": af.beta}))
    rows = layers[0].rows
    report = CalibrationReport(_samples(batches), len(batches), rows, time.perf_counter() - t0, refit, layers,
                               getattr(batches, "available", None))
    width = max(int(l.affine["a"].shape[0]) for l in layers)
    if rows < MIN_ROWS_PER_UNIT * width:
        report.warnings.append(
            f"calibration data too small: {rows} real tokens for FFNs of {width} units (want >= "
            f"{MIN_ROWS_PER_UNIT * width}, {MIN_ROWS_PER_UNIT} per unit); the fit can match these tokens exactly "
            "(tiny calibration errors) and still generalise poorly: give more text, and measure with "
            "`n6onnx validate` on held-out data")
    return report


class OriginalStreams:
    """Rows of each block's FFN output and residual stream in the original model, keyed by the names
    in the rewritten model, one block at a time: a ``collect.Sweep`` over the original, cut at each
    block's residual stream, runs it about once in all, and holds one layer's values and one layer's
    weights in an onnxruntime session at a time (a session of the whole original would hold all its
    weights). Blocks are asked for in graph order. An earlier calibrated pass may have appended a
    node to a stream (an explicit bias Add after the down projection): such a value is looked up as
    the value it was computed from, the one the original model has."""

    def __init__(self, original: ir.Model, blocks: Sequence[FFNBlock], batches, threads=None):
        known = {v.name for n in original.graph for v in n.outputs} | {v.name for v in original.graph.inputs}
        self._original, self._blocks, self._next = original, list(blocks), 0
        self._source = {v.name: _original_name(v, known) for b in blocks for v in _streams(b)}
        self._sweep = collect.Sweep(batches, threads)
        self._values: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        while name not in self._values:
            if self._next >= len(self._blocks):
                raise KeyError(name)
            b = self._blocks[self._next]
            self._next += 1
            src = [self._source[v.name] for v in _streams(b)]
            rows = self._sweep.step(self._original, list(dict.fromkeys(src)),
                                    src[1] if b.residual is not None else None)
            self._values = {v.name: rows[s] for v, s in zip(_streams(b), src)}
        return self._values[name]


def _streams(b: FFNBlock) -> list[ir.Value]:
    return [b.out] + ([b.residual] if b.residual is not None else [])


def original_streams(original: ir.Model, blocks: Sequence[FFNBlock], batches, threads=None) -> OriginalStreams:
    """The original model's streams at ``blocks`` (see ``OriginalStreams``)."""
    return OriginalStreams(original, blocks, batches, threads)


def _original_name(v: ir.Value, known: set[str]) -> str:
    """The original model's name for ``v``: ``v`` itself, or what an earlier calibrated pass appended
    to it was computed from (a constant Add/Mul, or the Add of an outlier detour's output: the branch
    that leads back to an original value)."""
    name = _trace(v, known, 0)
    if name is None:
        raise ValueError(f"stream {v.name!r} has no counterpart in the original model")
    return name


def _trace(v: ir.Value, known: set[str], depth: int) -> str | None:
    if v.name in known:
        return v.name
    n = v.producer()
    if n is None or n.op_type not in ("Add", "Mul") or depth > 8:
        return None
    live = [i for i in n.inputs if i is not None and not is_const(i)]
    if len(live) == 1 or (n.op_type == "Add" and len(live) == 2):
        found = [t for t in (_trace(i, known, depth + 1) for i in live) if t is not None]
        return found[0] if len(found) == 1 else None
    return None


def layer_target(orig: dict, cur: dict, b: FFNBlock) -> np.ndarray:
    """What the FFN must add to the current residual stream to give the original model's stream
    after its add: original residual + original FFN output - current residual (upstream errors
    are compensated, not compounded). Without a residual add: the original FFN output."""
    if b.residual is None:
        return orig[b.out.name]
    return orig[b.residual.name] + orig[b.out.name] - cur[b.residual.name]


def _gate_value(b: FFNBlock) -> ir.Value | None:
    """The other factor of a gated FFN's product (the linear projection, bias included)."""
    if not b.gated or b.gate_mul is None:
        return None
    return next(v for v in b.gate_mul.inputs if v is not b.act.outputs[0])


def _safe_scale(alpha: np.ndarray) -> np.ndarray:
    """alpha with magnitudes floored at 1e-3 of the median (sign kept), so beta / alpha stays finite;
    the refit sees the features as built, so a floored unit is still fitted consistently."""
    floor = 1e-3 * max(float(np.median(np.abs(alpha))), 1e-12)
    return np.where(np.abs(alpha) < floor, np.where(alpha < 0, -floor, floor), alpha).astype(np.float32)


def stream_weights(orig: dict, b: FFNBlock) -> np.ndarray | None:
    """Row weights 1 / var_t of the original residual stream right after the FFN's residual add
    (token t). That stream is what the next LayerNorm divides by its standard deviation (post-LN:
    directly; pre-LN: at the next block's input), so an error e_t in it costs ~|e_t|^2 / var_t
    downstream: tokens with massive activations would otherwise dominate every fit while their
    errors are normalised away."""
    if b.residual is None:
        return None
    x = orig[b.residual.name] + orig[b.out.name]
    return inverse_variance(x.var(1, dtype=np.float64))


def inverse_variance(v: np.ndarray) -> np.ndarray:
    """1 / v per token, v floored at 1e-6 of its mean."""
    return 1.0 / np.maximum(v, 1e-6 * max(float(v.mean()), 1e-30))


def weighted_mse(err: np.ndarray, w: np.ndarray | None) -> float:
    if w is None:
        return float(np.mean(err.astype(np.float64) ** 2))
    return float(np.mean((err.astype(np.float64) ** 2).mean(1) * w) / np.mean(w))


def weighted_var(x: np.ndarray, w: np.ndarray | None) -> float:
    if w is None:
        return float(np.var(x)) + 1e-12
    m = (w @ x.astype(np.float64)) / w.sum()
    return weighted_mse(x - m, w) + 1e-12


def _samples(batches) -> int:
    rows = getattr(batches, "rows", None)
    if rows is not None:
        return int(sum(rows))
    return int(sum(feeds.batch_rows(b) for b in batches))


def _insert_add(graph: ir.Graph, value: ir.Value, bias: np.ndarray, name: str, op: str = "Add") -> ir.Value:
    """value -> Add(value, bias) (or ``op``: Mul) for every consumer of value; returns the new output."""
    users = list(value.uses())
    c = ir.Value(name=name, shape=ir.Shape(bias.shape), type=ir.TensorType(ir.DataType.from_numpy(bias.dtype)),
                 const_value=ir.tensor(bias, name=name))
    graph.register_initializer(c)
    node = ir.Node("", op, [value, c], name=f"{name}_{op.lower()}")
    graph.insert_after(value.producer(), node)
    out = node.outputs[0]
    out.name = f"{name}_out"
    out.shape, out.type = value.shape, value.type
    for user, idx in users:
        user.replace_input_with(idx, out)
    return out


def load_batches(data: str, model, *, tokenizer: str | None = None, samples: int | None = None,
                 dims: dict | None = None):
    """Calibration feeds: an .npz of feeds, or a text file tokenised with ``tokenizer`` (default:
    the packaged all-MiniLM-L6-v2 tokenizer, only when the model's vocabulary provably is its
    vocabulary: see ``n6onnx.vocab.default_tokenizer``). Token ids outside the embedding table the
    graph gathers from are refused. Dynamic dimensions are taken from the data."""
    p = pathlib.Path(data)
    if not p.is_file():
        raise BadArgumentError(f"--calibrate {data}: no such file")
    # the session only tells the inputs' names, types and shapes
    sess = InferenceSession(model) if isinstance(model, bytes) else session_for(model)
    if p.suffix == ".npz":
        if tokenizer is not None:
            raise BadArgumentError(f"--tokenizer applies to a text DATA only; --calibrate {data} is an .npz of feeds "
                                   "(token ids already)")
        batches = feeds.load_npz(p, sess)
        available = batches.samples
    else:
        texts = feeds.read_text(p)
        available = len(texts)
        if samples:
            texts = texts[:samples]
        if tokenizer is None:
            tokenizer = str(vocab.default_tokenizer(model))
        batches = feeds.text_feeds(texts, tokenizer, sess, dims)
    if p.suffix == ".npz":
        batches = batches.head(samples or None)
    vocab.check_ids(batches, vocab.bounds(model), f"--calibrate {data}")
    batches.available = available  # what DATA holds, for the report (the rest was left out by ``samples``)
    return batches
