"""What the passes find: FFN, attention and MoE block descriptions (a leaf module).

Both the passes (detection, rewrite) and calibration (fitting) work on these descriptions; keeping
them here lets calibration import them without importing a pass. The FFN finder lives here too
because calibrating an activation swap re-finds the FFNs of the rewritten model. Attention and MoE
detection (much larger) live in their passes and fill in these descriptions.

FFN: up projection (+bias) -> activation -> down projection (+bias), and gated forms. Detection
runs on a canonicalised model in which every GELU has been collapsed into one node (see
``passes.gelu.collapsed``), so any GELU spelling is recognised as the activation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from .findings import Rejection
from .graph import OUTLIER_TAG, REPLACED_TAG, UPSCALE_TAG, VARIANT_TAG, consumers, is_const, node_label
from .ops import DOMAIN

N6_ACTIVATIONS = ("Phi6", "BiasPhi6", "ZetaLn2", "BiasZetaLn2")


@dataclasses.dataclass
class Projection:
    """[Reshape ->] MatMul/Gemm(x, W) [-> Add(b)] [-> Reshape]."""

    node: ir.Node  # MatMul or Gemm
    weight: ir.Value  # constant; [in, out] for MatMul, Gemm honours transB
    bias: ir.Value | None  # constant bias (Add input or Gemm C)
    bias_add: ir.Node | None
    nodes: list[ir.Node]

    @property
    def transposed(self) -> bool:
        a = self.node.attributes.get("transB")
        return self.node.op_type == "Gemm" and a is not None and a.as_int() == 1


@dataclasses.dataclass
class FFNBlock:
    act: ir.Node  # the activation's last node
    kind: str
    act_labels: list[str]
    x: ir.Value  # FFN input
    up: Projection
    down: Projection
    out: ir.Value  # FFN output (after the down bias)
    residual: ir.Value | None  # the other input of the Add that consumes ``out``
    gated: bool = False
    gate: Projection | None = None
    gate_mul: ir.Node | None = None
    # constant Add / Mul nodes right after the activation (calibration's centring and scaling, or the
    # gated offset, see calibrate.quantfit): part of the block, before the down projection or gate
    shift: list[ir.Node] = dataclasses.field(default_factory=list)
    # calibration's per-unit constant Mul between the up projection and the activation (equal W1
    # column ranges for per-tensor int8, see calibrate.quantfit): part of the block
    pre_shift: list[ir.Node] = dataclasses.field(default_factory=list)

    @property
    def hidden(self) -> int | None:
        s = self.up.weight.shape
        if s is None or len(s) != 2:
            return None
        return s[0] if self.up.transposed else s[1]

    @property
    def d_model(self) -> int | None:
        s = self.up.weight.shape
        if s is None or len(s) != 2:
            return None
        return s[1] if self.up.transposed else s[0]

    def labels(self) -> list[str]:
        nodes = self.shift + (
            [] if self.gate is None else self.gate.nodes + [self.gate_mul]) + self.down.nodes
        return ([node_label(n) for n in self.up.nodes + self.pre_shift] + self.act_labels
                + [node_label(n) for n in nodes])


def activation(node: ir.Node) -> tuple[str, ir.Value, list[str]] | None:
    """(kind, pre-activation value, node labels) if ``node`` is an activation's last node."""
    if node.domain == DOMAIN and node.op_type in N6_ACTIVATIONS:
        labels = node.metadata_props.get(REPLACED_TAG, node_label(node)).split(",")
        kind = node.metadata_props.get(VARIANT_TAG) or node.op_type
        kind = f"gelu_{kind}" if kind in ("erf", "tanh", "quick") else node.op_type
        return kind, node.inputs[0], labels
    if node.domain == "" and node.op_type == "Relu":
        return "relu", node.inputs[0], [node_label(node)]
    if node.domain == "" and node.op_type == "Mul" and len(node.inputs) == 2:
        for a, b in (node.inputs, node.inputs[::-1]):
            p = b.producer() if b is not None else None
            if p is not None and p.op_type == "Sigmoid" and p.inputs[0] is a:
                return "silu", a, [node_label(p), node_label(node)]
    return None


def _gemm_bias(n: ir.Node) -> ir.Value | None:
    if n.op_type == "Gemm" and len(n.inputs) > 2 and is_const(n.inputs[2]):
        return n.inputs[2]
    return None


def projection_into(value: ir.Value) -> tuple[Projection, ir.Value] | None:
    """value = [Reshape(] [Add(] MatMul(x, W) [, b)] [)] or Gemm(x, W, b): (projection, x)."""
    n = value.producer()
    nodes: list[ir.Node] = []
    if n is not None and n.op_type == "Reshape":  # GPT-2 style: Reshape -> Gemm -> Reshape
        nodes.append(n)
        n = n.inputs[0].producer()
    bias = bias_add = None
    if n is not None and n.op_type == "Add" and sum(is_const(i) for i in n.inputs) == 1:
        bias_add = n
        bias = next(i for i in n.inputs if is_const(i))
        nodes.append(n)
        n = next(i for i in n.inputs if not is_const(i)).producer()
    if n is not None and n.op_type in ("MatMul", "Gemm") and is_const(n.inputs[1]) and not is_const(n.inputs[0]):
        if n.op_type == "Gemm":
            ta = n.attributes.get("transA")
            if (ta is not None and ta.as_int()) or bias is not None:
                return None
            bias = _gemm_bias(n)
        return Projection(n, n.inputs[1], bias, bias_add, [n] + nodes[::-1]), n.inputs[0]
    return None


def projection_from(value: ir.Value) -> tuple[Projection, ir.Value] | None:
    """The single consumer [Reshape ->] MatMul/Gemm(value, W) [-> Add(b)] [-> Reshape]."""
    users = consumers(value)
    nodes: list[ir.Node] = []
    if len(users) == 1 and users[0].op_type == "Reshape":  # GPT-2 style
        nodes.append(users[0])
        value = users[0].outputs[0]
        users = consumers(value)
    if len(users) != 1:
        return None
    n = users[0]
    if n.op_type not in ("MatMul", "Gemm") or n.inputs[0] is not value or not is_const(n.inputs[1]):
        return None
    nodes.append(n)
    out = n.outputs[0]
    bias, bias_add = _gemm_bias(n), None
    after = consumers(out)
    if n.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add" and sum(is_const(i) for i in after[0].inputs) == 1:
        bias_add = after[0]
        bias = next(i for i in bias_add.inputs if is_const(i))
        nodes.append(bias_add)
        out = bias_add.outputs[0]
        after = consumers(out)
    if len(after) == 1 and after[0].op_type == "Reshape":
        nodes.append(after[0])
        out = after[0].outputs[0]
    return Projection(n, n.inputs[1], bias, bias_add, nodes), out


def shift_after(value: ir.Value) -> list[ir.Node]:
    """The chain [Add(value, constant) [-> Mul(., constant)]] that alone reads ``value``, or []."""
    chain = []
    for op in ("Add", "Mul"):
        users = consumers(value)
        if len(users) != 1 or users[0].op_type != op or users[0].domain != "" or len(users[0].inputs) != 2:
            break
        a, b = users[0].inputs
        if not ((a is value and is_const(b)) or (b is value and is_const(a))):
            break
        chain.append(users[0])
        value = users[0].outputs[0]
    return chain


def residual_of(out: ir.Value) -> ir.Value | None:
    users = consumers(out)
    if len(users) == 1 and users[0].op_type == "Add" and len(users[0].inputs) == 2:
        other = [i for i in users[0].inputs if i is not out]
        if len(other) == 1 and not is_const(other[0]):
            return other[0]
    return None


def find_ffn_blocks(model: ir.Model) -> tuple[list[FFNBlock], list[Rejection], int]:
    """All FFN blocks, the activations that were not FFNs (with reasons), and how many were seen."""
    blocks, rejected, seen = [], [], 0
    for node in model.graph:
        if OUTLIER_TAG in node.metadata_props:
            continue  # calibration's outlier detour: part of the FFN it was split from (calibrate.outliers)
        act = activation(node)
        if act is None:
            continue
        kind, pre, act_labels = act
        seen += 1
        pre_shift = []
        p = pre.producer() if pre is not None else None
        if p is not None and UPSCALE_TAG in p.metadata_props and p.op_type == "Mul":
            pre_shift = [p]
            pre = next((i for i in p.inputs if not is_const(i)), None)
        up = projection_into(pre) if pre is not None else None
        if up is not None and node.domain == DOMAIN and node.op_type.startswith("Bias") and up[0].bias is not None:
            up = None  # a bias before a Bias* node: unusual; not a plain FFN
        if up is None:
            rejected.append(Rejection(act_labels[-1], f"{kind} input is not a MatMul/Gemm with constant weights (+bias)"))
            continue
        if node.domain == DOMAIN and node.op_type.startswith("Bias"):
            up[0].bias = node.inputs[1]  # the bias lives in the fused activation
        up_proj, x = up
        out = node.outputs[0]
        shift = shift_after(out)
        if shift:
            out = shift[-1].outputs[0]
        gate = gate_mul = None
        users = consumers(out)
        if len(users) == 1 and users[0].op_type == "Mul":
            mul = users[0]
            other = mul.inputs[1] if mul.inputs[0] is out else mul.inputs[0]
            g = projection_into(other) if other is not None else None
            if g is not None and g[1] is x:
                gate, gate_mul = g[0], mul
                out = mul.outputs[0]
        down = projection_from(out)
        if down is None:
            rejected.append(Rejection(act_labels[-1], f"{kind} output is not consumed by exactly one MatMul/Gemm with constant weights"))
            continue
        blocks.append(FFNBlock(node, kind, act_labels, x, up_proj, down[0], down[1], residual_of(down[1]),
                               gated=gate is not None, gate=gate, gate_mul=gate_mul, shift=shift,
                               pre_shift=pre_shift))
    return blocks, rejected, seen


# ------------------------------------------------------------------------------------------ attention
@dataclasses.dataclass
class Side:
    """Where Q, K or V comes from: a projection (possibly packed) and its column range."""

    proj: Projection | None
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
    plain: bool = True  # a constant triangular part is exactly causal (query i sees keys j <= i)

    def to_json(self) -> dict:
        return {"value": self.value.name, "kind": self.kind, "inputs": self.inputs, "causal": self.causal,
                **({} if self.plain else {"plain_causal": False})}


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
    out: Projection | None
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
    # KV cache (decoder exports): past graph inputs concatenated in front of the new keys/values and the
    # present graph outputs they produce: {"past_key", "past_value", "present_key", "present_value"}
    cache: dict[str, str | None] | None = None

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
        if self.cache is not None:
            d["cache"] = dict(self.cache)
        return d


# ------------------------------------------------------------------------------------------ MoE
@dataclasses.dataclass
class MoEBlock:
    """One analysed MoE block. Expert weights use the ``x @ W`` convention of n6onnx.MoE."""

    form: str  # "batched" | "loop"
    topk: ir.Node
    router: ir.Node
    logits: ir.Value  # router logits [..., E] (bias included)
    x: ir.Value  # token activations [..., D] read by router and experts
    out: ir.Value  # the combined expert output (same shape as x)
    k: int
    normalize: int
    activation: str  # n6onnx.MoE activation
    w1: np.ndarray  # [E, D, H]
    w2: np.ndarray  # [E, H, D]
    b1: np.ndarray | None = None  # [E, H]
    b2: np.ndarray | None = None  # [E, D]
    w3: np.ndarray | None = None  # [E, D, H] (swiglu up projection)
    gate_first: bool = True  # merged gate/up: which half is the gate (checked numerically)
    nodes: list[str] = dataclasses.field(default_factory=list)
    combine: str = ""

    @property
    def experts(self) -> int:
        return self.w1.shape[0]

    @property
    def d_model(self) -> int:
        return self.w1.shape[1]

    @property
    def hidden(self) -> int:
        return self.w1.shape[2]

    def expert_params(self) -> int:
        """Parameters of one expert (weights and biases)."""
        n = self.w1[0].size + self.w2[0].size + (self.w3[0].size if self.w3 is not None else 0)
        return n + (self.hidden if self.b1 is not None else 0) + (self.d_model if self.b2 is not None else 0)

    def detail(self) -> dict:
        return {
            "form": self.form, "router": node_label(self.router),
            "router_bias": router_bias(self.router, self.logits), "top_k": self.k, "experts": self.experts,
            "normalize": self.normalize, "activation": self.activation, "d_model": self.d_model,
            "hidden": self.hidden, "expert_biases": [self.b1 is not None, self.b2 is not None],
            "combine": self.combine, "tokens": self.x.name, "output": self.out.name,
            "active_expert_params_per_token": self.k * self.expert_params(),
        }


def router_bias(router: ir.Node, logits: ir.Value) -> str | None:
    """Name of the router's constant bias (Gemm's C or an Add after it), else None."""
    if router.op_type == "Gemm" and len(router.inputs) > 2 and router.inputs[2] is not None:
        return router.inputs[2].name
    p = logits.producer()
    if p is not None and p.op_type == "Add":
        c = [i for i in p.inputs if is_const(i)]
        return c[0].name if c else None
    return None
