"""FFN detection: up projection (+bias) -> activation -> down projection (+bias), and gated forms.

Runs on a canonicalised model in which every GELU has been collapsed into one node (see
``detect.detect_all``), so any GELU spelling is recognised here as the activation.
"""

from __future__ import annotations

import onnx_ir as ir

from ..ops import DOMAIN
from ._common import REPLACED_TAG, VARIANT_TAG, KindReport, Rejection, Site, consumers, is_const, node_label


def _activation(node: ir.Node) -> tuple[str, ir.Value, list[str]] | None:
    """(kind, pre-activation value, node labels) if ``node`` is an activation's last node."""
    if node.domain == DOMAIN and node.op_type in ("Phi6", "BiasPhi6", "ZetaLn2", "BiasZetaLn2"):
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


def _projection_into(value: ir.Value) -> tuple[list[ir.Node], ir.Value, ir.Value] | None:
    """value = [Add(] MatMul(x, W) [, b)] or Gemm(x, W, b): returns (nodes, x, W)."""
    n = value.producer()
    nodes = []
    if n is not None and n.op_type == "Reshape":  # GPT-2 style: Reshape -> Gemm -> Reshape
        nodes.append(n)
        n = n.inputs[0].producer()
    if n is not None and n.op_type == "Add" and any(is_const(i) for i in n.inputs):
        nodes.append(n)
        nxt = [i for i in n.inputs if not is_const(i)]
        n = nxt[0].producer() if len(nxt) == 1 else None
    if n is not None and n.op_type in ("MatMul", "Gemm") and is_const(n.inputs[1]) and not is_const(n.inputs[0]):
        return [n] + nodes, n.inputs[0], n.inputs[1]
    return None


def _projection_from(value: ir.Value) -> list[ir.Node] | None:
    """The single consumer MatMul/Gemm(value, W) [+ Add(const)] of ``value``."""
    users = consumers(value)
    reshape = []
    if len(users) == 1 and users[0].op_type == "Reshape":  # GPT-2 style
        reshape = users
        value = users[0].outputs[0]
        users = consumers(value)
    if len(users) != 1:
        return None
    n = users[0]
    if n.op_type not in ("MatMul", "Gemm") or n.inputs[0] is not value or not is_const(n.inputs[1]):
        return None
    out = reshape + [n]
    after = consumers(n.outputs[0])
    if n.op_type == "MatMul" and len(after) == 1 and after[0].op_type == "Add" and any(is_const(i) for i in after[0].inputs):
        out.append(after[0])
    return out


def detect(model: ir.Model, gelu_report: KindReport | None = None) -> KindReport:
    report = KindReport("ffn")
    for node in model.graph.all_nodes():
        act = _activation(node)
        if act is None:
            continue
        kind, pre, act_labels = act
        report.seen += 1
        up = _projection_into(pre) if pre is not None else None
        if up is None:
            # a BiasPhi6-style node carries the bias itself
            if node.domain == DOMAIN and node.op_type.startswith("Bias"):
                p = pre.producer()
                if p is not None and p.op_type in ("MatMul", "Gemm") and is_const(p.inputs[1]):
                    up = ([p], p.inputs[0], p.inputs[1])
        if up is None:
            report.near_misses.append(Rejection(act_labels[-1], f"{kind} input is not a MatMul/Gemm with constant weights (+bias)"))
            continue
        up_nodes, x, w1 = up
        out = node.outputs[0]
        gated = False
        gate_nodes: list[ir.Node] = []
        users = consumers(out)
        if len(users) == 1 and users[0].op_type == "Mul":
            mul = users[0]
            other = mul.inputs[1] if mul.inputs[0] is out else mul.inputs[0]
            gate = _projection_into(other) if other is not None else None
            if gate is not None and gate[1] is x:
                gated = True
                gate_nodes = gate[0] + [mul]
                out = mul.outputs[0]
        down = _projection_from(out)
        if down is None:
            report.near_misses.append(Rejection(act_labels[-1], f"{kind} output is not consumed by exactly one MatMul/Gemm with constant weights"))
            continue
        shape = w1.shape
        detail = {"activation": kind, "gated": gated}
        if shape is not None and len(shape) == 2:
            detail.update(d_model=shape[0], hidden=shape[1])
        names = [node_label(n) for n in up_nodes] + act_labels + [node_label(n) for n in gate_nodes] + [node_label(n) for n in down]
        report.sites.append(Site(nodes=names, rule="ffn.gated" if gated else "ffn.plain", detail=detail))
    return report
