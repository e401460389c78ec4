"""ORT's SkipLayerNormalization, or its parts: whichever runs the model faster here.

The transformer fusions (``baseline.fuse``, and ORT's own ``SkipLayerNormFusion`` when a session is
created) turn each residual ``Add`` (+ bias ``Add``) + ``LayerNormalization`` into one
``com.microsoft.SkipLayerNormalization``. That is a fusion, not a guarantee of speed: with
onnxruntime 1.32's CPU kernel on a 2-core AVX-512 VM, all-MiniLM-L6-v2 at 8 x 64 runs 1.09x (fp32)
and 1.23x (int8) faster with the parts (``benchmarks/skip_layernorm.py``, which also measures the
RMSNorm form of decoders). So ORT's best version of
a model is measured, not assumed:

- ``split(proto)`` turns every SkipLayerNormalization back into ``Add(input, bias)`` (so a preceding
  MatMul can take the bias, as in the export), ``Add(., skip)`` and ``LayerNormalization`` (opset
  >= 17), and every SkipSimplifiedLayerNormalization (RMSNorm) into the Adds and onnxruntime's
  ``SimplifiedLayerNormalization``; the optional ``input_skip_bias_sum`` output keeps its name. A
  node whose mean or inverse-variance output is used is left alone.
- A split graph must run with ORT's ``SkipLayerNormFusion`` disabled
  (``InferenceSession(..., disabled_optimizers=["SkipLayerNormFusion"])``), or the session fuses it
  again: ``Choice.disabled_optimizers``.
- ``choose`` times both forms of the baseline, interleaved, on the bench's provider, threads and
  feed, after checking that the split agrees with the fused graph; the split is kept only when it
  is faster by more than ``MARGIN``. A graph quantized at run time (dynamic int8) does not agree
  elementwise with its own split: the parts round a few float32 values differently, a rounding of
  an activation to int8 flips, and the flips spread (MiniLM int8 on random tokens: 8-15% relative
  RMS between the forms, each 16.5% from the float model). Given the float model it stands for
  (``reference``), such a split is kept when it is as faithful to it as the fused form: its
  relative RMS error against the reference, over the check feed and ``PROBES`` random feeds, at
  most ``FAITHFUL`` x the fused form's (MiniLM's int8 graphs: 0.994-1.001x; a split that loses one
  norm's residual, on the test BERT: 2253x). ``choose_each`` does this for every variant of a comparison, so
  each runs in its own faster form (an int8 graph can gain from the parts where its fp32 original
  does not) with the session options that form needs.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import onnx
from onnx import helper

from .. import io
from ..quantize import int8graph
from . import baseline as baseline_mod
from . import latency as latency_mod

FUSION = "SkipLayerNormFusion"  # ORT's graph transformer that re-fuses a split graph
MODES = ("auto", "fused", "split")
FAITHFUL = 1.05  # a quantized split's error against the float reference, at most this x the fused form's
MARGIN = 1.02  # the split must be this much faster (median per interleaved block pair)
ROUNDS = 10  # blocks per form when choosing (6 blocks of 0.3 s read fp32 MiniLM's 1.09x as 0.93-1.10x)
BLOCK_SECONDS = 0.5
SIMPLIFIED = "SkipSimplifiedLayerNormalization"
NORMS = {"SkipLayerNormalization": "LayerNormalization", SIMPLIFIED: "SimplifiedLayerNormalization"}  # fused: its norm


@dataclasses.dataclass
class Choice:
    form: str  # "fused" or "split"
    mode: str  # what was asked: auto (measured), fused or split
    nodes: int  # SkipLayerNormalization nodes that can be split
    speedup: dict | None = None  # fused / split latency per block pair (ratio_summary); auto only
    reason: str = ""

    @property
    def disabled_optimizers(self) -> tuple[str, ...]:
        return (FUSION,) if self.form == "split" else ()

    def session_config(self, cfg):
        """``cfg`` (a bench ``SessionConfig``) with the graph transformers this form needs disabled."""
        return dataclasses.replace(cfg, disabled_optimizers=self.disabled_optimizers)

    def to_json(self) -> dict:
        return {"form": self.form, "mode": self.mode, "skip_layernorm_nodes": self.nodes,
                "split_speedup": self.speedup, "reason": self.reason,
                "disabled_optimizers": list(self.disabled_optimizers)}


def _load(path) -> onnx.ModelProto:
    """A fused file, unchecked: the fusions emit onnxruntime-only ops that onnx's checker does not know
    (SimplifiedLayerNormalization in the default domain, for one)."""
    return onnx.load(str(path))


def _splittable(proto: onnx.ModelProto) -> list[int]:
    """Indices of the nodes ``split`` takes apart."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    kinds = set(NORMS) if opset >= 17 else {SIMPLIFIED}  # no LayerNormalization before opset 17
    used = {i for n in proto.graph.node for i in n.input} | {o.name for o in proto.graph.output}
    return [k for k, n in enumerate(proto.graph.node)
            if n.op_type in kinds and n.domain == baseline_mod.MS_DOMAIN
            and not any(o and o in used for o in list(n.output)[1:3])]


def has_parts(proto: onnx.ModelProto) -> bool:
    """Whether a LayerNormalization / SimplifiedLayerNormalization reads an Add: the parts that ORT's
    SkipLayerNormFusion fuses when a session is created (unless disabled)."""
    adds = {o for n in proto.graph.node if n.op_type == "Add" for o in n.output}
    return any(n.op_type in NORMS.values() and n.input and n.input[0] in adds for n in proto.graph.node)


def count(proto: onnx.ModelProto) -> int:
    """SkipLayerNormalization / SkipSimplifiedLayerNormalization nodes ``split`` would turn into their
    parts."""
    return len(_splittable(proto))


def split(proto: onnx.ModelProto) -> int:
    """Every splittable SkipLayerNormalization of ``proto`` as Add (+ bias Add) + LayerNormalization,
    and every SkipSimplifiedLayerNormalization (RMSNorm) as Add (+ bias Add) +
    SimplifiedLayerNormalization (onnxruntime's RMSNorm kernel, in the default domain), in place, at
    the same position in the node list. Returns how many were split."""
    todo = set(_splittable(proto))
    if not todo:
        return 0
    nodes: list[onnx.NodeProto] = []
    for k, n in enumerate(proto.graph.node):
        if k not in todo:
            nodes.append(n)
            continue
        ins = list(n.input) + [""] * (5 - len(n.input))
        if n.op_type == SIMPLIFIED:  # input, skip, gamma, bias: no beta
            ins = ins[:3] + [""] + ins[3:4]
        x, skip, gamma, beta, bias = ins[:5]
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        outs = list(n.output) + [""] * (4 - len(n.output))
        base = n.name or outs[0]
        total = outs[3] or f"{base}/skip_sum"
        if bias:
            biased = f"{base}/bias_sum"
            nodes.append(helper.make_node("Add", [x, bias], [biased], name=f"{base}/bias_add"))
            x = biased
        nodes.append(helper.make_node("Add", [x, skip], [total], name=f"{base}/skip_add"))
        if n.op_type == SIMPLIFIED:
            nodes.append(helper.make_node(NORMS[SIMPLIFIED], [total, gamma], [outs[0]], name=f"{base}/rmsnorm",
                                          axis=-1, epsilon=eps, stash_type=1))
        else:
            nodes.append(helper.make_node("LayerNormalization", [total, gamma] + ([beta] if beta else []),
                                          [outs[0]], name=f"{base}/layernorm", axis=-1, epsilon=eps))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return len(todo)


def split_file(src: str | pathlib.Path, workdir: str | pathlib.Path | None = None) -> pathlib.Path:
    """``src`` split (``split``), written to ``workdir`` (default: bench's fusion cache) under a name
    keyed by ``src``'s content; ``src`` itself when nothing splits."""
    src = pathlib.Path(src)
    proto = _load(src)
    if not split(proto):
        return src
    d = pathlib.Path(workdir) if workdir is not None else baseline_mod.cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"{baseline_mod.file_key(src)[:24]}-split-ln.onnx"
    if out.is_file():
        baseline_mod.touch(out)
    else:
        io.save(proto, out)
        baseline_mod.prune_cache(d)
    return out


def choose(path: str | pathlib.Path, cfg, feed: dict, workdir: str | pathlib.Path | None = None, *,
           mode: str = "auto",
           tol: float | None = None, rounds: int = ROUNDS,
           block_seconds: float = BLOCK_SECONDS, reference: str | pathlib.Path | None = None
           ) -> tuple[Choice, pathlib.Path]:
    """The faster form of ``path`` (a fused model: a baseline, a candidate) on ``cfg`` (a bench ``SessionConfig``) with
    ``feed``: (the choice, the file of that form). ``mode`` fused / split forces the form (split only
    where there is something to split, or the graph is already in parts: then split is the same file
    run with ORT's fusion disabled); auto splits (``split_file`` into ``workdir``), checks the split against the
    fused graph (``baseline.fuse``'s tolerance; a quantized graph may agree on one of
    ``baseline.quantized_probes`` instead; or, with ``reference``, be as faithful to that float model
    as the fused form: see the module docstring), then times ``rounds`` interleaved blocks of each."""
    from .session import Runner  # bench.session imports nothing from here; kept local for the light import

    if mode not in MODES:
        raise ValueError(f"layernorm mode must be one of {', '.join(MODES)}, got {mode!r}")
    path = pathlib.Path(path)
    proto = _load(path)
    n = count(proto)
    # a graph already in parts (a model written split): its forms are this file with ORT's fusion on
    # (the session fuses it) and off
    parts = n == 0 and has_parts(proto)
    if mode == "fused" or (n == 0 and not parts):
        return Choice("fused", mode, n, reason="asked" if mode == "fused" else "nothing to split"), path
    out = split_file(path, workdir) if n else path
    if mode == "split":
        return Choice("split", mode, n, reason="asked"), out
    split_cfg = Choice("split", mode, n).session_config(cfg)
    fused_sess, split_sess = cfg.session(path)[0], split_cfg.session(out)[0]
    tol = tol if tol is not None else baseline_mod.default_tol(proto, cfg.provider)
    # the probes' references are computed now, in the fused form; their later runs are of the split form
    # (the same file when it is already in parts)
    opener = {"cfg": cfg}
    quantized = int8graph.is_quantized(proto)
    probe_feeds = baseline_mod.probe_feeds(path, lambda p: cfg.session(p)[0], like=feed) if quantized else []
    probes = baseline_mod.quantized_probes(path, lambda p: opener["cfg"].session(p)[0], feeds=probe_feeds)
    opener["cfg"] = split_cfg
    k, diff = baseline_mod.agreeing_feed(out, lambda p: split_sess.run(None, feed), fused_sess.run(None, feed),
                                         probes, tol)
    note, against = "", ""
    if (k is None and quantized and reference is not None
            and not int8graph.is_quantized(onnx.load(str(reference), load_external_data=False))):
        ratio = faithfulness(split_sess, fused_sess, cfg.session(reference)[0], [feed] + probe_feeds)
        against = "" if ratio is None else f"; against the float reference its error is {ratio:.3f}x the fused form's"
        if ratio is not None and ratio <= FAITHFUL:
            k, note = -1, f"int8 roundings differ from the fused form's (max abs diff {diff:.3g}){against}; "
    if k is None:
        return Choice("fused", mode, n, reason=f"the split graph disagrees with the fused one (max abs diff "
                                              f"{diff:.3g}){against}"), path
    runners = {"fused": Runner(fused_sess, feed, cfg), "split": Runner(split_sess, feed, split_cfg)}
    for r in runners.values():
        latency_mod.warm_up(r, block_seconds)
    blocks = latency_mod.run_blocks(runners, rounds, block_seconds)
    speed = latency_mod.ratio_summary([b.median for b in blocks["fused"]], [b.median for b in blocks["split"]])
    faster = speed["median"] > MARGIN
    why = note + ("already as parts; " if parts else "") + (
        f"split {speed['median']:.3f}x the fused form's speed (median of {speed['n']} block pairs; kept when > "
        f"{MARGIN:g}x)")
    return Choice("split" if faster else "fused", mode, n, speed, why), out if faster else path


def faithfulness(split_sess, fused_sess, ref_sess, feeds: list[dict]) -> float | None:
    """The split form's relative RMS error against the float reference over ``feeds``, divided by the
    fused form's (over every float output the reference shares by position and shape); None where
    the reference takes an input the feeds lack, or the fused form equals the reference."""
    err = {"split": [0.0, 0.0], "fused": [0.0, 0.0]}
    for f in feeds:
        try:
            ref = ref_sess.run(None, {i.name: f[i.name] for i in ref_sess.get_inputs()})
        except KeyError:
            return None
        for key, sess in (("split", split_sess), ("fused", fused_sess)):
            got = sess.run(None, {i.name: f[i.name] for i in sess.get_inputs()})
            for g, r in zip(got, ref):
                g, r = np.asarray(g, np.float64), np.asarray(r)
                if np.issubdtype(r.dtype, np.floating) and g.shape == r.shape:
                    err[key][0] += float(np.sum((g - r) ** 2))
                    err[key][1] += float(np.sum(r.astype(np.float64) ** 2))  # (the reference's, per form)
    rel = {k: math.sqrt(a / b) if b else math.inf for k, (a, b) in err.items()}
    return rel["split"] / rel["fused"] if 0 < rel["fused"] < math.inf else None


def choose_each(paths: dict, cfg, feed: dict, workdir: str | pathlib.Path | None = None, *, mode: str = "auto",
                rounds: int = ROUNDS, block_seconds: float = BLOCK_SECONDS,
                reference: str | pathlib.Path | None = None) -> tuple[dict, dict, dict]:
    """``choose`` for every variant in ``paths`` (name -> fused file): (choices, files, session
    configs), each keyed like ``paths``; a variant's config is ``cfg`` with the optimizers its form
    needs disabled. ``reference``: the float model the variants stand for (``choose``)."""
    choices, files, cfgs = {}, {}, {}
    for k, p in paths.items():
        choices[k], files[k] = choose(p, cfg, feed, workdir, mode=mode, rounds=rounds, block_seconds=block_seconds,
                                      reference=reference)
        cfgs[k] = choices[k].session_config(cfg)
    return choices, files, cfgs
