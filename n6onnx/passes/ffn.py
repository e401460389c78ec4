"""FFN detection: up projection (+bias) -> activation -> down projection (+bias), and gated forms.

``find_blocks`` returns the structure (nodes and values) that the FFN rewrites and calibration
work on; ``detect`` turns it into an inspect report. Detection runs on a canonicalised model in
which every GELU has been collapsed into one node (see ``detect.detect_all``), so any GELU
spelling is recognised here as the activation.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from ..ops import DOMAIN
from ._common import REPLACED_TAG, VARIANT_TAG, KindReport, Rejection, Site, consumers, is_const, node_label

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
        return [node_label(n) for n in self.up.nodes] + self.act_labels + [node_label(n) for n in nodes]


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


def _residual(out: ir.Value) -> ir.Value | None:
    users = consumers(out)
    if len(users) == 1 and users[0].op_type == "Add" and len(users[0].inputs) == 2:
        other = [i for i in users[0].inputs if i is not out]
        if len(other) == 1 and not is_const(other[0]):
            return other[0]
    return None


def find_blocks(model: ir.Model) -> tuple[list[FFNBlock], list[Rejection], int]:
    """All FFN blocks, the activations that were not FFNs (with reasons), and how many were seen."""
    blocks, rejected, seen = [], [], 0
    for node in model.graph:
        act = activation(node)
        if act is None:
            continue
        kind, pre, act_labels = act
        seen += 1
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
        blocks.append(FFNBlock(node, kind, act_labels, x, up_proj, down[0], down[1], _residual(down[1]),
                               gated=gate is not None, gate=gate, gate_mul=gate_mul, shift=shift))
    return blocks, rejected, seen


def detect(model: ir.Model, gelu_report: KindReport | None = None) -> KindReport:
    blocks, rejected, seen = find_blocks(model)
    report = KindReport("ffn", seen=seen, near_misses=rejected)
    for b in blocks:
        detail = {"activation": b.kind, "gated": b.gated}
        if b.hidden is not None:
            detail.update(d_model=b.d_model, hidden=b.hidden)
        report.sites.append(Site(nodes=b.labels(), rule="ffn.gated" if b.gated else "ffn.plain", detail=detail))
    return report
