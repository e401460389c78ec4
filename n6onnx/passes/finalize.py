"""The last step after the passes: attach a model-local ONNX function (the pure-ONNX fallback) per
emitted n6 op type, import the n6 domain, sort the graph, name new nodes; and the full checker."""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

from .. import io
from ..errors import N6Error
from ..graph import default_opset, name_new_nodes
from ..ops import DOMAIN, DOMAIN_VERSION, REGISTRY


def finalize(m: ir.Model) -> list[str]:
    """Attach a model-local function per emitted n6 op type (and per overload its nodes need: the
    node's overload is set here from its attributes and bound inputs/outputs), import our domain,
    name new nodes."""
    RemoveUnusedNodesPass()(m)
    TopologicalSortPass()(m)
    forms = set()
    for n in m.graph.all_nodes():
        if n.domain == DOMAIN:
            spec = REGISTRY[n.op_type]
            bound = {k for k, v in zip(spec.inputs, n.inputs) if v is not None} | set(spec.outputs[:len(n.outputs)])
            n.overload = spec.overload_for({k: a.value for k, a in n.attributes.items()}, frozenset(bound))
            forms.add((n.op_type, n.overload))
    used = sorted({op_type for op_type, _ in forms})
    opset = default_opset(m)
    for op_type, overload in sorted(forms):
        fn = ir.serde.deserialize_function(REGISTRY[op_type].function(opset, overload))
        m.functions[fn.identifier()] = fn
    if any(overload for _, overload in forms):
        m.ir_version = max(m.ir_version, 10)  # function overloads
    if used:
        m.opset_imports[DOMAIN] = DOMAIN_VERSION
    name_new_nodes(m.graph, DOMAIN)
    return used


def check(proto: onnx.ModelProto) -> None:
    """Full onnx checker and strict shape inference on the result."""
    try:
        if proto.ByteSize() < 2**31 - 1:
            onnx.checker.check_model(proto, full_check=True)
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise N6Error(f"the rewritten model fails onnx.checker: {io.first_line(e)}") from None
