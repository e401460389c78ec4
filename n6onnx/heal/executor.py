"""The student: an ONNX graph run differentiably in torch.

``GraphModule(proto, trainable)`` holds every float initializer as an ``nn.Parameter`` (frozen
unless its name is in ``trainable``) and runs the graph node by node with the torch ops of
``heal.ops``. Model-local functions run their bodies; n6 custom ops use
``n6onnx.torch.functional.OPS`` when that module provides the op, else the pure-ONNX function body
that every emitted n6 node carries (differentiable as well, through the same standard ops).

Why not a converter: onnx2torch (last release 1.5.15, August 2024) has no model-local functions
and no com.microsoft or n6 domains, and its opset 18+ coverage trails the dynamo exporter; the op
set real transformer exports use is small (``heal.ops.OPS``)."""

from __future__ import annotations

from collections import ChainMap
from typing import Iterable, Mapping

import onnx
import torch

from ..feeds import own_state, proto_input_specs
from ..torch.functional import OPS as N6_OPS

from ..errors import BadArgumentError
from ..ops import DOMAIN
from . import fakequant
from .config import TRAIN_DTYPES
from .ops import OPS, UnsupportedOpError, tensor_from_proto

STANDARD = ("", "ai.onnx")


def _n6_ops() -> dict:
    return dict(N6_OPS)


def _attrs(node: onnx.NodeProto, outer: Mapping | None = None) -> dict:
    out = {}
    for a in node.attribute:
        if a.ref_attr_name:
            if outer is not None and a.ref_attr_name in outer:
                out[a.name] = outer[a.ref_attr_name]
            continue
        out[a.name] = onnx.helper.get_attribute_value(a)
    return out


def unsupported_ops(proto: onnx.ModelProto) -> list[str]:
    """``domain:op`` of every op the student cannot run (empty when it runs the whole graph)."""
    funcs = {(f.domain, f.name): f for f in proto.functions}
    n6 = _n6_ops()
    bad: set[str] = set()

    def walk(nodes: Iterable[onnx.NodeProto], seen: set):
        for n in nodes:
            key = (n.domain, n.op_type)
            if n.domain in STANDARD and n.op_type in OPS:
                pass
            elif n.domain in STANDARD and n.op_type == "If":
                for a in n.attribute:
                    walk(a.g.node, seen)
            elif n.domain == DOMAIN and n.op_type in n6:
                pass
            elif key in funcs:
                if key not in seen:
                    inner = _body_unsupported(funcs[key])
                    if inner:
                        bad.add(f"{n.domain}:{n.op_type} (its ONNX function body needs {', '.join(inner)})")
                    else:
                        walk(funcs[key].node, seen | {key})
            elif n.op_type == "Constant" and n.domain in STANDARD:
                bad.add("ai.onnx:Constant (string tensor)")
            else:
                bad.add(f"{n.domain or 'ai.onnx'}:{n.op_type}")
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH and n.op_type != "If":
                    bad.add(f"{n.domain or 'ai.onnx'}:{n.op_type} (subgraph)")

    walk(proto.graph.node, set())
    return sorted(bad)


def _body_unsupported(f: onnx.FunctionProto) -> list[str]:
    """Ops (and string constants, which torch cannot hold) of a function body the student cannot run."""
    out = set()

    def walk(nodes):
        for n in nodes:
            if n.domain in STANDARD and n.op_type == "Constant" and any(
                    a.name in ("value_string", "value_strings") for a in n.attribute):
                out.add("string constants")
            elif n.domain in STANDARD and n.op_type == "If":
                for a in n.attribute:
                    walk(a.g.node)
            elif not (n.domain in STANDARD and n.op_type in OPS):
                out.add(f"{n.domain or 'ai.onnx'}:{n.op_type}")

    walk(f.node)
    return sorted(out)


def check_supported(proto: onnx.ModelProto) -> None:
    bad = unsupported_ops(proto)
    if bad:
        raise UnsupportedOpError(f"healing cannot run op{'s' if len(bad) > 1 else ''} {', '.join(bad)} in torch; "
                                 "nothing was trained")


class GraphModule(torch.nn.Module):
    """The graph as a torch module. ``forward(feeds, outputs)`` -> {name: tensor} for ``outputs``
    (default: the graph outputs). Float initializers are parameters, by name in ``self.names``.
    ``fake_quant`` (a ``fakequant.Plan``: {MatMul/Gemm output name: Site}, and a static plan's rounded
    tensors) runs those nodes of the main graph as the quantized model will (``heal.fakequant``); every
    other node stays float."""

    def __init__(self, proto: onnx.ModelProto, trainable: Iterable[str] = (),
                 fake_quant: Mapping | None = None):
        super().__init__()
        check_supported(proto)
        self.graph = proto.graph
        self.functions = {(f.domain, f.name): f for f in proto.functions}
        self.n6 = _n6_ops()
        self.fake_quant = fake_quant if isinstance(fake_quant, fakequant.Plan) else fakequant.Plan(fake_quant or {})
        self.grids = fakequant.Grids()  # fake-quantized weights, reused while a weight is unchanged
        # lower-precision training forward (torch.bfloat16: autocast's matmuls, ~5x the float32 rate on a CPU with
        # avx512_bf16); only where gradients are recorded: held-out checks and inference stay float32
        self.train_dtype: torch.dtype | None = None
        trainable = set(trainable)
        self.params = torch.nn.ParameterList()
        self.names: dict[str, int] = {}
        self.consts: dict[str, torch.Tensor] = {}
        for t in proto.graph.initializer:
            v = tensor_from_proto(t)
            if v.dtype.is_floating_point:
                self.names[t.name] = len(self.params)
                self.params.append(torch.nn.Parameter(v, requires_grad=t.name in trainable))
            else:
                self.consts[t.name] = v
        self.output_names = [o.name for o in proto.graph.output]
        self.input_specs = proto_input_specs(proto)
        self.device = torch.device("cpu")

    def to_device(self, device: str | torch.device) -> "GraphModule":
        """Run on ``device`` (e.g. "cuda"): parameters and constants move there; feeds, injected
        values and every op's CPU inputs (shape tensors, constants made by ops) follow as used."""
        self.device = torch.device(device)
        self.to(self.device)
        self.consts = {k: v.to(self.device) for k, v in self.consts.items()}
        self.grids = fakequant.Grids()
        return self

    def set_train_dtype(self, name: str) -> None:
        """The training forward's precision: "float32", or "bfloat16" (CPU autocast)."""
        if name not in TRAIN_DTYPES:
            raise BadArgumentError(f"heal: training dtype must be one of {TRAIN_DTYPES}, not {name!r}")
        self.train_dtype = None if name == "float32" else getattr(torch, name)

    def parameter(self, name: str) -> torch.nn.Parameter:
        return self.params[self.names[name]]

    def initial_env(self) -> dict:
        env = dict(self.consts)
        env.update({n: self.params[i] for n, i in self.names.items()})
        return env

    def forward(self, feeds: Mapping[str, object], outputs: Iterable[str] | None = None,
                values: Mapping[str, torch.Tensor] | None = None,
                inject: Mapping[str, torch.Tensor] | None = None, cut: Iterable[str] = ()) -> dict:
        """``values`` replace initializers by name (the trainer's reparametrised weights).
        ``inject`` gives intermediate values by name: their consumers read the given value, and
        their producers run only when the value is also asked for in ``outputs`` (which then
        returns the computed value). With the teacher's residual stream injected, each block
        runs from the teacher's input: block-local reconstruction in one pass. ``cut`` names values
        whose consumers read them detached (no gradient flows back through them): with the stream
        points cut, each block trains on the student's own input, and only its own weights."""
        env = self.initial_env()
        env.update(values or {})
        for k, v in own_state(self.input_specs, feeds).items():
            env[k] = (v if torch.is_tensor(v) else torch.from_numpy(v)).to(self.device)
        inject = dict(inject or {})
        env.update(inject)
        wanted = list(outputs) if outputs is not None else self.output_names
        need = needed(self.graph, wanted, [n for n, v in inject.items() if v is not None])
        computed: dict = {}
        for name in cut:
            inject.setdefault(name, None)
        if self.train_dtype is None or not torch.is_grad_enabled():
            self._run(self.graph.node, env, None, need, inject, computed)
            return self._rounded({n: computed[n] if n in computed else env[n] for n in wanted})
        with torch.autocast(self.device.type, dtype=self.train_dtype):
            self._run(self.graph.node, env, None, need, inject, computed)
        out = {n: computed[n] if n in computed else env[n] for n in wanted}
        return self._rounded({n: v.float() if torch.is_tensor(v) and v.dtype == self.train_dtype else v
                              for n, v in out.items()})

    def _rounded(self, out: dict) -> dict:
        """A static QDQ plan's graph outputs (and asked-for tensors) as the quantized model gives them."""
        tensors = getattr(self.fake_quant, "tensors", None)
        if not tensors:
            return out
        return {n: fakequant.rounded(v, tensors[n]) if n in tensors and torch.is_tensor(v) else v for n, v in out.items()}

    # ----------------------------------------------------------------------------------------------
    def _run(self, nodes, env, outer_attrs, need=None, inject=None, computed=None) -> None:
        for n in nodes:
            if need is not None and not any(o in need for o in n.output):
                continue
            ins = [env[i] if i else None for i in n.input]
            outs = self._node(n, ins, env, outer_attrs)
            for name, v in zip(n.output, outs):
                if inject and name in inject:
                    computed[name] = v
                    if inject[name] is None:  # cut: consumers read the value without its gradient
                        env[name] = v.detach()
                elif name:
                    env[name] = v

    def _node(self, n: onnx.NodeProto, ins: list, env, outer_attrs) -> list:
        attrs = _attrs(n, outer_attrs)
        if self.device.type != "cpu":  # ops make their small tensors (shapes, constants) on the CPU
            ins = [v.to(self.device) if torch.is_tensor(v) and v.device != self.device else v for v in ins]
        # fake quantization: main-graph MatMuls only (function bodies run with attrs; ONNX names are
        # unique across a graph and its subgraphs)
        tensors = getattr(self.fake_quant, "tensors", None)
        if outer_attrs is None and (self.fake_quant or tensors):
            if tensors:  # static QDQ: every read of a rounded tensor sees it rounded
                ins = [fakequant.rounded(v, tensors[i]) if i in tensors and v is not None else v
                       for i, v in zip(n.input, ins)]
            if n.domain in STANDARD and n.output[0] in self.fake_quant:
                site, raw = self.fake_quant[n.output[0]], ins
                ins = fakequant.inputs(n.op_type, attrs, ins, site, self.grids)
                if site.saturate:  # this CPU's kernel clips pair sums: its shortfall joins the output
                    out = OPS[n.op_type](attrs, ins)
                    grid = tensors[site.grid] if site.grid is not None else None
                    sat = fakequant.saturation(n.op_type, attrs, raw[0], raw[1], site, grid)
                    return [out[0] + sat, *out[1:]]
        if n.domain in STANDARD and n.op_type in OPS:
            return OPS[n.op_type](attrs, ins)
        if n.domain in STANDARD and n.op_type == "If":
            branch = attrs["then_branch"] if bool(ins[0].reshape(-1)[0]) else attrs["else_branch"]
            sub = ChainMap({}, env)
            self._run(branch.node, sub, outer_attrs)
            return [sub[o.name] for o in branch.output]
        if n.domain == DOMAIN and n.op_type in self.n6:
            out = self.n6[n.op_type](*ins, **attrs)
            return list(out) if isinstance(out, (tuple, list)) else [out]
        f = self.functions.get((n.domain, n.op_type))
        if f is None:  # check_supported refused it already; only reachable for a graph edited since
            raise UnsupportedOpError(f"healing cannot run op {n.domain}:{n.op_type}")
        fattrs = {a.name: onnx.helper.get_attribute_value(a) for a in f.attribute_proto}
        fattrs.update(attrs)
        inner = {name: v for name, v in zip(f.input, ins) if v is not None}
        self._run(f.node, inner, fattrs)
        return [inner[o] for o in f.output]


def needed(graph: onnx.GraphProto, wanted: Iterable[str], given: Iterable[str] = ()) -> set[str]:
    """Every value that the wanted values depend on (subgraph captures included), not looking
    behind the ``given`` values (unless they are wanted themselves)."""
    producer = {o: n for n in graph.node for o in n.output}
    wanted = list(wanted)
    stop = set(given) - set(wanted)
    need, stack = set(), list(wanted)
    while stack:
        v = stack.pop()
        if v in need or v in stop:
            continue
        need.add(v)
        n = producer.get(v)
        if n is None:
            continue
        stack.extend(i for i in n.input if i)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                stack.extend(i for sn in a.g.node for i in sn.input if i)
    return need
