"""Graph helpers on onnx-ir shared by block detection, passes and calibration: constants, walks,
node labels, naming and the metadata tags every rewritten node carries."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript.optimizer
from onnx_ir.passes.common import ShapeInferencePass

if TYPE_CHECKING:  # onnxscript's rewriter is imported only where a rule is made
    from onnxscript.rewriter.pattern import RewriteRule

RULE_TAG = "n6onnx.rule"
VARIANT_TAG = "n6onnx.variant"
REPLACED_TAG = "n6onnx.replaced"
# on the activation of calibration's outlier detour (calibrate.outliers): the FFN activation it splits from
OUTLIER_TAG = "n6onnx.outliers_of"
# on calibration's per-unit Mul between an FFN's up projection and its n6 activation (calibrate.quantfit)
UPSCALE_TAG = "n6onnx.up_scale"
CONST_RTOL = 1e-4


def is_float16(model: onnx.ModelProto | ir.Model) -> bool:
    """Whether a model's graph inputs, outputs or weights are float16."""
    if isinstance(model, ir.Model):
        vals = [*model.graph.inputs, *model.graph.outputs, *model.graph.initializers.values()]
        return any(v.dtype == ir.DataType.FLOAT16 for v in vals)
    f16 = onnx.TensorProto.FLOAT16
    return (any(v.type.tensor_type.elem_type == f16 for v in [*model.graph.input, *model.graph.output])
            or any(t.data_type == f16 for t in model.graph.initializer))


def proto_consumers(proto: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes of a ModelProto's main graph that read each value name, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def default_opset(model: ir.Model) -> int:
    """The model's default-domain opset version (0 when it imports none)."""
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))


def node_label(node: ir.Node) -> str:
    return node.name or f"<{node.domain + '::' if node.domain else ''}{node.op_type}>"


def const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    t = ir.convenience.get_const_tensor(value)
    return None if t is None else t.numpy()


def scalar_const(value: ir.Value | None) -> float | None:
    """The value of a size-1 constant, else None."""
    a = const_array(value)
    if a is None or a.size != 1 or a.dtype.kind not in "fiu":
        return None
    return float(a.reshape(()))


def close(got: float, want: float, rtol: float = CONST_RTOL) -> bool:
    return math.isclose(got, want, rel_tol=rtol, abs_tol=rtol * 1e-3)


def add_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    """A new initializer holding ``array``, named ``name`` (``name_1``, ... when taken)."""
    base, k = name, 0
    while name in graph.initializers:
        k += 1
        name = f"{base}_{k}"
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.tensor(array, name=name))
    graph.register_initializer(v)
    return v


def name_new_nodes(graph: ir.Graph, domain: str) -> None:
    """Give unnamed nodes of ``domain`` deterministic, unique names."""
    taken = {n.name for n in graph if n.name}
    counter = 0
    for n in graph:
        if n.domain == domain and not n.name:
            while f"n6/{n.op_type}_{counter}" in taken:
                counter += 1
            n.name = f"n6/{n.op_type}_{counter}"
            taken.add(n.name)
            counter += 1


def producers(values: Iterable[ir.Value | None]) -> list[ir.Node]:
    return [v.producer() for v in values if v is not None and v.producer() is not None]


def is_const(value: ir.Value | None) -> bool:
    return value is not None and ir.convenience.get_const_tensor(value) is not None


def consumers(value: ir.Value | None) -> list[ir.Node]:
    if value is None:
        return []
    seen, out = set(), []
    for node, _ in value.uses():
        if id(node) not in seen:
            seen.add(id(node))
            out.append(node)
    return out


def walk_back(value: ir.Value | None, through: set[str], stop, depth: int = 6) -> ir.Node | None:
    """Follow producers through ``through`` op types (all non-constant inputs) until ``stop(node)``."""
    frontier = [value]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            n = v.producer() if v is not None else None
            if n is None:
                continue
            if stop(n):
                return n
            if n.op_type in through:
                nxt.extend(i for i in n.inputs if i is not None and not is_const(i))
        frontier = nxt
    return None


def walk_forward(value: ir.Value, through: set[str], stop, depth: int = 6) -> tuple[ir.Node, ir.Value] | None:
    """BFS over consumers through ``through`` op types until ``stop(node, input_value)``."""
    frontier = [value]
    for _ in range(depth):
        nxt = []
        for v in frontier:
            for n in consumers(v):
                if stop(n, v):
                    return n, v
                if n.op_type in through:
                    nxt.extend(o for o in n.outputs)
        frontier = nxt
    return None


def make_rule(instance) -> RewriteRule:
    """A RewriteRule from a configured RewriteRuleClassBase instance (``.rule()`` takes no config)."""
    from onnxscript.rewriter.pattern import RewriteRule

    return RewriteRule(
        instance.pattern, instance.rewrite, instance.check, name=instance.name,
        remove_nodes=instance.remove_nodes, graph_pre_visitor=instance.setup,
        graph_post_visitor=instance.cleanup, as_function=instance.as_function,
    )


def canonicalize(model: ir.Model) -> ir.Model:
    """Fold constants and canonicalise (onnxscript optimizer), then infer shapes. In place."""
    onnxscript.optimizer.optimize(model, inline=False, num_iterations=2)
    ShapeInferencePass()(model)
    return model
