"""Energy per inference from the meters read at block boundaries: per meter the median over blocks
(total, and dynamic after subtracting idle power), its spread, the band of an estimate, and the
per-block-pair ratios between baseline and candidate."""

from __future__ import annotations

from typing import Sequence

from . import energy as energy_mod
from . import latency as latency_mod


def figures(meters: Sequence[energy_mod.Meter], blocks: Sequence[latency_mod.Block],
                    idle_w: Sequence[float] | None) -> list[dict]:
    figs = []
    for k, m in enumerate(meters):
        per = [b.energy[k] / b.runs for b in blocks]
        watts = [b.energy[k] / b.seconds for b in blocks if b.seconds > 0]
        s = latency_mod.summary(per)
        fig = {**m.describe(), "joules_per_inference": s["median"], "spread": s,
               "watts": latency_mod.summary(watts)["median"], "windows": len(blocks),
               "window_seconds": latency_mod.summary([b.seconds for b in blocks])["median"]}
        if idle_w is not None:
            dyn = [(b.energy[k] - idle_w[k] * b.seconds) / b.runs for b in blocks]
            ds = latency_mod.summary(dyn)
            fig.update({"dynamic_joules_per_inference": ds["median"], "dynamic_spread": ds, "idle_watts": idle_w[k],
                        "dynamic_resolved": bool(dyn) and min(dyn) > 0})
        else:
            fig.update({"dynamic_joules_per_inference": None, "dynamic_spread": None, "idle_watts": None,
                        "dynamic_resolved": False})
        if m.method == "estimated":
            lo, hi = m.band
            fig["band"] = {"low": s["median"] * lo if s["median"] is not None else None,
                           "high": s["median"] * hi if s["median"] is not None else None}
            d = fig["dynamic_joules_per_inference"]
            fig["dynamic_band"] = {"low": d * lo, "high": d * hi} if d is not None else None
        figs.append(fig)
    return figs


def json_block(figs: list[dict]) -> dict:
    """The primary figure (measured first) with the others under "other"."""
    primary = figs[0]
    return {**primary, "other": figs[1:]}


def ratios(meters, base_blocks, cand_blocks, idle_w) -> list[dict]:
    out = []
    for k, m in enumerate(meters):
        b = [x.energy[k] / x.runs for x in base_blocks]
        c = [x.energy[k] / x.runs for x in cand_blocks]
        r = {"meter": m.name, "method": m.method, "total": latency_mod.ratio_summary(b, c)}
        if idle_w is not None:
            bd = [(x.energy[k] - idle_w[k] * x.seconds) / x.runs for x in base_blocks]
            cd = [(x.energy[k] - idle_w[k] * x.seconds) / x.runs for x in cand_blocks]
            if min(bd + cd) > 0:
                r["dynamic"] = latency_mod.ratio_summary(bd, cd)
            else:  # a ratio of noise around zero means nothing
                r["dynamic"] = None
                r["dynamic_note"] = "some windows' dynamic energy is not above idle: no dynamic ratio"
        else:
            r["dynamic"] = None
        if m.method == "estimated":
            r["note"] = "the assumed per-core power cancels: this is the ratio of CPU-seconds per inference"
        out.append(r)
    return out
