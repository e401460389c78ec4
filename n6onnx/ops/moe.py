"""MoE(X, logits, W1, b1?, W2, b2?, W3?, importance?) -> Y: a sparse mixture-of-experts FFN.

Inputs (T in {float32, float16}; callers flatten the tokens):
  X [N, D] T; logits [N, G] T (router logits over G routing groups; the router MatMul/Gemm and its
  bias stay outside the op); W1 [E, D, H] T; b1 [E, H] T optional; W2 [E, H, D] T; b2 [E, D] T
  optional; W3 [E, D, H] T optional (the swiglu gate); importance [E] float32 optional (drop).
  E = G * group.

Attributes:
  routing    "topk" (default) | "egyptian"
  k          int, default 2 (topk only)
  normalize  int, default 1: renormalise the selected top-k softmax weights to sum 1 (topk only)
  activation "gelu" (erf, default) | "gelu_tanh" | "silu" | "relu" | "swiglu" | "phi6"
  group      int, default 1: expert g*group + s is sub-expert s of routing group g; a selected
             group's weight applies to each of its sub-experts
  drop       int, default 0: per token, among the selected sub-experts, drop the `drop` ones with
             the smallest routing weight * importance[e] (importance required when drop > 0);
             the kept weights are not renormalised

Routing, per token, in float32:
  topk:     rank the G logits (descending); take the first k; their weights are the softmax
            probabilities over all G logits, divided by their sum when normalize = 1.
  egyptian: rank the G logits; the first three groups get 1/2, 1/3, 1/6 (G >= 3).
Ties are broken deterministically: equal logits rank by the LOWER group index first (a stable
descending sort, as ONNX TopK). Ranking uses the logits themselves (the softmax is monotone), so an
underflowed probability never reorders experts. For drop, sub-experts are ranked by
weight * importance[e] descending, equal scores by the lower expert index first, and the last
`drop` of that ranking are removed (so among equal scores the higher index is dropped).

Y [N, D] T = sum over the kept experts e of weight_e * (act(X @ W1[e] + b1[e]) @ W2[e] + b2[e]),
with swiglu: act(...) = silu(X @ W1[e] + b1[e]) * (X @ W3[e]). Everything is computed in float32
and rounded once to T. gelu = 0.5 x (1 + erf(x / sqrt 2)); gelu_tanh = 0.5 x (1 + tanh(sqrt(2/pi)
(x + 0.044715 x^3))); silu = x * sigmoid(x); phi6: c = clamp(x, -2, 2), c^2 - c + 1.

The kernels dispatch sparsely (tokens grouped per expert, each expert runs only on its tokens, the
results are added back per token in a fixed expert order). The function fallback computes the same
result densely in pure ONNX (every expert on every token, weights from a scatter of the routing),
so a rewritten model still runs on stock onnxruntime. It needs a default opset >= 17. String
attributes are decoded inside the body with Unique over [value, options...]; absent b1, b2 and
importance are read through Gemm's optional C over zeros (zeros when absent; not LayerNormalization's
optional bias, which crashes onnxruntime 1.32's SkipLayerNormFusion when it is not folded away), W3
through LayerNormalization's bias over data of W1's (static) shape; the stable ranks come from
pairwise comparisons ([N, G, G] and [N, E, E]), not TopK, so no provider's tie order matters. Its
error checking is weaker than the kernels': an unknown routing/activation string fails (a Cast of
the string), but k > G selects all G groups, egyptian with G < 3 uses the groups there are, and a
missing importance reads as zeros.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ._spec import BodyBuilder, OpSpec, Sample, Tolerance, as_compute

ROUTINGS = ("topk", "egyptian")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu", "swiglu", "phi6")
EGYPTIAN = (np.float32(1 / 2), np.float32(1 / 3), np.float32(1 / 6))
ATTRIBUTE_DEFAULTS = {"routing": "topk", "k": 2, "normalize": 1, "activation": "gelu", "group": 1, "drop": 0}


# ----------------------------------------------------------------------------- numpy reference
def _erf(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf  # optional; exact to float64

        return erf(x)
    except ImportError:  # pragma: no cover
        return np.vectorize(math.erf, otypes=[np.float64])(x)


def activation_np(name: str, h: np.ndarray, gate: np.ndarray | None = None) -> np.ndarray:
    h = h.astype(np.float32)
    if name == "gelu":
        return (0.5 * h * (1.0 + _erf(h.astype(np.float64) / math.sqrt(2.0)))).astype(np.float32)
    if name == "gelu_tanh":
        c = np.float32(math.sqrt(2.0 / math.pi))
        return (np.float32(0.5) * h * (np.float32(1) + np.tanh(c * (h + np.float32(0.044715) * h * h * h)))).astype(np.float32)
    if name in ("silu", "swiglu"):
        s = h / (np.float32(1) + np.exp(-h))
        return s if name == "silu" else s * gate
    if name == "relu":
        return np.maximum(h, np.float32(0))
    if name == "phi6":
        c = np.clip(h, np.float32(-2), np.float32(2))
        return c * c - c + np.float32(1)
    raise ValueError(f"MoE: unknown activation {name!r} (expected one of {', '.join(ACTIVATIONS)})")


def selected(G: int, routing: str, k: int, group: int, drop: int, has_importance: bool) -> int:
    """How many routing groups a token selects (k for top-k, 3 for Egyptian routing), after checking
    the attributes against G routing groups; ValueError naming the bad one. Shared by every
    implementation of the op (numpy reference, torch)."""
    if group < 1:
        raise ValueError(f"MoE: group must be >= 1, got {group}")
    if routing == "topk":
        if not 1 <= k <= G:
            raise ValueError(f"MoE: k must be in [1, G={G}], got {k}")
        nsel = k
    elif routing == "egyptian":
        if G < 3:
            raise ValueError(f"MoE: egyptian routing needs G >= 3 routing groups, got {G}")
        nsel = 3
    else:
        raise ValueError(f"MoE: unknown routing {routing!r} (expected 'topk' or 'egyptian')")
    S = nsel * group
    if not 0 <= drop < S:
        raise ValueError(f"MoE: drop must be in [0, {S}) (selected sub-experts per token), got {drop}")
    if drop > 0 and not has_importance:
        raise ValueError("MoE: drop > 0 needs the importance input")
    return nsel


def route(logits, routing: str = "topk", k: int = 2, normalize: int = 1, group: int = 1, drop: int = 0,
          importance=None) -> np.ndarray:
    """Dense routing weights [N, E] (zero for experts a token does not use), in float32."""
    lf = as_compute(logits)
    if lf.ndim != 2:
        raise ValueError(f"MoE: logits must be [N, G], got shape {lf.shape}")
    N, G = lf.shape
    nsel = selected(G, routing, k, group, drop, importance is not None)
    S = nsel * group
    order = np.argsort(-lf, axis=1, kind="stable")[:, :nsel]  # ties: lower index first
    if routing == "topk":
        m = lf.max(axis=1, keepdims=True)
        e = np.exp(lf - m)
        p = e / e.sum(axis=1, keepdims=True)
        w = np.take_along_axis(p, order, axis=1)
        if normalize:
            w = w / w.sum(axis=1, keepdims=True)
    else:
        w = np.broadcast_to(np.array(EGYPTIAN, np.float32), (N, 3))
    E = G * group
    experts = (order[:, :, None] * group + np.arange(group)[None, None, :]).reshape(N, S)
    weights = np.repeat(w.astype(np.float32), group, axis=1)
    if drop > 0:
        imp = np.asarray(importance, np.float32)
        if imp.shape != (E,):
            raise ValueError(f"MoE: importance must be [E={E}], got shape {imp.shape}")
        score = weights * imp[experts]
        keep = np.zeros((N, S), bool)
        for n in range(N):  # rank by score descending, equal scores by lower expert index first
            ranked = sorted(range(S), key=lambda j: (-score[n, j], experts[n, j]))
            keep[n, ranked[: S - drop]] = True
        weights = np.where(keep, weights, 0)
    dense = np.zeros((N, E), np.float32)
    np.put_along_axis(dense, experts, weights, axis=1)
    return dense


def reference(X, logits, W1, b1=None, W2=None, b2=None, W3=None, importance=None, *, routing="topk", k=2,
              normalize=1, activation="gelu", group=1, drop=0):
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"MoE: X must be [N, D], got shape {X.shape}")
    if W2 is None:
        raise ValueError("MoE: W2 is required")
    N, D = X.shape
    E, D1, H = np.asarray(W1).shape
    if D1 != D or np.asarray(W2).shape != (E, H, D):
        raise ValueError(f"MoE: W1 must be [E, D={D}, H], W2 [E, H, D]; got {np.shape(W1)}, {np.shape(W2)}")
    if np.shape(logits)[0] != N or np.shape(logits)[1] * group != E:
        raise ValueError(f"MoE: logits must be [N={N}, G] with G * group = E = {E}, got {np.shape(logits)}")
    if activation == "swiglu" and W3 is None:
        raise ValueError("MoE: activation 'swiglu' needs W3")
    if activation not in ACTIVATIONS:
        activation_np(activation, np.zeros(1, np.float32))  # raises
    w = route(logits, routing, k, normalize, group, drop, importance)
    x = as_compute(X)
    y = np.zeros((N, D), np.float32)
    for e in range(E):
        rows = np.nonzero(w[:, e] != 0)[0]  # experts with weight 0 contribute 0 (sparse like the kernels)
        if rows.size == 0:
            continue
        xe = x[rows]
        h = xe @ as_compute(W1[e])
        if b1 is not None:
            h = h + as_compute(b1[e])
        a = activation_np(activation, h, xe @ as_compute(W3[e]) if activation == "swiglu" else None)
        o = a @ as_compute(W2[e])
        if b2 is not None:
            o = o + as_compute(b2[e])
        y[rows] += w[rows, e:e + 1] * o
    return y.astype(X.dtype)


# ----------------------------------------------------------------------------- function fallback
def _attr(b: BodyBuilder, kind: str, attr: str, atype) -> str:
    name = b.tmp()
    node = helper.make_node("Constant", [], [name])
    node.attribute.append(onnx.AttributeProto(name=kind, ref_attr_name=attr, type=atype))
    b.nodes.append(node)
    return name


def _ints(b: BodyBuilder, values) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value_ints=[int(v) for v in values]))
    return name


def _int(b: BodyBuilder, value: int) -> str:
    name = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [name], value_int=int(value)))
    return name


def _choice(b: BodyBuilder, attr: str, options) -> tuple[list[str], str]:
    """Decode a string attribute: one bool scalar per option (value == option), and the string."""
    s = _attr(b, "value_string", attr, onnx.AttributeProto.STRING)
    opts = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [opts], value_strings=list(options)))
    allv = b.op("Concat", b.op("Unsqueeze", s, _ints(b, [0])), opts, axis=0)
    inv = b.tmp()
    b.nodes.append(helper.make_node("Unique", [allv], [b.tmp(), b.tmp(), inv, b.tmp()], sorted=0))
    # inverse index 0 <=> equal to the attribute value (first element)
    eq = b.op("Equal", b.op("Slice", inv, _ints(b, [1]), _ints(b, [len(options) + 1])), _ints(b, [0]))
    flags = [b.op("Squeeze", b.op("Slice", eq, _ints(b, [i]), _ints(b, [i + 1])), _ints(b, [0]))
             for i in range(len(options))]
    return flags, s


def _optional(b: BodyBuilder, name: str, like: str, rows: str, cols: str) -> str:
    """An optional input of at most two dimensions as a [rows, cols] float32 tensor (zeros when
    absent): Gemm's optional C over all-zero A [rows, 1] and B [1, cols]. `like`: a tensor of the
    input's element type."""
    def zeros(shape):
        return b.op("CastLike", b.op("ConstantOfShape", shape), like)

    one = _ints(b, [1])
    c = b.op("Gemm", zeros(b.op("Concat", rows, one, axis=0)), zeros(b.op("Concat", one, cols, axis=0)), name)
    return b.to_float(c)


def _optional_like_w1(b: BodyBuilder, name: str, W1: str) -> str:
    """W3 (optional, [E, D, H] like W1) as float32, zeros when absent. Gemm's C holds at most two
    dimensions, so this one reads through LayerNormalization's optional bias over all-zero data of
    W1's shape. Absent, that LayerNormalization would crash onnxruntime 1.32's SkipLayerNormFusion
    (it reads the type of every input, the missing one too) if it survived constant folding; it
    does not, since its inputs depend on W1's shape only (a weight: static)."""
    shape = b.op("Shape", W1)
    z = b.op("CastLike", b.op("ConstantOfShape", shape), W1)
    one = b.op("CastLike", b.const(1.0), W1)
    return b.to_float(b.op("LayerNormalization", z, b.op("Expand", one, shape), name, axis=0))


def _graph(b_outer: BodyBuilder, build, out_name: str) -> onnx.GraphProto:
    """A subgraph (If branch) built with a fresh BodyBuilder sharing the name counter prefix."""
    sub = BodyBuilder(b_outer._prefix + f"s{b_outer._n}_")
    b_outer._n += 1
    y = build(sub)
    sub.op("Identity", y, out=out_name)
    return helper.make_graph(sub.nodes, out_name + "_g", [], [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, None)])


def _select(b: BodyBuilder, v: str, count: str) -> tuple[str, str]:
    """For v [N, M]: (mask [N, M] float of the first `count` in a stable descending order, rank
    [N, M] int64), ties by the lower index first, from pairwise comparisons."""
    a = b.op("Unsqueeze", v, _ints(b, [2]))  # [N, M, 1]: element i
    o = b.op("Unsqueeze", v, _ints(b, [1]))  # [N, 1, M]: element j
    m = b.op("Shape", v, start=1, end=2)
    idx = b.op("Range", _int(b, 0), b.op("Squeeze", m, _ints(b, [0])), _int(b, 1))
    lower = b.op("Less", b.op("Unsqueeze", idx, _ints(b, [0])), b.op("Unsqueeze", idx, _ints(b, [1])))  # j < i
    beats = b.op("Or", b.op("Greater", o, a), b.op("And", b.op("Equal", o, a), lower))
    rank = b.op("ReduceSum", b.op("Cast", beats, to=onnx.TensorProto.INT64), _ints(b, [2]), keepdims=0)
    mask = b.op("Cast", b.op("Less", rank, count), to=onnx.TensorProto.FLOAT)
    return mask, rank


def _fail(sb: BodyBuilder, string: str, data: str) -> str:
    """Casting the (unknown) attribute string to a number fails at run time; the string is routed
    through a Where on the data so that constant folding does not try (and warn) at load time."""
    first = sb.op("Slice", data, _ints(sb, [0, 0]), _ints(sb, [1, 1]))
    s = sb.op("Where", sb.op("IsNaN", first), string, string)
    return sb.op("Cast", s, to=onnx.TensorProto.FLOAT)


def _act_onnx(sb: BodyBuilder, name: str, h: str) -> str:
    if name == "gelu":
        e = sb.op("Erf", sb.op("Mul", h, sb.const(1 / math.sqrt(2.0))))
        return sb.op("Mul", sb.op("Mul", h, sb.const(0.5)), sb.op("Add", e, sb.const(1.0)))
    if name == "gelu_tanh":
        h3 = sb.op("Mul", sb.op("Mul", sb.op("Mul", h, h), h), sb.const(0.044715))
        t = sb.op("Tanh", sb.op("Mul", sb.op("Add", h, h3), sb.const(math.sqrt(2.0 / math.pi))))
        return sb.op("Mul", sb.op("Mul", h, sb.const(0.5)), sb.op("Add", t, sb.const(1.0)))
    if name == "silu":
        return sb.op("Mul", h, sb.op("Sigmoid", h))
    if name == "relu":
        return sb.op("Relu", h)
    if name == "phi6":
        c = sb.op("Clip", h, sb.const(-2.0), sb.const(2.0))
        return sb.op("Add", sb.op("Sub", sb.op("Mul", c, c), c), sb.const(1.0))
    raise AssertionError(name)


def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
    X, logits, W1, b1, W2, b2, W3, importance = inputs
    b = BodyBuilder("MoE")
    (is_topk, is_egy), routing = _choice(b, "routing", ROUTINGS)
    act_flags, activation = _choice(b, "activation", ACTIVATIONS)
    k = _attr(b, "value_int", "k", onnx.AttributeProto.INT)
    normalize = b.op("Cast", _attr(b, "value_int", "normalize", onnx.AttributeProto.INT), to=onnx.TensorProto.BOOL)
    group = b.op("Reshape", _attr(b, "value_int", "group", onnx.AttributeProto.INT), _ints(b, [1]))
    drop = _attr(b, "value_int", "drop", onnx.AttributeProto.INT)

    xf = b.to_float(X)
    lf = b.to_float(logits)
    E = b.op("Shape", W1, start=0, end=1)
    Hd = b.op("Shape", W1, start=2, end=3)
    Dd = b.op("Shape", X, start=1, end=2)

    # --- routing, densely [N, G]: the rank of each logit in a stable descending order, from pairwise
    # comparisons (no TopK: its tie order is not relied on): rank[g] = #{h: l[h] > l[g]} +
    # #{h < g: l[h] == l[g]}; group g is selected when rank[g] < kk.
    kk = b.op("Where", is_egy, _int(b, 3), k)  # scalar int64
    sel, rank = _select(b, lf, kk)
    p = b.op("Mul", b.op("Softmax", lf, axis=-1), sel)
    topw = b.op("Where", normalize, b.op("Div", p, b.op("ReduceSum", p, _ints(b, [1]), keepdims=1)), p)
    egy_table = b.tmp()
    b.nodes.append(helper.make_node("Constant", [], [egy_table], value_floats=[float(v) for v in EGYPTIAN] + [0.0]))
    egyw = b.op("Gather", egy_table, b.op("Min", rank, _int(b, 3)))
    wg = b.op("Where", is_egy, egyw, topw)  # [N, G]
    # sub-experts: [N, G] -> [N, G, group] -> [N, E]
    ngs = b.op("Concat", b.op("Shape", lf), group, axis=0)
    n_minus1 = b.op("Concat", b.op("Shape", lf, start=0, end=1), _ints(b, [-1]), axis=0)
    we = b.op("Reshape", b.op("Expand", b.op("Unsqueeze", wg, _ints(b, [2])), ngs), n_minus1)
    sele = b.op("Reshape", b.op("Expand", b.op("Unsqueeze", sel, _ints(b, [2])), ngs), n_minus1)
    # drop: keep the S - drop best selected sub-experts by weight * importance (ties: lower index)
    imp = b.op("Reshape", _optional(b, importance, b.const(0.0), _ints(b, [1]), E), E)
    score = b.op("Where", b.op("Cast", sele, to=onnx.TensorProto.BOOL), b.op("Mul", we, imp), b.const(-math.inf))
    keep_n = b.op("Sub", b.op("Mul", kk, b.op("Squeeze", group, _ints(b, [0]))), drop)
    keep, _ = _select(b, score, keep_n)
    wfin = b.op("Mul", b.op("Mul", we, sele), keep)  # [N, E]

    # --- every expert on every token
    h = b.op("MatMul", xf, b.to_float(W1))  # [E, N, H]
    b1f = _optional(b, b1, W1, E, Hd)
    h = b.op("Add", h, b.op("Unsqueeze", b1f, _ints(b, [1])))

    def swiglu(sb):
        w3 = _optional_like_w1(sb, W3, W1)
        return sb.op("Mul", _act_onnx(sb, "silu", h), sb.op("MatMul", xf, w3))

    def chain(i):  # If(activation == ACTIVATIONS[i], that activation, next)
        name = ACTIVATIONS[i]
        then = _graph(b, swiglu if name == "swiglu" else (lambda sb: _act_onnx(sb, name, h)), b.tmp())
        if i + 1 < len(ACTIVATIONS):
            other = _graph(b, lambda sb: sb.op("Identity", chain_in(sb, i + 1)), b.tmp())
        else:  # unknown activation: fails at run time
            other = _graph(b, lambda sb: sb.op("Add", h, _fail(sb, activation, lf)), b.tmp())
        return then, other

    def chain_in(sb, i):
        then, other = chain(i)
        return sb.op("If", act_flags[i], then_branch=then, else_branch=other)

    a = chain_in(b, 0)
    o = b.op("MatMul", a, b.to_float(W2))  # [E, N, D]
    b2f = _optional(b, b2, W1, E, Dd)
    o = b.op("Add", o, b.op("Unsqueeze", b2f, _ints(b, [1])))
    wt = b.op("Unsqueeze", b.op("Transpose", wfin, perm=[1, 0]), _ints(b, [2]))  # [E, N, 1]
    y = b.op("ReduceSum", b.op("Mul", o, wt), _ints(b, [0]), keepdims=0)
    # unknown routing: fail like an unknown activation
    valid = b.op("Or", is_topk, is_egy)
    ok = _graph(b, lambda sb: sb.op("Identity", y), b.tmp())
    bad = _graph(b, lambda sb: sb.op("Add", y, _fail(sb, routing, lf)), b.tmp())
    y = b.op("If", valid, then_branch=ok, else_branch=bad)
    b.op("CastLike", y, X, out=outputs[0])
    return b.nodes


# ----------------------------------------------------------------------------- contract samples
def make_feeds(rng, N, D, H, G, group, dtype, *, b1=True, b2=True, w3=False, importance=False, scale=1.0):
    E = G * group
    f = {
        "X": rng.normal(0, 1, (N, D)),
        "logits": rng.normal(0, 2, (N, G)),
        "W1": rng.normal(0, scale / math.sqrt(D), (E, D, H)),
    }
    if b1:
        f["b1"] = rng.normal(0, 0.5, (E, H))
    f["W2"] = rng.normal(0, scale / math.sqrt(H), (E, H, D))
    if b2:
        f["b2"] = rng.normal(0, 0.5, (E, D))
    if w3:
        f["W3"] = rng.normal(0, scale / math.sqrt(D), (E, D, H))
    out = {k: v.astype(dtype) for k, v in f.items()}
    if importance:
        out["importance"] = rng.uniform(0.1, 2.0, E).astype(np.float32)
    return out


def samples(dtype: str) -> list[Sample]:
    rng = np.random.default_rng(7)
    out: list[Sample] = []
    sizes = (1, 7, 64)
    # every routing mode x activation, N cycling over 1 / 7 / 64, biases and k / normalize varied
    for r, routing in enumerate(ROUTINGS):
        for a, act in enumerate(ACTIVATIONS):
            i = r * len(ACTIVATIONS) + a
            N = sizes[i % 3]
            attrs = {"routing": routing, "activation": act}
            if routing == "topk":
                attrs.update(k=1 + i % 3, normalize=i % 2)
            feeds = make_feeds(rng, N, 16, 24, 5, 1, dtype, b1=i % 2 == 0, b2=i % 3 != 1, w3=act == "swiglu")
            out.append(Sample(f"{routing}_{act}_N{N}", feeds, attrs))
    # defaults (topk k=2 normalize=1 gelu), larger D / H
    out.append(Sample("defaults_N64", make_feeds(rng, 64, 48, 40, 8, 1, dtype)))
    # several 64-token tiles per expert; D and H not multiples of the SIMD widths
    out.append(Sample("multi_tile_N300", make_feeds(rng, 300, 40, 72, 4, 1, dtype), {"k": 2, "activation": "silu"}))
    # group = 3: exact split of experts into sub-experts; drop by weight * importance
    for routing, drop, N in (("topk", 2, 64), ("egyptian", 4, 7), ("topk", 0, 7)):
        feeds = make_feeds(rng, N, 16, 8, 4, 3, dtype, importance=drop > 0)
        attrs = {"routing": routing, "group": 3, "drop": drop, "activation": "silu"}
        out.append(Sample(f"group3_{routing}_drop{drop}_N{N}", feeds, attrs))
    # empty experts: groups 0..2 of 6 never selected
    feeds = make_feeds(rng, 64, 16, 24, 6, 1, dtype)
    feeds["logits"][:, :3] = -8
    out.append(Sample("empty_experts_N64", feeds, {"k": 2}))
    # a single token, egyptian and topk
    out.append(Sample("single_token_topk", make_feeds(rng, 1, 16, 24, 4, 1, dtype), {"k": 3}))
    # tied logits: all equal, pairs equal, tied top three; with group + drop ties (equal importance)
    def tied(group):
        feeds = make_feeds(rng, 7, 16, 24, 6, group, dtype, importance=True)
        lg = np.asarray(feeds["logits"], np.float32)
        lg[0] = 0.5
        lg[1, [1, 4]] = 3.0
        lg[2, [0, 2, 5]] = 2.0
        lg[3, [3, 4]] = -1.0
        lg[4:] = np.round(lg[4:])
        feeds["logits"] = lg.astype(dtype)
        feeds["importance"][:] = 1.0
        return feeds

    out.append(Sample("tied_topk_k2", tied(1), {"k": 2}))
    out.append(Sample("tied_egyptian", tied(1), {"routing": "egyptian", "activation": "relu"}))
    out.append(Sample("tied_topk_k3_group2_drop3", tied(2), {"k": 3, "group": 2, "drop": 3}))
    out.append(Sample("tied_egyptian_group2_drop1", tied(2), {"routing": "egyptian", "group": 2, "drop": 1}))
    return out


MOE = OpSpec(
    name="MoE",
    inputs=("X", "logits", "W1", "b1", "W2", "b2", "W3", "importance"),
    outputs=("Y",),
    selecting_inputs=("importance",),
    dtypes=("float32", "float16"),
    reference=reference,
    body=body,
    tolerances={
        # dot products of length D and H (<= 48) summed over <= 6 experts, in another order
        "float32": Tolerance(rtol=1e-4, atol=1e-4),
        # one rounding to float16 of values up to ~10 (1-2 ulps)
        "float16": Tolerance(rtol=4e-3, atol=4e-3),
    },
    doc=__doc__,
    attributes=tuple(ATTRIBUTE_DEFAULTS),
    attribute_defaults=ATTRIBUTE_DEFAULTS,
    samples=samples,
)
