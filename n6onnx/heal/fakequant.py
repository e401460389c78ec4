"""Fake quantization: the student runs each MatMul that ``--quantize int8`` will quantize the way
onnxruntime will run it, so healing trains against the int8 error too (quantization-aware training).

Which MatMuls: those that ``n6onnx.quantize`` (onnxruntime's ``quantize_dynamic``, per channel)
actually replaces in this very model, read from its output (``quantize.int8graph``): MatMuls with a
constant weight and Gemms (alpha = beta = 1, no transA), minus excluded nodes; MatMuls of two
activations stay float, as in the int8 model.

How, per quantized MatMul ``Y = X @ W`` (onnxruntime's rules for that mode):
- the weight: symmetric int8 per output column, ``s_n = float32(2 max_k |W_kn| / 254)`` (1 where the
  column is all zero), ``q = clip(round_half_even(W / s), -127, 127)``, zero point 0;
- the activation: ``DynamicQuantizeLinear`` (uint8, per tensor, range widened to include 0):
  ``s = (max - min) / 255``, ``zp = round_half_even(clip(-min / s, 0, 255))``,
  ``q = clip(round_half_even(X / s) + zp, 0, 255)``;
- forward ``Y = ((qX - zpX) sX) @ (qW sW)``: the integer product of ``MatMulInteger``, scaled as
  its Cast and Mul scale it (float32 accumulation here, exact int32 there: within float rounding,
  except where an activation that differs by rounding from onnxruntime's lands on the other side of
  a rounding boundary, which moves that element by one step); on a CPU whose kernel clips each pair of
  neighbouring products along K to int16 (x86 without VNNI: ``quantize.kernel``), that clipping is added
  to the output (``saturation``), so the student computes what onnxruntime computes on this machine (the
  dynamic graph's MatMuls all run that kernel; ``int8:static`` is mirrored with exact products: onnxruntime
  fuses only some of its DequantizeLinear -> MatMul pairs into integer kernels, and runs the rest in float);
- backward: straight-through (the gradient of the identity: no range is ever clipped, since the
  scales cover the tensor's own range).

``--quantize int4[:BLOCK]`` (``MatMulNBits``, weight-only, symmetric, accuracy level 4): every MatMul
with a constant weight that the quantizer replaces, each weight column in blocks of BLOCK along K:
``s = v / -8`` with ``v`` the block's entry of largest magnitude (sign kept), ``q = clip(round(W / s)
+ 8, 0, 15) - 8``; the activation as the CPU kernel's int8 compute path quantizes it, per row in
blocks of BLOCK along K, symmetric: ``s = max |x| / 127``, ``q = round(x * float32(127 / max |x|))`` (the kernel multiplies by the inverse). Straight-through.

``--quantize int8:static`` (``quantize_static``, QDQ, MinMax): the weights as for ``int8`` (per
channel, symmetric; recomputed from the live weight at every step, as the quantizer recomputes them
on write-out), and every activation tensor the QDQ graph quantizes (the inputs of its MatMuls and
Gemms, those of two activations included; ``n6onnx.quantize`` leaves their outputs float) rounded to
uint8 with the fixed scale and zero point that the MinMax calibration gave the start model
(``Plan.tensors``), and a Gemm's bias to int32 at input scale x weight scale. The gradient passes where
a value is within its range and is zero where it was clipped (``fixed``). On write-out the healed
model is calibrated again on the same data.
"""

from __future__ import annotations

import dataclasses
import weakref

import numpy as np
import onnx
import torch

from ..errors import BadArgumentError, N6Error
from ..quantize import int4graph, int8graph, kernel, quantize_proto
from ..graph import proto_consumers


MODES = ("int8", "int8:static", "int4")  # the --quantize kinds the student can mirror


@dataclasses.dataclass(frozen=True)
class Site:
    """How the student runs one quantized MatMul or Gemm: ``weight`` ("int8", per channel) or
    ("int4", block) rounds the constant weight; ``act`` "dynamic" (DynamicQuantizeLinear), "block"
    (int8 per row per block of K: ``weight[1]``) or None (float here; a static plan rounds it at the
    tensor level)."""
    weight: tuple = ("int8", True)
    act: str | None = "dynamic"
    bias: float | None = None  # static Gemm: its input's scale (the bias is int32 at input scale x weight scale)
    saturate: bool = False  # u8s8 on a CPU whose kernel clips pair sums to int16 (``saturation``)
    grid: str | None = None  # static: the input tensor whose (scale, zero point) in ``Plan.tensors`` gives its codes


class Plan(dict):
    """{output of a quantized MatMul/Gemm: ``Site``}, plus ``tensors``: {activation tensor: (scale,
    zero point)} that a static QDQ graph rounds to uint8 wherever it is read."""

    def __init__(self, sites=(), tensors=None):
        super().__init__(sites)
        self.tensors: dict[str, tuple[float, int]] = dict(tensors or {})


def plan(proto: onnx.ModelProto, mode: str = "int8", feeds=None, saturate: bool | None = None) -> Plan:
    """What ``--quantize MODE`` quantizes in ``proto``, read from onnxruntime's own output for it.
    ``feeds`` (feed dicts): the calibration data of ``int8:static``. ``saturate`` (int8, dynamic or static):
    whether the target kernel clips pair sums to int16; None: as this CPU's does (``quantize.kernel``). A
    static site clips only where onnxruntime runs it on that kernel (``_static_plan``)."""
    kind = str(mode).split(":")[0] if str(mode).startswith("int4") else str(mode)
    if kind not in MODES:
        raise BadArgumentError(f"fake quantization mirrors --quantize {', '.join(MODES)}, not {mode}")
    if kind == "int8":
        _, q = quantize_proto(proto, "int8")
        sat = kernel.pairs_saturate() if saturate is None else bool(saturate)
        return Plan({y: Site(("int8", pc), saturate=sat) for y, pc in int8graph.quantized_matmuls(proto, q).items()})
    if kind == "int4":
        _, q = quantize_proto(proto, mode)
        return _int4_plan(proto, q)
    if feeds is None:
        raise BadArgumentError("fake quantization of int8:static needs the calibration feeds")
    _, q = quantize_proto(proto, "int8:static", calibration_feeds=feeds)
    return _static_plan(proto, q, kernel.pairs_saturate() if saturate is None else bool(saturate))


def products(p: Plan) -> str | None:
    """The integer products a plan's int8 sites with integer inputs (dynamic, or a static site whose input
    is rounded) mirror: "saturating" (pair sums clipped to int16), "exact", or None where it has none."""
    sites = [s for s in p.values() if s.weight[0] == "int8" and (s.act == "dynamic" or s.grid is not None)]
    return None if not sites else "saturating" if any(s.saturate for s in sites) else "exact"


def _int4_plan(proto: onnx.ModelProto, q: onnx.ModelProto) -> Plan:
    """Keyed by the output of the MatMul, or of the Gemm that the quantizer split into MatMul + Add."""
    inits = {t.name for t in proto.graph.initializer}
    mm = {n.output[0]: n.output[0] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    mm.update({v: y for y, v in int4graph.split_outputs(proto).items()})
    out = {}
    for n in q.graph.node:
        if n.op_type != "MatMulNBits" or n.output[0] not in mm:
            continue
        a = {x.name: onnx.helper.get_attribute_value(x) for x in n.attribute}
        if a.get("bits", 4) != 4 or len(n.input) > 3 and n.input[3]:
            raise N6Error(f"fake quantization: {n.name} is not symmetric 4-bit; heal with --no-heal-fake-quant")
        out[mm[n.output[0]]] = Site(("int4", int(a["block_size"])), "block" if a.get("accuracy_level") == 4 else None)
    return Plan(out)


def _static_plan(proto: onnx.ModelProto, q: onnx.ModelProto, saturate: bool = False) -> Plan:
    """Sites: the MatMuls/Gemms whose constant weight the QDQ graph dequantizes (per channel);
    tensors: every float tensor of ``proto`` that the QDQ graph runs through QuantizeLinear ->
    DequantizeLinear (a graph output keeps its name on the DequantizeLinear). A site whose input is
    rounded too, and whose weight onnxruntime multiplies as integers once it has fused the graph
    (``kernel.integer_weights``), is an integer product (``saturate``: clipped in pairs, as ``saturation``)."""
    qi = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    users = proto_consumers(q)
    finits = {t.name for t in proto.graph.initializer}
    tensors = {}
    for n in q.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in qi:
            continue
        scale, zp = qi[n.input[1]], qi[n.input[2]]
        if scale.size != 1 or zp.dtype != np.uint8:
            raise N6Error(f"fake quantization: {n.name} is not per-tensor uint8; heal with --no-heal-fake-quant")
        x = n.input[0]
        dq = [u for u in users.get(n.output[0], []) if u.op_type == "DequantizeLinear"]
        if x.endswith("_QuantizeLinear_Input") and dq:  # a graph output: its DequantizeLinear gives its name
            x = dq[0].output[0]
        elif [u.op_type for u in users.get(x, [])] != ["QuantizeLinear"]:
            raise N6Error(f"fake quantization: {x} is read both rounded and float in the QDQ graph; heal with "
                          "--no-heal-fake-quant")
        tensors[x] = (float(scale.reshape(())), int(zp.reshape(())))
    integer = kernel.integer_weights(q) if saturate else set()
    sites = {}
    for n in proto.graph.node:
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in finits:
            w = producer.get(f"{n.input[1]}_DequantizeLinear_Output")
            if w is not None and w.op_type == "DequantizeLinear":
                b = producer.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                x = tensors.get(n.input[0])
                bias = x[0] if b is not None and b.op_type == "DequantizeLinear" and x is not None else None
                rounded = x is not None  # its input too: an integer product where onnxruntime fused it into one
                sites[n.output[0]] = Site(("int8", qi[w.input[1]].size > 1), None, bias,
                                          rounded and w.input[0] in integer, n.input[0] if rounded else None)
    return Plan(sites, tensors)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` forward, the identity's gradient backward."""
    return x + (q - x).detach()


def _quant(q) -> tuple:
    """A weight quantizer: ("int8", per channel) or ("int4", block); a bool means ("int8", it)."""
    return ("int8", bool(q)) if isinstance(q, bool) else tuple(q)


def int8_scale(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """The symmetric int8 scale of ``w`` [K, N] per output column (or per tensor): 2 max|W| / 254, 1 where 0."""
    with torch.no_grad():
        wd = w.detach()
        amax = wd.abs().amax(0) if per_channel else wd.abs().amax()
        scale = (amax.double() * 2 / 254).float()
        return torch.where(scale > 0, scale, torch.ones_like(scale))


def weight_grid(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values as float, scale) of ``w`` [K, N] as onnxruntime's quantize_dynamic rounds it."""
    scale = int8_scale(w, per_channel)
    with torch.no_grad():
        q = torch.div(w.detach().float(), scale).round_().clamp_(-127, 127)  # in place: the same values, fewer copies
    return q, scale


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """``x`` [..., K] as [..., ceil(K / block), block] (zero-padded), and K."""
    k = x.shape[-1]
    pad = -k % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), k


def int4_grid(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(4-bit values in [-8, 7] as float [N, blocks, block], scale [N, blocks]) of ``w`` [K, N] as
    onnxruntime's MatMulNBits quantizer rounds it (symmetric: the block's largest-magnitude entry maps
    to -8)."""
    with torch.no_grad():
        b, _ = _blocks(w.detach().float().transpose(0, 1), block)
        idx = b.abs().argmax(-1, keepdim=True)
        scale = (b.gather(-1, idx) / -8).squeeze(-1)
        safe = torch.where(scale != 0, scale, torch.ones_like(scale))
        q = torch.div(b, safe.unsqueeze(-1)).round_().add_(8).clamp_(0, 15).sub_(8)
    return q, scale


def _dequantized(w: torch.Tensor, quant) -> torch.Tensor:
    kind, arg = _quant(quant)
    if kind == "int4":
        q, scale = int4_grid(w, arg)
        return q.mul_(scale.unsqueeze(-1)).reshape(w.shape[1], -1)[:, : w.shape[0]].transpose(0, 1).to(w.dtype)
    q, scale = weight_grid(w, arg)
    return q.mul_(scale).to(w.dtype)


def weight(w: torch.Tensor, per_channel=True) -> torch.Tensor:
    """``w`` [K, N] on its quantizer's grid (``per_channel``: a bool for int8, or ("int4", block)),
    straight-through."""
    return _ste(w, _dequantized(w, per_channel))


def dynamic_grid(xd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) that DynamicQuantizeLinear gives the float tensor ``xd``."""
    lo, hi = torch.aminmax(xd)
    lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
    scale = (hi - lo) / 255 if bool(hi > lo) else torch.ones((), dtype=torch.float32, device=xd.device)
    return scale, torch.round(torch.clamp(0.0 - lo / scale, 0, 255))


def activation(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then dequantization, straight-through."""
    with torch.no_grad():
        xd = x.detach().float()
        scale, zp = dynamic_grid(xd)
        # round(x / s) + zp, clipped to [0, 255], minus zp, times s: in place, one buffer
        deq = torch.div(xd, scale).round_().add_(zp).clamp_(0, 255).sub_(zp).mul_(scale).to(x.dtype)
    return _ste(x, deq)


def block_activation(x: torch.Tensor, block: int) -> torch.Tensor:
    """``x`` [..., K] as MatMulNBits' int8 compute path (accuracy level 4) quantizes it: per row in
    blocks of ``block`` along K, symmetric, ``s = max |x| / 127``; straight-through."""
    with torch.no_grad():
        b, k = _blocks(x.detach().float(), block)
        amax = b.abs().amax(-1, keepdim=True)
        scale = amax / 127
        inverse = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))  # as the kernel: times float32(127 / max)
        deq = torch.mul(b, inverse).round_().mul_(scale).reshape(*x.shape[:-1], -1)[..., :k].to(x.dtype)
    return _ste(x, deq)


def fixed(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """QuantizeLinear (uint8, a fixed scale and zero point) then DequantizeLinear. The gradient
    passes where the value is in range and is zero where it was clipped."""
    with torch.no_grad():
        q = torch.div(x.detach().float(), scale).round_().add_(zero_point)
        inside = (q >= 0) & (q <= 255)
        deq = q.clamp_(0, 255).sub_(zero_point).mul_(scale).to(x.dtype)
    return deq + (x - x.detach()) * inside


class LearnedRange(torch.nn.Module):
    """A static tensor's uint8 range that trains (LSQ / LSQ+: Esser et al. 2020, Bhalgat et al. 2020): a
    log-gain on calibration's scale and a real zero point. Forward, as ``fixed`` with scale
    ``scale0 exp(log_gain)`` and the zero point
    rounded into [0, 255]; backward, straight-through for the rounding, so the scale receives each value's
    rounding residual (and the clip edge where a value is clipped), and the zero point what moves the clip edges.
    ``value()`` is the (float32 scale, uint8 zero point) that QuantizeLinear gets on write-out."""

    def __init__(self, scale: float, zero_point: int, device=None):
        super().__init__()
        self.scale0 = float(np.float32(scale))  # the start (calibration's scale), exact while log_gain is 0
        self.log_gain = torch.nn.Parameter(torch.zeros((), dtype=torch.float32, device=device))
        self.zero_point = torch.nn.Parameter(torch.tensor(float(zero_point), dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # a held-out check: exactly what QuantizeLinear will compute
            return fixed(x, *self.value())
        s = self.log_gain.exp() * self.scale0
        z = _ste(self.zero_point, self.zero_point.detach().round()).clamp(0, 255)
        v = x.float() / s + z
        q = _ste(v, v.detach().round()).clamp(0, 255)
        return ((q - z) * s).to(x.dtype)

    def value(self) -> tuple[float, int]:
        scale = float(np.float32(self.scale0 * np.exp(np.float64(self.log_gain.detach().cpu()))))
        return scale, int(np.clip(np.round(float(self.zero_point.detach().cpu())), 0, 255))


def rounded(x: torch.Tensor, rng) -> torch.Tensor:
    """``x`` through its static range: a fixed (scale, zero point), or a ``LearnedRange``."""
    return rng(x) if isinstance(rng, LearnedRange) else fixed(x, *rng)


class Grids:
    """The fake-quantized weights already computed, reused while a weight is unchanged: the same
    tensor object (held weakly: an entry goes when its tensor does) with the same version counter
    (an in-place write bumps it). An evaluation runs every held-out batch with the same weights,
    and frozen weights never change, so their grid is computed once, not once per forward.
    Inference tensors (made under ``torch.inference_mode``) track no version: one counts as
    unchanged for as long as it lives (the trainer never writes into its evaluated values).

    Where the result needs no gradient (the weight is frozen or grad mode is off), the whole
    straight-through output is kept; else only the dequantized grid, and the straight-through sum
    with the live weight is formed per call, so the gradient reaches the weight. Either way the
    values are those of an uncached call, bit for bit. Memory: one extra copy of each quantized
    weight that is alive."""

    def __init__(self):
        self.entries: dict[int, tuple] = {}
        self.hits = self.misses = 0

    def weight(self, w: torch.Tensor, per_channel=True, transposed: bool = False) -> torch.Tensor:
        """``weight(w, per_channel)`` (``transposed``: of ``w.T``, transposed back: a Gemm's transB weight)."""
        per_channel = _quant(per_channel)
        key, version = id(w), None if w.is_inference() else w._version
        graded = torch.is_grad_enabled() and w.requires_grad
        e = self.entries.get(key)
        same = e is not None and e[0]() is w and e[1:4] == (version, per_channel, transposed)
        if same and not graded and e[5] is not None:
            self.hits += 1
            return e[5]
        if same and e[4] is not None:
            self.hits += 1
            grid = e[4]
        else:
            self.misses += 1
            grid = _dequantized(w.detach().transpose(0, 1) if transposed else w.detach(), per_channel)
            grid = grid.transpose(0, 1) if transposed else grid
        if graded:  # the grid is kept, the straight-through sum with the live weight formed per call
            self.entries[key] = (weakref.ref(w, self._drop(key)), version, per_channel, transposed, grid, None)
            return _ste(w, grid)
        out = _ste(w, grid)  # no gradient: the output itself is kept (and the grid dropped: one copy held)
        self.entries[key] = (weakref.ref(w, self._drop(key)), version, per_channel, transposed, None, out)
        return out

    def _drop(self, key: int):
        def drop(ref):
            e = self.entries.get(key)
            if e is not None and e[0] is ref:
                del self.entries[key]
        return drop


def inputs(op: str, attrs: dict, ins: list, site=True, grids: Grids | None = None) -> list:
    """The inputs of a quantized MatMul or Gemm as the quantized model sees them (``site``: a ``Site``,
    or a bool: int8 dynamic, per channel or not): the weight on its grid (a Gemm's along its output
    axis: transposed first with transB), the activation as ``site.act`` says, the rest (a Gemm's bias)
    float. ``grids`` reuses the weight's grid while the weight is unchanged."""
    site = Site(("int8", site)) if isinstance(site, bool) else site
    x, w = ins[0], ins[1]
    if site.act == "dynamic":
        x = activation(x)
    elif site.act == "block":
        x = block_activation(x, site.weight[1])
    if site.weight is None:
        return [x, *ins[1:]]
    transposed = op == "Gemm" and bool(attrs.get("transB", 0))
    if grids is not None:
        qw = grids.weight(w, site.weight, transposed)
    elif transposed:
        qw = weight(w.transpose(0, 1), site.weight).transpose(0, 1)
    else:
        qw = weight(w, site.weight)
    rest = list(ins[2:])
    if site.bias is not None and rest and rest[0] is not None:  # int32 at (input scale x weight scale)
        sw = int8_scale(w.transpose(0, 1) if transposed else w, site.weight[1])
        with torch.no_grad():
            step = (sw.double() * site.bias).float()
            qb = torch.div(rest[0].detach().float(), step).round_().mul_(step).to(rest[0].dtype)
        rest[0] = _ste(rest[0], qb)
    return [x, qw, *rest]


def saturation(op: str, attrs: dict, x: torch.Tensor, w: torch.Tensor, site: Site, grid=None) -> torch.Tensor:
    """What a CPU whose u8s8 kernel clips pair sums to int16 (``quantize.kernel``) adds to the quantized
    MatMul's (or Gemm's) exact output: minus the clipped excess of every pair of neighbouring products along
    K, times the input and weight scales. ``x``, ``w``: the float inputs (before fake quantization); ``x`` on
    DynamicQuantizeLinear's grid, or on ``grid`` (a static site's input range: (scale, zero point) or a
    ``LearnedRange``), which ``x`` has been rounded to already. Only pairs that can clip are visited: same-sign
    weights whose int8 sum reaches ``kernel.PAIR_WEIGHT_SUM`` (about 1% of MiniLM's) and whose products with
    the largest codes at their two positions in this batch leave int16. No gradient (straight-through)."""
    with torch.no_grad():
        wd = w.detach().float()
        wd = wd.transpose(0, 1) if op == "Gemm" and attrs.get("transB", 0) else wd
        q, sw = weight_grid(wd, site.weight[1])
        k, n = q.shape
        xd = x.detach().float().reshape(-1, k)
        if grid is None:
            sx, zp = dynamic_grid(xd)
        else:
            sx, zp = grid.value() if isinstance(grid, LearnedRange) else grid
            sx, zp = torch.tensor(float(sx), dtype=torch.float32, device=xd.device), float(zp)
        qx = torch.div(xd, sx).round_().add_(zp).clamp_(0, 255)  # the uint8 codes the kernel multiplies
        if k % 2:
            q, qx = torch.nn.functional.pad(q, (0, 0, 0, 1)), torch.nn.functional.pad(qx, (0, 1))
        rows = qx.shape[0]
        pairs = q.reshape(-1, 2, n)
        codes = qx.transpose(0, 1).reshape(-1, 2, rows)  # [K/2, 2, rows]: the codes of a pair position, contiguous
        top = codes.amax(2)  # the largest code at each position: a pair clips only if those can carry it past int16
        reach = top[:, :1] * pairs[:, 0].abs() + top[:, 1:] * pairs[:, 1].abs()
        j, col = torch.nonzero((pairs.sum(1).abs() >= kernel.PAIR_WEIGHT_SUM) & (pairs[:, 0] * pairs[:, 1] >= 0)
                               & (reach > kernel.PAIR_MAX), as_tuple=True)
        out = torch.zeros(n, rows, dtype=torch.float32, device=xd.device)
        step = max(1, (1 << 22) // max(1, rows))  # at most ~4M pair sums at a time
        for c in range(0, len(j), step):
            jj, cc = j[c:c + step], col[c:c + step]
            s = codes[jj, 0] * pairs[jj, 0, cc, None] + codes[jj, 1] * pairs[jj, 1, cc, None]  # [pairs, rows]
            out.index_add_(0, cc, s.clamp(kernel.PAIR_MIN, kernel.PAIR_MAX) - s)
        out = out.transpose(0, 1)
        return out.mul_(torch.as_tensor(sw, device=out.device) * sx).reshape(*x.shape[:-1], n).to(x.dtype)


def trainable(proto: onnx.ModelProto, quantized: dict) -> list[str]:
    """The weights of the quantized MatMuls and the constant biases added to their outputs: what
    quantization-aware healing trains besides the rewritten blocks (their rounding is the error)."""
    inits = {t.name for t in proto.graph.initializer
             if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)}
    out = set()
    users = proto_consumers(proto)
    for n in proto.graph.node:
        if n.op_type not in ("MatMul", "Gemm") or n.output[0] not in quantized or n.input[1] not in inits:
            continue
        out.add(n.input[1])
        if n.op_type == "Gemm":
            out.update(i for i in n.input[2:3] if i in inits)
            continue
        adds = users.get(n.output[0], [])
        if len(adds) == 1 and adds[0].op_type == "Add":
            out.update(i for i in adds[0].input if i != n.output[0] and i in inits)
    return sorted(out)
