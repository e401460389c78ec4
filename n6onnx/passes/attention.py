"""Attention detection: fused attention ops and the MatMul -> Softmax -> MatMul family."""

from __future__ import annotations

import onnx_ir as ir

from ._common import KindReport, Rejection, Site, is_const, node_label, walk_back, walk_forward

FUSED = {("", "Attention"), ("com.microsoft", "Attention"), ("com.microsoft", "MultiHeadAttention"),
         ("com.microsoft", "GroupQueryAttention"), ("com.microsoft", "PackedAttention"),
         ("com.microsoft", "PackedMultiHeadAttention")}
# Ops allowed between Q.K^T and Softmax (scale, mask, casts, reshapes) and between Softmax and .V
SCORE_PATH = {"Add", "Where", "Div", "Mul", "Cast", "Reshape", "Transpose", "Sub", "Identity", "Expand"}
PROB_PATH = {"Cast", "Where", "Dropout", "Identity", "Reshape", "Expand"}


def _is_product(n: ir.Node) -> bool:
    return n.op_type == "MatMul" and n.domain == "" and not any(is_const(i) for i in n.inputs)


def detect(model: ir.Model) -> KindReport:
    report = KindReport("attention")
    for node in model.graph.all_nodes():
        if (node.domain, node.op_type) in FUSED:
            report.seen += 1
            report.sites.append(Site(nodes=[node_label(node)], rule=f"attention.op.{node.domain or 'onnx'}.{node.op_type}"))
            continue
        if node.op_type != "Softmax" or node.domain != "":
            continue
        report.seen += 1
        qk = walk_back(node.inputs[0], SCORE_PATH, _is_product)
        if qk is None:
            report.near_misses.append(Rejection(node_label(node), "Softmax input is not a product of two activations (Q.K^T); e.g. a router or classifier softmax"))
            continue
        pv = walk_forward(node.outputs[0], PROB_PATH, lambda n, v: _is_product(n) and n.inputs[0] is v)
        if pv is None:
            report.near_misses.append(Rejection(node_label(node), "Softmax output does not feed a product with an activation (P.V)"))
            continue
        report.sites.append(Site(nodes=[node_label(qk), node_label(node), node_label(pv[0])], rule="attention.matmul_softmax_matmul"))
    return report
