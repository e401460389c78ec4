"""Torch versions of the standard ONNX ops that exported encoder and decoder graphs contain.

Each entry takes ``(attrs, inputs)`` (``inputs`` a list of tensors, ``None`` for an omitted
optional input) and returns a list of output tensors. Integer tensors (shapes, indices) stay
integer tensors; float math is differentiable. Semantics follow the ONNX operator docs at the
opsets the exporters write (17 for TorchScript, 18 and 20 for dynamo)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import N6Error


class UnsupportedOpError(N6Error):
    """The student cannot run an op of the graph (or this form of it)."""

DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.INT16: torch.int16,
}


def tensor_from_proto(t: onnx.TensorProto) -> torch.Tensor:
    return torch.from_numpy(np.array(onnx.numpy_helper.to_array(t)))


def _ints(t: torch.Tensor | None) -> list[int] | None:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _axes(attrs: dict, inputs: list, k: int = 1) -> list[int] | None:
    """Axes from input k (newer opsets) or the ``axes`` attribute (older ones)."""
    if len(inputs) > k and inputs[k] is not None:
        return _ints(inputs[k])
    return attrs.get("axes")


def _binary(fn):
    return lambda a, x: [fn(x[0], x[1])]


def _unary(fn):
    return lambda a, x: [fn(x[0])]


def _div(a, x):
    p, q = x
    if p.dtype.is_floating_point:
        return [p / q]
    return [torch.div(p, q, rounding_mode="trunc")]


def _mod(a, x):
    return [torch.fmod(x[0], x[1]) if a.get("fmod", 0) else torch.remainder(x[0], x[1])]


def _reshape(a, x):
    data, shape = x[0], _ints(x[1])
    if not a.get("allowzero", 0):
        shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return [data.reshape(shape)]


def _expand(a, x):
    return [x[0].expand(torch.broadcast_shapes(tuple(x[0].shape), tuple(_ints(x[1]))))]


def _slice(a, x):
    data = x[0]
    starts, ends = _ints(x[1]), _ints(x[2])
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
    steps = _ints(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = ax % data.dim()
        n = data.shape[ax]
        idx = range(n)[slice(max(min(s, n), -n - 1) if st > 0 else s, max(min(e, n), -n - 1), st)]
        if st == 1:
            data = data.narrow(ax, idx.start, len(idx)) if len(idx) else data.narrow(ax, 0, 0)
        else:
            data = data.index_select(ax, torch.tensor(list(idx), dtype=torch.long))
    return [data]


def _gather(a, x):
    data, idx = x
    ax = a.get("axis", 0) % data.dim()
    idx = torch.where(idx < 0, idx + data.shape[ax], idx).long()
    out = data.index_select(ax, idx.reshape(-1))
    return [out.reshape(tuple(data.shape[:ax]) + tuple(idx.shape) + tuple(data.shape[ax + 1:]))]


def _gather_nd(a, x):
    data, idx = x
    b = a.get("batch_dims", 0)
    idx = idx.long()
    k = idx.shape[-1]
    if b == 0:
        return [data[tuple(idx[..., i] for i in range(k))]]
    flat_d = data.reshape((-1,) + tuple(data.shape[b:]))
    flat_i = idx.reshape((-1,) + tuple(idx.shape[b:]))
    out = torch.stack([fd[tuple(fi[..., i] for i in range(k))] for fd, fi in zip(flat_d, flat_i)])
    return [out.reshape(tuple(idx.shape[:-1]) + tuple(data.shape[b + k:]))]


def _split(a, x):
    data = x[0]
    ax = a.get("axis", 0)
    if len(x) > 1 and x[1] is not None:
        sizes = _ints(x[1])
    elif "split" in a:
        sizes = a["split"]
    else:
        n = a["num_outputs"]
        chunk = -(-data.shape[ax] // n)
        sizes = [chunk] * (n - 1) + [data.shape[ax] - chunk * (n - 1)]
    return list(torch.split(data, sizes, dim=ax))


def _squeeze(a, x):
    axes = _axes(a, x)
    if axes is None:
        return [x[0].squeeze()]
    return [x[0].squeeze(tuple(ax % x[0].dim() for ax in axes))]


def _unsqueeze(a, x):
    y = x[0]
    axes = _axes(a, x)
    rank = y.dim() + len(axes)
    for ax in sorted(ax % rank for ax in axes):
        y = y.unsqueeze(ax)
    return [y]


def _reduce(fn):
    def run(a, x):
        axes = _axes(a, x)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x[0]]
            axes = list(range(x[0].dim()))
        return [fn(x[0], axes, keep)]
    return run


def _reduce_minmax(fn):
    def f(t, axes, keep):
        for ax in sorted((ax % t.dim() for ax in axes), reverse=True):
            t = fn(t, ax, keepdim=keep).values
        return t
    return _reduce(f)


def _layer_norm(a, x):
    data, scale = x[0], x[1]
    bias = x[2] if len(x) > 2 else None
    ax = a.get("axis", -1) % data.dim()
    eps = a.get("epsilon", 1e-5)
    shape = tuple(data.shape[ax:])
    if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape):
        return [F.layer_norm(data, shape, scale, bias, eps)]
    dims = tuple(range(ax, data.dim()))
    mu = data.mean(dims, keepdim=True)
    y = (data - mu) / torch.sqrt(((data - mu) ** 2).mean(dims, keepdim=True) + eps) * scale
    return [y + bias if bias is not None else y]


def _gemm(a, x):
    A, B = x[0], x[1]
    if a.get("transA", 0):
        A = A.T
    if a.get("transB", 0):
        B = B.T
    y = a.get("alpha", 1.0) * (A @ B)
    if len(x) > 2 and x[2] is not None:
        y = y + a.get("beta", 1.0) * x[2]
    return [y]


def _conv(a, x):
    data, w = x[0], x[1]
    b = x[2] if len(x) > 2 else None
    nd = data.dim() - 2
    pads = a.get("pads", [0] * 2 * nd)
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedOpError("healing cannot run Conv with auto_pad SAME_* in torch; nothing was trained")
    if list(pads[:nd]) != list(pads[nd:]):
        data = F.pad(data, [p for i in reversed(range(nd)) for p in (pads[i], pads[nd + i])])
        pads = [0] * 2 * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return [fn(data, w, b, stride=a.get("strides", [1] * nd), padding=list(pads[:nd]),
               dilation=a.get("dilations", [1] * nd), groups=a.get("group", 1))]


def _cast(a, x):
    return [x[0].to(DTYPES[a["to"]])]


def _constant(a, x):
    if "value" in a:
        return [tensor_from_proto(a["value"])]
    for k, dt in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                  ("value_ints", torch.int64)):
        if k in a:
            return [torch.tensor(a[k], dtype=dt)]
    raise UnsupportedOpError(f"healing cannot run a Constant with attributes {sorted(a)} in torch; nothing was trained")


def _constant_of_shape(a, x):
    v = tensor_from_proto(a["value"]) if "value" in a else torch.zeros(1, dtype=torch.float32)
    return [torch.full(tuple(_ints(x[0])), v.reshape(-1)[0].item(), dtype=v.dtype)]


def _shape(a, x):
    s = list(x[0].shape)
    start, end = a.get("start", 0), a.get("end", None)
    return [torch.tensor(s[slice(start, end)], dtype=torch.int64)]


def _range(a, x):
    start, limit, delta = (v.item() for v in x)
    return [torch.arange(start, limit, delta, dtype=x[0].dtype)]


def _clip(a, x):
    y = x[0]
    lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
    hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
    return [torch.clamp(y, lo if lo is None or torch.is_tensor(lo) else torch.tensor(lo),
                        hi if hi is None or torch.is_tensor(hi) else torch.tensor(hi))]


def _pad(a, x):
    data, pads = x[0], _ints(x[1])
    value = x[2].item() if len(x) > 2 and x[2] is not None else 0.0
    axes = _ints(x[3]) if len(x) > 3 and x[3] is not None else list(range(data.dim()))
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        raise UnsupportedOpError("healing cannot run Pad with a mode other than constant in torch; nothing was trained")
    n = len(axes)
    full = [0] * (2 * data.dim())
    for i, ax in enumerate(axes):
        ax = ax % data.dim()
        full[2 * (data.dim() - 1 - ax)] = pads[i]
        full[2 * (data.dim() - 1 - ax) + 1] = pads[n + i]
    return [F.pad(data, full, value=value)]


def _topk(a, x):
    k = int(x[1].reshape(-1)[0])
    v, i = torch.topk(x[0], k, dim=a.get("axis", -1), largest=bool(a.get("largest", 1)), sorted=bool(a.get("sorted", 1)))
    return [v, i]


def _tile(a, x):
    return [x[0].repeat(*_ints(x[1]))]


def _transpose(a, x):
    perm = a.get("perm") or list(reversed(range(x[0].dim())))
    return [x[0].permute(*perm)]


def _flatten(a, x):
    ax = a.get("axis", 1) % (x[0].dim() + 1) if x[0].dim() else 0
    return [x[0].reshape(math.prod(x[0].shape[:ax]), -1)]


def _gelu(a, x):
    approx = a.get("approximate", b"none")
    approx = approx.decode() if isinstance(approx, bytes) else approx
    return [F.gelu(x[0], approximate=approx)]


def _variadic(fn):
    def run(a, x):
        y = x[0]
        for t in x[1:]:
            y = fn(y, t)
        return [y]
    return run


def _unique(a, x):
    if a.get("axis") is not None or not a.get("sorted", 1):
        raise UnsupportedOpError("healing cannot run Unique with axis or sorted=0 in torch; nothing was trained")
    y, inv, counts = torch.unique(x[0].reshape(-1), sorted=True, return_inverse=True, return_counts=True)
    first = torch.stack([torch.nonzero(x[0].reshape(-1) == v)[0, 0] for v in y]) if len(y) else y.long()
    return [y, first, inv, counts]


def _softmax(a, x):
    return [torch.softmax(x[0], dim=a.get("axis", -1))]


OPS = {
    "Add": _binary(torch.add), "Sub": _binary(torch.sub), "Mul": _binary(torch.mul), "Div": _div, "Mod": _mod,
    "Pow": _binary(torch.pow), "MatMul": _binary(torch.matmul),
    "Equal": _binary(torch.eq), "Less": _binary(torch.lt), "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt), "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and), "Or": _binary(torch.logical_or), "Not": _unary(torch.logical_not),
    "Max": _variadic(torch.maximum), "Min": _variadic(torch.minimum),
    "Sqrt": _unary(torch.sqrt), "Reciprocal": _unary(torch.reciprocal), "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs), "Exp": _unary(torch.exp), "Log": _unary(torch.log),
    "Cos": _unary(torch.cos), "Sin": _unary(torch.sin), "Erf": _unary(torch.erf), "Tanh": _unary(torch.tanh),
    "Sigmoid": _unary(torch.sigmoid), "IsNaN": _unary(torch.isnan), "Relu": _unary(torch.relu),
    "Identity": lambda a, x: [x[0]],
    "Where": lambda a, x: [torch.where(x[0], x[1], x[2])],
    "Reshape": _reshape, "Expand": _expand, "Slice": _slice, "Gather": _gather, "GatherND": _gather_nd,
    "Split": _split, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": lambda a, x: [torch.cat(x, a["axis"])],
    "Transpose": _transpose, "Flatten": _flatten, "Tile": _tile, "Shape": _shape, "Range": _range,
    "Constant": _constant, "ConstantOfShape": _constant_of_shape, "Cast": _cast,
    "CastLike": lambda a, x: [x[0].to(x[1].dtype)],
    "ReduceMean": _reduce(lambda t, ax, k: t.mean(ax, keepdim=k)),
    "ReduceSum": _reduce(lambda t, ax, k: t.sum(ax, keepdim=k)),
    "ReduceMax": _reduce_minmax(torch.max), "ReduceMin": _reduce_minmax(torch.min),
    "Softmax": _softmax, "LayerNormalization": _layer_norm, "Gemm": _gemm, "Conv": _conv, "Gelu": _gelu,
    "Clip": _clip, "Pad": _pad, "TopK": _topk, "Unique": _unique,
}
