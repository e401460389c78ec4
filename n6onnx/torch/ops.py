"""The n6 ops as torch custom ops (``torch.ops.n6onnx.*``) and their ONNX translations.

Each op is registered with ``torch.library.custom_op`` so that ``torch.export`` (and so
``torch.onnx.export(dynamo=True)``) keeps it as one opaque node; its eager kernel and its gradient
are ``n6onnx.torch.functional``'s (the backward recomputes the forward under autograd, so the
gradient is exactly the functional one's). ``TRANSLATIONS`` maps each custom op to an onnxscript
function emitting the ONNX node of domain ``n6onnx`` (version 1) with the same inputs and
attributes: the exporter's ``custom_translation_table``.

Call signatures (all arguments positional, like the ONNX node's inputs then its attributes):
  phi6(X), bias_phi6(X, bias), zetaln2(X), bias_zetaln2(X, bias), fftmix(X, F6, F12, F24),
  fftmix_causal(X, F6, F12, F24, Past?, PastLength?) -> (Y, Present) (FFTMix with causal=1),
  egyptian_attention(Q, K, V, key_padding_mask?, num_heads, window, scale, head_kinds, causal, sinks, kv_heads),
  moe(X, logits, W1, b1?, W2, b2?, W3?, importance?, routing, k, normalize, activation, group, drop).
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import onnx_ir as ir
import onnxscript
import torch
from onnxscript import opset18 as op
from onnx.defs import OpSchema
from torch import Tensor

from ..ops import DOMAIN, DOMAIN_VERSION, REGISTRY
from . import functional as fn

# The ONNX inputs that may be omitted, per op (the spec's docs say which), and their non-T types.
_OPTIONAL = {"EgyptianAttention": {"key_padding_mask", "PastKey", "PastValue", "PresentKey", "PresentValue"}, "MoE": {"b1", "b2", "W3", "importance"},
             "FFTMix": {"Past", "PastLength", "Present"}}
_INPUT_TYPES = {"key_padding_mask": ("M", ["tensor(int32)"]), "importance": ("I", ["tensor(float)"]),
                "PastLength": ("P", ["tensor(int64)"])}
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]
_ATTR_TYPES = {"num_heads": OpSchema.AttrType.INT, "window": OpSchema.AttrType.INT, "scale": OpSchema.AttrType.FLOAT,
               "head_kinds": OpSchema.AttrType.INTS, "routing": OpSchema.AttrType.STRING, "k": OpSchema.AttrType.INT,
               "normalize": OpSchema.AttrType.INT, "activation": OpSchema.AttrType.STRING,
               "group": OpSchema.AttrType.INT, "drop": OpSchema.AttrType.INT, "causal": OpSchema.AttrType.INT,
               "sinks": OpSchema.AttrType.INT, "kv_heads": OpSchema.AttrType.INT}


def _schema(name: str, outputs: tuple[str, ...] | None = None) -> OpSchema:
    """An onnx OpSchema for the n6 op ``name`` (from its OpSpec): the exporter's tracer needs one to
    tell inputs from attributes. Never registered with onnx (the model carries functions)."""
    spec = REGISTRY[name]
    inputs, constraints = [], {"T": _FLOATS}
    for i in spec.inputs:
        tp, types = _INPUT_TYPES.get(i, ("T", _FLOATS))
        constraints[tp] = types
        optional = i in _OPTIONAL.get(name, ())
        option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
        inputs.append(OpSchema.FormalParameter(i, tp, param_option=option))
    attrs = [OpSchema.Attribute(a, _ATTR_TYPES[a], required=a not in spec.attribute_defaults) for a in spec.attributes]
    return OpSchema(name, DOMAIN, DOMAIN_VERSION, spec.doc, inputs=inputs,
                    outputs=[OpSchema.FormalParameter(o, "T", param_option=OpSchema.FormalParameterOption.Optional
                                                      if o in _OPTIONAL.get(name, ()) else OpSchema.FormalParameterOption.Single)
                             for o in (outputs or spec.outputs)],
                    type_constraints=[(t, ts, "") for t, ts in constraints.items()], attributes=attrs)


class _N6Opset:
    """``n6.Phi6(...)`` etc.: onnxscript Ops of the n6onnx domain, with schemas from the OpSpecs."""

    def __init__(self):
        self._opset = onnxscript.values.Opset(DOMAIN, DOMAIN_VERSION)

    def __getattr__(self, name: str) -> onnxscript.values.Op:
        return onnxscript.values.Op(self._opset, name, _schema(name, REGISTRY[name].body_outputs))

    def with_all_outputs(self, name: str) -> onnxscript.values.Op:
        """The op with every output of its spec (e.g. causal FFTMix's Present)."""
        return onnxscript.values.Op(self._opset, name, _schema(name))


n6 = _N6Opset()

# ----------------------------------------------------------------------------- gradients
def _register_recompute_vjp(custom, forward: Callable, n_tensors: int) -> None:
    """Autograd for ``custom``: the first ``n_tensors`` arguments are tensors (or None), the rest
    attributes; the backward recomputes ``forward`` under autograd and returns its vector-Jacobian
    product."""

    def setup_context(ctx, inputs, output):
        ctx.present = [t is not None for t in inputs[:n_tensors]]
        ctx.save_for_backward(*[t for t in inputs[:n_tensors] if t is not None])
        ctx.attrs = inputs[n_tensors:]

    def backward(ctx, *grad):  # one gradient per output (a tuple-returning op has several)
        saved = iter(ctx.saved_tensors)
        leaves = [next(saved).detach() if p else None for p in ctx.present]
        leaves = [t.requires_grad_(True) if t is not None and t.is_floating_point() else t for t in leaves]
        want = [t for t in leaves if t is not None and t.requires_grad]
        with torch.enable_grad():
            y = forward(*leaves, *ctx.attrs)
            ys = list(y) if isinstance(y, (tuple, list)) else [y]
            gs = [torch.zeros_like(o) if g is None else g for o, g in zip(ys, grad)]
            grads = iter(torch.autograd.grad(ys, want, gs, allow_unused=True))
        out = [next(grads) if t is not None and t.requires_grad else None for t in leaves]
        return (*out, *([None] * len(ctx.attrs)))

    custom.register_autograd(backward, setup_context=setup_context)


def _fake_like(x: Tensor, last: int | None = None) -> Tensor:
    shape = list(x.shape) if last is None else [*x.shape[:-1], last]
    return x.new_empty(shape)


# ----------------------------------------------------------------------------- activations
@torch.library.custom_op("n6onnx::phi6", mutates_args=())
def phi6(X: Tensor) -> Tensor:
    return fn.phi6(X)


@torch.library.custom_op("n6onnx::bias_phi6", mutates_args=())
def bias_phi6(X: Tensor, bias: Tensor) -> Tensor:
    return fn.bias_phi6(X, bias)


@torch.library.custom_op("n6onnx::zetaln2", mutates_args=())
def zetaln2(X: Tensor) -> Tensor:
    return fn.zetaln2(X)


@torch.library.custom_op("n6onnx::bias_zetaln2", mutates_args=())
def bias_zetaln2(X: Tensor, bias: Tensor) -> Tensor:
    return fn.bias_zetaln2(X, bias)


for _op, _f, _n in ((phi6, fn.phi6, 1), (bias_phi6, fn.bias_phi6, 2), (zetaln2, fn.zetaln2, 1),
                    (bias_zetaln2, fn.bias_zetaln2, 2)):
    _op.register_fake(lambda X, *rest: _fake_like(X))
    _register_recompute_vjp(_op, _f, _n)


# ----------------------------------------------------------------------------- FFTMix
@torch.library.custom_op("n6onnx::fftmix", mutates_args=())
def fftmix(X: Tensor, F6: Tensor, F12: Tensor, F24: Tensor) -> Tensor:
    return fn.fftmix(X, F6, F12, F24)


fftmix.register_fake(lambda X, F6, F12, F24: _fake_like(X, 3 * X.shape[-1]))
_register_recompute_vjp(fftmix, fn.fftmix, 4)


@torch.library.custom_op("n6onnx::fftmix_causal", mutates_args=())
def fftmix_causal(X: Tensor, F6: Tensor, F12: Tensor, F24: Tensor, Past: Optional[Tensor],
                  PastLength: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    y, present = fn.fftmix_causal(X, F6, F12, F24, Past, PastLength)
    return y, present.clone()  # a custom op's outputs may not alias its inputs


def _fftmix_causal_fake(X, F6, F12, F24, Past, PastLength):
    keep = torch.library.get_ctx().new_dynamic_size(max=23)  # (PastLength + L) mod 24: data-dependent
    return _fake_like(X, 3 * X.shape[-1]), X.new_empty(X.shape[0], keep, X.shape[2])


fftmix_causal.register_fake(_fftmix_causal_fake)
_register_recompute_vjp(fftmix_causal, fn.fftmix_causal, 6)


# ----------------------------------------------------------------------------- EgyptianAttention
@torch.library.custom_op("n6onnx::egyptian_attention", mutates_args=())
def egyptian_attention(Q: Tensor, K: Tensor, V: Tensor, key_padding_mask: Optional[Tensor], num_heads: int,
                       window: int, scale: float, head_kinds: list[int], causal: int = 0, sinks: int = 1,
                       kv_heads: int = 0) -> Tensor:
    return fn.egyptian_attention(Q, K, V, key_padding_mask, num_heads=num_heads, window=window, scale=scale,
                                 head_kinds=head_kinds, causal=causal, sinks=sinks, kv_heads=kv_heads)


def _ea_forward(Q, K, V, mask, num_heads, window, scale, head_kinds, causal=0, sinks=1, kv_heads=0):
    return fn.egyptian_attention(Q, K, V, mask, num_heads=num_heads, window=window, scale=scale, head_kinds=head_kinds,
                                 causal=causal, sinks=sinks, kv_heads=kv_heads)


egyptian_attention.register_fake(lambda Q, K, V, mask, *attrs: _fake_like(Q))
_register_recompute_vjp(egyptian_attention, _ea_forward, 4)


# ----------------------------------------------------------------------------- MoE
@torch.library.custom_op("n6onnx::moe", mutates_args=())
def moe(X: Tensor, logits: Tensor, W1: Tensor, b1: Optional[Tensor], W2: Tensor, b2: Optional[Tensor],
        W3: Optional[Tensor], importance: Optional[Tensor], routing: str, k: int, normalize: int, activation: str,
        group: int, drop: int) -> Tensor:
    return fn.moe(X, logits, W1, b1, W2, b2, W3, importance, routing=routing, k=k, normalize=normalize,
                  activation=activation, group=group, drop=drop)


def _moe_forward(X, logits, W1, b1, W2, b2, W3, importance, routing, k, normalize, activation, group, drop):
    return fn.moe(X, logits, W1, b1, W2, b2, W3, importance, routing=routing, k=k, normalize=normalize,
                  activation=activation, group=group, drop=drop)


moe.register_fake(lambda X, *rest: _fake_like(X))
_register_recompute_vjp(moe, _moe_forward, 8)


# ----------------------------------------------------------------------------- ONNX translations
def _t_phi6(X):
    return n6.Phi6(X)


def _t_bias_phi6(X, bias):
    return n6.BiasPhi6(X, bias)


def _t_zetaln2(X):
    return n6.ZetaLn2(X)


def _t_bias_zetaln2(X, bias):
    return n6.BiasZetaLn2(X, bias)


def _t_fftmix(X, F6, F12, F24):
    return n6.FFTMix(X, F6, F12, F24)


def _t_fftmix_causal(X, F6, F12, F24, Past, PastLength):
    return n6.with_all_outputs("FFTMix")(X, F6, F12, F24, Past, PastLength, causal=1)


def _t_egyptian_attention(Q, K, V, key_padding_mask, num_heads, window, scale, head_kinds, causal=0, sinks=1,
                          kv_heads=0):
    if key_padding_mask is None:  # the op's function fallback needs the mask input: all ones [B, Lk]
        key_padding_mask = op.ConstantOfShape(op.Shape(K, start=0, end=2), value=ir.tensor(np.ones(1, np.int32)))
    return n6.EgyptianAttention(Q, K, V, key_padding_mask, num_heads=int(num_heads), window=int(window),
                                scale=float(scale), head_kinds=[int(h) for h in head_kinds], causal=int(causal),
                                sinks=int(sinks), kv_heads=int(kv_heads))


def _t_moe(X, logits, W1, b1, W2, b2, W3, importance, routing, k, normalize, activation, group, drop):
    return n6.MoE(X, logits, W1, b1, W2, b2, W3, importance, routing=routing, k=int(k), normalize=int(normalize),
                  activation=activation, group=int(group), drop=int(drop))


# torch custom op -> onnxscript translation (torch.onnx.export's custom_translation_table)
TRANSLATIONS: dict = {
    torch.ops.n6onnx.phi6.default: _t_phi6,
    torch.ops.n6onnx.bias_phi6.default: _t_bias_phi6,
    torch.ops.n6onnx.zetaln2.default: _t_zetaln2,
    torch.ops.n6onnx.bias_zetaln2.default: _t_bias_zetaln2,
    torch.ops.n6onnx.fftmix.default: _t_fftmix,
    torch.ops.n6onnx.fftmix_causal.default: _t_fftmix_causal,
    torch.ops.n6onnx.egyptian_attention.default: _t_egyptian_attention,
    torch.ops.n6onnx.moe.default: _t_moe,
}
