"""EgyptianAttention(Q, K, V, key_padding_mask?) -> Y: multi-head attention with per-head kinds
(SPEC.md, "Attention replacements").

Q, K, V [B, L, H*dh] (heads packed on the last axis, like com.microsoft MultiHeadAttention);
key_padding_mask [B, L] int32 (1 = attend, 0 = padding), optional for the kernels; the function
fallback needs it (emitters pass all ones when there is no padding). Attributes: num_heads;
window (default 64); scale (default 0.0 = 1/sqrt(dh)); head_kinds (length H; 0 = full, 1 = local,
2 = global; default by head index as the reference: the first H//2 full, the next H//3 local, the
rest global -- 12 heads: 6/4/2).

Full head: softmax over all unmasked keys. Local head: keys j with |i - j| <= window // 2.
Global head: keys {0, L-1} ({0} when L = 1). Padded keys never take part; a query with no
allowed key outputs zeros. Y [B, L, H*dh]: heads concatenated in head order (the output
projection stays outside the op).

The function fallback is dense (every head computes the full [L, L] score matrix, masked by
kind): correct everywhere, without the saving. The kernels cost O(L*window*dh) per local head and
O(L*dh) per global head.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ._spec import BodyBuilder, OpSpec, Sample, Tolerance, as_compute

FULL, LOCAL, GLOBAL = 0, 1, 2


def default_head_kinds(num_heads: int) -> list[int]:
    n_full, n_local = num_heads // 2, num_heads // 3
    return [FULL] * n_full + [LOCAL] * n_local + [GLOBAL] * (num_heads - n_full - n_local)


def resolve(shape, num_heads, head_kinds):
    """Validated (B, L, H, dh, kinds)."""
    if len(shape) != 3:
        raise ValueError(f"EgyptianAttention: Q must be [B, L, H*dh], got shape {tuple(shape)}")
    B, L, HD = shape
    if num_heads < 1 or HD % num_heads:
        raise ValueError(f"EgyptianAttention: num_heads={num_heads} does not divide the hidden size {HD}")
    kinds = list(head_kinds) if head_kinds is not None else default_head_kinds(num_heads)
    if len(kinds) != num_heads or any(k not in (FULL, LOCAL, GLOBAL) for k in kinds):
        raise ValueError(f"EgyptianAttention: head_kinds must be {num_heads} values in {{0, 1, 2}}, got {kinds}")
    return B, L, num_heads, HD // num_heads, kinds


def allowed_keys(kind: int, i: int, L: int, window: int) -> np.ndarray:
    """Key positions query i may attend to in a head of this kind (before padding)."""
    if kind == FULL:
        return np.arange(L)
    if kind == LOCAL:
        h = window // 2
        return np.arange(max(0, i - h), min(L, i + h + 1))
    return np.unique([0, L - 1])


def reference(Q, K, V, key_padding_mask=None, *, num_heads, window=64, scale=0.0, head_kinds=None):
    """Per head and query: softmax over the allowed, unmasked keys, in float32."""
    Q = np.asarray(Q)
    B, L, H, dh, kinds = resolve(Q.shape, num_heads, head_kinds)
    if np.asarray(K).shape != Q.shape or np.asarray(V).shape != Q.shape:
        raise ValueError("EgyptianAttention: Q, K and V must have the same shape")
    q, k, v = (as_compute(a).reshape(B, L, H, dh) for a in (Q, K, V))
    sc = np.float32(scale if scale else 1.0 / np.sqrt(dh))
    valid = np.ones((B, L), bool) if key_padding_mask is None else np.asarray(key_padding_mask) != 0
    y = np.zeros((B, L, H, dh), np.float32)
    for h, kind in enumerate(kinds):
        for i in range(L):
            keys = allowed_keys(kind, i, L, window)
            for b in range(B):
                js = keys[valid[b, keys]]
                if js.size == 0:
                    continue
                s = (k[b, js, h] @ q[b, i, h]) * sc
                p = np.exp(s - s.max())
                y[b, i, h] = (p / p.sum()) @ v[b, js, h]
    return y.reshape(B, L, H * dh).astype(Q.dtype)


def _ints(b: BodyBuilder, values) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value_ints=[int(v) for v in values]))
    return name


def _attr(b: BodyBuilder, kind: str, attr: str) -> str:
    name = b.tmp()
    node = helper.make_node("Constant", [], [name])
    a = onnx.AttributeProto()
    a.name = kind
    a.ref_attr_name = attr
    a.type = {"value_int": onnx.AttributeProto.INT, "value_float": onnx.AttributeProto.FLOAT,
              "value_ints": onnx.AttributeProto.INTS}[kind]
    node.attribute.append(a)
    b.nodes.append(node)
    return name


def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    b = BodyBuilder("EgyptianAttention")
    Q, K, V, mask = inputs
    I64, F32, BOOL = onnx.TensorProto.INT64, onnx.TensorProto.FLOAT, onnx.TensorProto.BOOL
    heads = _attr(b, "value_int", "num_heads")  # scalar int64
    heads1 = b.op("Reshape", heads, _ints(b, [1]))
    split = b.op("Concat", _ints(b, [0, 0]), heads1, _ints(b, [-1]), axis=0)  # [0, 0, H, -1]
    qh = b.op("Transpose", b.op("Reshape", b.to_float(Q), split), perm=[0, 2, 1, 3])  # [B, H, L, dh]
    kt = b.op("Transpose", b.op("Reshape", b.to_float(K), split), perm=[0, 2, 3, 1])  # [B, H, dh, L]
    vh = b.op("Transpose", b.op("Reshape", b.to_float(V), split), perm=[0, 2, 1, 3])
    # scale: the attribute, or 1/sqrt(dh) when it is 0
    dh = b.op("Cast", b.op("Div", b.op("Shape", Q, start=2, end=3), heads1), to=F32)
    s_attr = _attr(b, "value_float", "scale")
    sc = b.op("Where", b.op("Equal", s_attr, b.const(0.0)), b.op("Div", b.const(1.0), b.op("Sqrt", dh)), s_attr)
    scores = b.op("Mul", b.op("MatMul", qh, kt), sc)  # [B, H, L, L]
    # allowed[h, i, j] by head kind
    L1 = b.op("Shape", Q, start=1, end=2)
    L = b.op("Squeeze", L1, _ints(b, [0]))
    one = b.op("Constant", value_int=1)
    zero = b.op("Constant", value_int=0)
    pos = b.op("Range", zero, L, one)
    i = b.op("Unsqueeze", pos, _ints(b, [1]))
    j = b.op("Unsqueeze", pos, _ints(b, [0]))
    half = b.op("Div", _attr(b, "value_int", "window"), b.op("Constant", value_int=2))
    local_ok = b.op("LessOrEqual", b.op("Abs", b.op("Sub", i, j)), half)  # [L, L]
    global_ok = b.op("Or", b.op("Equal", j, zero), b.op("Equal", j, b.op("Sub", L, one)))  # [1, L]
    # head kinds: the attribute, or (attribute default [-1]) the reference's split by head index
    hidx = b.op("Range", zero, heads, one)
    n_full = b.op("Div", heads, b.op("Constant", value_int=2))
    n_fl = b.op("Add", n_full, b.op("Div", heads, b.op("Constant", value_int=3)))
    by_index = b.op("Add", b.op("Cast", b.op("GreaterOrEqual", hidx, n_full), to=I64),
                    b.op("Cast", b.op("GreaterOrEqual", hidx, n_fl), to=I64))
    given = _attr(b, "value_ints", "head_kinds")
    kinds = b.op("Where", b.op("Less", b.op("ReduceMin", given, keepdims=0), zero), by_index, given)
    kinds = b.op("Reshape", kinds, _ints(b, [-1, 1, 1]))  # [H, 1, 1]

    def is_kind(k):
        return b.op("Equal", kinds, b.op("Constant", value_int=k))

    allowed = b.op("Or", is_kind(FULL), b.op("Or", b.op("And", is_kind(LOCAL), local_ok),
                                             b.op("And", is_kind(GLOBAL), global_ok)))  # [H, L, L]
    # key padding. The function needs the mask input: no opset-18 op takes an int32 [B, L] tensor
    # in an optional slot (Optional/If/variadic forms of a missing input fail ONNX type inference),
    # so emitters always pass one (all ones when the model has no padding). The kernels accept
    # a missing mask.
    valid = b.op("Unsqueeze", b.op("Cast", mask, to=BOOL), _ints(b, [1, 2]))  # [B, 1, 1, L]
    allowed = b.op("And", allowed, valid)
    masked = b.op("Where", allowed, scores, b.const(-3.0e38))
    # softmax of a row with no allowed key is uniform; the mask multiply turns it into zeros
    probs = b.op("Mul", b.op("Softmax", masked, axis=-1), b.op("Cast", allowed, to=F32))
    y = b.op("Transpose", b.op("MatMul", probs, vh), perm=[0, 2, 1, 3])  # [B, L, H, dh]
    y = b.op("Reshape", y, _ints(b, [0, 0, -1]))
    b.op("CastLike", y, Q, out=outputs[0])
    return b.nodes


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(66)
    cases = [  # id, B, L, H, dh, attrs, mask?
        ("L70_default_kinds", 2, 70, 12, 4, {"num_heads": 12}, False),
        ("L1", 2, 1, 6, 8, {"num_heads": 6, "window": 8}, False),
        ("L5_window4_custom_kinds_mask", 2, 5, 4, 8, {"num_heads": 4, "window": 4, "head_kinds": [1, 2, 0, 1]}, True),
        ("L33_scale_mask", 3, 33, 3, 16, {"num_heads": 3, "window": 8, "scale": 0.3}, True),
        ("L2_all_global", 1, 2, 2, 4, {"num_heads": 2, "head_kinds": [2, 2]}, False),
        ("L150_D64_threads", 2, 150, 6, 32, {"num_heads": 6, "window": 16}, True),
    ]
    out = []
    for sid, B, L, H, dh, attrs, with_mask in cases:
        feeds = {n: rng.normal(0, 1, (B, L, H * dh)).astype(dtype) for n in ("Q", "K", "V")}
        m = np.ones((B, L), np.int32)  # the function fallback needs the mask input (see body)
        if with_mask:
            m[0, L - (L + 1) // 3:] = 0  # padded tail, including key L-1 of the global heads
            if B > 1:
                m[1, 0] = 0  # key 0 padded
                if L <= 5:
                    m[1, :] = 0  # nothing to attend to: zeros
        feeds["key_padding_mask"] = m
        out.append(Sample(sid, feeds, attrs))
    return out


EGYPTIAN_ATTENTION = OpSpec(
    name="EgyptianAttention",
    inputs=("Q", "K", "V", "key_padding_mask"),
    outputs=("Y",),
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
    attributes=("num_heads", "window", "scale", "head_kinds"),
    attribute_defaults={"window": 64, "scale": 0.0, "head_kinds": [-1]},
    samples=samples,
)
