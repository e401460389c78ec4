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
  a rounding boundary, which moves that element by one step);
- backward: straight-through (the gradient of the identity: no range is ever clipped, since the
  scales cover the tensor's own range).
"""

from __future__ import annotations

import weakref

import onnx
import torch

from ..quantize import int8graph, quantize_proto
from ..graph import proto_consumers


def plan(proto: onnx.ModelProto, mode: str = "int8") -> dict[str, bool]:
    """{output of a MatMul that ``--quantize MODE`` quantizes: per channel} for ``proto``."""
    if str(mode) != "int8":
        raise ValueError(f"fake quantization mirrors --quantize int8 only, not {mode}")
    _, q = quantize_proto(proto, "int8")
    return int8graph.quantized_matmuls(proto, q)


def _ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` forward, the identity's gradient backward."""
    return x + (q - x).detach()


def weight_grid(w: torch.Tensor, per_channel: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values as float, scale) of ``w`` [K, N] as onnxruntime's quantize_dynamic rounds it."""
    with torch.no_grad():
        wd = w.detach()
        amax = wd.abs().amax(0) if per_channel else wd.abs().amax()
        scale = (amax.double() * 2 / 254).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.div(wd.float(), scale).round_().clamp_(-127, 127)  # in place: the same values, fewer copies
    return q, scale


def _dequantized(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    q, scale = weight_grid(w, per_channel)
    return q.mul_(scale).to(w.dtype)


def weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    return _ste(w, _dequantized(w, per_channel))


def activation(x: torch.Tensor) -> torch.Tensor:
    """DynamicQuantizeLinear then dequantization, straight-through."""
    with torch.no_grad():
        xd = x.detach().float()
        lo, hi = torch.aminmax(xd)
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = (hi - lo) / 255 if bool(hi > lo) else torch.ones((), dtype=torch.float32)
        zp = torch.round(torch.clamp(0.0 - lo / scale, 0, 255))
        # round(x / s) + zp, clipped to [0, 255], minus zp, times s: in place, one buffer
        deq = torch.div(xd, scale).round_().add_(zp).clamp_(0, 255).sub_(zp).mul_(scale).to(x.dtype)
    return _ste(x, deq)


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

    def weight(self, w: torch.Tensor, per_channel: bool = True, transposed: bool = False) -> torch.Tensor:
        """``weight(w)`` (``transposed``: of ``w.T``, transposed back: a Gemm's transB weight)."""
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


def inputs(op: str, attrs: dict, ins: list, per_channel: bool = True, grids: Grids | None = None) -> list:
    """The inputs of a quantized MatMul or Gemm as the int8 model sees them: the activation and the
    weight fake-quantized (a Gemm's weight along its output axis: transposed first with transB), the
    rest (a Gemm's bias) float. ``grids`` reuses the weight's grid while the weight is unchanged."""
    x, w = ins[0], ins[1]
    transposed = op == "Gemm" and bool(attrs.get("transB", 0))
    if grids is not None:
        qw = grids.weight(w, per_channel, transposed)
    elif transposed:
        qw = weight(w.transpose(0, 1), per_channel).transpose(0, 1)
    else:
        qw = weight(w, per_channel)
    return [activation(x), qw, *ins[2:]]


def trainable(proto: onnx.ModelProto, quantized: dict[str, bool]) -> list[str]:
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
