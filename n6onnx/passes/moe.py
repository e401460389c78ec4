"""MoE detection: router -> Softmax/TopK -> expert weights gathered by index, and com.microsoft MoE."""

from __future__ import annotations

import onnx_ir as ir

from ._common import KindReport, Rejection, Site, is_const, node_label, walk_back, walk_forward

FUSED = {("com.microsoft", "MoE"), ("com.microsoft", "QMoE"), ("com.microsoft", "SparseMoE")}
ROUTER_PATH = {"Softmax", "Cast", "Reshape", "Identity", "Sigmoid", "Flatten"}
GATHERS = {"Gather", "GatherND", "GatherElements"}


def _router(n: ir.Node) -> bool:
    return n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and is_const(n.inputs[1])


def _expert_gather(n: ir.Node, v: ir.Value) -> bool:
    if n.op_type not in GATHERS or n.inputs[0] is v:
        return False
    data = n.inputs[0]
    return is_const(data) and data.shape is not None and len(data.shape) >= 3


def detect(model: ir.Model) -> KindReport:
    report = KindReport("moe")
    for node in model.graph.all_nodes():
        if (node.domain, node.op_type) in FUSED:
            report.seen += 1
            report.sites.append(Site(nodes=[node_label(node)], rule=f"moe.op.{node.op_type}"))
            continue
        if node.op_type != "TopK" or node.domain != "":
            continue
        report.seen += 1
        router = walk_back(node.inputs[0], ROUTER_PATH, _router)
        if router is None:
            report.near_misses.append(Rejection(node_label(node), "TopK input does not come from a router MatMul/Gemm with constant weights"))
            continue
        gather = walk_forward(node.outputs[1], {"Reshape", "Cast", "Unsqueeze", "Flatten", "Identity", "Squeeze", "Concat", "Expand", "Tile", "Transpose"}, _expert_gather, depth=8)
        if gather is None:
            report.near_misses.append(Rejection(node_label(node), "TopK indices do not select stacked expert weights (Gather of a constant of rank >= 3)"))
            continue
        k = ir.convenience.get_const_tensor(node.inputs[1]) if len(node.inputs) > 1 else None
        detail = {"top_k": int(k.numpy().reshape(-1)[0])} if k is not None else {}
        w = gather[0].inputs[0]
        if w.shape is not None:
            detail["experts"] = w.shape[0]
        report.sites.append(Site(nodes=[node_label(router), node_label(node), node_label(gather[0])], rule="moe.router_topk_gather", detail=detail))
    return report
