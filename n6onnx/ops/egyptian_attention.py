"""EgyptianAttention(Q, K, V, key_padding_mask?, PastKey?, PastValue?) -> Y, PresentKey?, PresentValue?:
multi-head attention with per-head kinds (SPEC.md, "Attention replacements" and "Egyptian
attention, causal mode").

Shapes (heads packed on the last axis, like com.microsoft MultiHeadAttention):
  Q [B, Lq, H*dh]; K, V [B, Lk, Hkv*dh]; key_padding_mask [B, Lk] int32 (1 = attend, 0 = padding);
  Y [B, Lq, H*dh], heads concatenated in head order (the output projection stays outside the op).
H = num_heads; Hkv = kv_heads (0 = num_heads) must divide H: grouped-query attention, query head h
reads KV head h // (H / Hkv). The mask is optional for the kernels; the function fallback needs it
(emitters pass all ones when there is no padding).

Attributes: num_heads; window (default 64); scale (default 0.0 = 1/sqrt(dh)); head_kinds (length
H; 0 = full, 1 = local, 2 = global; default [-1]: by KV group, the first Hkv//2 groups full, the
next Hkv//3 local, the rest global -- with Hkv = H the reference's split by head index, 12 heads:
6/4/2); causal (default 0); sinks (default 1, causal only); kv_heads (default 0).

causal=0 (the reference's encoder form; Lk == Lq): full heads attend to every key; local heads to
keys j with |i - j| <= window // 2; global heads to keys {0, L-1} ({0} when L = 1).

causal=1 (decoders; Lk >= Lq): query i sits at key index p = Lk - Lq + i (cached decoding: K/V hold
the past followed by the Lq new tokens). Allowed keys, in key-index space:
  full:   j <= p
  local:  p - window < j <= p
  global: (j < sinks and j <= p) or j == p      (attention sinks + the token itself)
With Hkv < H every query head of one KV group must have the same kind (a KV head's cache can
shrink only if all its query heads are local or global). Because the rule is in key-index space,
a graph that keeps for a local group only its last window-1 past keys, or for a global group only
its first `sinks` keys, and appends the new tokens, gets the same answer as with the full cache.

Everywhere: padded keys never take part; a query with no allowed key outputs zeros.

The function fallback is dense (every head computes the full [Lq, Lk] score matrix, masked by
kind): correct everywhere, without the saving. The kernels cost O(Lq*window*dh) per local head,
O(Lq*dh) (non-causal) or O(Lq*sinks*dh) (causal) per global head, and one decode step (Lq = 1)
O(keys it may see).

Cache mode (PastKey and PastValue bound; causal=1): the node appends the new keys/values to its
own packed KV cache (egyptian_cache.py: the layout attention=egyptian stores). K, V [B, Lq,
Hkv*dh] are the new tokens only; key_padding_mask [B, P + Lq] covers past and new tokens and is
required (P = its length - Lq, the absolute past length); PastKey, PastValue [B, 1, S, dh] hold
the KV groups, ordered full, local, global, with P, min(P, window - 1) and min(P, sinks) rows per
group (position-major within a kind). Y is what the op gives on the whole [B, P + Lq] keys (the
rows a group does not keep are ones it cannot see). PresentKey/PresentValue (optional outputs)
are the same layout for P + Lq positions.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from . import egyptian_cache
from ._spec import BodyBuilder, OpSpec, Sample, Tolerance, as_compute
from .egyptian_cache import FULL, GLOBAL, LOCAL, head_kinds_expr
from .egyptian_cache import attr_ref as _attr
from .egyptian_cache import ints as _ints


def default_group_kinds(num_heads: int, kv_heads: int) -> list[int]:
    """Kinds per query head: the 1/2, 1/3, 1/6 split over the KV groups (the first kv_heads//2
    groups full, the next kv_heads//3 local, the rest global), each group's kind given to all its
    query heads. kv_heads == num_heads: the reference's split by head index."""
    if kv_heads < 1 or num_heads % kv_heads:
        raise ValueError(f"EgyptianAttention: kv_heads={kv_heads} must divide num_heads={num_heads}")
    n_full, n_local = kv_heads // 2, kv_heads // 3
    groups = [FULL] * n_full + [LOCAL] * n_local + [GLOBAL] * (kv_heads - n_full - n_local)
    return [groups[h // (num_heads // kv_heads)] for h in range(num_heads)]


def default_head_kinds(num_heads: int) -> list[int]:
    """The reference's split by head index: the first H//2 heads full, the next H//3 local, the rest global."""
    return default_group_kinds(num_heads, num_heads)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A validated call: sizes, per-head kinds and the mode."""

    B: int
    Lq: int
    Lk: int
    H: int
    Hkv: int
    dh: int
    kinds: tuple[int, ...]
    causal: bool
    window: int
    sinks: int

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.H // self.Hkv


def resolve(q_shape, k_shape=None, v_shape=None, *, num_heads, head_kinds=None, causal=0, kv_heads=0, sinks=1,
            window=64) -> Problem:
    """Checks shapes and attributes (ValueError with a one-line reason); K/V shapes default to Q's.
    head_kinds None or the attribute default [-1]: default_group_kinds."""
    q = tuple(int(d) for d in q_shape)
    k = q if k_shape is None else tuple(int(d) for d in k_shape)
    v = k if v_shape is None else tuple(int(d) for d in v_shape)
    if len(q) != 3:
        raise ValueError(f"EgyptianAttention: Q must be [B, Lq, H*dh], got shape {q}")
    B, Lq, HD = q
    H, causal = int(num_heads), int(causal)
    if H < 1 or HD % H:
        raise ValueError(f"EgyptianAttention: num_heads={H} does not divide the hidden size {HD}")
    Hkv = int(kv_heads) or H
    if Hkv < 1 or H % Hkv:
        raise ValueError(f"EgyptianAttention: kv_heads={kv_heads} must divide num_heads={H}")
    dh = HD // H
    if len(k) != 3 or k[0] != B or k[2] != Hkv * dh or v != k:
        raise ValueError(f"EgyptianAttention: K and V must both be [B, Lk, kv_heads*dh] = [{B}, Lk, {Hkv * dh}], "
                         f"got {k} and {v}")
    Lk = k[1]
    if causal not in (0, 1):
        raise ValueError(f"EgyptianAttention: causal must be 0 or 1, got {causal}")
    if not causal and Lk != Lq:
        raise ValueError(f"EgyptianAttention: causal=0 needs as many keys as queries, got Lq={Lq}, Lk={Lk}")
    if causal and Lk < Lq:
        raise ValueError(f"EgyptianAttention: causal=1 needs Lk >= Lq, got Lq={Lq}, Lk={Lk}")
    if int(window) < 0 or int(sinks) < 0:
        raise ValueError(f"EgyptianAttention: window and sinks must be >= 0, got {window}, {sinks}")
    if head_kinds is not None and len(head_kinds) > 0 and min(head_kinds) < 0:
        head_kinds = None  # the attribute default [-1]
    kinds = [int(x) for x in head_kinds] if head_kinds is not None else default_group_kinds(H, Hkv)
    if len(kinds) != H or any(x not in (FULL, LOCAL, GLOBAL) for x in kinds):
        raise ValueError(f"EgyptianAttention: head_kinds must be {H} values in {{0, 1, 2}}, got {kinds}")
    G = H // Hkv
    if causal and G > 1:
        for g in range(Hkv):
            if len(set(kinds[g * G:(g + 1) * G])) > 1:
                raise ValueError(f"EgyptianAttention: the query heads of KV group {g} mix kinds "
                                 f"{kinds[g * G:(g + 1) * G]}; with kv_heads < num_heads each group has one kind")
    return Problem(B, Lq, Lk, H, Hkv, dh, tuple(kinds), bool(causal), int(window), int(sinks))


def allowed_keys(kind: int, i: int, pr: Problem) -> np.ndarray:
    """Key indices query i may attend to in a head of this kind (before padding)."""
    Lk = pr.Lk
    if not pr.causal:
        if kind == FULL:
            return np.arange(Lk)
        if kind == LOCAL:
            h = pr.window // 2
            return np.arange(max(0, i - h), min(Lk, i + h + 1))
        return np.unique([0, Lk - 1])
    p = Lk - pr.Lq + i
    if kind == FULL:
        return np.arange(p + 1)
    if kind == LOCAL:
        return np.arange(max(0, p - pr.window + 1), p + 1)
    return np.union1d(np.arange(min(pr.sinks, p + 1)), [p])


def reference(Q, K, V, key_padding_mask=None, PastKey=None, PastValue=None, *, num_heads, window=64, scale=0.0,
              head_kinds=None, causal=0, sinks=1, kv_heads=0):
    """Per head and query: softmax over the allowed, unmasked keys, in float32. Cache mode
    (PastKey/PastValue): (Y, PresentKey, PresentValue)."""
    Q = np.asarray(Q)
    pr = resolve(Q.shape, np.shape(K), np.shape(V), num_heads=num_heads, head_kinds=head_kinds, causal=causal,
                 kv_heads=kv_heads, sinks=sinks, window=window)
    if PastKey is not None or PastValue is not None:
        attrs = {"window": window, "scale": scale, "sinks": sinks}
        K, V, mask, PastKey, PastValue = (None if a is None else np.asarray(a)
                                          for a in (K, V, key_padding_mask, PastKey, PastValue))
        return egyptian_cache.reference(reference, pr, attrs, Q, K, V, mask, PastKey, PastValue)
    B, Lq, Lk, H, dh = pr.B, pr.Lq, pr.Lk, pr.H, pr.dh
    if key_padding_mask is not None and np.shape(key_padding_mask) != (B, Lk):
        raise ValueError(f"EgyptianAttention: key_padding_mask must be [B, Lk] = [{B}, {Lk}], "
                         f"got shape {np.shape(key_padding_mask)}")
    q = as_compute(Q).reshape(B, Lq, H, dh)
    k, v = (as_compute(a).reshape(B, Lk, pr.Hkv, dh) for a in (K, V))
    sc = np.float32(scale if scale else 1.0 / np.sqrt(dh))
    valid = np.ones((B, Lk), bool) if key_padding_mask is None else np.asarray(key_padding_mask) != 0
    y = np.zeros((B, Lq, H, dh), np.float32)
    for h, kind in enumerate(pr.kinds):
        g = h // pr.group
        for i in range(Lq):
            keys = allowed_keys(kind, i, pr)
            for b in range(B):
                js = keys[valid[b, keys]]
                if js.size == 0:
                    continue
                s = (k[b, js, g] @ q[b, i, h]) * sc
                p = np.exp(s - s.max())
                y[b, i, h] = (p / p.sum()) @ v[b, js, g]
    return y.reshape(B, Lq, H * dh).astype(Q.dtype)


def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    b = BodyBuilder("EgyptianAttention")
    Q, K, V, mask = inputs[:4]
    F32, BOOL = onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL
    one = b.op("Constant", value_int=1)
    zero = b.op("Constant", value_int=0)
    heads = _attr(b, "value_int", "num_heads")  # scalar int64
    kv_attr = _attr(b, "value_int", "kv_heads")
    kv = b.op("Where", b.op("Equal", kv_attr, zero), heads, kv_attr)  # Hkv
    group = b.op("Div", heads, kv)  # query heads per KV head
    heads1 = b.op("Reshape", heads, _ints(b, [1]))
    split = b.op("Concat", _ints(b, [0, 0]), heads1, _ints(b, [-1]), axis=0)  # [0, 0, H, -1]
    kv_split = b.op("Concat", _ints(b, [0, 0]), b.op("Reshape", kv, _ints(b, [1])), _ints(b, [1, -1]), axis=0)
    rep = b.op("Concat", _ints(b, [1, 1, 1]), b.op("Reshape", group, _ints(b, [1])), _ints(b, [1]), axis=0)

    def kv_heads_of(x: str) -> str:
        """[B, Lk, Hkv*dh] -> [B, Lk, H, dh]: KV head g repeated for its query heads g*G .. g*G+G-1."""
        x5 = b.op("Reshape", b.to_float(x), kv_split)  # [B, Lk, Hkv, 1, dh]
        return b.op("Reshape", b.op("Expand", x5, rep), split)

    qh = b.op("Transpose", b.op("Reshape", b.to_float(Q), split), perm=[0, 2, 1, 3])  # [B, H, Lq, dh]
    kt = b.op("Transpose", kv_heads_of(K), perm=[0, 2, 3, 1])  # [B, H, dh, Lk]
    vh = b.op("Transpose", kv_heads_of(V), perm=[0, 2, 1, 3])  # [B, H, Lk, dh]
    # scale: the attribute, or 1/sqrt(dh) when it is 0
    dh = b.op("Cast", b.op("Div", b.op("Shape", Q, start=2, end=3), heads1), to=F32)
    s_attr = _attr(b, "value_float", "scale")
    sc = b.op("Where", b.op("Equal", s_attr, b.const(0.0)), b.op("Div", b.const(1.0), b.op("Sqrt", dh)), s_attr)
    scores = b.op("Mul", b.op("MatMul", qh, kt), sc)  # [B, H, Lq, Lk]
    # allowed[h, i, j] by head kind; query i sits at key index p = Lk - Lq + i (p = i when causal=0)
    Lq = b.op("Squeeze", b.op("Shape", Q, start=1, end=2), _ints(b, [0]))
    Lk = b.op("Squeeze", b.op("Shape", K, start=1, end=2), _ints(b, [0]))
    p = b.op("Unsqueeze", b.op("Range", b.op("Sub", Lk, Lq), Lk, one), _ints(b, [1]))  # [Lq, 1]
    j = b.op("Unsqueeze", b.op("Range", zero, Lk, one), _ints(b, [0]))  # [1, Lk]
    window = _attr(b, "value_int", "window")
    causal = b.op("Cast", _attr(b, "value_int", "causal"), to=BOOL)
    not_causal = b.op("Not", causal)

    def pick(if_causal: str, otherwise: str) -> str:  # a boolean Where (ORT's CPU Where takes no bool)
        return b.op("Or", b.op("And", causal, if_causal), b.op("And", not_causal, otherwise))

    past_ok = b.op("LessOrEqual", j, p)  # [Lq, Lk]
    full_ok = b.op("Or", not_causal, past_ok)
    local_ok = pick(b.op("And", past_ok, b.op("Greater", j, b.op("Sub", p, window))),
                    b.op("LessOrEqual", b.op("Abs", b.op("Sub", p, j)), b.op("Div", window, b.op("Constant", value_int=2))))
    sink_ok = b.op("Or", b.op("And", b.op("Less", j, _attr(b, "value_int", "sinks")), past_ok), b.op("Equal", j, p))
    global_ok = pick(sink_ok, b.op("Or", b.op("Equal", j, zero), b.op("Equal", j, b.op("Sub", Lk, one))))
    # head kinds: the attribute, or (attribute default [-1]) default_group_kinds
    kinds = head_kinds_expr(b, heads, kv, group)
    kinds = b.op("Reshape", kinds, _ints(b, [-1, 1, 1]))  # [H, 1, 1]

    def is_kind(k):
        return b.op("Equal", kinds, b.op("Constant", value_int=k))

    allowed = b.op("Or", b.op("And", is_kind(FULL), full_ok),
                   b.op("Or", b.op("And", is_kind(LOCAL), local_ok), b.op("And", is_kind(GLOBAL), global_ok)))
    # key padding. The function needs the mask input: no opset-18 op takes an int32 [B, Lk] tensor
    # in an optional slot (Optional/If/variadic forms of a missing input fail ONNX type inference),
    # so emitters always pass one (all ones when the model has no padding). The kernels accept
    # a missing mask.
    valid = b.op("Unsqueeze", b.op("Cast", mask, to=BOOL), _ints(b, [1, 2]))  # [B, 1, 1, Lk]
    allowed = b.op("And", allowed, valid)  # [B, H, Lq, Lk]
    masked = b.op("Where", allowed, scores, b.const(-3.0e38))
    # softmax of a row with no allowed key is uniform; the mask multiply turns it into zeros
    probs = b.op("Mul", b.op("Softmax", masked, axis=-1), b.op("Cast", allowed, to=F32))
    y = b.op("Transpose", b.op("MatMul", probs, vh), perm=[0, 2, 1, 3])  # [B, Lq, H, dh]
    y = b.op("Reshape", y, _ints(b, [0, 0, -1]))
    b.op("CastLike", y, Q, out=outputs[0])
    return b.nodes


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(66)
    C = {"causal": 1}
    cases = [  # id, B, Lq, Lk, H, Hkv, dh, attrs, mask?
        ("L70_default_kinds", 2, 70, 70, 12, 12, 4, {"num_heads": 12}, False),
        ("L1", 2, 1, 1, 6, 6, 8, {"num_heads": 6, "window": 8}, False),
        ("L5_window4_custom_kinds_mask", 2, 5, 5, 4, 4, 8, {"num_heads": 4, "window": 4, "head_kinds": [1, 2, 0, 1]}, True),
        ("L33_scale_mask", 3, 33, 33, 3, 3, 16, {"num_heads": 3, "window": 8, "scale": 0.3}, True),
        ("L2_all_global", 1, 2, 2, 2, 2, 4, {"num_heads": 2, "head_kinds": [2, 2]}, False),
        ("L150_D64_threads", 2, 150, 150, 6, 6, 32, {"num_heads": 6, "window": 16}, True),
        ("gqa_noncausal", 2, 9, 9, 6, 2, 8, {"num_heads": 6, "kv_heads": 2, "window": 4}, True),
        ("causal_L40_window8", 2, 40, 40, 6, 6, 8, {**C, "num_heads": 6, "window": 8}, False),
        ("causal_gqa_default_groups", 2, 50, 50, 12, 6, 4, {**C, "num_heads": 12, "kv_heads": 6, "window": 16}, True),
        ("causal_decode_step_gqa_sinks4", 2, 1, 37, 8, 4, 8,
         {**C, "num_heads": 8, "kv_heads": 4, "window": 8, "sinks": 4, "head_kinds": [0, 0, 1, 1, 2, 2, 1, 1]}, True),
        ("causal_chunk_Lq7_Lk30", 2, 7, 30, 6, 3, 8, {**C, "num_heads": 6, "kv_heads": 3, "window": 5, "sinks": 4}, True),
        ("causal_window_over_L_scale", 1, 12, 12, 3, 3, 16, {**C, "num_heads": 3, "window": 100, "scale": 0.4,
                                                              "head_kinds": [1, 2, 0]}, False),
        ("causal_chunk_sinks_past_p", 1, 3, 5, 4, 1, 8,  # sinks 4 > Lk - Lq: the chunk's first tokens are sinks
         {**C, "num_heads": 4, "kv_heads": 1, "sinks": 4, "head_kinds": [2, 2, 2, 2]}, False),
        ("causal_L150_threads", 2, 150, 150, 8, 2, 32, {**C, "num_heads": 8, "kv_heads": 2, "window": 16,
                                                         "head_kinds": [0, 0, 0, 0, 1, 1, 1, 1]}, True),
        ("causal_decode_L200", 1, 1, 200, 6, 3, 16, {**C, "num_heads": 6, "kv_heads": 3, "window": 64}, False),
    ]
    out = []
    for sid, B, Lq, Lk, H, Hkv, dh, attrs, with_mask in cases:
        feeds = {"Q": rng.normal(0, 1, (B, Lq, H * dh)).astype(dtype)}
        feeds.update({n: rng.normal(0, 1, (B, Lk, Hkv * dh)).astype(dtype) for n in ("K", "V")})
        m = np.ones((B, Lk), np.int32)  # the function fallback needs the mask input (see body)
        if with_mask:
            if attrs.get("causal"):
                m[0, : Lk // 3] = 0  # left padding (batched decoding), including the sinks
                if B > 1:
                    m[1, Lk - 1] = 0  # the last key padded: a global head's own token
            else:
                m[0, Lk - (Lk + 1) // 3:] = 0  # padded tail, including key L-1 of the global heads
                if B > 1:
                    m[1, 0] = 0  # key 0 padded
                    if Lk <= 5:
                        m[1, :] = 0  # nothing to attend to: zeros
        feeds["key_padding_mask"] = m
        out.append(Sample(sid, feeds, attrs))
    return out + egyptian_cache.samples(dtype)


EGYPTIAN_ATTENTION = OpSpec(
    name="EgyptianAttention",
    inputs=("Q", "K", "V", "key_padding_mask", "PastKey", "PastValue"),
    outputs=("Y", "PresentKey", "PresentValue"),
    body_outputs=("Y",),
    dtypes=("float32", "float16"),
    reference=reference,
    body=body,
    tolerances={
        # softmax-weighted sums in float32 (exp, different summation orders)
        "float32": Tolerance(rtol=1e-4, atol=1e-5),
        # one rounding to float16 of values |y| <~ 3: 1-2 fp16 ulps
        "float16": Tolerance(rtol=2e-3, atol=2e-3),
    },
    doc=__doc__,
    attributes=("num_heads", "window", "scale", "head_kinds", "causal", "sinks", "kv_heads"),
    attribute_defaults={"window": 64, "scale": 0.0, "head_kinds": [-1], "causal": 0, "sinks": 1, "kv_heads": 0},
    samples=samples,
    overloads=egyptian_cache.overloads(body),
    choose_overload=egyptian_cache.choose_overload,
)
