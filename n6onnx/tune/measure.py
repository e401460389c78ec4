"""How ``tune`` measures a recipe: fidelity on the held-out data (``n6onnx.validate``) and latency /
estimated energy with ``bench``'s method (same session options and threads, ORT's best fused
original as the baseline, interleaved A/B blocks, the CPU-seconds energy estimate)."""

from __future__ import annotations

import gc
import pathlib
import statistics
from typing import Mapping

import numpy as np
import onnx

from ..bench import baseline as baseline_mod
from ..bench import energy as energy_mod
from ..bench import latency as latency_mod
from ..bench import layernorm as layernorm_mod
from ..bench.session import Runner, SessionConfig
from ..errors import N6Error
from ..quantize import int8graph
from .. import feeds as feeds_mod
from .. import vocab
from ..feeds import dynamic_dims
from ..validate.run import validate


def fidelity(original: pathlib.Path, candidate: pathlib.Path, held, threads: int | None, provider: str = "cpu",
             device_id: int = 0) -> dict:
    """Mean-pooled embedding cosine (or the first float output's cosine), nearest-neighbour agreement
    (an embedding output) and top-1 agreement (a logits output: a decoder's next token) of
    ``candidate`` (run on ``provider``, where it is timed) against ``original`` on the held-out feed batches."""
    rep = validate(original, candidate, feeds=list(held), threads=threads, provider=provider, device_id=device_id)
    emb = next((o.embedding for o in rep.outputs.values() if o.embedding), None)
    nn = emb.get("nn_agreement") if emb else None
    logits = next((o.logits for o in rep.outputs.values() if o.logits), None)
    top1 = logits.get("top1_agreement") if logits else None
    cos = rep.cosine_mean
    return {"cosine": None if cos is None or not np.isfinite(cos) else float(cos),
            "nn": None if nn is None else float(nn), "top1": None if top1 is None else float(top1),
            "source": rep.cosine_source, "samples": held.samples, "provider": rep.providers["candidate"]}


def fuse(path: pathlib.Path, cfg: SessionConfig, cache: pathlib.Path, fusion_kw: dict | None = None,
         feed: dict | None = None, reference: pathlib.Path | None = None) -> tuple[pathlib.Path, str, dict]:
    """ORT's best fused version of ``path`` (bench's fuse: onnxscript or onnxruntime.transformers,
    checked against the unfused outputs on ``cfg``'s provider; a graph with dynamic quantization also
    on baseline.quantized_probes), or ``path`` itself when no fusion applies. Returns (path,
    optimizer chosen, fusion keywords for the next model of this family). ``reference``: the float
    model a quantized ``path`` stands for; a fusion of it that agrees on no feed (its int8 roundings
    flip) is then kept when its error against the reference, over the check and probe feeds, is within
    bench.layernorm.FAITHFUL of the unfused graph's (as the layer norms' parts are kept)."""
    def run(p):
        nonlocal feed
        s, _ = cfg.session(p, quiet=True)  # a candidate that fails is reported by fuse, not logged by ORT
        if feed is None:
            feed = _probe_feed(s, vocab.bounds(path))
        out = s.run(None, feed)
        del s
        return out

    ref = run(path)
    opener = lambda p: cfg.session(p, quiet=True)[0]  # noqa: E731
    quantized = int8graph.is_quantized(onnx.load(str(path), load_external_data=False))
    pfeeds = baseline_mod.probe_feeds(path, opener, like=feed) if quantized else []
    probes = baseline_mod.quantized_probes(path, opener, feeds=pfeeds)
    faithful = _as_faithful(path, reference, opener, [feed] + pfeeds) if pfeeds and reference else None
    try:
        res = baseline_mod.fuse(path, run, ref, provider=cfg.provider, cache=cache, probes=probes,
                                faithful=faithful, **(fusion_kw or {}))
    except N6Error:
        return path, "none", {}
    kw = dict(model_type=res.model_type, num_heads=res.num_heads, hidden_size=res.hidden_size)
    return pathlib.Path(res.path), res.chosen, kw


def _as_faithful(path: pathlib.Path, reference: pathlib.Path, opener, feeds: list[dict]):
    """fuse's ``faithful``: a fused file of the quantized ``path`` is as faithful to the float ``reference``
    over ``feeds`` as ``path`` itself (relative RMS error within bench.layernorm.FAITHFUL of its)."""
    def faithful(fused: pathlib.Path) -> bool:
        ratio = layernorm_mod.faithfulness(opener(fused), opener(path), opener(reference), feeds)
        return ratio is not None and ratio <= layernorm_mod.FAITHFUL
    return faithful


def _probe_feed(sess, id_high: Mapping[str, int]) -> dict:
    """Random feeds with every dynamic dimension 2 (enough to check that a fusion keeps the outputs),
    token ids inside the tables they index (``id_high``: ``vocab.bounds``)."""
    dims = {d: 2 for d in dynamic_dims(sess)}
    return feeds_mod.random_feeds(sess, 1, dims, id_high=id_high)[0]


class Timer:
    """Times candidates against ORT's best version of the original, bench's way: fused, with its layer
    norms in the form that runs it faster here (``bench.layernorm``: chosen on the original once, and
    on every candidate as it is timed, so each runs in its own faster form with the session options
    that form needs)."""

    def __init__(self, original: pathlib.Path, workdir: pathlib.Path, *, threads: int | None,
                 dims: Mapping[str, int], seconds: float, block_seconds: float, warmup: float = 0.5,
                 provider: str = "cpu", device_id: int = 0) -> None:
        self.cfg = SessionConfig(provider, device_id, threads)
        self.workdir = workdir
        self.seconds, self.block_seconds, self.warmup = seconds, block_seconds, warmup
        sess, _ = self.cfg.session(original)
        # token ids inside the embedding tables (position ids included: a table of 64 rows takes ids < 64)
        self.feed = feeds_mod.random_feeds(sess, 1, dims, id_high=vocab.bounds(original))[0]
        self.dims = dict(dims)
        del sess
        self.fusion_kw = {}
        # the original's fusion goes to bench's shared cache (content-keyed): a second study reuses it
        self.baseline, self.baseline_fusion, self.fusion_kw = fuse(original, self.cfg, baseline_mod.cache_dir(),
                                                                   None, self.feed)
        self.fused_baseline = self.baseline
        self.ln_block = min(layernorm_mod.BLOCK_SECONDS, block_seconds)
        self.layernorm, self.baseline = layernorm_mod.choose(self.baseline, self.cfg, self.feed,
                                                             block_seconds=self.ln_block)
        base_cfg = self.layernorm.session_config(self.cfg)
        sess, self.library = base_cfg.session(self.baseline)
        self._base = Runner(sess, self.feed, base_cfg)
        latency_mod.warm_up(self._base, warmup)
        # the CPU: bench's CPU-seconds estimate; CUDA: the primary meter bench finds (NVML where it loads)
        found = [energy_mod.CpuEstimate()] if provider == "cpu" else energy_mod.discover(provider, device_id).meters
        self.meter = found[0]
        energy_mod.close_all(found[1:])
        self.base_blocks: list[latency_mod.Block] = []

    def fuse(self, path: pathlib.Path) -> pathlib.Path:
        out, self.last_fusion, kw = fuse(path, self.cfg, self.workdir / "fused", self.fusion_kw, self.feed,
                                         self.fused_baseline)
        self.fusion_kw = self.fusion_kw or kw  # the original's model type / heads / width serve every candidate
        return out

    def time(self, path: pathlib.Path) -> tuple[dict, pathlib.Path]:
        """``path`` in its faster layer-norm form (chosen here), then interleaved blocks, candidate vs
        baseline (ABBA), ``seconds`` per variant: (figures, the file timed)."""
        choice, path = layernorm_mod.choose(path, self.cfg, self.feed, self.workdir / "fused",
                                            block_seconds=self.ln_block, reference=self.fused_baseline)
        cfg = choice.session_config(self.cfg)
        sess, lib = cfg.session(path)
        try:
            runner = Runner(sess, self.feed, cfg)
            latency_mod.warm_up(runner, self.warmup)
            blocks = max(2, round(self.seconds / self.block_seconds))
            out = latency_mod.run_blocks({"baseline": self._base, "candidate": runner}, blocks, self.block_seconds,
                                         [self.meter])
        finally:
            del sess
            gc.collect()
        self.base_blocks += out["baseline"]
        return {**summarise(out["candidate"], out["baseline"], lib, self.meter), "layernorm": choice.to_json()}, path

    def close(self) -> None:
        """Release the energy meter (NVML)."""
        self.meter.close()

    def reference(self) -> dict:
        """The fp32 baseline's own figures, over every block timed so far."""
        b = self.base_blocks
        return {**summarise(b, b, self.library, self.meter), "layernorm": self.layernorm.to_json()}


def _per_run_mj(blocks) -> list[float]:
    return [1e3 * blk.energy[0] / blk.runs for blk in blocks if blk.energy and blk.runs]


def summarise(cand, base, lib, meter=None) -> dict:
    med_c = [b.median for b in cand]
    med_b = [b.median for b in base]
    lat = latency_mod.summary([x * 1e3 for x in latency_mod.pooled_latencies(cand)])
    speed = latency_mod.ratio_summary(med_b, med_c)  # per A/B pair: baseline / candidate block medians
    e = _per_run_mj(cand)
    return {"latency_ms": lat, "speedup_vs_fp32": speed, "blocks": len(cand),
            # (the key keeps its name for the CPU estimate; "energy_meter" says which meter and whether measured)
            "energy_mj_per_inference_estimated": statistics.median(e) if e else None,
            "energy_meter": None if meter is None else {"name": meter.name, "method": meter.method},
            "library": lib}
