"""What healing trains: every tensor it picks receives a gradient through the student."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest

import n6onnx
from n6onnx import feeds as F
from n6onnx.heal import targets
from n6onnx.heal.executor import GraphModule
from n6onnx.ops import DOMAIN
from n6onnx.runtime import session_for


@pytest.mark.parametrize("model,spec", [("mixtral", "moe=phi:2"), ("mixtral", "moe=egyptian"), ("bert", "gelu=phi6")])
def test_every_trainable_tensor_gets_a_gradient(zoo_export, model, spec):
    path = zoo_export(model, "dynamo20")
    m, rep = n6onnx.rewrite(path, None, [spec])
    assert sum(rep.rewritten.values()) >= 1
    proto = ir.to_proto(m)
    names = targets.trainable(onnx.load(path), proto)
    assert names
    g = GraphModule(proto, trainable=names)
    fd = F.random_feeds(session_for(proto), 1, seed=0)[0]
    out = next(iter(g(fd).values()))
    out.pow(2).mean().backward()
    dead = [n for n in names if g.parameter(n).grad is None or float(g.parameter(n).grad.abs().sum()) == 0]
    assert not dead, f"trained but never moved by a gradient: {dead}"


def test_a_selecting_input_is_not_trained(zoo_export):
    """MoE's importance only ranks sub-experts for dropping (the torch op detaches it): not trainable."""
    path = zoo_export("mixtral", "dynamo20")
    m, _ = n6onnx.rewrite(path, None, ["moe=phi:2"])
    proto = ir.to_proto(m)
    moe = [n for n in proto.graph.node if n.domain == DOMAIN and n.op_type == "MoE"]
    imp = {n.input[7] for n in moe if len(n.input) > 7 and n.input[7]}
    assert imp, "moe=phi emits the importance input"
    for which in ("rewritten", "neighbours", "all"):
        assert not imp & set(targets.trainable(onnx.load(path), proto, which))
