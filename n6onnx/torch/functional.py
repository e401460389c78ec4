"""Differentiable torch versions of the n6 ops, with exactly the ONNX ops' semantics.

One function per ONNX op type (domain ``n6onnx``): the same inputs (positional, ``None`` for an
omitted optional input), the same attributes with the same defaults (as declared by the op specs in
``n6onnx.ops``), the same output. ``OPS`` maps the ONNX op type to its function, so an executor can
run a node as ``OPS[node.op_type](*inputs, **attributes)``.

Precision follows the ops: float16 / bfloat16 inputs compute in float32 and round once to the
input dtype; float32 computes in float32; float64 computes in float64 (for gradient checks).

Gradients: everything is differentiable where the op is. Phi6's clamp has zero derivative outside
[-2, 2]. MoE's selection of experts is discrete (no gradient); the top-k routing weights are
differentiable in the logits, the Egyptian weights (1/2, 1/3, 1/6) are constants.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..ops import egyptian_cache
from ..ops.egyptian_attention import FULL, GLOBAL, LOCAL, resolve
from ..ops import fftmix_causal as causal_ref
from ..ops.fftmix import WINDOWS
from ..ops.moe import ACTIVATIONS, ATTRIBUTE_DEFAULTS, EGYPTIAN, selected

__all__ = [
    "OPS", "phi6", "bias_phi6", "zetaln2", "bias_zetaln2", "fftmix", "fftmix_causal", "egyptian_attention", "moe",
    "moe_routing", "moe_activation",
]

_ZETA_SHIFT = 5.0 / 12.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an n6 op computes in for inputs of ``dtype``: float64 stays, all else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _c(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def _str(v) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else v


# ----------------------------------------------------------------------------- activations
def _phi6(x: torch.Tensor) -> torch.Tensor:
    c = torch.clamp(x, -2.0, 2.0)  # gradient 1 inside [-2, 2], 0 outside
    return c * c - c + 1.0


def _zetaln2(x: torch.Tensor) -> torch.Tensor:
    d = x - _ZETA_SHIFT
    return d * d


def _check_bias(name: str, x: torch.Tensor, bias: torch.Tensor) -> None:
    if bias.dim() != 1 or x.dim() == 0 or bias.shape[0] != x.shape[-1]:
        raise ValueError(f"{name}: bias must be 1-D of length {tuple(x.shape[-1:])}, got shape {tuple(bias.shape)}")


def _elementwise(formula, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    cd = compute_dtype(x.dtype)
    xf = x.to(cd)
    if bias is not None:
        xf = xf + bias.to(cd)
    return formula(xf).to(x.dtype)


def phi6(X: torch.Tensor) -> torch.Tensor:
    """Phi6: c = clamp(x, -2, 2); y = c*c - c + 1."""
    return _elementwise(_phi6, X)


def bias_phi6(X: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Phi6(X + bias), bias 1-D over the last axis."""
    _check_bias("BiasPhi6", X, bias)
    return _elementwise(_phi6, X, bias)


def zetaln2(X: torch.Tensor) -> torch.Tensor:
    """ZetaLn2: y = (x - 5/12)^2, unclamped."""
    return _elementwise(_zetaln2, X)


def bias_zetaln2(X: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """ZetaLn2(X + bias), bias 1-D over the last axis."""
    _check_bias("BiasZetaLn2", X, bias)
    return _elementwise(_zetaln2, X, bias)


# ----------------------------------------------------------------------------- FFTMix
def fftmix(X: torch.Tensor, F6: torch.Tensor, F12: torch.Tensor, F24: torch.Tensor, Past: torch.Tensor | None = None,
           PastLength: torch.Tensor | None = None, causal: int = 0):
    """FFTMix(X [B, L, D], F6, F12, F24) -> Y [B, L, 3D]: per window w, zero-pad to a multiple of w,
    rfft along each window's tokens, multiply by the real filter F_w [w//2+1, D], irfft, crop to L.
    A window longer than L is skipped (its D channels are zero).
    causal=1: (Y, Present), F_w the one-sided taps [w, D] (the contract: n6onnx/ops/fftmix.py)."""
    if causal not in (0, 1):
        raise ValueError(f"FFTMix: causal must be 0 or 1, got {causal}")
    if causal:
        return fftmix_causal(X, F6, F12, F24, Past, PastLength)
    if Past is not None or PastLength is not None:
        raise ValueError("FFTMix: Past and PastLength need causal=1")
    if X.dim() != 3:
        raise ValueError(f"FFTMix: X must be [B, L, D], got shape {tuple(X.shape)}")
    B, L, D = X.shape
    Fs = (F6, F12, F24)
    for w, Fw in zip(WINDOWS, Fs):
        if tuple(Fw.shape) != (w // 2 + 1, D):
            raise ValueError(f"FFTMix: F{w} must be [{w // 2 + 1}, {D}], got shape {tuple(Fw.shape)}")
    cd = compute_dtype(X.dtype)
    x = X.to(cd)
    scales = []
    for w, Fw in zip(WINDOWS, Fs):
        if w > L:
            scales.append(x.new_zeros(B, L, D))
            continue
        n = -(-L // w)
        xp = F.pad(x, (0, 0, 0, n * w - L))
        spec = torch.fft.rfft(xp.reshape(B, n, w, D), dim=2)
        yw = torch.fft.irfft(spec * Fw.to(cd), n=w, dim=2)
        scales.append(yw.reshape(B, n * w, D)[:, :L])
    return torch.cat(scales, dim=2).to(X.dtype)


def fftmix_causal(X: torch.Tensor, F6: torch.Tensor, F12: torch.Tensor, F24: torch.Tensor,
                  Past: torch.Tensor | None = None, PastLength: torch.Tensor | None = None):
    """Causal FFTMix -> (Y [B, L, 3D], Present [B, (PastLength + L) mod 24, D]): per scale, a
    one-sided convolution with the taps F_w [w, D] inside each window of absolute positions."""
    def shape_only(t):  # the numpy checks read shapes only
        return None if t is None else np.broadcast_to(np.float32(0), tuple(t.shape))

    plv = None  # PastLength as the numpy check takes it (int() reads the value: no .numpy() on traced tensors)
    if PastLength is not None:
        plv = np.full(tuple(PastLength.shape), int(PastLength.reshape(-1)[0]) if PastLength.numel() else 0,
                      np.int64 if PastLength.dtype == torch.int64 else np.int32)
    _, pl = causal_ref.check(shape_only(X), [shape_only(f) for f in (F6, F12, F24)], shape_only(Past), plv)
    B, L, D = X.shape
    P = 0 if Past is None else Past.shape[1]
    cd = compute_dtype(X.dtype)
    xx = X.to(cd) if Past is None else torch.cat([Past.to(cd), X.to(cd)], dim=1)  # positions pl - P ..
    a = pl + torch.arange(L, device=X.device)
    scales = []
    for w, k in zip(WINDOWS, (F6, F12, F24)):
        k = k.to(cd)
        back = a - w * torch.div(a, w, rounding_mode="floor")
        y = xx.new_zeros(B, L, D)
        for d in range(w):
            on = (back >= d).to(cd)[None, :, None]
            src = (a - d - (pl - P)).clamp(min=0)
            y = y + on * k[d] * xx[:, src]
        scales.append(y)
    keep = (pl + L) % causal_ref.BLOCK
    return torch.cat(scales, dim=2).to(X.dtype), xx[:, xx.shape[1] - keep:].to(X.dtype)


# ----------------------------------------------------------------------------- EgyptianAttention
def allowed_mask(kinds: list[int], Lq: int, Lk: int, window: int, causal: bool = False, sinks: int = 1,
                 device=None) -> torch.Tensor:
    """[H, Lq, Lk] bool: key j allowed for query i in head h (before padding), by the op's rules;
    query i sits at key index p = Lk - Lq + i."""
    p = torch.arange(Lk - Lq, Lk, device=device)[:, None]
    j = torch.arange(Lk, device=device)[None, :]
    if causal:
        full_ok = (j <= p).expand(Lq, Lk)
        local_ok = (j <= p) & (j > p - window)
        global_ok = ((j < sinks) & (j <= p)) | (j == p)
    else:
        full_ok = torch.ones(Lq, Lk, dtype=torch.bool, device=device)
        local_ok = (p - j).abs() <= window // 2
        global_ok = ((j == 0) | (j == Lk - 1)).expand(Lq, Lk)
    by_kind = {FULL: full_ok, LOCAL: local_ok, GLOBAL: global_ok}
    return torch.stack([by_kind[k] for k in kinds])


def egyptian_attention(Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                       PastKey: torch.Tensor | None = None, PastValue: torch.Tensor | None = None,
                       *, num_heads: int, window: int = 64, scale: float = 0.0, head_kinds=None, causal: int = 0,
                       sinks: int = 1, kv_heads: int = 0):
    """EgyptianAttention(Q [B, Lq, H*dh], K, V [B, Lk, Hkv*dh], key_padding_mask [B, Lk]?) -> Y [B, Lq, H*dh].

    The op's rules (n6onnx.ops.egyptian_attention): query head h reads KV head h // (H / Hkv)
    (Hkv = ``kv_heads``, 0 = H). causal=0 (Lk == Lq): full heads attend to every key, local heads
    to |i - j| <= window // 2, global heads to keys {0, L-1}. causal=1 (Lk >= Lq, query i at key
    index p = Lk - Lq + i): full j <= p, local p - window < j <= p, global (j < sinks and j <= p) or
    j == p. Padded keys (mask 0) never take part; a query with no allowed key outputs zeros.
    ``head_kinds`` None or the attribute default [-1]: default_group_kinds. ``scale`` 0: 1/sqrt(dh).
    Cache mode (PastKey/PastValue, the packed cache of n6onnx.ops.egyptian_cache): returns
    (Y, PresentKey, PresentValue)."""
    pr = resolve(tuple(Q.shape), tuple(K.shape), tuple(V.shape), num_heads=int(num_heads), head_kinds=head_kinds,
                 causal=int(causal), kv_heads=int(kv_heads), sinks=int(sinks), window=int(window))
    if PastKey is not None or PastValue is not None:
        attrs = {"window": window, "scale": scale, "sinks": sinks}
        return egyptian_cache.reference(egyptian_attention, pr, attrs, Q, K, V, key_padding_mask, PastKey, PastValue,
                                        cat=lambda xs, axis: torch.cat(xs, dim=axis))
    B, Lq, Lk, H, dh = pr.B, pr.Lq, pr.Lk, pr.H, pr.dh
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, Lk):
        raise ValueError(f"EgyptianAttention: key_padding_mask must be [B, Lk] = [{B}, {Lk}], "
                         f"got shape {tuple(key_padding_mask.shape)}")
    cd = compute_dtype(Q.dtype)
    q = Q.to(cd).reshape(B, Lq, H, dh).transpose(1, 2)  # [B, H, Lq, dh]
    # grouped-query attention: KV head g serves query heads g*G .. g*G+G-1
    k, v = (t.to(cd).reshape(B, Lk, pr.Hkv, dh).repeat_interleave(pr.group, dim=2).transpose(1, 2) for t in (K, V))
    sc = float(scale) if scale else float(torch.tensor(1.0 / math.sqrt(dh), dtype=cd))
    scores = (q @ k.transpose(-1, -2)) * sc  # [B, H, Lq, Lk]
    allowed = allowed_mask(list(pr.kinds), Lq, Lk, pr.window, pr.causal, pr.sinks, Q.device)[None]  # [1, H, Lq, Lk]
    if key_padding_mask is not None:
        allowed = allowed & (key_padding_mask != 0)[:, None, None, :]
    masked = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)  # (bf16 under autocast)
    # a row with no allowed key: uniform softmax, zeroed by the mask multiply
    probs = torch.softmax(masked, dim=-1) * allowed.to(cd)
    y = (probs @ v).transpose(1, 2).reshape(B, Lq, H * dh)
    return y.to(Q.dtype)


# ----------------------------------------------------------------------------- MoE
def moe_activation(name: str, h: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
    """The MoE op's expert activation (gelu is the erf form)."""
    if name == "gelu":
        return F.gelu(h)
    if name == "gelu_tanh":
        return F.gelu(h, approximate="tanh")
    if name == "silu":
        return F.silu(h)
    if name == "swiglu":
        return F.silu(h) * gate
    if name == "relu":
        return F.relu(h)
    if name == "phi6":
        return _phi6(h)
    raise ValueError(f"MoE: unknown activation {name!r} (expected one of {', '.join(ACTIVATIONS)})")


def _stable_rank(v: torch.Tensor) -> torch.Tensor:
    """rank [N, M] of each element in a stable descending order of each row (ties: lower index first)."""
    a, o = v[:, :, None], v[:, None, :]  # element i, element j
    idx = torch.arange(v.shape[1], device=v.device)
    lower = idx[None, :] < idx[:, None]  # [i, j]: j < i
    beats = (o > a) | ((o == a) & lower[None])
    return beats.sum(dim=2)


def moe_routing(logits: torch.Tensor, routing: str = "topk", k: int = 2, normalize: int = 1, group: int = 1,
                drop: int = 0, importance: torch.Tensor | None = None) -> torch.Tensor:
    """Dense routing weights [N, E = G*group] (zero for unused experts), as the MoE op routes."""
    routing = _str(routing)
    if logits.dim() != 2:
        raise ValueError(f"MoE: logits must be [N, G], got shape {tuple(logits.shape)}")
    N, G = logits.shape
    nsel = selected(G, routing, k, group, drop, importance is not None)
    S = nsel * group
    cd = compute_dtype(logits.dtype)
    lf = logits.to(cd)
    rank = _stable_rank(lf.detach())
    sel = rank < nsel
    if routing == "topk":
        w = torch.softmax(lf, dim=1) * sel.to(cd)
        if normalize:
            w = w / w.sum(dim=1, keepdim=True)
    else:
        table = torch.tensor([float(v) for v in EGYPTIAN] + [0.0], dtype=cd, device=lf.device)
        w = table[rank.clamp(max=3)]
    E = G * group
    we = w.repeat_interleave(group, dim=1)
    sele = sel.repeat_interleave(group, dim=1)
    if drop > 0:
        if tuple(importance.shape) != (E,):
            raise ValueError(f"MoE: importance must be [E={E}], got shape {tuple(importance.shape)}")
        imp = importance.detach().to(torch.float32).to(cd)
        score = torch.where(sele, we.detach() * imp[None], torch.full_like(we, -math.inf))
        keep = _stable_rank(score) < S - drop
        we = we * keep.to(cd)
    return we * sele.to(cd)


def moe(X: torch.Tensor, logits: torch.Tensor, W1: torch.Tensor, b1: torch.Tensor | None = None,
        W2: torch.Tensor | None = None, b2: torch.Tensor | None = None, W3: torch.Tensor | None = None,
        importance: torch.Tensor | None = None, *, routing: str = ATTRIBUTE_DEFAULTS["routing"],
        k: int = ATTRIBUTE_DEFAULTS["k"], normalize: int = ATTRIBUTE_DEFAULTS["normalize"],
        activation: str = ATTRIBUTE_DEFAULTS["activation"], group: int = ATTRIBUTE_DEFAULTS["group"],
        drop: int = ATTRIBUTE_DEFAULTS["drop"]) -> torch.Tensor:
    """MoE(X [N, D], logits [N, G], W1 [E, D, H], b1?, W2 [E, H, D], b2?, W3?, importance?) -> Y [N, D].

    Y = sum over the routed experts e of weight_e * (act(X W1[e] + b1[e]) W2[e] + b2[e]); each expert
    runs only on the tokens routed to it (sparse dispatch, as the kernels)."""
    activation = _str(activation)
    if X.dim() != 2:
        raise ValueError(f"MoE: X must be [N, D], got shape {tuple(X.shape)}")
    if W2 is None:
        raise ValueError("MoE: W2 is required")
    N, D = X.shape
    if W1.dim() != 3 or W1.shape[1] != D:
        raise ValueError(f"MoE: W1 must be [E, D={D}, H], got {tuple(W1.shape)}")
    E, _, H = W1.shape
    if tuple(W2.shape) != (E, H, D):
        raise ValueError(f"MoE: W1 must be [E, D={D}, H], W2 [E, H, D]; got {tuple(W1.shape)}, {tuple(W2.shape)}")
    if logits.dim() != 2 or logits.shape[0] != N or logits.shape[1] * group != E:
        raise ValueError(f"MoE: logits must be [N={N}, G] with G * group = E = {E}, got {tuple(logits.shape)}")
    if activation not in ACTIVATIONS:
        moe_activation(activation, X)  # raises
    if activation == "swiglu" and W3 is None:
        raise ValueError("MoE: activation 'swiglu' needs W3")
    w = moe_routing(logits, routing, int(k), int(normalize), int(group), int(drop), importance)
    cd = compute_dtype(X.dtype)
    x = X.to(cd)
    w1, b1c, w2, b2c, w3 = (_c(t, cd) for t in (W1, b1, W2, b2, W3))
    y = x.new_zeros(N, D)
    used = (w != 0).detach()
    for e in range(E):
        rows = used[:, e].nonzero().squeeze(1)  # may be empty (no branch on it: traceable by AOT autograd)
        xe = x[rows]
        h = xe @ w1[e]
        if b1c is not None:
            h = h + b1c[e]
        a = moe_activation(activation, h, xe @ w3[e] if activation == "swiglu" else None)
        o = a @ w2[e]
        if b2c is not None:
            o = o + b2c[e]
        y = y.index_add(0, rows, w[rows, e:e + 1] * o)
    return y.to(X.dtype)


# ONNX op type (domain n6onnx) -> f(*inputs, **attributes)
OPS: dict[str, Callable[..., torch.Tensor]] = {
    "Phi6": phi6,
    "BiasPhi6": bias_phi6,
    "ZetaLn2": zetaln2,
    "BiasZetaLn2": bias_zetaln2,
    "FFTMix": fftmix,
    "EgyptianAttention": egyptian_attention,
    "MoE": moe,
}
