"""Attention detection: fused attention ops and the MatMul -> Softmax -> MatMul family.

``find_blocks`` returns, for every attention block, the structure the attention passes work on:

- the input ``h`` that the Q, K, V projections read, and the projections themselves (separate
  MatMul/Gemm + bias, or one packed projection split into Q, K, V);
- the number of query heads, key/value heads (grouped-query attention: an ``Expand`` repeats the
  key/value heads) and the head size;
- the scale applied to Q.K^T: the product of every scalar factor on the query path, the key path
  and the score path (the dynamo exporter multiplies q and k by dh^-1/4 each; TorchScript divides
  the scores or scales q and k; fused ops carry a ``scale`` attribute, default 1/sqrt(dh));
- the mask path: the additive or boolean mask that reaches the scores, the graph inputs it comes
  from, and whether it holds a constant causal (triangular) part;
- the output projection and the residual ``Add`` (or ``SkipLayerNormalization``) it feeds, and
  whether the block is post-LN (the projections read the residual stream itself: BERT, MiniLM) or
  pre-LN (they read a normalisation of it: GPT-2, ViT, Llama).

Forms: unfused MatMul -> [scale/mask] -> Softmax -> [IsNaN/Where] -> MatMul (torch dynamo at
opsets 18 and 20, TorchScript, hand-written), the standard ``Attention`` op (opset 23),
``com.microsoft`` ``Attention`` (packed QKV weights inside the op) and ``MultiHeadAttention``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from ...blocks import AttentionBlock, Mask, Projection, Side, projection_from, projection_into
from ...findings import KindReport, Rejection, Site
from ...graph import const_array, consumers, is_const, node_label, scalar_const, walk_back, walk_forward
from .cache import cache_tensors

FUSED = {("", "Attention"), ("com.microsoft", "Attention"), ("com.microsoft", "MultiHeadAttention"),
         ("com.microsoft", "GroupQueryAttention"), ("com.microsoft", "PackedAttention"),
         ("com.microsoft", "PackedMultiHeadAttention")}
# Ops allowed between Q.K^T and Softmax (scale, mask, casts, reshapes) and between Softmax and .V
SCORE_PATH = {"Add", "Where", "Div", "Mul", "Cast", "Reshape", "Transpose", "Sub", "Identity", "Expand"}
PROB_PATH = {"Cast", "Where", "Dropout", "Identity", "Reshape", "Expand"}
# Ops between a projection's output and Q.K^T / P.V: head split, scale, rotary embedding, GQA repeat
HEAD_PATH = {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Unsqueeze", "Squeeze", "Expand", "Slice",
             "Neg", "Concat", "Add", "Split", "Sub"}
# Head merge between P.V and the output projection
MERGE_PATH = {"Transpose", "Reshape", "Cast", "Identity"}
NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
         "SkipSimplifiedLayerNormalization", "RMSNormalization"}


def _is_product(n: ir.Node) -> bool:
    return n.op_type == "MatMul" and n.domain == "" and not any(is_const(i) for i in n.inputs)


# ------------------------------------------------------------------------------------------ helpers
def _find_side(start: ir.Value, depth: int = 14) -> tuple[Side, float]:
    """BFS back from ``start`` through HEAD_PATH ops to the first projection; the product of the
    scalar factors on the direct chain is returned as the side's scale."""
    scale, chain = 1.0, start
    for _ in range(depth):  # the direct (single non-constant input) chain: scalar scale factors
        n = chain.producer() if chain is not None else None
        if n is None or n.op_type not in ("Mul", "Div", "Transpose", "Reshape", "Cast", "Identity", "Unsqueeze",
                                          "Squeeze", "Expand"):
            break
        live = [i for i in n.inputs[:1 if n.op_type in ("Reshape", "Expand", "Unsqueeze", "Squeeze") else 2]
                if i is not None and not is_const(i)]
        if n.op_type in ("Mul", "Div"):
            consts = [i for i in n.inputs if is_const(i)]
            if len(live) != 1 or len(consts) != 1:
                break
            c = scalar_const(consts[0])
            if c is None:
                break
            scale *= (1 / c if n.op_type == "Div" else c)
        if len(live) != 1:
            break
        chain = live[0]
    frontier, seen, rotary = [start], set(), False
    packed_from = None
    for _ in range(depth):
        nxt = []
        for v in frontier:
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            p = projection_into(v)
            if p is not None:
                proj, x = p
                cols = None
                if packed_from is not None:
                    cols = packed_from
                return Side(proj, x, v, cols, rotary), scale
            n = v.producer()
            if n is None or n.op_type not in HEAD_PATH:
                continue
            if n.op_type in ("Neg", "Concat"):
                rotary = True
            if n.op_type == "Split":
                packed_from = _split_columns(n, v)
                rotary = False
            ins = n.inputs[:1] if n.op_type in ("Reshape", "Expand", "Unsqueeze", "Squeeze", "Slice", "Split") else n.inputs
            nxt.extend(i for i in ins if i is not None and not is_const(i))
        frontier = nxt
    return Side(None, None, None), scale


def _split_columns(split: ir.Node, out: ir.Value) -> tuple[int, int] | None:
    idx = list(split.outputs).index(out)
    sizes = None
    if len(split.inputs) > 1 and split.inputs[1] is not None:
        a = const_array(split.inputs[1])
        sizes = None if a is None else [int(x) for x in a]
    elif "split" in split.attributes:
        sizes = list(split.attributes["split"].as_ints())
    else:
        shp = split.inputs[0].shape
        ax = split.attributes["axis"].as_int() if "axis" in split.attributes else 0
        if shp is not None and isinstance(shp[ax], int):
            k = len(split.outputs)
            sizes = [shp[ax] // k] * k
    if not sizes:
        return None
    start = sum(sizes[:idx])
    return (start, start + sizes[idx])


def static_shape(shape) -> list[int] | None:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return list(shape)


def _plain_causal(a: np.ndarray) -> bool:
    """Whether a square constant mask allows exactly keys j <= i (additive: 0 allowed, a large negative
    value masked; boolean: either polarity)."""
    n = a.shape[-1]
    allowed = a if a.dtype.kind == "b" else a > -1.0
    tril = np.tril(np.ones((n, n), bool))
    return bool(np.all(allowed == tril) or np.all(allowed == ~tril))


def _graph_inputs(value: ir.Value, limit: int = 200) -> tuple[list[str], bool, bool]:
    """Graph inputs ``value`` is computed from, whether a non-uniform constant of >= 2 dims whose
    last two dims are both > 1 and whose rows differ (a triangular/causal pattern) takes part, or a
    run-time comparison of positions, and whether every such constant is exactly causal."""
    names, causal, stack, seen, plain, compares = set(), False, [value], set(), True, 0
    while stack and len(seen) < limit:
        v = stack.pop()
        if v is None or id(v) in seen:
            continue
        seen.add(id(v))
        if v.is_graph_input():
            names.add(v.name)
            continue
        a = const_array(v) if is_const(v) else None
        if a is not None:
            # rows that differ (query i sees other keys than query j): a triangular/causal pattern; a
            # key-padding mask broadcast over the queries has identical rows
            if (a.ndim >= 2 and a.shape[-1] == a.shape[-2] > 1 and a.dtype.kind in "bf"
                    and not np.all(a == a[..., :1, :])):
                causal = True
                plain = plain and _plain_causal(a)
            continue
        n = v.producer()
        if n is not None and n.op_type not in SHAPE_ONLY:  # the mask does not depend on those values
            if _compares_positions(n):
                compares += 1
            stack.extend(n.inputs)
    # one run-time comparison of positions: j <= i (+ past); a second one bounds the window from below
    # (a sliding window, as Mistral's): not plain causal
    return sorted(names), causal or compares > 0, plain and compares <= 1


SHAPE_ONLY = {"Shape", "Size"}


COMPARE = {"Less", "LessOrEqual", "Greater", "GreaterOrEqual"}
INDEX_PATH = {"Unsqueeze", "Reshape", "Add", "Sub", "Cast", "Expand", "Slice", "Squeeze", "Mul"}


def _compares_positions(n: ir.Node) -> bool:
    """A mask computed at run time (dynamic-shape decoder exports): ``Trilu``, or a comparison of two
    position-index vectors (each from a ``Range``), e.g. key index <= query index + past length: a
    causal or sliding-window pattern. A padding mask compares positions with lengths, not positions."""
    if n.op_type == "Trilu":
        return True
    return n.op_type in COMPARE and len(n.inputs) == 2 and all(_from_range(i) for i in n.inputs)


def _from_range(v: ir.Value | None, depth: int = 6) -> bool:
    for _ in range(depth):
        n = v.producer() if v is not None else None
        if n is None:
            return False
        if n.op_type == "Range":
            return True
        if n.op_type not in INDEX_PATH:
            return False
        live = [i for i in n.inputs if i is not None and not is_const(i)]
        if len(live) > 1:
            return any(_from_range(i, depth - 1) for i in live)
        v = live[0] if live else None
    return False


def _mask(v: ir.Value | None, kind: str) -> Mask | None:
    if v is None:
        return None
    inputs, causal, plain = _graph_inputs(v)
    if not inputs and kind == "additive" and not causal:
        a = const_array(v) if is_const(v) else _constant_value(v)
        if a is not None and a.dtype.kind == "f" and not np.any(a):
            return None  # an all-zero additive mask (an export without a mask input): no mask
    return Mask(v, kind, inputs, causal, plain)


def _constant_value(v: ir.Value, limit: int = 16) -> np.ndarray | None:
    """The value of ``v`` when it is computed from constants only, by at most ``limit`` standard
    ONNX nodes (run with onnx's reference evaluator); None otherwise."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    order: list[ir.Node] = []
    consts: dict[str, np.ndarray] = {}
    seen: set[int] = set()

    def visit(x: ir.Value | None) -> bool:
        if x is None or id(x) in seen:
            return True
        seen.add(id(x))
        if is_const(x):
            consts[x.name] = const_array(x)
            return True
        n = x.producer()
        if x.is_graph_input() or n is None or n.domain not in ("", "ai.onnx") or len(order) >= limit:
            return False
        if not all(visit(i) for i in n.inputs):
            return False
        if n.attributes.get("then_branch") is not None or n.attributes.get("body") is not None:
            return False
        order.append(n)
        return True

    if not visit(v) or not order:
        return None
    graph = v.graph
    opsets = dict(graph.opset_imports) if graph is not None else {}
    try:
        nodes = [ir.serde.serialize_node(n) for n in order]
        inits = [onnx.numpy_helper.from_array(a, name) for name, a in consts.items()]
        g = onnx.helper.make_graph(nodes, "const", [], [onnx.helper.make_empty_tensor_value_info(v.name)], inits)
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opsets.get("", 18))])
        return np.asarray(ReferenceEvaluator(m).run(None, {})[0])
    except Exception:  # noqa: BLE001 - anything the evaluator cannot run: not a known constant
        return None


def _score_path(qk: ir.Node, softmax: ir.Node) -> tuple[float, Mask | None]:
    """Scalar factors and the mask between Q.K^T and the Softmax."""
    scale, mask = 1.0, None
    v = softmax.inputs[0]
    for _ in range(8):
        n = v.producer()
        if n is None or n is qk:
            break
        live = [i for i in n.inputs if i is not None and not is_const(i)]
        on_path = [i for i in live if _reaches(i, qk)]
        if not on_path:
            break
        if n.op_type in ("Mul", "Div") and len(live) == 1:
            c = scalar_const(next((i for i in n.inputs if is_const(i)), None))
            if c is not None:
                scale *= 1 / c if n.op_type == "Div" else c
        elif n.op_type in ("Add", "Sub") and len(live) == 2:
            mask = _mask(next(i for i in live if i is not on_path[0]), "additive")
        elif n.op_type in ("Add", "Sub") and len(live) == 1:
            # a constant operand: a scalar shifts every score alike (softmax ignores it); anything
            # larger is a constant additive mask
            c = next((i for i in n.inputs if i is not None and i is not on_path[0]), None)
            a = const_array(c)
            if a is not None and a.size > 1:
                mask = _mask(c, "additive")
        elif n.op_type == "Where":
            cond = n.inputs[0]
            mask = _mask(cond, "boolean")
        v = on_path[0]
    return scale, mask


def _reaches(v: ir.Value, target: ir.Node, depth: int = 8) -> bool:
    for _ in range(depth):
        n = v.producer() if v is not None else None
        if n is None:
            return False
        if n is target:
            return True
        live = [i for i in n.inputs if i is not None and not is_const(i)]
        if not live:
            return False
        if len(live) > 1:
            return any(_reaches(i, target, depth - 1) for i in live)
        v = live[0]
    return False


def _output_projection(v: ir.Value) -> tuple[Projection, ir.Value] | None:
    for _ in range(5):
        r = projection_from(v)
        if r is not None:
            return r
        users = consumers(v)
        if len(users) != 1 or users[0].op_type not in MERGE_PATH:
            return None
        v = users[0].outputs[0]
    return None


def _residual(out: ir.Value | None) -> tuple[ir.Value | None, ir.Node | None]:
    if out is None:
        return None, None
    users = consumers(out)
    if len(users) != 1:
        return None, None
    n = users[0]
    if (n.op_type == "Add" and n.domain == "") or n.op_type in ("SkipLayerNormalization",
                                                                  "SkipSimplifiedLayerNormalization"):
        pair = list(n.inputs[:2])
        other = [i for i in pair if i is not out]
        if len(other) == 1 and other[0] is not None and not is_const(other[0]):
            return other[0], n
    return None, None


def seq_input(h: ir.Value | None) -> ir.Value | None:
    """``h`` as [B, L, D]: GPT-2-style projections read a Reshape of it to [B*L, D]."""
    n = h.producer() if h is not None else None
    if n is not None and n.op_type == "Reshape" and n.inputs[0].shape is not None and len(n.inputs[0].shape) == 3:
        return n.inputs[0]
    return h


def _norm(h: ir.Value | None, residual: ir.Value | None) -> str:
    if h is None or residual is None:
        return "unknown"
    h = seq_input(h)
    if h is residual:
        return "post-LN"
    n = h.producer()
    if n is not None and (n.op_type in NORMS or _is_rmsnorm(n)):
        return "pre-LN"
    return "unknown"


def _is_rmsnorm(n: ir.Node) -> bool:
    """x * rsqrt(mean(x^2) + eps) * g, as exporters spell it: a Mul whose producers reach a ReduceMean."""
    if n.op_type != "Mul":
        return False
    stack, depth = list(n.inputs), 0
    while stack and depth < 12:
        v = stack.pop()
        depth += 1
        p = v.producer() if v is not None else None
        if p is None:
            continue
        if p.op_type == "ReduceMean":
            return True
        if p.op_type in ("Mul", "Reciprocal", "Sqrt", "Add", "Div", "Pow"):
            stack.extend(i for i in p.inputs if i is not None and not is_const(i))
    return False


def _heads_from_shape(q4: ir.Value | None) -> tuple[int | None, int | None]:
    """(heads, head size) of Q as [batch, heads, seq, head size]: only those two dimensions need
    to be static (a dynamic-axes export has symbolic batch and seq)."""
    s = q4.shape if q4 is not None else None
    if s is None or len(s) != 4 or not all(isinstance(d, int) for d in (s[1], s[3])):
        return None, None
    return s[1], s[3]


def _width(side: Side) -> int | None:
    if side.columns is not None:
        return side.columns[1] - side.columns[0]
    if side.proj is None:
        return None
    s = side.proj.weight.shape
    if s is None or len(s) != 2:
        return None
    return s[0] if side.proj.transposed else s[1]


def _strip_scale(v: ir.Value) -> ir.Value:
    """The value before scalar Mul/Div factors."""
    while True:
        n = v.producer()
        if n is None or n.op_type not in ("Mul", "Div"):
            return v
        live = [i for i in n.inputs if not is_const(i)]
        consts = [i for i in n.inputs if is_const(i)]
        if len(live) != 1 or len(consts) != 1 or scalar_const(consts[0]) is None:
            return v
        v = live[0]


# ------------------------------------------------------------------------------------------ blocks
def _unfused(softmax: ir.Node) -> AttentionBlock | str:
    qk = walk_back(softmax.inputs[0], SCORE_PATH, _is_product)
    if qk is None:
        return "Softmax input is not a product of two activations (Q.K^T); e.g. a router or classifier softmax"
    pv = walk_forward(softmax.outputs[0], PROB_PATH, lambda n, v: _is_product(n) and n.inputs[0] is v)
    if pv is None:
        return "Softmax output does not feed a product with an activation (P.V)"
    pv = pv[0]
    q, sq = _find_side(qk.inputs[0])
    k, sk = _find_side(qk.inputs[1])
    v, _ = _find_side(pv.inputs[1])
    ss, mask = _score_path(qk, softmax)
    q4, kt4 = _strip_scale(qk.inputs[0]), _strip_scale(qk.inputs[1])
    heads, dh = _heads_from_shape(q4)
    out = _output_projection(pv.outputs[0])
    kv_heads = None
    if dh and _width(k):
        kv_heads = _width(k) // dh
    h = q.x
    res, res_node = _residual(out[1] if out else None)
    return AttentionBlock(
        0, "matmul_softmax_matmul", softmax, [qk, softmax, pv], h, q, k, v, heads, kv_heads, dh,
        sq * sk * ss, mask, out[0] if out else None, out[1] if out else None, res, res_node, _norm(h, res),
        q4=q4, kt4=kt4, v4=pv.inputs[1], core_out=pv.outputs[0], probs=softmax.outputs[0],
        cache=cache_tensors(kt4, pv.inputs[1], HEAD_PATH))


def _attr(node: ir.Node, name: str, default=None):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _fused(node: ir.Node) -> AttentionBlock | str:
    key = (node.domain, node.op_type)
    out = _output_projection(node.outputs[0])
    res, res_node = _residual(out[1] if out else None)
    scale = _attr(node, "scale")
    scale = None if scale in (None, 0.0) else float(scale)
    empty = Side(None, None, None)
    if key == ("com.microsoft", "Attention"):
        x = node.inputs[0]
        heads = int(_attr(node, "num_heads"))
        w = node.inputs[1]
        sizes = _attr(node, "qkv_hidden_sizes")
        ws = static_shape(w.shape)
        if not sizes and ws:
            sizes = [ws[1] // 3] * 3
        dh = sizes[0] // heads if sizes else None
        proj = Projection(node, w, node.inputs[2] if len(node.inputs) > 2 else None, None, [node])
        cols = [(0, sizes[0]), (sizes[0], sizes[0] + sizes[1]), (sizes[0] + sizes[1], sum(sizes))] if sizes else [None] * 3
        sides = [Side(proj, x, None, c) for c in cols]
        mask_v = next((node.inputs[i] for i in (3, 5) if len(node.inputs) > i and node.inputs[i] is not None), None)
        mask = _mask(mask_v, "mask_index" if len(node.inputs) > 3 and node.inputs[3] is mask_v else "additive")
        if scale is None and dh:
            scale = 1 / math.sqrt(dh)
        return AttentionBlock(0, "com.microsoft.Attention", node, [node], x, *sides, heads,
                              sizes[1] // dh if sizes and dh else None, dh, scale, mask,
                              out[0] if out else None, out[1] if out else None, res, res_node, _norm(x, res))
    if key == ("com.microsoft", "MultiHeadAttention"):
        heads = int(_attr(node, "num_heads"))
        sides = [_find_side(node.inputs[i])[0] if len(node.inputs) > i and node.inputs[i] is not None else empty
                 for i in range(3)]
        qs = static_shape(node.inputs[0].shape)
        dh = qs[-1] // heads if qs and len(qs) == 3 else None
        mask_v = next((node.inputs[i] for i in (4, 5) if len(node.inputs) > i and node.inputs[i] is not None), None)
        mask = _mask(mask_v, "key_padding_mask" if len(node.inputs) > 4 and node.inputs[4] is mask_v else "additive")
        if scale is None and dh:
            scale = 1 / math.sqrt(dh)
        h = sides[0].x
        return AttentionBlock(0, "com.microsoft.MultiHeadAttention", node, [node], h, *sides, heads,
                              _width(sides[1]) // dh if dh and _width(sides[1]) else None, dh, scale, mask,
                              out[0] if out else None, out[1] if out else None, res, res_node, _norm(h, res))
    if key == ("", "Attention"):
        sides = [_find_side(node.inputs[i])[0] for i in range(3)]
        qs = static_shape(node.inputs[0].shape)
        heads = _attr(node, "q_num_heads")
        kv_heads = _attr(node, "kv_num_heads")
        if qs and len(qs) == 4:
            heads, dh = qs[1], qs[3]
            ks = static_shape(node.inputs[1].shape)
            kv_heads = ks[1] if ks and len(ks) == 4 else kv_heads
        else:
            dh = qs[-1] // heads if qs and heads else None
        mask_v = node.inputs[3] if len(node.inputs) > 3 else None
        mask = _mask(mask_v, "boolean" if mask_v is not None and mask_v.dtype == ir.DataType.BOOL else "additive")
        if _attr(node, "is_causal", 0):
            mask = mask or Mask(node.inputs[0], "is_causal", [], True)
            mask.causal = True
        if scale is None and dh:
            scale = 1 / math.sqrt(dh)
        h = sides[0].x
        four = qs is not None and len(qs) == 4
        return AttentionBlock(0, "onnx.Attention", node, [node], h, *sides, int(heads) if heads else None,
                              int(kv_heads) if kv_heads else None, dh, scale, mask,
                              out[0] if out else None, out[1] if out else None, res, res_node, _norm(h, res),
                              q4=node.inputs[0] if four else None, kt4=node.inputs[1] if four else None,
                              v4=node.inputs[2] if four else None, core_out=node.outputs[0], k4_transposed=False)
    return f"{node.domain or 'onnx'}.{node.op_type}: structure not analysed (detected only)"


def find_blocks(model: ir.Model) -> tuple[list[AttentionBlock], list[Rejection], int, list[ir.Node]]:
    """Attention blocks in graph order, rejected softmaxes with reasons, how many candidates were
    seen, and fused ops that are recognised but not analysed."""
    blocks, rejected, seen, opaque = [], [], 0, []
    for node in model.graph:
        if (node.domain, node.op_type) in FUSED:
            seen += 1
            b = _fused(node)
        elif node.op_type == "Softmax" and node.domain == "":
            seen += 1
            b = _unfused(node)
        else:
            continue
        if isinstance(b, str):
            if (node.domain, node.op_type) in FUSED:
                opaque.append(node)
            else:
                rejected.append(Rejection(node_label(node), b))
            continue
        b.index = len(blocks)
        blocks.append(b)
    return blocks, rejected, seen, opaque


NOT_PLAIN_REASON = ("triangular mask that is not plain causal (a sliding window or another pattern): the causal "
                    "modes implement keys j <= i only; the block is left as it is")
FUSED_CAUSAL_REASON = ("causal mask in a fused attention op: run the pass on the unfused export; the block is left "
                       "as it is")


def causal_reason(b: AttentionBlock) -> str | None:
    """Why a causal block is refused by the causal attention rewrites (None: not causal, or handled:
    an unfused causal block without a KV cache gets the causal mode of FFTMix / EgyptianAttention)."""
    if b.mask is None or not b.mask.causal:
        return None
    if b.form != "matmul_softmax_matmul":
        return FUSED_CAUSAL_REASON
    if not b.mask.plain:
        return NOT_PLAIN_REASON
    return None


def is_causal(b: AttentionBlock) -> bool:
    return b.mask is not None and b.mask.causal


def detect(model: ir.Model, redundancy: dict[int, float] | None = None) -> KindReport:
    blocks, rejected, seen, opaque = find_blocks(model)
    report = KindReport("attention", seen=seen, near_misses=rejected)
    for b in blocks:
        rule = ("attention.matmul_softmax_matmul" if b.form == "matmul_softmax_matmul"
                else f"attention.op.{b.anchor.domain or 'onnx'}.{b.anchor.op_type}")
        detail = b.detail()
        if redundancy is not None and b.index in redundancy:
            detail["redundancy"] = redundancy[b.index]
        if causal_reason(b):
            detail["refused"] = causal_reason(b)
            report.notes.append(f"attention block {b.index} ({b.label}): {causal_reason(b)}")
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule=rule, detail=detail))
    for n in opaque:
        report.sites.append(Site(nodes=[node_label(n)], rule=f"attention.op.{n.domain or 'onnx'}.{n.op_type}"))
    return report


def stream_pair(b: AttentionBlock) -> tuple[str, str] | None:
    """(residual stream entering the block, block output) value names for the redundancy score."""
    if b.residual is None or b.out_value is None:
        return None
    return b.residual.name, b.out_value.name


def side_factor(v: ir.Value) -> float:
    """The product of the scalar factors on the path from a projection to ``v`` (Q or K side)."""
    return _find_side(v)[1]
