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

import dataclasses
import functools
import math

import numpy as np
import onnx_ir as ir

from . import ffn
from ._common import (KindReport, Rejection, Site, const_array, consumers, is_const, node_label, scalar_const,
                      walk_back, walk_forward)

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


@dataclasses.dataclass
class Side:
    """Where Q, K or V comes from: a projection (possibly packed) and its column range."""

    proj: ffn.Projection | None
    x: ir.Value | None  # the projection's input
    out: ir.Value | None  # the projection's output (after its bias)
    columns: tuple[int, int] | None = None  # range of the packed output this side uses
    rotary: bool = False

    def to_json(self) -> dict | None:
        if self.proj is None:
            return None
        d = {"node": node_label(self.proj.node), "weight": self.proj.weight.name,
             "bias": self.proj.bias.name if self.proj.bias is not None else None}
        if self.columns is not None:
            d["columns"] = list(self.columns)
        if self.rotary:
            d["rotary"] = True
        return d


@dataclasses.dataclass
class Mask:
    value: ir.Value
    kind: str  # additive | boolean
    inputs: list[str]  # graph inputs it is computed from
    causal: bool

    def to_json(self) -> dict:
        return {"value": self.value.name, "kind": self.kind, "inputs": self.inputs, "causal": self.causal}


@dataclasses.dataclass
class AttentionBlock:
    index: int
    form: str
    anchor: ir.Node  # the Softmax or the fused op
    nodes: list[ir.Node]  # core nodes (Q.K^T, Softmax, P.V) or the fused op
    h: ir.Value | None
    q: Side
    k: Side
    v: Side
    heads: int | None
    kv_heads: int | None
    head_size: int | None
    scale: float | None
    mask: Mask | None
    out: ffn.Projection | None
    out_value: ir.Value | None  # output projection output (after its bias)
    residual: ir.Value | None  # the residual stream the block output is added to
    residual_node: ir.Node | None
    norm: str  # post-LN | pre-LN | unknown
    # unfused core boundary (per-head tensors): Q [B,H,L,dh], K^T [B,H,dh,L], V [B,H,L,dh]
    q4: ir.Value | None = None
    kt4: ir.Value | None = None
    v4: ir.Value | None = None
    core_out: ir.Value | None = None  # P.V output [B,H,L,dh] (or the fused op's output)
    probs: ir.Value | None = None  # attention probabilities [B,H,L,L] (unfused only)
    k4_transposed: bool = True  # kt4 is K^T (unfused); False: K [B,H,L,dh] (opset-23 Attention)

    @property
    def packed(self) -> bool:
        return self.q.proj is not None and self.k.proj is not None and self.q.proj.node is self.k.proj.node

    @property
    def label(self) -> str:
        return node_label(self.anchor)

    def detail(self) -> dict:
        d = {"index": self.index, "form": self.form, "input": self.h.name if self.h is not None else None,
             "packed_qkv": self.packed, "q": self.q.to_json(), "k": self.k.to_json(), "v": self.v.to_json(),
             "heads": self.heads, "kv_heads": self.kv_heads, "head_size": self.head_size,
             "scale": None if self.scale is None else float(f"{self.scale:.7g}"),
             "mask": self.mask.to_json() if self.mask is not None else None,
             "output_projection": None if self.out is None else {
                 "node": node_label(self.out.node), "weight": self.out.weight.name,
                 "bias": self.out.bias.name if self.out.bias is not None else None},
             "residual": None if self.residual_node is None else {
                 "node": node_label(self.residual_node), "stream": self.residual.name if self.residual else None},
             "norm": self.norm}
        return d


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
            p = ffn.projection_into(v)
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


def _static(shape) -> list[int] | None:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return list(shape)


def _graph_inputs(value: ir.Value, limit: int = 200) -> tuple[list[str], bool]:
    """Graph inputs ``value`` is computed from, and whether a non-uniform constant of >= 2 dims
    whose last two dims are both > 1 and whose rows differ (a triangular/causal pattern) takes part."""
    names, causal, stack, seen = set(), False, [value], set()
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
            continue
        n = v.producer()
        if n is not None:
            stack.extend(n.inputs)
    return sorted(names), causal


def _mask(v: ir.Value | None, kind: str) -> Mask | None:
    if v is None:
        return None
    inputs, causal = _graph_inputs(v)
    if not inputs and kind == "additive" and not causal:
        a = const_array(v) if is_const(v) else _constant_value(v)
        if a is not None and a.dtype.kind == "f" and not np.any(a):
            return None  # an all-zero additive mask (an export without a mask input): no mask
    return Mask(v, kind, inputs, causal)


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


def _output_projection(v: ir.Value) -> tuple[ffn.Projection, ir.Value] | None:
    for _ in range(5):
        r = ffn.projection_from(v)
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
    s = _static(q4.shape) if q4 is not None else None
    if s is None or len(s) != 4:
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
        q4=q4, kt4=kt4, v4=pv.inputs[1], core_out=pv.outputs[0], probs=softmax.outputs[0])


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
        ws = _static(w.shape)
        if not sizes and ws:
            sizes = [ws[1] // 3] * 3
        dh = sizes[0] // heads if sizes else None
        proj = ffn.Projection(node, w, node.inputs[2] if len(node.inputs) > 2 else None, None, [node])
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
        qs = _static(node.inputs[0].shape)
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
        qs = _static(node.inputs[0].shape)
        heads = _attr(node, "q_num_heads")
        kv_heads = _attr(node, "kv_num_heads")
        if qs and len(qs) == 4:
            heads, dh = qs[1], qs[3]
            ks = _static(node.inputs[1].shape)
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


def detect(model: ir.Model, redundancy: dict[int, float] | None = None) -> KindReport:
    blocks, rejected, seen, opaque = find_blocks(model)
    report = KindReport("attention", seen=seen, near_misses=rejected)
    for b in blocks:
        rule = ("attention.matmul_softmax_matmul" if b.form == "matmul_softmax_matmul"
                else f"attention.op.{b.anchor.domain or 'onnx'}.{b.anchor.op_type}")
        detail = b.detail()
        if redundancy is not None and b.index in redundancy:
            detail["redundancy"] = redundancy[b.index]
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule=rule, detail=detail))
    for n in opaque:
        report.sites.append(Site(nodes=[node_label(n)], rule=f"attention.op.{n.domain or 'onnx'}.{n.op_type}"))
    return report


# ============================================================================== the attention passes
"""``--pass attention=fftmix[:LAYERS]`` and ``--pass attention=egyptian[:HEADS]``.

fftmix LAYERS: ``auto`` (default) = ``auto:N`` with N = max(1, blocks // 3): the N blocks with the
highest redundancy score on the calibration data; ``N`` (a bare count): the N most redundant;
``I,J,...`` (block indices in graph order, 0-based; a single one as ``@I`` or ``I,``). Counts and
auto need calibration data (they rank blocks); indices work without it.

The replacement: FFTMix(h) -> MatMul(3D -> D) -> Add(bias) takes the place of everything from the
Q/K/V projections through the output projection and its bias; h is the input the Q/K/V
projections read (post-LN BERT/MiniLM: the block input, which is also the residual; pre-LN
GPT-2/ViT/Llama: the normalised stream, the norm stays). The residual add and the norms stay.
Fitted as described in ``n6onnx.calibrate.attention``. Uncalibrated default: filters = window
means at all three scales and the projection = the block's own value-output map W_V W_O / 3 per
scale (bias b_V W_O + b_O): uniform attention inside each window, averaged over the scales.

egyptian HEADS: ``locality`` (default with calibration data): per head, the attention mass on keys
{0, L-1} and within the window (|i - j| <= window/2) measured on the calibration data; the heads
with the most mass on {0, L-1} become global, the most local of the rest local, keeping the
reference's counts (H/2 full, H/3 local, the rest global); ``by-index`` (the default without
data): as the reference, first H/2 full, next H/3 local, the rest global; ``full``: every head
full (a plumbing check: reproduces the original). Weights are kept; the Q.K^T -> scale/mask ->
softmax -> .V core becomes EgyptianAttention on [B, L, H*dh] tensors, with the attention mask as
key_padding_mask int32.
"""

WINDOW = 64


def parse_option(option: str):
    from ..errors import BadArgumentError

    method, _, arg = option.partition(":")
    if method == "fftmix":
        if arg in ("", "auto"):
            return method, ("auto", None)
        if arg.startswith("auto:"):
            n = arg[5:]
            if not n.isdigit() or int(n) < 1:
                raise BadArgumentError(f"attention=fftmix:auto:N needs a positive count (got {n!r})")
            return method, ("auto", int(n))
        if arg.isdigit():
            if int(arg) < 1:
                raise BadArgumentError("attention=fftmix:N needs N >= 1")
            return method, ("count", int(arg))
        body = arg[1:] if arg.startswith("@") else arg
        parts = [p for p in body.split(",") if p.strip()]
        if parts and all(p.strip().isdigit() for p in parts) and ("," in arg or arg.startswith("@")):
            return method, ("indices", sorted({int(p) for p in parts}))
        raise BadArgumentError(f"attention=fftmix:LAYERS: LAYERS is auto, auto:N, a count N, or block indices "
                               f"I,J (a single index as @I) (got {arg!r})")
    if method == "egyptian":
        heads, core = None, "fused"
        for part in arg.split(":") if arg else []:
            if part in ("locality", "by-index", "full") and heads is None:
                heads = part
            elif part in ("fused", "mha") and core == "fused":
                core = part
            else:
                raise BadArgumentError(f"attention=egyptian[:HEADS][:CORE]: HEADS is locality, by-index or full, "
                                       f"CORE is fused or mha (got {arg!r})")
        return method, (heads, core)
    raise BadArgumentError(f"pass attention needs fftmix[:LAYERS] or egyptian[:HEADS][:CORE] (got {option!r})")


def _init(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    base, k = name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.tensor(array, name=name))
    graph.register_initializer(v)
    return v


def _node(graph: ir.Graph, domain: str, op: str, inputs, name: str, shape=None, dtype=None, **attrs) -> ir.Value:
    n = ir.Node(domain, op, inputs, attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()],
                name=name)
    graph.append(n)
    out = n.outputs[0]
    out.name = f"{name}_out"
    if shape is not None:
        out.shape = ir.Shape(shape)
    if dtype is not None:
        out.type = ir.TensorType(dtype)
    return out


def _np_weight(p: ffn.Projection) -> np.ndarray:
    w = ir.convenience.get_const_tensor(p.weight).numpy().astype(np.float32)
    return w.T if p.transposed else w


def _np_bias(p: ffn.Projection | None, width: int) -> np.ndarray:
    a = const_array(p.bias) if p is not None and p.bias is not None else None
    return np.zeros(width, np.float32) if a is None else a.astype(np.float32).reshape(-1)


def fftmix_default(b: AttentionBlock) -> tuple[np.ndarray, np.ndarray]:
    """Uncalibrated projection [3D, D] and bias: W_V W_O / 3 per scale, b_V W_O + b_O."""
    Wo = _np_weight(b.out)
    bo = _np_bias(b.out, Wo.shape[1])
    D = seq_input(b.h).shape[-1]
    Wv = _np_weight(b.v.proj) if b.v.proj is not None else None
    bv = _np_bias(b.v.proj, Wv.shape[1]) if Wv is not None else None
    if Wv is not None and b.v.columns is not None:
        Wv, bv = Wv[:, b.v.columns[0]:b.v.columns[1]], bv[b.v.columns[0]:b.v.columns[1]]
    if Wv is not None and b.heads and b.kv_heads and b.head_size and b.kv_heads < b.heads:
        rep = b.heads // b.kv_heads
        Wv = np.repeat(Wv.reshape(D, b.kv_heads, b.head_size), rep, axis=1).reshape(D, -1)
        bv = np.repeat(bv.reshape(b.kv_heads, b.head_size), rep, axis=0).reshape(-1)
    if Wv is None or Wv.shape != (D, Wo.shape[0]):
        return np.zeros((3 * D, Wo.shape[1]), np.float32), bo
    M = Wv @ Wo
    return np.concatenate([M / 3] * 3, 0).astype(np.float32), (bv @ Wo + bo).astype(np.float32)


@functools.lru_cache(maxsize=None)
def fallback_problem(op: str, opset: int) -> str | None:
    """Why the op's function fallback is not valid at this default opset (onnx.checker), or None."""
    import onnx
    from onnx import TensorProto, helper

    from ..ops import DOMAIN, DOMAIN_VERSION, REGISTRY

    f = TensorProto.FLOAT
    if op == "FFTMix":
        ins = [("X", f, [1, 8, 4]), ("F6", f, [4, 4]), ("F12", f, [7, 4]), ("F24", f, [13, 4])]
        attrs, yshape = {}, [1, 8, 12]
    else:
        ins = [("Q", f, [1, 8, 8]), ("K", f, [1, 8, 8]), ("V", f, [1, 8, 8]), ("key_padding_mask", TensorProto.INT32, [1, 8])]
        attrs, yshape = {"num_heads": 2}, [1, 8, 8]
    node = helper.make_node(op, [n for n, _, _ in ins], ["Y"], domain=DOMAIN, **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, t, s) for n, t, s in ins],
                          [helper.make_tensor_value_info("Y", f, yshape)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_VERSION)],
                          functions=[REGISTRY[op].function(opset)])
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:  # noqa: BLE001 - any checker complaint is the reason
        return f"the {op} function fallback is not valid at opset {opset}: {str(e).splitlines()[0][:160]}"
    return None


def fftmix_reason(b: AttentionBlock, graph: ir.Graph) -> str | None:
    if b.form.startswith("com.microsoft"):
        return f"{b.form}: run the pass on the unfused export (before ORT's fusions)"
    if b.out is None or b.out_value is None:
        return "output projection not found"
    h = seq_input(b.h)
    if h is None or h.shape is None or len(h.shape) != 3 or not isinstance(h.shape[-1], int):
        return "the projections' input is not [B, L, D] with a static D"
    if h.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return f"element type {h.dtype} not supported (float32, float16)"
    if b.out_value in graph.outputs or b.out_value.shape is None or len(b.out_value.shape) != 3:
        return "the block output is a graph output or not [B, L, D]"
    return None


def emit_fftmix(model: ir.Model, b: AttentionBlock, filters, W: np.ndarray, bias: np.ndarray) -> None:
    g = model.graph
    h = seq_input(b.h)
    dt = h.dtype.numpy()
    tag = f"n6_fftmix{b.index}"
    fs = [_init(g, f.astype(dt), f"{tag}_F{w}") for f, w in zip(filters, (6, 12, 24))]
    B, L, D = h.shape
    y = _node(g, "n6onnx", "FFTMix", [h, *fs], f"{tag}", [B, L, 3 * D], h.dtype)
    m = _node(g, "", "MatMul", [y, _init(g, W.astype(dt), f"{tag}_W")], f"{tag}_proj", [B, L, W.shape[1]], h.dtype)
    o = _node(g, "", "Add", [m, _init(g, bias.astype(dt), f"{tag}_b")], f"{tag}_bias", [B, L, W.shape[1]], h.dtype)
    ir.convenience.replace_all_uses_with(b.out_value, o)


# ------------------------------------------------------------------------------------------ egyptian
def _simulate(nodes: list[ir.Node], a: np.ndarray) -> np.ndarray | None:
    for n in nodes:
        if n.op_type == "Reshape":
            s = const_array(n.inputs[1])
            if s is None:
                return None
            az = n.attributes.get("allowzero")
            az = az.as_int() if az is not None else 0
            shape = [a.shape[i] if (d == 0 and not az) else int(d) for i, d in enumerate(s)]
            try:
                a = a.reshape(shape)
            except ValueError:
                return None
        elif n.op_type == "Transpose":
            p = n.attributes.get("perm")
            a = a.transpose(list(p.as_ints()) if p is not None else None)
    return a


def _source3(v: ir.Value, layout: tuple[int, ...], heads: int, dh: int, scaled: bool):
    """The [B, L, H*dh] value ``v`` is a pure head split (+ scalar factors) of, with the factor."""
    chain, factor, cur = [], 1.0, v
    for _ in range(10):
        n = cur.producer()
        if n is None:
            return None
        if n.op_type in ("Reshape", "Transpose", "Identity"):
            chain.insert(0, n)
            cur = n.inputs[0]
        elif scaled and n.op_type in ("Mul", "Div"):
            live = [i for i in n.inputs if not is_const(i)]
            c = scalar_const(next((i for i in n.inputs if is_const(i)), None))
            if len(live) != 1 or c is None:
                return None
            factor *= 1 / c if n.op_type == "Div" else c
            chain.insert(0, n)
            cur = live[0]
        else:
            return None
        s = _static(cur.shape)
        if s and len(s) == 3 and s[2] == heads * dh:
            a = np.arange(int(np.prod(s))).reshape(s)
            want = a.reshape(s[0], s[1], heads, dh).transpose(layout)
            got = _simulate(chain, a)
            if got is not None and got.shape == want.shape and np.array_equal(got, want):
                return cur, factor
    return None


def _to3(g: ir.Graph, v: ir.Value, layout: tuple[int, ...], heads: int, dh: int, scaled: bool, tag: str):
    """(value [B, L, H*dh], scalar factor inside it)."""
    src = _source3(v, layout, heads, dh, scaled)
    if src is not None:
        return src
    back = [layout.index(i) for i in (0, 2, 1, 3)]  # layout -> [B, L, H, dh]
    t = _node(g, "", "Transpose", [v], f"{tag}_t", None, v.dtype, perm=back)
    r = _node(g, "", "Reshape", [t, _init(g, np.array([0, 0, -1], np.int64), f"{tag}_shape")], f"{tag}_r", None,
              v.dtype)
    return r, 1.0


def egyptian_reason(b: AttentionBlock, graph: ir.Graph) -> str | None:
    if b.form.startswith("com.microsoft"):
        return f"{b.form}: run the pass on the unfused export (before ORT's fusions)"
    if b.q4 is None or b.kt4 is None or b.v4 is None or b.core_out is None:
        return "per-head Q, K, V tensors not found"
    if not (b.heads and b.head_size):
        return "number of heads / head size unknown"
    if b.mask is not None:
        if b.mask.causal:
            return "causal mask: EgyptianAttention has no causal mode"
        if not b.mask.inputs:
            return ("constant additive attention mask or bias that is not known to be all zero: EgyptianAttention takes only a "
                    "[batch, seq] key-padding mask input")
        gin = {v.name: v for v in graph.inputs}
        if len(b.mask.inputs) != 1 or b.mask.inputs[0] not in gin or gin[b.mask.inputs[0]].shape is None \
                or len(gin[b.mask.inputs[0]].shape) != 2:
            return f"mask is not derived from one [batch, seq] attention-mask input ({b.mask.inputs})"
    if b.q4.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return f"element type {b.q4.dtype} not supported"
    if _merge(b) is None:
        return "the head merge before the output projection could not be verified (dynamic shapes?)"
    return None


def _merge(b: AttentionBlock):
    """(consumer node, input index, shape) where the merged heads [B, L, H*dh] enter the output
    projection, checked by simulating the reshape/transpose chain on an index tensor."""
    if b.out is None:
        return None
    first = b.out.nodes[0]
    target = first.inputs[0]
    chain, cur = [], b.core_out
    for _ in range(5):
        if cur is target:
            break
        users = consumers(cur)
        if len(users) != 1 or users[0].op_type not in MERGE_PATH:
            return None
        chain.append(users[0])
        cur = users[0].outputs[0]
    if cur is not target:
        return None
    s, ts = _static(b.core_out.shape), _static(target.shape)
    if s is None or ts is None or len(s) != 4:
        return None
    a = np.arange(int(np.prod(s))).reshape(s)
    got = _simulate(chain, a)
    want = a.transpose(0, 2, 1, 3).reshape(ts)
    if got is None or got.shape != want.shape or not np.array_equal(got, want):
        return None
    return first, 0, ts


def emit_egyptian(model: ir.Model, b: AttentionBlock, kinds: list[int], masks: dict, window: int = WINDOW) -> None:
    g = model.graph
    H, dh = b.heads, b.head_size
    tag = f"n6_egyptian{b.index}"
    if b.form == "onnx.Attention":
        q, fq = _to3(g, b.q4, (0, 2, 1, 3), H, dh, False, f"{tag}_q")
        k, fk = _to3(g, b.kt4, (0, 2, 1, 3), H, dh, False, f"{tag}_k")
        scale = b.scale
    else:
        qk = b.nodes[0]
        q, fq = _to3(g, qk.inputs[0], (0, 2, 1, 3), H, dh, True, f"{tag}_q")
        k, fk = _to3(g, qk.inputs[1], (0, 2, 3, 1), H, dh, True, f"{tag}_k")
        ss = b.scale / (_side_factor(qk.inputs[0]) * _side_factor(qk.inputs[1]))
        scale = ss * fq * fk
    v, _ = _to3(g, b.v4, (0, 2, 1, 3), H, dh, False, f"{tag}_v")
    inputs = [q, k, v]
    if b.mask is not None:
        name = b.mask.inputs[0]
        if name not in masks:
            src = next(x for x in g.inputs if x.name == name)
            masks[name] = _node(g, "", "Cast", [src], f"n6_key_padding_mask_{name}", src.shape, ir.DataType.INT32,
                                to=ir.DataType.INT32)
        inputs.append(masks[name])
    else:  # the op's function fallback needs the mask input: all ones [B, L]
        inputs.append(_ones_mask(g, q, tag))
    first, idx, ts = _merge(b)
    y = _node(g, "n6onnx", "EgyptianAttention", inputs, tag, None, q.dtype, num_heads=int(H), window=int(window),
              scale=float(scale), head_kinds=[int(x) for x in kinds])
    if len(ts) != 3:
        y = _node(g, "", "Reshape", [y, _init(g, np.array(ts, np.int64), f"{tag}_merge_shape")], f"{tag}_merge",
                  ts, q.dtype)
    first.replace_input_with(idx, y)


def _ones_mask(g: ir.Graph, q: ir.Value, tag: str) -> ir.Value:
    """An all-ones key-padding mask [B, L] (int32) shaped like q [B, L, ...]: EgyptianAttention's
    function fallback needs the mask input even when the model has none."""
    bl = _node(g, "", "Shape", [q], f"{tag}_bl", [2], ir.DataType.INT64, start=0, end=2)
    return _node(g, "", "ConstantOfShape", [bl], f"{tag}_ones", None, ir.DataType.INT32,
                 value=ir.tensor(np.ones(1, np.int32)))


def _head_group(g: ir.Graph, x: ir.Value, heads: list[int], H: int, dh: int, tag: str) -> ir.Value:
    """Heads ``heads`` (ascending) of x [B, L, H*dh] as [B, L, len(heads)*dh]: one Slice when they are
    contiguous, else Reshape, Gather on the head axis, Reshape."""
    if heads == list(range(heads[0], heads[-1] + 1)):
        return _node(g, "", "Slice", [x, _init(g, np.array([heads[0] * dh], np.int64), f"{tag}_start"),
                                      _init(g, np.array([(heads[-1] + 1) * dh], np.int64), f"{tag}_end"),
                                      _init(g, np.array([2], np.int64), f"{tag}_axes")], tag, None, x.dtype)
    x4 = _node(g, "", "Reshape", [x, _init(g, np.array([0, 0, H, dh], np.int64), f"{tag}_4d")], f"{tag}_4d", None,
               x.dtype)
    sel = _node(g, "", "Gather", [x4, _init(g, np.array(heads, np.int64), f"{tag}_idx")], f"{tag}_sel", None, x.dtype,
                axis=2)
    return _node(g, "", "Reshape", [sel, _init(g, np.array([0, 0, len(heads) * dh], np.int64), f"{tag}_3d")],
                 f"{tag}_3d", None, x.dtype)


def split_full_heads(model: ir.Model, skip_all_ones_mask: bool | None = None) -> list[str]:
    """Run the full heads of every EgyptianAttention node that has both full and local/global heads
    as com.microsoft.MultiHeadAttention, and only the other heads as EgyptianAttention (the
    ``attention=egyptian:...:mha`` core). Returns the names of the nodes split.

    A full head is ordinary attention, which onnxruntime's own kernel runs best (flash attention on
    CUDA); EgyptianAttention is then left with the O(L * window) and O(L) heads. The head groups
    are Slices when contiguous (the by-index assignment), else Gathers on the head axis; the two
    results are concatenated and, unless the full heads come first, put back in head order by one
    Gather. The copies cost O(L * D) per block: worth it at long sequences, not at short ones (see
    README for the measured crossovers). MultiHeadAttention takes the key-padding mask as [B, L]
    int32 like EgyptianAttention (an all-ones mask made by ConstantOfShape is dropped outright).
    With ``skip_all_ones_mask`` (default: for float16 and bfloat16, where onnxruntime has flash
    attention) it sits behind an If that leaves the mask out when it is all ones
    (``_mha_unless_all_ones``): on an H200 at L=4096 that took the float16 mha core from 0.59x to
    1.20x of ORT's best original, while in float32 the unmasked path (memory-efficient attention)
    was slower than the masked one (unfused): 1.62x vs 1.93x. A query whose keys are all padded gets
    MHA's average over them instead of zeros."""
    from ..ops import egyptian_attention as ea

    g = model.graph
    done = []
    for node in list(g):
        if node.domain != "n6onnx" or node.op_type != "EgyptianAttention":
            continue
        H = int(node.attributes["num_heads"].as_int())
        ka = node.attributes.get("head_kinds")
        kinds = list(ka.as_ints()) if ka is not None else [-1]
        kinds = ea.default_head_kinds(H) if kinds == [-1] else kinds
        shape = _static(node.inputs[0].shape)
        if not shape or len(shape) != 3 or shape[2] % H or 0 not in kinds or all(k == 0 for k in kinds):
            continue
        dh = shape[2] // H
        sa, wa = node.attributes.get("scale"), node.attributes.get("window")
        scale = sa.as_float() if sa is not None else 0.0
        scale = scale if scale != 0.0 else 1.0 / math.sqrt(dh)
        window = wa.as_int() if wa is not None else WINDOW
        inputs = list(node.inputs) + [None] * (4 - len(node.inputs))
        mask = inputs[3]
        ones = mask is not None and mask.producer() is not None and mask.producer().op_type == "ConstantOfShape"
        skip = (skip_all_ones_mask if skip_all_ones_mask is not None
                else inputs[0].dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16))
        y = _split_full_heads(model, inputs, mask is not None and not ones, H, dh, kinds, scale, window,
                              f"{node.name}_split" if node.name else f"n6_egyptian_split{len(done)}", skip)
        y.shape, y.type = node.outputs[0].shape, node.outputs[0].type
        old = node.outputs[0]
        ir.convenience.replace_all_uses_with(old, y, replace_graph_outputs=True)
        if y in g.outputs:  # keep the graph output's name
            name = old.name
            old.name = f"{name}_replaced"
            y.name = name
        g.remove(node, safe=False)
        done.append(node.name)
    return done


def _split_full_heads(model: ir.Model, inputs: list, masked: bool, H: int, dh: int, kinds: list[int], scale: float,
                      window: int, tag: str, skip_all_ones_mask: bool) -> ir.Value:
    """See ``split_full_heads``: the replacement of one node, [B, L, H*dh] in head order."""
    g = model.graph
    q, k, v = inputs[:3]
    full = [h for h in range(H) if kinds[h] == 0]
    rest = [h for h in range(H) if kinds[h] != 0]
    groups = {}
    for name, x in (("q", q), ("k", k), ("v", v)):
        groups[name] = (_head_group(g, x, full, H, dh, f"{tag}_{name}full"),
                        _head_group(g, x, rest, H, dh, f"{tag}_{name}rest"))
    mha_in = [groups["q"][0], groups["k"][0], groups["v"][0]]
    model.opset_imports.setdefault("com.microsoft", 1)
    mha_attrs = {"num_heads": len(full), "scale": float(scale)}
    if masked and skip_all_ones_mask:
        yf = _mha_unless_all_ones(g, mha_in, inputs[3], q.dtype, mha_attrs, f"{tag}_full")
    else:
        yf = _node(g, "com.microsoft", "MultiHeadAttention", mha_in + ([None, inputs[3]] if masked else []),
                   f"{tag}_full", None, q.dtype, **mha_attrs)
    mask = inputs[3]
    if mask is None:  # the op's function fallback needs the mask input: all ones [B, L]
        mask = _ones_mask(g, q, tag)
    rest_in = [groups["q"][1], groups["k"][1], groups["v"][1], mask]
    yr = _node(g, "n6onnx", "EgyptianAttention", rest_in,
               tag, None, q.dtype, num_heads=len(rest), window=int(window), scale=float(scale),
               head_kinds=[int(kinds[h]) for h in rest])
    y = _node(g, "", "Concat", [yf, yr], f"{tag}_concat", None, q.dtype, axis=2)
    order = full + rest
    if order != list(range(H)):
        inverse = np.argsort(np.array(order)).astype(np.int64)
        y4 = _node(g, "", "Reshape", [y, _init(g, np.array([0, 0, H, dh], np.int64), f"{tag}_y4d")], f"{tag}_y4d",
                   None, q.dtype)
        y4 = _node(g, "", "Gather", [y4, _init(g, inverse, f"{tag}_order")], f"{tag}_order", None, q.dtype, axis=2)
        y = _node(g, "", "Reshape", [y4, _init(g, np.array([0, 0, H * dh], np.int64), f"{tag}_y3d")], f"{tag}_y3d",
                  None, q.dtype)
    return y


def _mha_unless_all_ones(g: ir.Graph, qkv: list, mask: ir.Value, dtype, attrs: dict, tag: str) -> ir.Value:
    """MultiHeadAttention(Q, K, V) with the key-padding mask only when it masks something:
    If(ReduceMin(mask) == 1) runs it without the mask. The result is the same either way, but with a
    [B, L] mask onnxruntime's CUDA MultiHeadAttention takes its unfused kernel (flash and memory-
    efficient attention accept none)."""
    lowest = _node(g, "", "ReduceMin", [mask], f"{tag}_mask_min", [], ir.DataType.INT32, keepdims=0)
    cond = _node(g, "", "Equal", [lowest, _init(g, np.array(1, np.int32), f"{tag}_one")], f"{tag}_all_ones", [],
                 ir.DataType.BOOL)

    def branch(name: str, node_inputs: list) -> ir.Graph:
        n = ir.Node("com.microsoft", "MultiHeadAttention", node_inputs,
                    attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()], name=name)
        n.outputs[0].name = f"{name}_out"
        n.outputs[0].type = ir.TensorType(dtype)
        return ir.Graph([], [n.outputs[0]], nodes=[n], name=name)

    node = ir.Node("", "If", [cond], name=f"{tag}_if",
                   attributes=[ir.AttrGraph("then_branch", branch(f"{tag}_nomask", list(qkv))),
                               ir.AttrGraph("else_branch", branch(f"{tag}_masked", list(qkv) + [None, mask]))])
    g.append(node)
    out = node.outputs[0]
    out.name, out.type = f"{tag}_out", ir.TensorType(dtype)
    return out


def _side_factor(v: ir.Value) -> float:
    return _find_side(v)[1]


# ------------------------------------------------------------------------------------------ runner
def stream_pair(b: AttentionBlock) -> tuple[str, str] | None:
    """(residual stream entering the block, block output) value names for the redundancy score."""
    if b.residual is None or b.out_value is None:
        return None
    return b.residual.name, b.out_value.name


def redundancy_scores(model: ir.Model, batches, blocks: list[AttentionBlock] | None = None) -> dict[int, float]:
    from ..calibrate import attention as cal

    blocks = blocks if blocks is not None else find_blocks(model)[0]
    pairs = {b.index: p for b in blocks if (p := stream_pair(b)) is not None}
    return cal.redundancy(ir.to_proto(model), pairs, batches) if pairs else {}


def run(model: ir.Model, option: str, ctx) -> KindReport:
    from . import targets

    method, arg = parse_option(option)
    blocks, rejected, seen, opaque = find_blocks(model)
    blocks = targets.renumber(blocks, ctx, lambda: find_blocks(ctx.original)[0] if ctx.original is not None else None)
    if method == "fftmix" and arg[0] == "indices":
        targets.refuse_overlap(ctx, arg[1], f"attention={option}")
    blocks = targets.free(blocks, ctx)
    report = KindReport("attention", seen=seen, near_misses=list(rejected))
    for n in opaque:
        report.near_misses.append(Rejection(node_label(n), f"{n.domain}.{n.op_type}: not rewritable (not analysed)"))
    g = model.graph
    reasons = {b.index: (fftmix_reason if method == "fftmix" else egyptian_reason)(b, g) for b in blocks}
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    problem = fallback_problem("FFTMix" if method == "fftmix" else "EgyptianAttention", opset)
    if problem:
        reasons = {i: r or problem for i, r in reasons.items()}
    for b in blocks:
        if reasons[b.index]:
            report.near_misses.append(Rejection(b.label, reasons[b.index]))
    ok = [b for b in blocks if not reasons[b.index]]
    if method == "fftmix":
        _run_fftmix(model, ok, arg, ctx, report)
    else:
        _run_egyptian(model, ok, arg, ctx, report)
    targets.claim(ctx, [s.detail["index"] for s in report.sites if "index" in s.detail], f"attention={option}")
    return report


def _finalize(model: ir.Model) -> None:
    from ..api import finalize

    finalize(model)  # sorts the graph, attaches the fallback functions: the next fit runs it in ORT


def _run_fftmix(model, ok, arg, ctx, report):
    from ..calibrate import attention as cal
    from ..errors import BadArgumentError

    kind, n = arg
    batches = ctx.batches or None
    scores = None
    if kind in ("auto", "count"):
        if not batches:
            raise BadArgumentError(
                "attention=fftmix:auto / :N rank the blocks by redundancy and need calibration data (--calibrate "
                "DATA); without it name the blocks by index, e.g. attention=fftmix:@0 or attention=fftmix:0,3")
        if kind == "auto" and n is None:
            n = max(1, len(ok) // 3)
        scores = redundancy_scores(ctx.original, batches)
        chosen = sorted(ok, key=lambda b: (-scores.get(b.index, -2.0), b.index))[:n]
        if len(chosen) < n:
            report.notes.append(f"asked for {n} blocks, {len(chosen)} can be rewritten")
    else:
        idx = set(n)
        known = {b.index for b in ok}
        for i in sorted(idx - known):
            report.notes.append(f"block {i} does not exist or cannot be rewritten; skipped")
        chosen = [b for b in ok if b.index in idx]
    chosen = sorted(chosen, key=lambda b: b.index)
    orig_blocks = {b.index: b for b in find_blocks(ctx.original)[0]} if batches else {}
    from ..calibrate.collect import Sweep

    sweeps = (Sweep(batches), Sweep(batches)) if batches else None
    for k, b in enumerate(chosen):
        if sweeps is not None and getattr(ctx, "progress", None):
            ctx.progress(f"attention block {b.index} ({k + 1}/{len(chosen)})")
        W0, b0 = fftmix_default(b)
        D = seq_input(b.h).shape[-1]
        detail = {"index": b.index, "method": "fftmix", "norm": b.norm}
        if scores is not None:
            detail["redundancy"] = scores.get(b.index)
        if batches and b.index in orig_blocks:
            filters, W, bias, fitrep = _fit_block(model, b, orig_blocks[b.index], ctx, W0, b0, sweeps)
            detail["fit"] = fitrep
        else:
            filters, W, bias = cal.default_filters(D), W0, b0
            detail["fit"] = None
        emit_fftmix(model, b, filters, W, bias)
        _finalize(model)
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule="attention.fftmix", detail=detail))
        report.rewritten += 1
    if chosen and not batches:
        report.notes.append("uncalibrated FFT-Mix: window-mean filters and the block's own W_V W_O as the projection; "
                            "a pretrained model loses much accuracy; pass --calibrate DATA to fit filters and projection")


def _fit_block(model, b, ob, ctx, W0, b0, sweeps):
    """Fit block b's FFT-Mix on calibration data. ``sweeps`` = (rewritten, original): collection
    sweeps in block order, each step starting at the residual stream entering the previous block."""
    from ..calibrate import attention as cal

    h = seq_input(b.h)
    cur_names = [h.name, b.residual.name] if b.residual is not None else [h.name]
    orig_names = [ob.out_value.name] + ([ob.residual.name] if ob.residual is not None else [])
    cur = sweeps[0].step(model, cur_names, b.residual.name if b.residual is not None else None, full=cur_names)
    orig = sweeps[1].step(ctx.original, orig_names, ob.residual.name if ob.residual is not None else None,
                          full=orig_names)
    hs = cur[("full", h.name)]
    reals = [cal._real(feeds, a.shape) for feeds, a in zip(ctx.batches, hs)]
    cur_res = [r.reshape(a.shape[0], a.shape[1], -1) for r, a in zip(cur[("full", b.residual.name)], hs)] \
        if b.residual is not None else []
    targets, stream_var = [], []
    for k, y in enumerate(orig[("full", ob.out_value.name)]):
        y = y.reshape(y.shape[0], y.shape[1], -1) if y.ndim == 3 else y
        if ob.residual is not None:
            y = y + orig[("full", ob.residual.name)][k].reshape(y.shape)
            stream_var.append(y.var(-1, dtype=np.float64))  # the stream after the add, per token
        targets.append(y)
    if cur_res:
        targets = [t - r for t, r in zip(targets, cur_res)]
    weights = None
    if stream_var:
        from ..calibrate import inverse_variance

        weights = inverse_variance(np.concatenate([sv[r] for sv, r in zip(stream_var, reals)]))
    f = cal.fit_fftmix(hs, reals, targets, W0, b0, weights=weights)
    return f.filters, f.W, f.b, f.to_json()


def _run_egyptian(model, ok, arg, ctx, report):
    from ..calibrate import attention as cal

    mode, core = arg

    batches = ctx.batches or None
    if mode is None:
        mode = "locality" if batches else "by-index"
        if not batches:
            report.notes.append("no calibration data: heads assigned by index as the reference (first H/2 full, "
                                "next H/3 local, the rest global); pass --calibrate DATA to assign them by locality")
    loc = {}
    if mode == "locality":
        if not batches:
            from ..errors import BadArgumentError

            raise BadArgumentError("attention=egyptian:locality measures the heads on calibration data: pass "
                                   "--calibrate DATA (or use egyptian:by-index)")
        orig = {b.index: b for b in find_blocks(ctx.original)[0]}
        probs = {b.index: orig[b.index].probs.name for b in ok if b.index in orig and orig[b.index].probs is not None}
        loc = cal.head_locality(ir.to_proto(ctx.original), probs, batches, WINDOW) if probs else {}
    masks: dict = {}
    for b in ok:
        counts = cal.reference_counts(b.heads)
        if mode == "full":
            kinds = [0] * b.heads
        elif mode == "locality" and b.index in loc:
            kinds = cal.assign_heads(loc[b.index]["local"], loc[b.index]["global"], counts)
        else:
            if mode == "locality":
                report.notes.append(f"{b.label}: attention probabilities not visible (fused op); heads by index")
            kinds = [0] * counts[0] + [1] * counts[1] + [2] * counts[2]
        emit_egyptian(model, b, kinds, masks)
        split = bool(split_full_heads(model)) if core == "mha" else False
        if core == "mha" and not split:
            why = "every head is full" if all(k == 0 for k in kinds) else "no full head" if 0 not in kinds \
                else "the head width of Q is not static"
            report.notes.append(f"{b.label}: the mha core was not applied ({why}); the block runs as one "
                                f"EgyptianAttention node")
        _finalize(model)
        detail = {"index": b.index, "method": "egyptian", "heads": b.heads, "head_kinds": kinds, "window": WINDOW,
                  "assignment": mode if (mode != "locality" or b.index in loc) else "by-index",
                  "core": "mha" if split else "fused"}
        if b.index in loc:
            detail["locality"] = loc[b.index]
        report.sites.append(Site(nodes=[node_label(n) for n in b.nodes], rule="attention.egyptian", detail=detail))
        report.rewritten += 1
