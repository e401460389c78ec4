"""Quantization-aware calibration for ``--quantize int8`` and ``--quantize int4`` (closed form, numpy):
every MatMul that the quantize stage quantizes is refitted on the quantized path and its weight
GPTQ-rounded onto onnxruntime's grid.

int4 (``mode="int4[:BLOCK]"``) follows the same steps on MatMulNBits' grid (``gptq.gptq_round_int4``:
symmetric 4-bit blocks of BLOCK along K, each block's scale its round-to-nearest scale), with the
model's Gemms of constant weight split into MatMul + Add first as the int4 stage splits them, and the
rows X_q not rounded (the 4-bit weights' error is far larger than the int8 compute path's rounding of
the activations). The steps below say int8.

Without it, ``rewrite --calibrate DATA --quantize int8`` fits the float model and onnxruntime rounds
each weight to nearest afterwards, blind to what the rounding does to the layer's output and to the
errors that the MatMuls upstream add. Here the MatMuls are visited level by level (a MatMul's level:
how many quantized MatMuls lie on its longest path from the inputs; those of one level read nothing
that another of the level writes). For each level:

1. the rows X_q: the inputs of its MatMuls as the int8 model computes them, collected (on the
   calibration data) from onnxruntime's own ``quantize_dynamic`` of the model as it is now, i.e. with
   every upstream MatMul already quantized with its final weights. With ``round_rows`` (the default)
   each batch's X_q is also rounded as the int8 MatMul reading it rounds it at run time
   (``collect.dynamic_uint8``: DynamicQuantizeLinear's per-tensor uint8), so the fit sees the
   activation's own rounding too (small next to the weights', see ``n6onnx.calibrate.quantfit``).
2. the target T = X_f W: what the float model (the calibrated rewrite, or the original) computes at
   that MatMul on the same tokens. With ``compensate`` and a constant bias Add after the MatMul, W and
   that bias are refitted by ridge least squares from X_q to T (``calibrate.fit.ridge_refit``, shrunk
   towards W, the ridge chosen on held-out rows), so the layer undoes the error that arrives from
   upstream; otherwise W is kept.
3. the weight is GPTQ-rounded (``gptq.gptq_round``) against H = X_q^T X_q, onto exactly the grid that
   ``quantize_dynamic`` will compute, so the int8 stage afterwards reproduces it bit for bit. For a u8s8
   kernel that clips each pair of neighbouring products to int16 (x86 without VNNI: ``kernel``; this CPU's
   by default) every same-sign weight pair (rows 2j, 2j + 1) is kept small enough that, beside the largest
   uint8 code each of its two inputs reaches on the calibration rows, its sum stays inside int16: the clip
   becomes a rounding error that GPTQ spreads over the rows after it, instead of an input-dependent error at
   run time. Measured on MiniLM on an AVX2 VM (``benchmarks/quantize_fit.py``): held-out cosine 0.9936 ->
   0.9942 (the original), 0.9846 -> 0.9852 (calibrated gelu=phi6). Bounding by any code (255) instead
   costs far more than it saves: on random weights, 280x the output error of the unbounded rounding.
   Rounding for an exact kernel on a CPU that clips, the rows of step 1 come from ``kernel.exact_products``
   of the int8 model, i.e. as the deployment CPU computes them.

MatMuls whose weight is shared, not float32, not 2-D, or quantized per tensor are left to onnxruntime's
round to nearest, and so are Gemms.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from ..calibrate import collect, fit
from ..graph import proto_consumers
from ..errors import BadArgumentError
from . import gptq, int4graph, int8graph, kernel, quantize_proto
from .mode import QuantMode, parse_mode

MIN_ROWS = 8  # fewer calibration rows than this: nothing to fit
METHODS = ("refit", "gptq", "none")  # --quantize-fit: ridge refit on the quantized path + GPTQ; GPTQ alone; neither
MODES = ("int8", "int4")  # the quantize modes fitted (int8:static is not)
# calibration samples the fit runs on by default (--quantize-fit-samples): the first 256 of DATA. On MiniLM the fit on
# 1000 sentences scored as the fit on 256 (0.9841 / 0.9842 held-out cosine) in over twice the time
# (docs/calibration-measurements.md)
SAMPLES = 256


@dataclasses.dataclass
class QuantFitReport:
    method: str
    matmuls: int  # MatMuls whose weight was GPTQ-rounded
    compensated: int  # of those, refitted (with their bias) against upstream int8 error
    levels: int
    rows: int
    fallback_columns: int  # columns onnxruntime would not reproduce: rounded to nearest instead
    rel_err_rtn: float  # mean over MatMuls of ||X_q W_rtn + b - T||^2 / ||T - mean T||^2 on the calibration rows
    rel_err_fit: float  # ... of the fitted, GPTQ-rounded weight
    seconds: float
    int8_kernel: str | None = None  # int8: the u8s8 kernel the rounding is for ("saturating" / "exact")
    unsafe_pairs: int = 0  # saturating: same-sign weight pairs that round to nearest leaves able to clip on the
    # calibration rows' codes (the fit leaves none, but in columns that fall back to round to nearest)
    samples: int | None = None  # calibration samples the fit ran on (the first --quantize-fit-samples of them)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("rel_err_rtn", "rel_err_fit", "seconds"):
            d[k] = round(d[k], 6 if k != "seconds" else 2)
        return d


def levels(proto: onnx.ModelProto, outputs: set[str]) -> dict[str, int]:
    """{output name in ``outputs``: its level} (see the module docstring); nodes in graph order."""
    lvl: dict[str, int] = {}
    out = {}
    for n in proto.graph.node:
        L = max((lvl.get(i, 0) for i in n.input if i), default=0)
        if n.output and n.output[0] in outputs:
            out[n.output[0]] = L
            L += 1
        for o in n.output:
            lvl[o] = L
    return out


def _plan(proto: onnx.ModelProto, qproto: onnx.ModelProto, qm: QuantMode) -> dict[str, bool]:
    """{output of a MatMul of ``proto``: True} for those that ``qproto`` quantized per channel (int8) or
    replaced by MatMulNBits (int4, whose MatMul outputs keep their names)."""
    if qm.kind == "int8":
        return int8graph.quantized_matmuls(proto, qproto)
    return {o: True for n in qproto.graph.node if n.op_type == "MatMulNBits" for o in n.output[:1]}


def _sites(proto: onnx.ModelProto, qproto: onnx.ModelProto,
           qm: QuantMode = QuantMode("int8")) -> list[tuple[onnx.NodeProto, tuple | None]]:
    """(MatMul node, (bias Add node, index of its constant input) or None) for every MatMul with a
    float32 2-D weight of its own that ``qproto`` quantized per channel (int8) or in 4-bit blocks."""
    plan = _plan(proto, qproto, qm)
    inits = {t.name: t for t in proto.graph.initializer}
    users = proto_consumers(proto)
    readers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    out = []
    for n in proto.graph.node:
        if n.op_type != "MatMul" or not plan.get(n.output[0]) or n.input[1] not in inits:
            continue
        t = inits[n.input[1]]
        if t.data_type != onnx.TensorProto.FLOAT or len(t.dims) != 2 or readers.get(n.input[1], 0) != 1:
            continue
        bias = None
        adds = users.get(n.output[0], [])
        if len(adds) == 1 and adds[0].op_type == "Add":
            k = [j for j, v in enumerate(adds[0].input) if v != n.output[0] and v in inits]
            if len(k) == 1 and inits[adds[0].input[k[0]]].data_type == onnx.TensorProto.FLOAT \
                    and readers.get(adds[0].input[k[0]], 0) == 1 \
                    and int(np.prod(inits[adds[0].input[k[0]]].dims)) == t.dims[1]:
                bias = (adds[0], k[0])
        out.append((n, bias))
    return out


def _rel(err: np.ndarray, T: np.ndarray) -> float:
    return float(np.mean(err.astype(np.float64) ** 2) / (np.var(T, dtype=np.float64) + 1e-30))


def fit_quantized(proto: onnx.ModelProto, batches: Sequence[dict], *, compensate: bool = True, threads: int | None = None,
             progress: Callable[[str], None] | None = None,
             round_rows: bool = True, mode: str | QuantMode = "int8",
             saturate: bool | None = None) -> tuple[onnx.ModelProto, QuantFitReport]:
    """A copy of the float ``proto`` whose quantized MatMuls are refitted on the quantized path and
    GPTQ-rounded onto the grid onnxruntime's quantizer computes (module docstring), and a report. ``proto``
    is not modified. ``mode``: int8 (per-channel dynamic) or int4[:BLOCK] (MatMulNBits; Gemms with a constant
    weight are split into MatMul + Add first, as the int4 stage splits them; activations are not rounded).
    ``saturate`` (int8): round for a u8s8 kernel that clips pair sums to int16 (module docstring, step 3);
    None: this CPU's kernel (``kernel.pairs_saturate``)."""
    t0 = time.perf_counter()
    qm = parse_mode(mode)
    if qm.kind not in MODES:
        raise BadArgumentError(f"quantize fit: mode {qm} is not fitted (int8 and int4 are)")
    round_rows = round_rows and qm.kind == "int8"
    saturate = qm.kind == "int8" and (kernel.pairs_saturate() if saturate is None else bool(saturate))
    # rows as an exact kernel gives them unless this CPU's is known to be exact (also on a kernel n6onnx does not know)
    exact_here = qm.kind == "int8" and not saturate and kernel.kind() != "exact"
    float_proto = proto
    cur = onnx.ModelProto()
    cur.CopyFrom(proto)
    if qm.kind == "int4":
        cur, _ = int4graph.split_gemms(cur, keep=())
        float_proto = cur
        cur = onnx.ModelProto()
        cur.CopyFrom(float_proto)
    sites = _sites(cur, quantize_proto(cur, qm)[1], qm)
    lv = levels(cur, {n.output[0] for n, _ in sites})
    inits = {t.name: t for t in cur.graph.initializer}
    order = sorted(set(lv.values()))
    done = comp = fallback = rows = unsafe = 0
    e_rtn, e_fit = [], []
    inputs = [sorted({n.input[0] for n, _ in sites if lv[n.output[0]] == L}) for L in order]
    cut, fvals, qvals = None, None, None
    for i, L in enumerate(order):
        group = [(n, b) for n, b in sites if lv[n.output[0]] == L]
        if progress:
            progress(f"{qm} fit: level {i + 1}/{len(order)} ({len(group)} MatMul)")
        xs = inputs[i]
        nxt = _next_cut(float_proto, cut, xs, inputs[i + 1]) if i + 1 < len(order) else None
        full = [nxt] if nxt is not None and nxt != cut else []
        _, qcur = quantize_proto(cur, qm)
        if exact_here:  # rounding for an exact kernel on a CPU that clips: its rows as the exact kernel gives them
            qcur = kernel.exact_products(qcur)
        Xq = collect.collect(qcur, xs, batches, threads, cut=cut, cut_values=qvals, full=full,
                             rounded=xs if round_rows else ())
        Xf = collect.collect(float_proto, xs, batches, threads, cut=cut, cut_values=fvals, full=full)
        if full:  # its upstream MatMuls are final now (levels below L): the next level starts there
            cut, qvals, fvals = nxt, Xq.pop(("full", nxt)), Xf.pop(("full", nxt))
        for n, bias in group:
            xq, xf = Xq[n.input[0]], Xf[n.input[0]]
            if len(xq) < MIN_ROWS or xq.shape != xf.shape:
                continue
            rows = max(rows, len(xq))
            W = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
            b = numpy_helper.to_array(inits[bias[0].input[bias[1]]]).astype(np.float32).reshape(-1) \
                if bias else np.zeros(W.shape[1], np.float32)
            T = xf @ W + b
            Wt, bt = W, b
            if compensate and bias is not None:
                rf = fit.ridge_refit(xq, T, W, b)
                Wt, bt = rf.W, rf.b
            H = xq.T.astype(np.float64) @ xq
            if qm.kind == "int4":
                Wg, bad = gptq.gptq_round_int4(Wt, H, qm.block)
                q, S = gptq.int4_grid(W, qm.block)
                rtn = q.astype(np.float32) * S
            else:
                codes = _pair_codes(Xq.get(("codes", n.input[0])), W.shape[0]) if saturate else None
                Wg, bad = gptq.gptq_round(Wt, H, pair_codes=codes)
                rtn = gptq.round_to_nearest(W)
                if codes is not None:
                    unsafe += gptq.unsafe_pairs(gptq.ort_grid(W)[0], codes)
            e_rtn.append(_rel(xq @ rtn + b - T, T))
            e_fit.append(_rel(xq @ Wg + bt - T, T))
            fallback += bad
            _replace(cur, inits, n.input[1], Wg)
            if compensate and bias is not None:
                old = inits[bias[0].input[bias[1]]]
                _replace(cur, inits, old.name, bt.reshape(numpy_helper.to_array(old).shape))
                comp += 1
            done += 1
    rep = QuantFitReport("gptq" + ("+refit" if compensate else ""), done, comp, len(order), rows, fallback,
                         float(np.mean(e_rtn)) if e_rtn else 0.0, float(np.mean(e_fit)) if e_fit else 0.0,
                         time.perf_counter() - t0,
                         "saturating" if saturate else "exact" if qm.kind == "int8" else None, unsafe,
                         getattr(batches, "samples", None))
    return cur, rep


def _pair_codes(top: np.ndarray | None, K: int) -> np.ndarray:
    """The uint8 code bound of each of a MatMul's K inputs that GPTQ keeps its weight pairs exact under: the
    largest code of that input on the calibration rows (255, any code, where they were not rounded)."""
    if top is None or len(top) != K:
        return np.full(K, 255.0)
    return np.asarray(top, np.float64)


def _next_cut(proto: onnx.ModelProto, cut: str | None, xs: list[str], nxt: list[str]) -> str | None:
    """Where the next level's collection should start: the current cut or one of this level's inputs
    (their upstream MatMuls are all of lower levels, so their values are final once collected), whichever
    leaves the fewest nodes to run for the next level's inputs ``nxt``. Any choice gives the same rows
    (what the cut does not cover is recomputed from the graph inputs); this one is the cheapest."""
    best, size = cut, None
    for c in ([cut] if cut else []) + xs:
        k = len(collect.with_outputs(proto, nxt, {c: np.zeros((1, 1), np.float32)}).graph.node)
        if size is None or k < size:
            best, size = c, k
    return best


def _replace(proto: onnx.ModelProto, inits: dict, name: str, value: np.ndarray) -> None:
    """Overwrite initializer ``name`` of ``proto`` (a copy owned here) with ``value``, same name and dtype."""
    t = numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name)
    inits[name].CopyFrom(t)
