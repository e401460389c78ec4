"""Several variants of one model measured side by side in one run: held-out fidelity against the
original (n6onnx validate) and latency / energy in interleaved blocks (n6onnx.bench's pieces: same
session options and threads, IO binding, each variant's layer norms in the form ORT runs it
faster (bench.layernorm, chosen on each variant), the meters bench discovers: NVML on cuda, else
the CPU-seconds estimate, labelled)."""

from __future__ import annotations

import gc
import pathlib

import n6onnx
from n6onnx import feeds as feeds_mod
from n6onnx.bench import energy as energy_mod
from n6onnx.bench import latency as latency_mod
from n6onnx.bench import layernorm as layernorm_mod
from n6onnx.bench.session import Runner, SessionConfig
from n6onnx.tune import measure, stages

INT8 = ("int8", "int8_first")  # ORT's per-channel int8 of the original: fused then quantized, quantized then fused


def int8_variants(src: pathlib.Path, cfg: SessionConfig, work: pathlib.Path):
    """The reference points of a side-by-side run: ``({"fp32": the original fused as onnxruntime runs it best,
    "int8" / "int8_first": onnxruntime's stock quantize_dynamic per channel (QInt8, weights rounded to nearest) in
    both graph orders}, fuse, fusion)``; ``fuse(path)`` fuses another variant with the same options, ``fusion`` is
    what ``tune.measure.fuse`` reports."""
    fp32, fusion, kw = measure.fuse(src, cfg, work / "fused")

    def fuse(p: pathlib.Path) -> pathlib.Path:  # an int8 graph's fusion kept by its fidelity to the original, as tune's
        return measure.fuse(p, cfg, work / "fused", kw, reference=fp32)[0]

    q = stages.quantize_both_orders(src, fp32, fuse, work, "int8", "int8")
    return {"fp32": fp32, INT8[0]: q[stages.FUSED_FIRST], INT8[1]: q[stages.QUANTIZED_FIRST]}, fuse, fusion


def int8_anchor(runs: dict) -> str:
    """The faster of the two int8 graph orders in ``side_by_side``'s variants: the anchor every ratio is quoted
    against."""
    return min(INT8, key=lambda k: runs[k]["latency_ms"]["median"])


def side_by_side(variants: dict[str, pathlib.Path], original: pathlib.Path, held_text: pathlib.Path | None, *,
                 threads: int | None, dims: dict[str, int], provider: str = "cpu", seconds: float = 30.0,
                 block_seconds: float = 2.0, warmup: float = 2.0, reference: str | None = None,
                 layernorm: str = "auto", feed: dict | None = None) -> dict:
    """``reference``: the variant every ratio is taken against (default: the first); ``layernorm``:
    bench.layernorm's mode, applied to (with auto: chosen on) each variant; ``feed``: the timed inputs (default:
    random feeds of ``dims``; a language model's must stay inside its vocabulary)."""
    dim_list = [f"{k}={v}" for k, v in dims.items()]
    fidelity = {}
    if held_text is not None:
        for name, path in variants.items():
            # each variant on the provider it is timed on (the original, the reference, on the CPU provider)
            rep = n6onnx.validate(original, path, text=held_text, dims=dim_list, threads=threads, provider=provider)
            emb = next((o.embedding for o in rep.outputs.values() if o.embedding), None) or {}
            fidelity[name] = {"cosine": rep.cosine_mean, "nn": emb.get("nn_agreement"),
                              "source": rep.cosine_source, "samples": rep.inputs.get("samples"),
                              "provider": rep.providers["candidate"]}
    cfg = SessionConfig(provider, 0, threads)
    ref = reference or next(iter(variants))
    if feed is None:
        feed = feeds_mod.random_feeds(cfg.session(variants[ref])[0], 1, dims)[0]
    ln, variants, cfgs = layernorm_mod.choose_each(variants, cfg, feed, mode=layernorm,
                                                   block_seconds=min(1.0, block_seconds), reference=original)
    sessions, runners = {}, {}
    for name, path in variants.items():
        sessions[name], _ = cfgs[name].session(path)
        runners[name] = Runner(sessions[name], feed, cfgs[name])
        latency_mod.warm_up(runners[name], warmup)
    disc = energy_mod.discover(provider)
    meters = disc.meters
    blocks = max(3, round(seconds / block_seconds))
    order = list(variants)
    out: dict[str, list] = {k: [] for k in order}
    try:
        for i in range(blocks):  # rotate the order each round so no variant always runs first
            for name in order[i % len(order):] + order[:i % len(order)]:
                out[name].append(latency_mod.run_block(name, runners[name], block_seconds, meters))
    finally:
        energy_mod.close_all(meters)
        del runners, sessions
        gc.collect()
    res = {}
    for name in order:
        b = out[name]
        lat = latency_mod.summary([x * 1e3 for x in latency_mod.pooled_latencies(b)])
        energy = {}
        for k, m in enumerate(meters):
            per = [blk.energy[k] / blk.runs * 1e3 for blk in b if blk.runs]
            energy[m.name] = {"method": m.method, "mj_per_inference": latency_mod.summary(per)}
        res[name] = {"path": str(variants[name]), "fidelity": fidelity.get(name), "latency_ms": lat,
                     "speedup_vs_" + ref: latency_mod.ratio_summary([x.median for x in out[ref]],
                                                                     [x.median for x in b]),
                     "energy": energy}
        for other in order:
            if other != name and other != ref:
                res[name][f"speedup_vs_{other}"] = latency_mod.ratio_summary([x.median for x in out[other]],
                                                                            [x.median for x in b])
    return {"variants": res, "method": {
        "timing": f"{blocks} rounds of {block_seconds:g} s blocks per variant, order rotated each round, IO binding, "
                  f"{threads} threads, ORT_ENABLE_ALL, n6 library registered; ratios = per-round block medians",
        "energy": {m.name: m.describe() for m in meters}, "energy_notes": disc.notes,
        "feed_shapes": {k: list(v.shape) for k, v in feed.items()}, "provider": provider,
        "layernorm": {k: c.to_json() for k, c in ln.items()}}}
