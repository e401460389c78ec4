"""GELU detection and the ``gelu=phi6|zetaln2`` pass.

Every form in which GELU reaches an ONNX file is a rule built on the onnxscript rewriter:

- ops: standard ``Gelu`` (opset 20, ``approximate`` none|tanh); ``com.microsoft`` ``Gelu``,
  ``FastGelu`` (tanh, optional bias), ``BiasGelu`` (erf), ``QuickGelu`` (alpha 1.702);
- erf decompositions ``x * 0.5 * (1 + erf(x / sqrt2))`` (or ``erf(x * 1/sqrt2)``) in each grouping
  of the three-factor product, and ``x * (1 + erf(...)) / 2`` (torch dynamo and TorchScript
  exporters, hand-written models);
- tanh decompositions ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` with x^3 as ``Pow`` or as
  two ``Mul``s (torch's ``approximate='tanh'``, HF ``gelu_new``) and HF ``gelu_fast``
  ``0.5 x (1 + tanh(x * 0.7978845608 * (1 + 0.044715 x x)))``;
- QuickGelu ``x * sigmoid(1.702 x)``.

Patterns are structural; each constant is a pattern variable whose value ``check()`` compares with a
tolerance, so a graph that has the right shape but the wrong constant (or dtype, domain, attribute)
is reported as a near-miss with the reason. Commutative argument orders are covered by the
rewriter's ``commute=True``.

The rewrite replaces a GELU by ``n6onnx.Phi6`` (or ``ZetaLn2``) and then fuses a preceding
constant 1-D bias ``Add`` into ``BiasPhi6`` (``BiasZetaLn2``). The GELU kind (erf, tanh, quick) is
kept in node metadata; a bias fusion never changes it (unlike ORT's BiasGelu fusion, which ignores
``approximate``).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from .. import calibrate
from ..findings import KindReport, Rejection, Site
from ..graph import CONST_RTOL, REPLACED_TAG, RULE_TAG, VARIANT_TAG, close, make_rule, node_label, scalar_const
from ..ops import DOMAIN
from .base import Inspection, Pass, PassContext, choice_error

SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
KAPPA = 0.044715
QUICK_ALPHA = 1.702
TARGETS = {"phi6": "Phi6", "zetaln2": "ZetaLn2"}
# Element types the n6 activation kernels take.
SUPPORTED_DTYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16)
# Nodes that every GELU form contains exactly one of: the "seen" candidates.
ANCHORS = {
    ("", "Erf"), ("", "Tanh"), ("", "Sigmoid"), ("", "Gelu"),
    ("com.microsoft", "Gelu"), ("com.microsoft", "FastGelu"), ("com.microsoft", "BiasGelu"),
    ("com.microsoft", "QuickGelu"),
}


class _Holder:
    """Rules are built once per target (building and commuting them is costly); each run puts its
    own collector here."""

    collector: "_Collector"


class _Collector:
    """Collects check() failures per anchor node (near-misses) and the matched sites."""

    def __init__(self) -> None:
        self.failures: dict[int, tuple[int, str]] = {}
        self.pending: list[str] = []
        self.sites: list[Site] = []
        self.site_of: dict[int, Site] = {}

    def fail(self, context, reason: str, priority: int = 2):
        """Record why a structural match was rejected; value mismatches outrank role mix-ups."""
        for n in (context.nodes or [context.root]):
            if (n.domain, n.op_type) in ANCHORS:
                if priority > self.failures.get(id(n), (-1, ""))[0]:
                    self.failures[id(n)] = (priority, reason)
        return orp.MatchResult().fail(reason)

    def ok(self, context) -> bool:
        self.pending = [node_label(n) for n in context.nodes]
        return True

    def record(self, rule: str, variant: str, out: ir.Value) -> ir.Value:
        site = Site(nodes=sorted(self.pending), rule=rule, variant=variant)
        out.producer().metadata_props[REPLACED_TAG] = ",".join(site.nodes)
        self.sites.append(site)
        self.site_of[id(out.producer())] = site
        return out


def _dtype_ok(x: ir.Value | None) -> str | None:
    if x is None or x.dtype is None:
        return "input element type unknown"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"element type {x.dtype.name} not supported (float32 and float16 are)"
    return None


def _const_rtol(x: ir.Value) -> float:
    """Relative tolerance for GELU constants: 1e-4, or float16's rounding (2**-11) plus slack."""
    return 1e-3 if x.dtype == ir.DataType.FLOAT16 else CONST_RTOL


class _UsesCollector:
    @property
    def collector(self) -> "_Collector":
        return self._holder.collector


# ---------------------------------------------------------------- decomposed forms
# A form is built from pieces; ``take(label, expected)`` returns the next constant pattern variable
# and records the value check() expects for it.
Take = Callable[[str, float], object]

ERF_INNER = {
    "div_sqrt2": lambda op, x, take: op.Erf(op.Div(x, take("sqrt(2) divisor", SQRT2))),
    "mul_rsqrt2": lambda op, x, take: op.Erf(op.Mul(x, take("1/sqrt(2) factor", 1 / SQRT2))),
}


def _cube(kind: str):
    if kind == "pow":
        return lambda op, x, take: op.Pow(x, take("cube exponent", 3.0))
    if kind == "mul_left":
        return lambda op, x, take: op.Mul(op.Mul(x, x), x)
    return lambda op, x, take: op.Mul(x, op.Mul(x, x))


def _tanh_new(cube):
    # sqrt(2/pi) * (x + 0.044715 * x^3): torch approximate='tanh', HF gelu_new / gelu_pytorch_tanh
    return lambda op, x, take: op.Tanh(
        op.Mul(op.Add(x, op.Mul(cube(op, x, take), take("kappa", KAPPA))),
               take("sqrt(2/pi)", SQRT_2_OVER_PI))
    )


def _tanh_fast(op, x, take):
    # HF gelu_fast: x * 0.7978845608 * (1 + 0.044715 * x * x)
    return op.Tanh(
        op.Mul(op.Mul(x, take("sqrt(2/pi)", SQRT_2_OVER_PI)),
               op.Add(op.Mul(op.Mul(x, take("kappa", KAPPA)), x), take("one (inner)", 1.0)))
    )


TANH_INNER = {
    "new_pow": _tanh_new(_cube("pow")),
    "new_mulmul_l": _tanh_new(_cube("mul_left")),
    "new_mulmul_r": _tanh_new(_cube("mul_right")),
    "fast": _tanh_fast,
}

# The outer product x * 0.5 * (1 + t) in each grouping.
OUTER = {
    "xh_s": lambda op, x, s, take: op.Mul(op.Mul(x, take("half", 0.5)), s),
    "xs_h": lambda op, x, s, take: op.Mul(op.Mul(x, s), take("half", 0.5)),
    "x_sh": lambda op, x, s, take: op.Mul(x, op.Mul(s, take("half", 0.5))),
    "xs_div2": lambda op, x, s, take: op.Div(op.Mul(x, s), take("two", 2.0)),
}


class _FormRule(_UsesCollector, orp.RewriteRuleClassBase):
    """A decomposed GELU: x * 0.5 * (1 + inner(x)), constants checked by value."""

    def __init__(self, name: str, variant: str, inner, outer, target: str, holder: _Holder):
        self._inner, self._outer = inner, outer
        self.variant, self.target, self._holder = variant, target, holder
        self.expect: list[tuple[str, str, float]] = []
        super().__init__(name)

    def pattern(self, op, x, k1, k2, k3, k4, k5):
        ks = [k1, k2, k3, k4, k5]
        self.expect.clear()

        def take(label: str, value: float):
            var = ks[len(self.expect)]
            self.expect.append((f"k{len(self.expect) + 1}", label, value))
            return var

        s = op.Add(self._inner(op, x, take), take("one", 1.0))
        return self._outer(op, x, s, take)

    def check(self, context, x, **ks):
        if x is not None and x.const_value is not None:
            return self.collector.fail(context, "input is a constant", 1)
        if (why := _dtype_ok(x)) is not None:
            return self.collector.fail(context, why)
        rtol = _const_rtol(x)
        for key, label, want in self.expect:
            got = scalar_const(ks.get(key))
            if got is None:
                return self.collector.fail(context, f"{label} is not a scalar constant", 1)
            if not close(got, want, rtol):
                return self.collector.fail(context, f"{label} is {got:.7g}, expected {want:.7g}")
        return self.collector.ok(context)

    def rewrite(self, op, x, **_):
        return self.collector.record(self.name, self.variant, _emit(op, self.target, self.variant, x))


class _QuickRule(_UsesCollector, orp.RewriteRuleClassBase):
    """QuickGelu as x * sigmoid(alpha * x), alpha = 1.702 (x * sigmoid(x) is SiLU: rejected)."""

    def __init__(self, target: str, holder: _Holder):
        self.target, self._holder = target, holder
        super().__init__("gelu.quick.x_sigmoid_ax")

    def pattern(self, op, x, alpha):
        return op.Mul(x, op.Sigmoid(op.Mul(x, alpha)))

    def check(self, context, x, alpha):
        if (why := _dtype_ok(x)) is not None:
            return self.collector.fail(context, why)
        a = scalar_const(alpha)
        if a is None:
            return self.collector.fail(context, "sigmoid scale is not a scalar constant", 1)
        if not close(a, QUICK_ALPHA, max(1e-3, _const_rtol(x))):
            return self.collector.fail(context, f"sigmoid scale is {a:.6g}, QuickGelu has {QUICK_ALPHA}")
        return self.collector.ok(context)

    def rewrite(self, op, x, alpha):
        return self.collector.record(self.name, "quick", _emit(op, self.target, "quick", x))


# ---------------------------------------------------------------- op forms
class _OpRule(_UsesCollector, orp.RewriteRuleClassBase):
    """A GELU op: onnx Gelu, com.microsoft Gelu/FastGelu/BiasGelu/QuickGelu."""

    def __init__(self, name, domain, op_type, n_inputs, target, holder):
        self.domain, self.op_type, self.n_inputs = domain, op_type, n_inputs
        self.target, self._holder = target, holder
        super().__init__(name)

    def pattern(self, op, x, b):
        if self.n_inputs == 2:
            return getattr(op, self.op_type)(x, b, _domain=self.domain, _outputs=["y"])
        return getattr(op, self.op_type)(x, _domain=self.domain, _allow_other_inputs=True, _outputs=["y"])

    def _variant(self, node: ir.Node) -> str | None:
        if self.domain == "" and self.op_type == "Gelu":
            approx = node.attributes.get("approximate")
            a = "none" if approx is None else approx.as_string()
            return {"none": "erf", "tanh": "tanh"}.get(a)
        return {"Gelu": "erf", "BiasGelu": "erf", "FastGelu": "tanh", "QuickGelu": "quick"}[self.op_type]

    def check(self, context, x, b, y=None, **_):
        node = context.root
        variant = self._variant(node)
        if variant is None:
            return self.collector.fail(
                context, f"unknown approximate={node.attributes['approximate'].as_string()!r}")
        if (why := _dtype_ok(x)) is not None:
            return self.collector.fail(context, why)
        if self.op_type == "QuickGelu":
            alpha = node.attributes.get("alpha")
            a = 1.0 if alpha is None else alpha.as_float()
            if not close(a, QUICK_ALPHA, 1e-3):
                return self.collector.fail(context, f"alpha is {a:.6g}, QuickGelu-as-GELU needs {QUICK_ALPHA}")
        bias = self._bias(node)
        if bias is not None and not _bias_ok(x, bias):
            return self.collector.fail(context, "bias is not 1-D over the last axis")
        return self.collector.ok(context)

    def _bias(self, node: ir.Node) -> ir.Value | None:
        if self.op_type in ("BiasGelu", "FastGelu") and len(node.inputs) > 1:
            return node.inputs[1]
        return None

    def rewrite(self, op, x, b=None, y=None, **_):
        # ``y`` is the matched op's output; its producer is the GELU op node.
        node = y.producer()
        variant = self._variant(node)
        bias = self._bias(node)
        if bias is not None:
            out = _emit(op, "Bias" + self.target, variant, x, bias)
        else:
            out = _emit(op, self.target, variant, x)
        return self.collector.record(self.name, variant, out)


def _bias_ok(x: ir.Value, bias: ir.Value) -> bool:
    if bias.shape is None or len(bias.shape) != 1 or bias.dtype != x.dtype:
        return False
    if x.shape is None or len(x.shape) == 0:
        return False
    return x.shape[-1] == bias.shape[0] and isinstance(bias.shape[0], int)


class _BiasFusion(_UsesCollector, orp.RewriteRuleClassBase):
    """Phi6(x + b) with b a constant 1-D bias over the last axis -> BiasPhi6(x, b)."""

    def __init__(self, target: str, holder: _Holder):
        self.target, self._holder = target, holder
        super().__init__(f"bias_fusion.{target}")

    def pattern(self, op, a, b):
        return getattr(op, self.target)(op.Add(a, b), _domain=DOMAIN, _outputs=["y"])

    def check(self, context, a, b, y=None):
        if b is None or b.const_value is None or a.const_value is not None:
            return False
        return _bias_ok(a, b)

    def rewrite(self, op, a, b, y=None):
        old = y.producer()
        site = self.collector.site_of.pop(id(old), None)
        rule = (site.rule if site else old.metadata_props.get(RULE_TAG, "")) + "+" + self.name
        out = _emit(op, "Bias" + self.target, old.metadata_props.get(VARIANT_TAG, ""), a, b, rule=rule)
        if site is not None:
            site.rule = rule
            site.nodes = sorted(site.nodes + [node_label(old.inputs[0].producer())])
            site.detail["bias"] = b.name
            out.producer().metadata_props[REPLACED_TAG] = ",".join(site.nodes)
            self.collector.site_of[id(out.producer())] = site
        return out


def _emit(op, op_type: str, variant: str, *inputs, rule: str | None = None):
    out = getattr(op, op_type)(*inputs, _domain=DOMAIN)
    node = out.producer()
    node.metadata_props[VARIANT_TAG] = variant
    if rule:
        node.metadata_props[RULE_TAG] = rule
    return out


def rules(target_op: str, holder: "_Holder") -> list:
    out = []
    for iname, inner in ERF_INNER.items():
        for oname, outer in OUTER.items():
            out.append(make_rule(_FormRule(f"gelu.erf.{iname}.{oname}", "erf", inner, outer, target_op, holder)))
    for iname, inner in TANH_INNER.items():
        for oname, outer in OUTER.items():
            out.append(make_rule(_FormRule(f"gelu.tanh.{iname}.{oname}", "tanh", inner, outer, target_op, holder)))
    out.append(make_rule(_QuickRule(target_op, holder)))
    for domain, op_type, n in (("", "Gelu", 1), ("com.microsoft", "Gelu", 1),
                               ("com.microsoft", "FastGelu", 1), ("com.microsoft", "BiasGelu", 2),
                               ("com.microsoft", "QuickGelu", 1)):
        dname = "ms." if domain else ""
        out.append(make_rule(_OpRule(f"gelu.op.{dname}{op_type}", domain, op_type, n, target_op, holder)))
    return out


def run(model: ir.Model, target: str = "phi6") -> KindReport:
    """Replace every GELU in ``model`` (in place). Returns what was seen, matched and rejected."""
    target_op = TARGETS[target]
    main, fusion, holder = _rule_sets(target_op)
    holder.collector = collector = _Collector()
    anchors = [n for n in model.graph.all_nodes() if (n.domain, n.op_type) in ANCHORS]
    report = KindReport("gelu", seen=len(anchors))
    _apply(model, main, _near(anchors, hops=4))
    _apply(model, fusion, [n for n in model.graph if n.domain == DOMAIN and n.op_type == target_op])
    for n in model.graph.all_nodes():
        if n.domain == DOMAIN and RULE_TAG not in n.metadata_props:
            site = collector.site_of.get(id(n))
            n.metadata_props[RULE_TAG] = site.rule if site else ""
    report.sites = collector.sites
    report.rewritten = len(collector.sites)
    remaining = {id(n) for n in model.graph.all_nodes()}
    top = {id(n) for n in model.graph} | {id(n) for f in model.functions.values() for n in f}
    for n in anchors:
        if id(n) in remaining:
            reason = (collector.failures.get(id(n), (0, _default_reason(n)))[1] if id(n) in top else SUBGRAPH_REASON)
            report.near_misses.append(Rejection(node_label(n), reason))
    return report


@functools.lru_cache(maxsize=None)
def _rule_sets(target_op: str):
    """(GELU rule variants, bias-fusion rule variants, holder), built and commuted once."""
    from onnxscript.rewriter import RewriteRuleSet

    holder = _Holder()
    main = RewriteRuleSet(rules(target_op, holder), commute=True).rules
    fusion = RewriteRuleSet([make_rule(_BiasFusion(target_op, holder))], commute=True).rules
    return main, fusion, holder


def _near(anchors: list[ir.Node], hops: int) -> list[ir.Node]:
    """The anchors and every node up to ``hops`` consumers downstream: the only possible roots of a
    GELU match (its last node is at most that far below its Erf/Tanh/Sigmoid)."""
    seen: dict[int, ir.Node] = {}
    frontier = list(anchors)
    for _ in range(hops + 1):
        nxt = []
        for n in frontier:
            if id(n) in seen:
                continue
            seen[id(n)] = n
            for out in n.outputs:
                nxt.extend(u for u, _ in out.uses())
        frontier = nxt
    return list(seen.values())


def _apply(model: ir.Model, variants: list, candidates: list[ir.Node]) -> int:
    """The rewriter's rule loop (first matching rule per node; ``variants`` are the commuted
    rules), run over candidate root nodes only, in graph order. Matching every rule against every
    node of a large model costs seconds; GELU roots can only sit next to an anchor."""
    from onnxscript.rewriter._rewrite_rule import RULE_NAME_TAG

    wanted = {id(n) for n in candidates}
    count = 0
    for graph in [model.graph, *(f for f in model.functions.values())]:
        for node in [n for n in graph if id(n) in wanted]:
            if node.graph is not graph:  # removed by an earlier rewrite
                continue
            for rule in variants:
                delta = rule.try_rewrite(model, graph, node)
                if delta is None:
                    continue
                for n in delta.new_nodes:
                    n.metadata_props[RULE_NAME_TAG] = rule.name
                ir.convenience.replace_nodes_and_values(
                    graph, node, delta.match.nodes, delta.new_nodes, delta.match.outputs, delta.new_outputs)
                count += 1
                break
    return count


SUBGRAPH_REASON = ("inside a control-flow subgraph (an If, Loop or Scan body): n6onnx rewrites the main graph "
                   "and model functions only")


def _default_reason(n: ir.Node) -> str:
    if n.op_type == "Sigmoid" and n.domain == "":
        x = n.inputs[0]
        if any(u.op_type == "Mul" and x in u.inputs for u, _ in n.outputs[0].uses()):
            return "x * sigmoid(x) is SiLU/Swish, not GELU"
        return "sigmoid not in a x * sigmoid(1.702 x) QuickGelu"
    if n.op_type in ("Erf", "Tanh"):
        return f"{n.op_type} not inside a complete GELU expression (or its intermediates are used elsewhere)"
    return "no GELU rule matched"


# ------------------------------------------------------------------------------------------ the PASS
def parse(option: str) -> str:
    if option not in TARGETS:
        raise choice_error("gelu", tuple(TARGETS), f"gelu={option}")
    return option


def collapsed(view: Inspection) -> tuple[ir.Model, KindReport]:
    """A copy of the inspected model with every GELU collapsed into one node (made once per
    inspection): the FFN detector recognises any GELU spelling as the activation on it."""
    if "gelu" not in view.cache:
        work = ir.from_proto(ir.to_proto(view.model))
        report = run(work, "phi6")
        report.rewritten = 0
        view.cache["gelu"] = (work, report)
    return view.cache["gelu"]


def _calibrate(model: ir.Model, report: KindReport, ctx: PassContext):
    # the up projection's gain Mul and the outlier detour are for per-tensor weight rounding and cost int8 time;
    # under per-channel int8 they keep a little fidelity (0.001-0.002 cosine on MiniLM) that the int8 fit makes
    # up, so api.rewrite's int8_guard="auto" leaves them out only where that fit runs
    per_channel = {"up_scale": False, "outlier_ratio": None} if ctx.int8_guard == "per-channel" else {}
    rep = calibrate.calibrate_swap(model, ctx.original, ctx.batches, refit=ctx.refit, progress=ctx.progress,
                                   **per_channel)
    rep.int8_guard = ctx.int8_guard
    return rep


PASS = Pass(
    name="gelu", order=10, options=tuple(TARGETS),
    summary="replace every GELU (erf, tanh, quick; ops or decomposed) by Phi6 or ZetaLn2; with --calibrate, "
            "fit a per-channel affine folded into the neighbouring projections",
    parse=parse, run=lambda model, option, ctx: run(model, option), detect=lambda view: collapsed(view)[1],
    calibrate=_calibrate, docs="docs/passes/gelu.md",
)
