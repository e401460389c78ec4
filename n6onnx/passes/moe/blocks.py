"""MoE detection: every TopK fed by a router, analysed into router, top-k, expert weights,
activation and combine step; com.microsoft MoE ops.

Forms:

- **batched** (Hugging Face ``experts_implementation="batched_mm"``: Mixtral, Qwen2-MoE, OLMoE;
  dynamo 18/20 and TorchScript): router MatMul/Gemm -> Softmax -> TopK (-> ReduceSum/Div
  renormalisation); the TopK indices Gather/GatherND the stacked expert weights [E, ...]; tokens
  repeated k times go through a batched MatMul, the activation (SwiGLU on a merged gate/up
  projection split in two halves, or a plain activation), a second batched MatMul, are scaled by
  their routing weight and summed over the k slots (ReduceSum);
- **loop** (a Python loop over experts with index masks, unrolled by the TorchScript or dynamo
  exporter: the sources' own MoE module): per expert ``Equal(indices, e)`` -> mask -> weight, a
  dense expert FFN (MatMul + bias -> activation -> MatMul + bias) on every token, the weighted
  outputs summed by a chain of Adds;
- ``com.microsoft`` MoE / QMoE / SparseMoE ops (reported; already fused).

The analysis is structural; the rewrite (rewrite.py) additionally check numerically
that the extracted parameters reproduce the block before replacing it.
"""

from __future__ import annotations


import numpy as np
import onnx_ir as ir

from ...blocks import MoEBlock as Block
from ...findings import KindReport, Rejection, Site
from ...graph import const_array, consumers, is_const, node_label, walk_back, walk_forward

FUSED = {("com.microsoft", "MoE"), ("com.microsoft", "QMoE"), ("com.microsoft", "SparseMoE")}
PASS_THROUGH = {"Cast", "Reshape", "Identity", "Flatten"}
ROUTER_PATH = PASS_THROUGH | {"Add"}
INDEX_PATH = {"Reshape", "Cast", "Unsqueeze", "Flatten", "Identity", "Squeeze", "Concat", "Expand", "Tile", "Transpose"}
REPEAT_PATH = {"Unsqueeze", "Expand", "Tile", "Reshape", "Flatten", "Squeeze", "Identity"}
COMBINE_PATH = {"Squeeze", "Unsqueeze", "Reshape", "Mul", "Add", "Cast", "Transpose", "Identity"}
GATHERS = {"Gather", "GatherND"}
ACT_OPS = {"Erf", "Tanh", "Sigmoid", "Relu", "Gelu", "Mul", "Div", "Add", "Sub", "Pow", "Split", "Slice",
           "Squeeze", "Unsqueeze", "Identity", "Cast", "Neg", "Exp", "Log", "Softplus", "HardSigmoid"}


class Reject(Exception):
    """A TopK that is not (or not quite) an MoE block we can analyse; the message says why."""


# --------------------------------------------------------------------------------------------------
# small graph helpers


def _producer(v: ir.Value | None) -> ir.Node | None:
    return None if v is None else v.producer()


def _skip_back(v: ir.Value, ops: set[str]) -> ir.Value:
    """Follow single-data-input producers of the given op types upwards."""
    while (n := _producer(v)) is not None and n.op_type in ops and n.inputs and n.inputs[0] is not None:
        v = n.inputs[0]
    return v


def _chain_back(v: ir.Value, ops: set[str]) -> list[ir.Value]:
    out = [v]
    while (n := _producer(v)) is not None and n.op_type in ops and n.inputs and n.inputs[0] is not None:
        v = n.inputs[0]
        out.append(v)
    return out


def _reaches(v: ir.Value, target: ir.Node, depth: int = 16) -> bool:
    frontier, seen = [v], set()
    for _ in range(depth):
        nxt = []
        for val in frontier:
            for n in consumers(val):
                if n is target:
                    return True
                if id(n) not in seen:
                    seen.add(id(n))
                    nxt.extend(n.outputs)
        frontier = nxt
    return False


def _const_weight(n: ir.Node) -> np.ndarray | None:
    """The constant matrix of a MatMul/Gemm as used in ``x @ W`` (Gemm transB undone), or None."""
    if n.op_type not in ("MatMul", "Gemm") or len(n.inputs) < 2 or is_const(n.inputs[0]):
        return None
    w = const_array(n.inputs[1])
    if w is None or w.ndim != 2:
        return None
    if n.op_type == "Gemm":
        a = {k: v.value for k, v in n.attributes.items()}
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
            return None
        if a.get("transB", 0):
            w = w.T
    return w


def _bias_after(n: ir.Node, width: int) -> tuple[np.ndarray | None, ir.Value]:
    """A constant 1-D bias added right after ``n`` (Gemm's C or a following Add)."""
    if n.op_type == "Gemm" and len(n.inputs) > 2 and n.inputs[2] is not None:
        c = const_array(n.inputs[2])
        if c is not None:
            beta = n.attributes["beta"].value if "beta" in n.attributes else 1.0
            return np.broadcast_to(c * beta, (width,)).astype(np.float32), n.outputs[0]
    users = consumers(n.outputs[0])
    if len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        other = [i for i in add.inputs if i is not n.outputs[0]]
        c = const_array(other[0]) if other else None
        if c is not None and c.size == width and c.ndim >= 1:
            return c.reshape(width).astype(np.float32), add.outputs[0]
    return None, n.outputs[0]


def _router(n: ir.Node) -> bool:
    return n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and is_const(n.inputs[1])


def _activation(ops: set[str], nodes: list[ir.Node]) -> str | None:
    for n in nodes:
        if n.op_type == "Gelu":
            a = n.attributes.get("approximate")
            return "gelu_tanh" if a is not None and a.value == "tanh" else "gelu"
    if "Erf" in ops:
        return "gelu"
    if "Tanh" in ops:
        return "gelu_tanh"
    if "Sigmoid" in ops:
        return "silu"
    if "Relu" in ops:
        return "relu"
    return None


def _act_region(h: ir.Value, is_stop) -> tuple[list[ir.Node], list[ir.Node]]:
    """Nodes between the up projection(s) and ``h`` (the down projection's input): BFS upwards
    through elementwise/shape ops until ``is_stop(node)`` nodes. Returns (region, stops)."""
    region, stops, seen = [], [], set()
    frontier = [h]
    for _ in range(24):
        nxt = []
        for v in frontier:
            n = _producer(v)
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if is_stop(n):
                stops.append(n)
            elif n.op_type in ACT_OPS:
                region.append(n)
                nxt.extend(i for i in n.inputs if i is not None and not is_const(i))
            else:
                raise Reject(f"unexpected {n.op_type} node {node_label(n)} between the expert projections")
        frontier = nxt
    return region, stops


# --------------------------------------------------------------------------------------------------
# analysis


def _routing(topk: ir.Node) -> tuple[ir.Node, ir.Value, int, int]:
    """(router node, logits value, k, normalize)."""
    k = const_array(topk.inputs[1]) if len(topk.inputs) > 1 else None
    if k is None:
        raise Reject("TopK's k is not a constant")
    k = int(k.reshape(-1)[0])
    attrs = {a: v.value for a, v in topk.attributes.items()}
    if attrs.get("largest", 1) != 1 or attrs.get("axis", -1) not in (-1, len(topk.inputs[0].shape or [0]) - 1):
        raise Reject("TopK is not a largest-k over the last axis")
    scores = _skip_back(topk.inputs[0], PASS_THROUGH)
    p = _producer(scores)
    if p is not None and p.op_type == "Softmax":
        logits, on_probs = p.inputs[0], True
    elif p is not None and p.op_type == "Sigmoid":
        raise Reject("sigmoid router scores (n6onnx.MoE routes on a softmax)")
    else:
        logits, on_probs = scores, False
    router = walk_back(logits, ROUTER_PATH, _router)
    if router is None:
        raise Reject("TopK input does not come from a router MatMul/Gemm with constant weights")
    values = topk.outputs[0]
    users = {n.op_type for n in _uses_through(values, PASS_THROUGH)}
    if not on_probs:
        if "Softmax" not in users:
            raise Reject("top-k over raw logits without a softmax of the selected values")
        normalize = 1
    else:
        normalize = 1 if "Div" in users else 0  # w / w.sum(); the numerical check confirms either way
    return router, logits, k, normalize


def _uses_through(v: ir.Value, ops: set[str]) -> list[ir.Node]:
    out, frontier = [], [v]
    for _ in range(4):
        nxt = []
        for val in frontier:
            for n in consumers(val):
                out.append(n)
                if n.op_type in ops:
                    nxt.extend(n.outputs)
        frontier = nxt
    return out


def _gathers(indices: ir.Value) -> list[ir.Node]:
    """Gather/GatherND of constant expert tables (rank >= 2) indexed by the TopK indices."""
    found, frontier, seen = [], [indices], set()
    for _ in range(8):
        nxt = []
        for v in frontier:
            for n in consumers(v):
                if id(n) in seen:
                    continue
                seen.add(id(n))
                if n.op_type in GATHERS and n.inputs[0] is not v and is_const(n.inputs[0]):
                    if n.op_type == "Gather" and n.attributes.get("axis") is not None and n.attributes["axis"].value != 0:
                        continue
                    found.append(n)
                elif n.op_type in INDEX_PATH:
                    nxt.extend(n.outputs)
        frontier = nxt
    return found


def _common_tokens(router: ir.Node, expert_in: ir.Value) -> ir.Value:
    """The token tensor both the router and the experts read (through reshapes/repeats only)."""
    expert_chain = _chain_back(expert_in, REPEAT_PATH)
    ids = {id(v) for v in expert_chain}
    for v in _chain_back(router.inputs[0], PASS_THROUGH):
        if id(v) in ids:
            return v
    raise Reject("the router and the experts do not read the same tokens")


def _batched(topk: ir.Node, router: ir.Node, logits: ir.Value, k: int, normalize: int) -> Block:
    gathers = _gathers(topk.outputs[1])
    mats = [g for g in gathers if len(g.inputs[0].shape or ()) == 3]
    vecs = [g for g in gathers if len(g.inputs[0].shape or ()) == 2]
    if len(mats) < 2:
        raise Reject("TopK indices do not select stacked expert weights (Gather of a constant [E, ., .])")
    mm = []
    for g in mats:
        users = [n for n in consumers(g.outputs[0]) if n.op_type == "MatMul"]
        if len(users) != 1:
            raise Reject(f"gathered expert weights {g.inputs[0].name} do not feed one batched MatMul")
        m = users[0]
        side = 0 if m.inputs[0] is g.outputs[0] else 1
        w = const_array(g.inputs[0]).astype(np.float32)
        mm.append((m, w.transpose(0, 2, 1) if side == 0 else w, m.inputs[1 - side]))
    downs = [t for t in mm if any(_reaches(o[0].outputs[0], t[0]) for o in mm if o is not t)]
    ups = [t for t in mm if t not in downs]
    if len(downs) != 1 or len(ups) not in (1, 2):
        raise Reject(f"expected one or two up projections and one down projection, found {len(ups)} and {len(downs)}")
    down, w2, h = downs[0]
    up_nodes = {id(t[0]) for t in ups}
    region, _ = _act_region(h, lambda n: id(n) in up_nodes)
    x = _common_tokens(router, ups[0][2])
    E, H, D = w2.shape
    merged = len(ups) == 1 and ups[0][1].shape[2] == 2 * H
    ops = {n.op_type for n in region}
    act = _activation(ops, region)
    b1 = b2 = None
    for g in vecs:
        adds = [n for n in consumers(g.outputs[0]) if n.op_type == "Add"] or \
            [u for n in consumers(g.outputs[0]) if n.op_type in ("Unsqueeze", "Reshape") for u in consumers(n.outputs[0])
             if u.op_type == "Add"]
        if not adds:
            continue
        b = const_array(g.inputs[0]).astype(np.float32)
        if _reaches(adds[0].outputs[0], down):
            b1 = b
        elif _reaches(down.outputs[0], adds[0]):
            b2 = b
    gated = merged or len(ups) == 2
    if act is None:
        raise Reject(f"expert activation not recognised (ops: {', '.join(sorted(ops)) or 'none'})")
    w1, w3 = ups[0][1], None
    if merged:
        w1, w3 = w1[:, :, :H], w1[:, :, H:]
        if b1 is not None:
            if np.any(b1[:, H:]):
                raise Reject("bias on the up half of a gated projection (n6onnx.MoE has none)")
            b1 = b1[:, :H]
    elif len(ups) == 2:
        w3 = ups[1][1]
    if gated:
        if act != "silu":
            raise Reject(f"gated expert with activation {act} (n6onnx.MoE gates with SiLU only)")
        act = "swiglu"
    if w1.shape[:2] != (E, D) or w1.shape[2] != H:
        raise Reject(f"expert weight shapes do not line up: up {w1.shape}, down {w2.shape}")
    combine = walk_forward(down.outputs[0], COMBINE_PATH, lambda n, v: n.op_type == "ReduceSum", depth=8)
    if combine is None:
        raise Reject("the weighted expert outputs are not summed over the k slots by a ReduceSum")
    out = combine[0].outputs[0]
    nodes = [node_label(n) for n in (router, topk, *mats, *(t[0] for t in mm), combine[0])]
    return Block("batched", topk, router, logits, x, out, k, normalize, act, w1, w2, b1, b2, w3,
                 nodes=nodes, combine=node_label(combine[0]))


def _expert_ffn(y: ir.Value) -> dict | None:
    """An expert FFN ending at ``y``: MatMul(+bias) <- activation <- MatMul(+bias) (x2 if gated)."""
    v = y
    p = _producer(v)
    b2 = None
    if p is not None and p.op_type == "Add":
        ins = [i for i in p.inputs if not is_const(i)]
        cs = [i for i in p.inputs if is_const(i)]
        if len(ins) != 1 or len(cs) != 1:
            return None
        b2, v = const_array(cs[0]), ins[0]
        p = _producer(v)
    if p is None or (w2 := _const_weight(p)) is None:
        return None
    if b2 is not None and b2.size != w2.shape[1]:
        return None
    if b2 is None and p.op_type == "Gemm":
        b2, _ = _bias_after(p, w2.shape[1])
    try:
        region, stops = _act_region(p.inputs[0], lambda n: _const_weight(n) is not None)
    except Reject:
        return None
    if not stops or len(stops) > 2 or len({id(s.inputs[0]) for s in stops}) != 1:
        return None
    return {"w2": w2, "b2": None if b2 is None else b2.reshape(-1).astype(np.float32), "down": p,
            "ups": stops, "region": region, "x": stops[0].inputs[0]}


def _loop(topk: ir.Node, router: ir.Node, logits: ir.Value, k: int, normalize: int) -> Block:
    E = logits.shape[-1] if logits.shape is not None else None
    equals = []
    frontier = [topk.outputs[1]]
    for _ in range(4):
        nxt = []
        for v in frontier:
            for n in consumers(v):
                if n.op_type == "Equal":
                    e = const_array(next((i for i in n.inputs if i is not v), None))
                    if e is not None and e.size == 1:
                        equals.append((int(e.reshape(())), n))
                elif n.op_type in PASS_THROUGH | {"Unsqueeze", "Squeeze"}:
                    nxt.extend(n.outputs)
        frontier = nxt
    if not equals:
        raise Reject("TopK indices neither gather stacked expert weights nor are compared with expert ids (Equal)")
    experts: dict[int, tuple[dict, ir.Node]] = {}
    for e, eq in equals:
        found: dict = {}

        def stop(n, v, found=found):
            if n.op_type != "Mul":
                return False
            other = [i for i in n.inputs if i is not v]
            f = _expert_ffn(other[0]) if other else None
            if f is not None:
                found.update(f)
                return True
            return False

        hit = walk_forward(eq.outputs[0], {"Cast", "Mul", "ReduceSum", "Unsqueeze", "Reshape", "Where", "Squeeze"}, stop, 8)
        if hit is None:
            raise Reject(f"expert {e}'s mask (node {node_label(eq)}) does not scale an expert FFN output")
        if e in experts:
            raise Reject(f"expert id {e} compared twice")
        experts[e] = (found, hit[0])
    if sorted(experts) != list(range(len(experts))) or (isinstance(E, int) and len(experts) != E):
        raise Reject(f"expert ids {sorted(experts)} do not cover the router's {E} outputs")
    ffns = [experts[e][0] for e in range(len(experts))]
    x = ffns[0]["x"]
    if any(f["x"] is not x for f in ffns):
        raise Reject("experts read different token tensors")
    x = _common_tokens(router, x)
    act = _activation({n.op_type for n in ffns[0]["region"]}, ffns[0]["region"])
    if act is None:
        raise Reject("expert activation not recognised (ops: "
                     + ", ".join(sorted({n.op_type for n in ffns[0]["region"]})) + ")")
    w1s, b1s, w3s = [], [], []
    for f in ffns:
        ups = sorted(f["ups"], key=lambda n: -len(_act_ops_below(n, f["region"])))  # the gate feeds the nonlinearity
        w = _const_weight(ups[0])
        b, _ = _bias_after(ups[0], w.shape[1])
        w1s.append(w)
        b1s.append(b)
        if len(ups) == 2:
            w3 = _const_weight(ups[1])
            b3, _ = _bias_after(ups[1], w3.shape[1])
            if b3 is not None and np.any(b3):
                raise Reject("bias on the up projection of a gated expert (n6onnx.MoE has none)")
            w3s.append(w3)
    if len({w.shape for w in w1s}) != 1 or len({f["w2"].shape for f in ffns}) != 1:
        raise Reject("experts differ in shape")
    if any((b is None) != (b1s[0] is None) for b in b1s) or any((f["b2"] is None) != (ffns[0]["b2"] is None) for f in ffns):
        raise Reject("experts differ in which biases they have")
    if w3s:
        if act != "silu":
            raise Reject(f"gated expert with activation {act} (n6onnx.MoE gates with SiLU only)")
        act = "swiglu"
    # combine: the Add chain summing the E weighted outputs (starting from zeros)
    muls = {id(experts[e][1].outputs[0]): {e} for e in experts}
    cover: dict[int, set] = dict(muls)
    out = None
    graph = topk.graph
    for n in graph:
        if n.op_type != "Add" or not any(id(i) in cover for i in n.inputs if i is not None):
            continue
        others = [i for i in n.inputs if i is not None and id(i) not in cover]
        if any(not (is_const(i) and not np.any(const_array(i))) for i in others):
            continue  # something else is added (a residual): the block ended before this Add
        s = set().union(*(cover[id(i)] for i in n.inputs if i is not None and id(i) in cover))
        cover[id(n.outputs[0])] = s
        if len(s) == len(experts):
            out = n
            break
    if out is None:
        raise Reject("the weighted expert outputs are not summed by a chain of Adds")
    nodes = [node_label(n) for n in (router, topk)] + [node_label(experts[e][1]) for e in sorted(experts)] + [node_label(out)]
    return Block("loop", topk, router, logits, x, out.outputs[0], k, normalize, act,
                 np.stack(w1s).astype(np.float32), np.stack([f["w2"] for f in ffns]).astype(np.float32),
                 None if b1s[0] is None else np.stack(b1s), None if ffns[0]["b2"] is None else np.stack([f["b2"] for f in ffns]),
                 np.stack(w3s).astype(np.float32) if w3s else None, nodes=nodes, combine=node_label(out))


def _act_ops_below(up: ir.Node, region: list[ir.Node]) -> list[ir.Node]:
    """Nonlinear region nodes fed (transitively) by ``up``: the gate projection feeds the
    activation's nonlinearity, the up projection only the final product."""
    ids = {id(n) for n in region}
    hits, frontier, seen = [], [up.outputs[0]], set()
    for _ in range(12):
        nxt = []
        for v in frontier:
            for n in consumers(v):
                if id(n) in ids and id(n) not in seen:
                    seen.add(id(n))
                    if n.op_type in ("Sigmoid", "Erf", "Tanh", "Relu", "Gelu", "Exp"):
                        hits.append(n)
                    nxt.extend(n.outputs)
                elif n.op_type == "Add" and id(n) not in seen:  # the bias Add right after the MatMul
                    seen.add(id(n))
                    nxt.extend(n.outputs)
        frontier = nxt
    return hits


def analyse(topk: ir.Node) -> Block:
    """Analyse the MoE block around a TopK; raises Reject with the reason when it is not one."""
    router, logits, k, normalize = _routing(topk)
    if _gathers(topk.outputs[1]):
        return _batched(topk, router, logits, k, normalize)
    return _loop(topk, router, logits, k, normalize)


def _fused_detail(node: ir.Node) -> dict:
    d = {a: v.value for a, v in node.attributes.items() if isinstance(v.value, (int, float, str))}
    if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].shape is not None:
        d["experts"] = node.inputs[2].shape[0]
    return d


def blocks(model: ir.Model) -> tuple[KindReport, list[Block]]:
    """Detection report (for inspect) and the analysed blocks (for the passes)."""
    report = KindReport("moe")
    found: list[Block] = []
    for node in model.graph.all_nodes():
        if (node.domain, node.op_type) in FUSED:
            report.seen += 1
            report.sites.append(Site(nodes=[node_label(node)], rule=f"moe.op.{node.op_type}", detail=_fused_detail(node)))
            continue
        if node.op_type != "TopK" or node.domain != "":
            continue
        report.seen += 1
        try:
            b = analyse(node)
        except Reject as e:
            report.near_misses.append(Rejection(node_label(node), str(e)))
            continue
        found.append(b)
        report.sites.append(Site(nodes=b.nodes, rule=f"moe.{b.form}", detail=b.detail()))
    return report, found


def detect(model: ir.Model) -> KindReport:
    return blocks(model)[0]
