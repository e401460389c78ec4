"""OpSpec: the one definition of an n6 op.

Each op has exactly one spec holding:
- its schema (domain, name, inputs, outputs, supported dtypes),
- a numpy reference (the definition users compare against),
- an ONNX-function body built from standard ops (the fallback that lets a rewritten model run on
  stock onnxruntime),
- tolerances per dtype for comparing any implementation against the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import onnx
from onnx import helper

DOMAIN = "n6onnx"
DOMAIN_VERSION = 1

# Elementwise n6 ops compute in float32 and round once to the output dtype.
COMPUTE_DTYPE = np.float32


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


@dataclasses.dataclass(frozen=True)
class Sample:
    """One contract-test case of a non-elementwise op: its feeds (input name -> array; optional
    inputs left out) and the node's attributes."""

    id: str
    feeds: dict
    attrs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dtypes: tuple[str, ...]  # numpy dtype names the CPU kernel supports
    reference: Callable[..., np.ndarray]
    # Builds the function body nodes: (inputs, outputs) names -> list[NodeProto]
    body: Callable[[list[str], list[str]], list[onnx.NodeProto]]
    tolerances: dict[str, Tolerance]
    doc: str = ""
    # Attribute names the function body refers to (ref_attr_name); with their defaults, if any.
    attributes: tuple[str, ...] = ()
    attribute_defaults: dict = dataclasses.field(default_factory=dict)
    # Non-elementwise ops: dtype name -> contract-test samples. ``reference(*inputs, **attrs)``.
    # None for the elementwise activations (the contract test has its own shapes for them).
    samples: Callable[[str], list[Sample]] | None = None
    # Outputs of the plain body's function (None: all); a node lists at least these.
    body_outputs: tuple[str, ...] | None = None
    # Further fallback bodies, as ONNX function overloads (IR >= 10): overload name -> (body, its
    # outputs). For modes whose bodies cannot share one graph: an unbound input may only sit in an
    # optional slot of a body op (onnxruntime rejects the graph otherwise, even in an If branch that
    # never runs), and a node must list every output of its function ("" for an unused one).
    overloads: dict = dataclasses.field(default_factory=dict)
    # (node attributes, names of the node's bound inputs and outputs) -> the overload its fallback
    # needs ("" = the plain body).
    choose_overload: Callable[[dict, frozenset], str] | None = None
    # Inputs that only select (never differentiable, e.g. MoE's drop ranking): healing does not train an
    # initializer read only through them.
    selecting_inputs: tuple[str, ...] = ()

    def overload_for(self, attrs: dict, bound: frozenset) -> str:
        return self.choose_overload(attrs, bound) if self.choose_overload else ""

    def function(self, default_opset: int, overload: str = "") -> onnx.FunctionProto:
        """Model-local function with a pure-ONNX body, importing the model's default opset."""
        body, outputs = self.overloads[overload] if overload else (self.body, self.body_outputs or self.outputs)
        nodes = body(list(self.inputs), list(outputs))
        f = helper.make_function(
            DOMAIN,
            self.name,
            list(self.inputs),
            list(outputs),
            nodes,
            opset_imports=[helper.make_opsetid("", default_opset)],
            attributes=[a for a in self.attributes if a not in self.attribute_defaults],
            doc_string=self.doc,
        )
        for name, value in self.attribute_defaults.items():
            f.attribute_proto.append(helper.make_attribute(name, value))
        if overload:
            f.overload = overload
        return f

    def sample_model(self, sample: Sample, opset: int = 18, outputs: int | None = None) -> onnx.ModelProto:
        """A one-node model of ``sample``: optional inputs left out of it passed as empty names
        (keeping the positions), as many outputs as the reference returns or ``outputs`` (the first
        input's element type, unnamed dims), and the fallback overload the node needs as its
        function."""
        inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                  for k, v in sample.feeds.items()]
        names = [n if n in sample.feeds else "" for n in self.inputs]
        while names and names[-1] == "":
            names.pop()
        try:
            ref = self.reference(*[sample.feeds.get(n) for n in self.inputs], **sample.attrs)
        except ValueError:  # a bad-input sample: one output of the first input's rank
            ref = next(iter(sample.feeds.values()))
        refs = list(ref) if isinstance(ref, (tuple, list)) else [ref]
        if outputs is not None:  # e.g. a bad-input sample of a mode with more outputs
            refs = (refs * outputs)[:outputs]
        node = helper.make_node(self.name, names, list(self.outputs[:len(refs)]), domain=DOMAIN, name="n6_node",
                                **sample.attrs)
        node.overload = self.overload_for(sample.attrs, frozenset(sample.feeds) | frozenset(node.output))
        outputs = [helper.make_tensor_value_info(o, inputs[0].type.tensor_type.elem_type, [None] * r.ndim)
                   for o, r in zip(self.outputs, refs)]
        g = helper.make_graph([node], f"sample_{sample.id}", inputs, outputs)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
                                 functions=[self.function(opset, node.overload)], ir_version=10)

    @property
    def elementwise(self) -> bool:
        return self.samples is None

    def tolerance(self, dtype) -> Tolerance:
        return self.tolerances[np.dtype(dtype).name]


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value_float=float(value))


def as_compute(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).astype(COMPUTE_DTYPE, copy=False)


class BodyBuilder:
    """Small helper to write function bodies: computes in float32, casts back like the input."""

    def __init__(self, prefix: str):
        self.nodes: list[onnx.NodeProto] = []
        self._n = 0
        self._prefix = prefix

    def tmp(self) -> str:
        self._n += 1
        return f"_{self._prefix}{self._n}"

    def const(self, value: float) -> str:
        name = self.tmp()
        self.nodes.append(_const(name, value))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.tmp()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def to_float(self, x: str) -> str:
        return self.op("Cast", x, to=onnx.TensorProto.FLOAT)


def elementwise_body(formula: Callable[[BodyBuilder, str], str], prefix: str, with_bias: bool):
    """Body for y = f(x) or y = f(x + bias): cast to float32, apply, CastLike back to x."""

    def body(inputs: list[str], outputs: list[str]) -> list[onnx.NodeProto]:
        b = BodyBuilder(prefix)
        xf = b.to_float(inputs[0])
        if with_bias:
            xf = b.op("Add", xf, b.to_float(inputs[1]))
        yf = formula(b, xf)
        b.op("CastLike", yf, inputs[0], out=outputs[0])
        return b.nodes

    return body


ELEMENTWISE_TOLERANCES = {
    # The kernel, the function body and the reference all compute in float32; differences come
    # from operation order / FMA contraction only (a few float32 ulps of values up to ~1e2).
    "float32": Tolerance(rtol=1e-5, atol=1e-5),
    # One rounding to float16 at the end; allow one float16 ulp (2**-10 relative) plus slack.
    "float16": Tolerance(rtol=2e-3, atol=1e-3),
}


def make_activation_pair(
    name: str,
    formula_np: Callable[[np.ndarray], np.ndarray],
    formula_onnx: Callable[[BodyBuilder, str], str],
    doc: str,
    dtypes: tuple[str, ...] = ("float32", "float16"),
) -> tuple[OpSpec, OpSpec]:
    """The activation op and its Bias variant (x + bias over the last axis, then the activation)."""

    def reference(x):
        x = np.asarray(x)
        return formula_np(as_compute(x)).astype(x.dtype, copy=False)

    def bias_reference(x, bias):
        x = np.asarray(x)
        bias = np.asarray(bias)
        if bias.ndim != 1 or x.ndim == 0 or bias.shape[0] != x.shape[-1]:
            raise ValueError(f"bias must be 1-D of length {x.shape[-1:]}, got shape {bias.shape}")
        return formula_np(as_compute(x) + as_compute(bias)).astype(x.dtype)

    plain = OpSpec(
        name=name,
        inputs=("X",),
        outputs=("Y",),
        dtypes=dtypes,
        reference=reference,
        body=elementwise_body(formula_onnx, name, with_bias=False),
        tolerances=ELEMENTWISE_TOLERANCES,
        doc=doc,
    )
    biased = OpSpec(
        name="Bias" + name,
        inputs=("X", "bias"),
        outputs=("Y",),
        dtypes=dtypes,
        reference=bias_reference,
        body=elementwise_body(formula_onnx, "Bias" + name, with_bias=True),
        tolerances=ELEMENTWISE_TOLERANCES,
        doc=f"{name}(X + bias), bias 1-D broadcast over the last axis. " + doc,
    )
    return plain, biased
