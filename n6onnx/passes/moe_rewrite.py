"""The ``moe=sparse|egyptian|phi[:DROP]`` passes: replace each detected dense or batched MoE block
(see moe.py) by one ``n6onnx.MoE`` node.

- ``sparse``: the same function, computed sparsely (each expert on its own tokens only). The
  router MatMul/Gemm and its bias stay ordinary nodes feeding the op's ``logits``; expert weights
  are re-laid out to W1 [E, D, H], W2 [E, H, D] (W3 for SwiGLU); tokens are flattened to [N, D]
  with a Reshape and the output restored to the block's shape. Exact.
- ``egyptian``: as sparse, with routing "egyptian": the router's best three experts get fixed
  weights 1/2, 1/3, 1/6. Changes the function (and runs three experts per token instead of k).
- ``phi[:DROP]``: each expert's hidden units are split into 3 contiguous sub-experts (8 x 4D ->
  24 x 4D/3; H is zero-padded to a multiple of 3, padded units have zero output weights, and b2 is
  shared 1/3 per sub-expert). A token goes to every sub-expert of its selected experts with its
  expert's routing weight (group=3): exact. With DROP > 0 the op drops, per token, the DROP
  selected sub-experts with the smallest routing weight x importance, where importance[e] is the
  mean L2 norm of sub-expert e's output act(x W1_e + b1_e) W2_e + b2_e/3 over the calibration
  tokens routed to its expert (``--calibrate``); without calibration data the importance is the
  weight-norm proxy ||W1_e||_F ||W2_e||_F (reported as uncalibrated).

Before rewriting, every block is checked numerically: its subgraph runs in onnxruntime on random
tokens and must match the n6onnx.MoE reference with the extracted parameters (this also settles
which half of a merged gate/up projection is the gate and whether the top-k weights are
renormalised). A block that does not match is rejected with the error, never rewritten. With
calibration data the report also gives each rewritten block's relative L2 error against the
original block on the calibration tokens, and the expert parameters each token activates.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from ..errors import BadArgumentError
from ..ops import DOMAIN
from ..ops.moe import MOE
from . import moe
from ._common import REPLACED_TAG, RULE_TAG, VARIANT_TAG, KindReport, Rejection, Site

OPTIONS = ("sparse", "egyptian", "phi", "phi:DROP")
PARTS = 3  # phi: sub-experts per expert
VERIFY_SEED = 0


def parse(option: str) -> tuple[str, int]:
    mode, _, drop = option.partition(":")
    if mode not in ("sparse", "egyptian", "phi") or (drop and mode != "phi"):
        raise BadArgumentError(f"moe pass needs one of: moe=sparse, moe=egyptian, moe=phi[:DROP] (got moe={option})")
    if not drop:
        return mode, 0
    from ..options import count

    d = count("moe=phi:DROP", drop, 0)
    return mode, d


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


def _ref(blk: moe.Block, X, logits, params: dict, **attrs) -> np.ndarray:
    return MOE.reference(X, logits, params["W1"], params.get("b1"), params["W2"], params.get("b2"), params.get("W3"),
                         params.get("importance"), **attrs)


def _params(blk: moe.Block) -> dict:
    p = {"W1": blk.w1, "b1": blk.b1, "W2": blk.w2, "b2": blk.b2, "W3": blk.w3}
    if blk.w3 is not None and not blk.gate_first:
        p["W1"], p["W3"] = blk.w3, blk.w1
    return p


def verify(model: ir.Model, blocks: list[moe.Block]) -> list[str | None]:
    """Per block: None when the extracted parameters reproduce it (settling gate order and
    normalisation in place), else the reason."""
    if not blocks:
        return []
    import onnxruntime as ort

    from .. import runtime

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
                got = _ref(blk, X2, L2, _params(blk), k=blk.k, normalize=normalize, activation=blk.activation)
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
    from ..ops.moe import activation_np

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


def _emit(graph: ir.Graph, blk: moe.Block, i: int, params: dict, attrs: dict, rule: str, variant: str) -> ir.Node:
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


def run(model: ir.Model, option: str, ctx) -> KindReport:
    mode, drop = parse(option)
    detected, blocks = moe.blocks(model)
    report = KindReport("moe", seen=detected.seen, near_misses=list(detected.near_misses))
    for s in detected.sites:
        if s.rule.startswith("moe.op."):
            report.near_misses.append(Rejection(s.nodes[0], "already a fused com.microsoft MoE op: left as is"))
    problems = verify(model, blocks)
    todo = []
    for blk, why in zip(blocks, problems):
        if why is None and mode == "egyptian" and blk.experts < 3:
            why = f"egyptian routing needs at least 3 experts (this block has {blk.experts})"
        if why is None and mode == "phi" and drop >= blk.k * PARTS:
            why = f"phi:{drop} would drop every one of the {blk.k * PARTS} sub-experts a token selects"
        if why is not None:
            report.near_misses.append(Rejection(blk.nodes[1], why))
        else:
            todo.append(blk)
    calib = _calibration(ctx, todo) if todo and mode != "sparse" else {}
    if todo and mode != "sparse" and not calib:
        report.notes.append("no calibration data (--calibrate): fidelity on calibration tokens not reported"
                            + ("; sub-expert importance from weight norms, not measured contributions"
                               if mode == "phi" and drop else ""))
    for i, blk in enumerate(todo):
        orig = _params(blk)
        base = {"k": blk.k, "normalize": blk.normalize, "activation": blk.activation}
        per_expert = blk.expert_params()
        if mode == "sparse":
            params, attrs, active = orig, {"routing": "topk", **base}, blk.k * per_expert
        elif mode == "egyptian":
            params, attrs, active = orig, {"routing": "egyptian", "activation": blk.activation}, 3 * per_expert
        else:
            params = split(orig)
            attrs = {"routing": "topk", **base, "group": PARTS, "drop": drop}
            if drop:
                xs = calib.get(id(blk))
                params["importance"] = importance(params, blk.activation, *(xs or (None, None)), k=blk.k)
            active = (blk.k * PARTS - drop) * per_expert / PARTS  # a sub-expert holds 1/3 of an expert's units
        detail = {**blk.detail(), "mode": mode, "verified_max_abs_err": float(f"{blk.verified_err:.3g}"),
                  "original_active_expert_params_per_token": blk.k * per_expert,
                  "active_expert_params_per_token": int(active),
                  "active_fraction_vs_original": round(active / (blk.k * per_expert), 4)}
        if mode == "phi":
            detail.update(sub_experts=params["W1"].shape[0], sub_hidden=params["W1"].shape[2], drop=drop)
            if drop:
                detail["importance"] = "calibration" if id(blk) in calib else "weight norms (uncalibrated)"
        if id(blk) in calib:
            X, L = calib[id(blk)]
            y0 = _ref(blk, X, L, orig, **base)
            y1 = _ref(blk, X, L, params, **attrs)
            detail["calibration"] = {"tokens": int(X.shape[0]),
                                     "rel_l2_err": float(f"{np.linalg.norm(y1 - y0) / max(np.linalg.norm(y0), 1e-30):.4g}")}
        rule = f"moe.{blk.form}->MoE.{mode}"
        _emit(model.graph, blk, i, params, attrs, rule, option)
        report.sites.append(Site(nodes=blk.nodes, rule=rule, variant=option, detail=detail))
    report.rewritten = len(todo)
    return report


def _calibration(ctx, blocks: list[moe.Block]) -> dict:
    """Block id -> (tokens [N, D], logits [N, E]) on the calibration data, when there is some."""
    if ctx is None or not ctx.batches or ctx.original is None:
        return {}
    from ..calibrate.collect import collect

    names = [n for b in blocks for n in (b.x.name, b.logits.name)]
    got = collect(ir.to_proto(ctx.original), names, ctx.batches)
    return {id(b): (got[b.x.name].reshape(-1, b.d_model).astype(np.float32),
                    got[b.logits.name].reshape(-1, b.experts).astype(np.float32)) for b in blocks}
