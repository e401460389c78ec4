"""Numerical verification, phi splitting, sub-expert importance and emission of n6onnx.MoE for the
MoE pass (see the package docstring)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from ... import runtime
from ...calibrate.collect import collect
from ...graph import REPLACED_TAG, RULE_TAG, VARIANT_TAG
from ...ops import DOMAIN
from ...ops.moe import MOE, activation_np
from . import blocks as moe

PARTS = 3  # phi: sub-experts per expert
VERIFY_SEED = 0


# --------------------------------------------------------------------------------------------------
# numerical check of the analysed blocks


def _prune(proto: onnx.ModelProto, inputs: dict[str, list[int]], outputs: list[str]) -> onnx.ModelProto:
    """A model computing ``outputs`` from the values ``inputs`` (name -> static shape)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name: t for t in proto.graph.initializer}
    keep, stack, seen = [], list(outputs), set()
    while stack:
        v = stack.pop()
        if v in seen or v in inputs or not v:
            continue
        seen.add(v)
        n = producer.get(v)
        if n is not None and id(n) not in {id(k) for k in keep}:
            keep.append(n)
            stack.extend(n.input)
    order = {id(n): i for i, n in enumerate(proto.graph.node)}
    keep.sort(key=lambda n: order[id(n)])
    tinfo = {vi.name: vi.type.tensor_type.elem_type for vi in list(proto.graph.value_info) + list(proto.graph.input)}
    g = onnx.helper.make_graph(
        keep, "moe_block",
        [onnx.helper.make_tensor_value_info(n, tinfo.get(n, onnx.TensorProto.FLOAT), s) for n, s in inputs.items()],
        [onnx.helper.make_empty_tensor_value_info(o) for o in outputs],
        [inits[v] for v in seen if v in inits])
    m = onnx.helper.make_model(g, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    m.functions.extend(proto.functions)
    return m


def _static(shape, fill: int = 4) -> list[int]:
    return [d if isinstance(d, int) else fill for d in shape]


def reference(blk: moe.Block, X, logits, params: dict, **attrs) -> np.ndarray:
    return MOE.reference(X, logits, params["W1"], params.get("b1"), params["W2"], params.get("b2"), params.get("W3"),
                         params.get("importance"), **attrs)


def block_params(blk: moe.Block) -> dict:
    p = {"W1": blk.w1, "b1": blk.b1, "W2": blk.w2, "b2": blk.b2, "W3": blk.w3}
    if blk.w3 is not None and not blk.gate_first:
        p["W1"], p["W3"] = blk.w3, blk.w1
    return p


def verify(model: ir.Model, blocks: list[moe.Block]) -> list[str | None]:
    """Per block: None when the extracted parameters reproduce it (settling gate order and
    normalisation in place), else the reason."""
    if not blocks:
        return []
    proto = ir.to_proto(model)
    rng = np.random.default_rng(VERIFY_SEED)
    out: list[str | None] = []
    for blk in blocks:
        if blk.x.shape is None:
            out.append("token tensor shape unknown")
            continue
        shape = _static(blk.x.shape)
        x = rng.standard_normal(shape).astype(np.float32)
        try:
            sub = _prune(proto, {blk.x.name: shape}, [blk.logits.name, blk.out.name])
            so = ort.SessionOptions()
            so.log_severity_level = 3
            sess = runtime.session_for(sub, so, providers=["CPUExecutionProvider"])  # any size (> 2 GB too)
            logits, want = sess.run(None, {blk.x.name: x.astype(_np_type(blk.x))})
        except Exception as e:  # noqa: BLE001 - any failure to run the block is a rejection
            out.append(f"could not run the block alone to check it: {type(e).__name__}: {str(e)[:200]}")
            continue
        D, E = blk.d_model, blk.experts
        X2, L2, want2 = x.reshape(-1, D), logits.reshape(-1, logits.shape[-1]).astype(np.float32), want.reshape(-1, D)
        tol = (1e-4 if blk.x.dtype != ir.DataType.FLOAT16 else 1e-2) * max(1.0, float(np.abs(want2).max()))
        best = None
        for gate_first in ((True, False) if blk.w3 is not None else (True,)):
            for normalize in (blk.normalize, 1 - blk.normalize):
                blk.gate_first = gate_first
                got = reference(blk, X2, L2, block_params(blk), k=blk.k, normalize=normalize, activation=blk.activation)
                err = float(np.abs(got - want2).max())
                if best is None or err < best[0]:
                    best = (err, gate_first, normalize)
        err, blk.gate_first, blk.normalize = best
        blk.verified_err = err
        out.append(None if err <= tol and logits.shape[-1] == E else
                   f"the extracted router/experts do not reproduce the block (max |error| {err:.3g} on random tokens)")
    return out


def _np_type(v: ir.Value):
    return np.float16 if v.dtype == ir.DataType.FLOAT16 else np.float32


# --------------------------------------------------------------------------------------------------
# sub-experts and importance


def split(params: dict, parts: int = PARTS) -> dict:
    """Each expert's hidden units in ``parts`` contiguous sub-experts (expert g*parts + s)."""
    w1 = params["W1"]
    E, D, H = w1.shape
    hs = -(-H // parts)
    pad = hs * parts - H

    def cols(w):  # [E, D, H] -> [E*parts, D, hs]
        w = np.pad(w, ((0, 0), (0, 0), (0, pad)))
        return w.reshape(E, D, parts, hs).transpose(0, 2, 1, 3).reshape(E * parts, D, hs)

    out = {"W1": cols(w1), "W2": np.pad(params["W2"], ((0, 0), (0, pad), (0, 0))).reshape(E * parts, hs, D)}
    if params.get("W3") is not None:
        out["W3"] = cols(params["W3"])
    if params.get("b1") is not None:
        out["b1"] = np.pad(params["b1"], ((0, 0), (0, pad))).reshape(E * parts, hs)
    if params.get("b2") is not None:
        out["b2"] = np.repeat(params["b2"] / parts, parts, axis=0)
    return {k: v.astype(np.float32) for k, v in out.items()}


def importance(sub: dict, activation: str, X=None, logits=None, k: int = 2, parts: int = PARTS) -> np.ndarray:
    """Mean L2 norm of each sub-expert's output over the tokens routed to its expert; without
    tokens, the weight-norm proxy ||W1_e|| ||W2_e||."""
    E = sub["W1"].shape[0]
    if X is None:
        return np.array([np.linalg.norm(sub["W1"][e]) * np.linalg.norm(sub["W2"][e]) for e in range(E)], np.float32)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    imp = np.zeros(E, np.float32)
    for e in range(E):
        rows = np.nonzero((top == e // parts).any(1))[0]
        if rows.size == 0:
            continue
        xe = X[rows].astype(np.float32)
        h = xe @ sub["W1"][e] + (sub["b1"][e] if "b1" in sub else 0)
        a = activation_np(activation, h, xe @ sub["W3"][e] if activation == "swiglu" else None)
        o = a @ sub["W2"][e] + (sub["b2"][e] if "b2" in sub else 0)
        imp[e] = float(np.linalg.norm(o, axis=1).mean())
    return imp


# --------------------------------------------------------------------------------------------------
# emission


def _const(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    v = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                 const_value=ir.tensor(array, name=name))
    graph.register_initializer(v)
    return v


def _node(graph: ir.Graph, op: str, inputs, out_name: str, domain: str = "", **attrs) -> ir.Value:
    n = ir.Node(domain, op, inputs, attributes=ir.convenience.convert_attributes(attrs), num_outputs=1)
    n.outputs[0].name = out_name
    graph.append(n)
    return n.outputs[0]


def emit(graph: ir.Graph, blk: moe.Block, i: int, params: dict, attrs: dict, rule: str, variant: str) -> ir.Node:
    p = f"n6/moe{i}"
    dtype = blk.x.dtype.numpy() if blk.x.dtype is not None else np.float32
    x, logits = blk.x, blk.logits
    D = blk.d_model
    if x.shape is None or len(x.shape) != 2:
        x = _node(graph, "Reshape", [x, _const(graph, f"{p}/tokens_shape", np.array([-1, D], np.int64))], f"{p}/X")
    if logits.shape is None or len(logits.shape) != 2:
        logits = _node(graph, "Reshape", [logits, _const(graph, f"{p}/logits_shape",
                                                         np.array([-1, blk.experts], np.int64))], f"{p}/logits")
    ins = [x, logits]
    for name in ("W1", "b1", "W2", "b2", "W3", "importance"):
        a = params.get(name)
        if a is None:
            ins.append(None)
        else:
            ins.append(_const(graph, f"{p}/{name}", a.astype(np.float32 if name == "importance" else dtype)))
    y = _node(graph, "MoE", ins, f"{p}/Y", domain=DOMAIN, **attrs)
    node = y.producer()
    node.metadata_props[RULE_TAG] = rule
    node.metadata_props[VARIANT_TAG] = variant
    node.metadata_props[REPLACED_TAG] = ",".join(blk.nodes)
    if blk.x.shape is None or len(blk.x.shape) != 2:
        shape = _node(graph, "Shape", [blk.x], f"{p}/shape")
        y = _node(graph, "Reshape", [y, shape], f"{p}/out")
    old = blk.out
    if old in graph.outputs:  # keep the graph output's name
        name = old.name
        old.name = f"{name}/replaced"
        graph.outputs[graph.outputs.index(old)] = y
        y.name = name
    ir.convenience.replace_all_uses_with(old, y)
    return node


# --------------------------------------------------------------------------------------------------


def calibration_tokens(ctx, blocks: list[moe.Block]) -> dict:
    """Block id -> (tokens [N, D], logits [N, E]) on the calibration data, when there is some."""
    if ctx is None or not ctx.batches or ctx.original is None:
        return {}
    names = [n for b in blocks for n in (b.x.name, b.logits.name)]
    got = collect(ir.to_proto(ctx.original), names, ctx.batches)
    return {id(b): (got[b.x.name].reshape(-1, b.d_model).astype(np.float32),
                    got[b.logits.name].reshape(-1, b.experts).astype(np.float32)) for b in blocks}
