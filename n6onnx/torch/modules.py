"""nn.Modules for the n6 ops: build or train an n6-native model in torch, then export it straight
to the n6 custom ops with ``n6onnx.torch.export``.

Each module calls the op's torch custom op (``torch.ops.n6onnx.*``, see ``n6onnx.torch.ops``), so
the exporter keeps it as one node of domain ``n6onnx``, and holds the parameters the op's inputs
need:

- ``Phi6`` / ``ZetaLn2``: the activations; with ``num_features`` they hold a bias (BiasPhi6 /
  BiasZetaLn2: the activation of x + bias).
- ``FFTMix``: the token mixer's filters F6, F12, F24 ([w//2+1, D]); [B, L, D] -> [B, L, 3D]. The
  Linear(3D -> D) that follows it in SPEC.md is the caller's (a plain MatMul + Add in ONNX).
- ``EgyptianAttention``: Q/K/V and output projections around the op; [B, L, D] -> [B, L, D].
- ``MoE``: the router Linear(D -> G) and the experts' W1, b1, W2, b2 (W3 for swiglu, importance
  for drop); [..., D] -> [..., D].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops.egyptian_attention import resolve
from ..ops.fftmix import WINDOWS
from ..ops.moe import ACTIVATIONS, ROUTINGS
from . import ops  # noqa: F401 - registers torch.ops.n6onnx.*

_n6 = torch.ops.n6onnx

__all__ = ["Phi6", "ZetaLn2", "FFTMix", "EgyptianAttention", "MoE"]


class _Activation(nn.Module):
    _plain = _biased = None

    def __init__(self, num_features: int | None = None):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features)) if num_features is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return getattr(_n6, self._plain)(x)
        return getattr(_n6, self._biased)(x, self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return "" if self.bias is None else f"num_features={self.bias.shape[0]}"


class Phi6(_Activation):
    """Phi6: c = clamp(x, -2, 2); c*c - c + 1 (ONNX n6onnx.Phi6). With ``num_features``: Phi6(x +
    bias) over the last axis (n6onnx.BiasPhi6), the bias a parameter initialised to zeros."""

    _plain, _biased = "phi6", "bias_phi6"


class ZetaLn2(_Activation):
    """ZetaLn2: (x - 5/12)^2 (ONNX n6onnx.ZetaLn2); with ``num_features``: of x + bias (BiasZetaLn2)."""

    _plain, _biased = "zetaln2", "bias_zetaln2"


class FFTMix(nn.Module):
    """The FFT-Mix token mixer (ONNX n6onnx.FFTMix): [B, L, D] -> [B, L, 3D], one D-channel block per
    window (6, 12, 24). Filters F6 [4, D], F12 [7, D], F24 [13, D] start at ones (each scale passes
    its input through unchanged), or at ``init_std``-scaled normal noise around one."""

    def __init__(self, d_model: int, init_std: float = 0.0, causal: bool = False):
        super().__init__()
        self.d_model = d_model
        self.causal = causal
        if causal:  # one-sided taps [w, D], starting at the identity (k[0] = 1)
            shapes = [(w, d_model) for w in WINDOWS]
            start = [torch.nn.functional.one_hot(torch.zeros(d_model, dtype=torch.long), w).T.float() for w in WINDOWS]
        else:
            shapes = [(w // 2 + 1, d_model) for w in WINDOWS]
            start = [torch.ones(s) for s in shapes]
        self.filters = nn.ParameterList(nn.Parameter(s0 + init_std * torch.randn(s)) for s0, s in zip(start, shapes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:  # a full causal sequence (no cache): Y only
            return _n6.fftmix_causal(x, *(f.to(x.dtype) for f in self.filters), None, None)[0]
        return _n6.fftmix(x, *(f.to(x.dtype) for f in self.filters))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, windows={WINDOWS}, causal={self.causal}"


class EgyptianAttention(nn.Module):
    """Multi-head self-attention whose heads are full, local or global (ONNX n6onnx.EgyptianAttention
    between the Q/K/V projections and the output projection).

    Non-causal (the default): local heads see |i - j| <= window // 2, global heads keys 0 and L-1.
    ``causal=True`` (decoders): full heads see j <= i, local heads i - window < j <= i, global heads
    the first ``sinks`` tokens and i itself. ``kv_heads`` (0 = num_heads) < num_heads: grouped-query
    attention (K/V projections to kv_heads * head size; query head h reads KV head
    h // (num_heads / kv_heads); in causal mode the heads of one group share a kind).
    ``head_kinds``: one of 0 (full), 1 (local), 2 (global) per head; default the 1/2, 1/3, 1/6 split
    over the KV groups (without GQA: the reference's split by head index). ``scale`` 0: 1/sqrt(dh).
    ``forward(x, key_padding_mask=None)``: x [B, L, D]; key_padding_mask [B, L], nonzero / True =
    attend, 0 / False = padding (the opposite of nn.MultiheadAttention's convention)."""

    def __init__(self, d_model: int, num_heads: int, window: int = 64, head_kinds=None, scale: float = 0.0,
                 bias: bool = True, *, causal: bool = False, sinks: int = 1, kv_heads: int = 0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"EgyptianAttention: num_heads={num_heads} does not divide d_model={d_model}")
        dh, hkv = d_model // num_heads, int(kv_heads) or num_heads
        # the op's own checks (kinds, kv_heads, window, sinks, one kind per causal group)
        pr = resolve((1, 1, d_model), (1, 1, hkv * dh), num_heads=num_heads, head_kinds=head_kinds,
                     causal=int(causal), kv_heads=hkv, sinks=sinks, window=window)
        self.num_heads, self.window, self.head_kinds, self.scale = num_heads, pr.window, list(pr.kinds), float(scale)
        self.causal, self.sinks, self.kv_heads = bool(causal), pr.sinks, int(kv_heads)
        self.q_proj, self.out_proj = (nn.Linear(d_model, d_model, bias=bias) for _ in range(2))
        self.k_proj, self.v_proj = (nn.Linear(d_model, hkv * dh, bias=bias) for _ in range(2))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if key_padding_mask is not None:
            key_padding_mask = (key_padding_mask != 0).to(torch.int32)
        y = _n6.egyptian_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), key_padding_mask, self.num_heads,
                                   self.window, self.scale, self.head_kinds, int(self.causal), self.sinks,
                                   self.kv_heads)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        extra = f", causal=True, sinks={self.sinks}" if self.causal else ""
        extra += f", kv_heads={self.kv_heads}" if self.kv_heads else ""
        return f"num_heads={self.num_heads}, window={self.window}, head_kinds={self.head_kinds}{extra}"


class MoE(nn.Module):
    """A sparse mixture-of-experts FFN (ONNX n6onnx.MoE after a router Linear(D -> G)).

    ``num_groups`` G routing groups of ``group`` sub-experts each (E = G * group experts of hidden
    width ``hidden``). ``routing`` "topk" (k, normalize) or "egyptian" (the best three groups get
    1/2, 1/3, 1/6); ``activation`` one of gelu, gelu_tanh, silu, relu, swiglu (adds W3), phi6;
    ``drop`` > 0 drops, per token, the selected sub-experts with the smallest weight * importance
    (``importance``, a buffer of E values, default ones). Phi MoE (SPEC.md): 24 experts of hidden
    round(4D/3), top-2. ``forward(x)``: x [..., D] -> [..., D] (tokens flattened for the op)."""

    def __init__(self, d_model: int, hidden: int, num_groups: int, *, group: int = 1, routing: str = "topk", k: int = 2,
                 normalize: bool = True, activation: str = "gelu", drop: int = 0, bias: bool = True, importance=None):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"MoE: unknown routing {routing!r} (expected one of {', '.join(ROUTINGS)})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MoE: unknown activation {activation!r} (expected one of {', '.join(ACTIVATIONS)})")
        nsel = k if routing == "topk" else 3
        if not 1 <= nsel <= num_groups:
            raise ValueError(f"MoE: {routing} routing selects {nsel} of num_groups={num_groups} groups")
        if not 0 <= drop < nsel * group:
            raise ValueError(f"MoE: drop must be in [0, {nsel * group}), got {drop}")
        E = num_groups * group
        self.d_model, self.hidden, self.num_groups, self.group = d_model, hidden, num_groups, group
        self.routing, self.k, self.normalize = routing, int(k), int(bool(normalize))
        self.activation, self.drop = activation, int(drop)
        self.router = nn.Linear(d_model, num_groups)
        s1, s2 = 1 / math.sqrt(d_model), 1 / math.sqrt(hidden)
        self.W1 = nn.Parameter(torch.empty(E, d_model, hidden).uniform_(-s1, s1))
        self.W2 = nn.Parameter(torch.empty(E, hidden, d_model).uniform_(-s2, s2))
        self.W3 = nn.Parameter(torch.empty(E, d_model, hidden).uniform_(-s1, s1)) if activation == "swiglu" else None
        self.b1 = nn.Parameter(torch.zeros(E, hidden)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(E, d_model)) if bias else None
        if drop > 0:
            imp = torch.ones(E) if importance is None else torch.as_tensor(importance, dtype=torch.float32)
            if imp.shape != (E,):
                raise ValueError(f"MoE: importance must have E={E} values, got shape {tuple(imp.shape)}")
            self.register_buffer("importance", imp.float())
        else:
            self.importance = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        t = x.reshape(-1, x.shape[-1])
        dt = x.dtype

        def c(p):
            return None if p is None else p.to(dt)

        y = _n6.moe(t, self.router(t), c(self.W1), c(self.b1), c(self.W2), c(self.b2), c(self.W3), self.importance,
                    self.routing, self.k, self.normalize, self.activation, self.group, self.drop)
        return y.reshape(*lead, x.shape[-1])

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, hidden={self.hidden}, num_groups={self.num_groups}, group={self.group}, "
                f"routing={self.routing!r}, k={self.k}, activation={self.activation!r}, drop={self.drop}")
