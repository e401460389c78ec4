"""Timing for ``n6onnx bench``: warm-up, interleaved blocks, percentiles and ratios with spread.

The variants (baseline, candidate) run in repeated blocks, alternating ABBA so that slow drift
(thermal state, other tenants) falls on both alike. Each block runs one variant back to back for
at least ``block_seconds`` and records every run's latency and, for every meter, the energy read at
the block's boundaries. A ratio is computed per block pair (block i of A against block i of B) and
reported as the median and interquartile range over pairs.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, Mapping, Sequence

import numpy as np

from .energy import Meter


@dataclasses.dataclass
class Block:
    variant: str
    seconds: float  # wall time of the block
    latencies: list[float]  # seconds per run
    energy: list[float]  # joules per meter over the block

    @property
    def runs(self) -> int:
        return len(self.latencies)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)


def summary(xs: Sequence[float]) -> dict:
    """median, quartiles, extremes and count of ``xs`` (all None when empty)."""
    xs = sorted(x for x in xs if x is not None and math.isfinite(x))
    if not xs:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None, "n": 0}
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "min": xs[0], "max": xs[-1], "n": len(xs)}


def percentiles_ms(latencies: Sequence[float]) -> dict:
    """p50/p90/p99 (linear interpolation), mean, min, max in milliseconds, and the run count."""
    a = np.asarray(latencies, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(a.mean()),
            "min": float(a.min()), "max": float(a.max()), "runs": int(a.size)}


def warm_up(run: Callable[[], object], seconds: float = 1.0, min_runs: int = 5, max_runs: int = 10_000) -> int:
    """Run until both ``min_runs`` runs and ``seconds`` have passed; returns the run count."""
    t0 = time.perf_counter()
    n = 0
    while n < max_runs and (n < min_runs or time.perf_counter() - t0 < seconds):
        run()
        n += 1
    return n


def run_block(name: str, run: Callable[[], object], seconds: float, meters: Sequence[Meter] = (),
              min_runs: int = 3) -> Block:
    """Run ``run`` back to back for at least ``seconds`` and ``min_runs`` runs, timing each."""
    clock = time.perf_counter
    lat: list[float] = []
    append = lat.append
    e0 = [m.read() for m in meters]
    t0 = clock()
    end = t0 + seconds
    t = t0
    while t < end or len(lat) < min_runs:
        run()
        t1 = clock()
        append(t1 - t)
        t = t1
    wall = t - t0
    e1 = [m.read() for m in meters]
    return Block(name, wall, lat, [b - a for a, b in zip(e0, e1)])


def abba_order(names: Sequence[str], pairs: int) -> list[str]:
    """Block order: A B, B A, A B, ... for two variants (a single variant just repeats)."""
    names = list(names)
    order = []
    for i in range(pairs):
        order += names if i % 2 == 0 else names[::-1]
    return order


def run_blocks(runners: Mapping[str, Callable[[], object]], blocks: int, block_seconds: float,
               meters: Sequence[Meter] = (), on_block: Callable[[Block], None] | None = None) -> dict[str, list[Block]]:
    """Interleaved blocks: ``blocks`` per variant, ABBA order. Returns the blocks per variant."""
    out: dict[str, list[Block]] = {k: [] for k in runners}
    for name in abba_order(list(runners), blocks):
        b = run_block(name, runners[name], block_seconds, meters)
        out[name].append(b)
        if on_block is not None:
            on_block(b)
    return out


def pooled_latencies(blocks: Sequence[Block]) -> list[float]:
    return [x for b in blocks for x in b.latencies]


def throughput(blocks: Sequence[Block]) -> float:
    """Inferences per second over all blocks (runs / wall time)."""
    runs = sum(b.runs for b in blocks)
    wall = sum(b.seconds for b in blocks)
    return runs / wall if wall > 0 else float("nan")


def ratio_summary(num: Sequence[float], den: Sequence[float]) -> dict:
    """Per-pair ratios num[i] / den[i], summarised (median, IQR, extremes, n)."""
    rs = [a / b for a, b in zip(num, den) if a is not None and b is not None and b > 0 and a > 0]
    return summary(rs)
