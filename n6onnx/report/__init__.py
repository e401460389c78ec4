"""``n6onnx report``: validate and bench JSON results -> report.md, report.json and pareto.png.

Inputs are the JSON that ``n6onnx validate --json`` and ``n6onnx bench --json`` print (a bench
result wrapped by ``benchmarks/e2e.py`` under a ``bench`` key is accepted too), given as files or
as folders (every ``*.json`` directly inside). A file is *validate* when it has ``passed`` and
``cosine_mean``, *bench* when it has ``latency_ms`` and ``throughput``; anything else is an error
that names the file (our own ``report.json`` found inside a folder is skipped, with a note).

Variants are models, identified by path: a validate result's ``candidate``, a bench result's
``model``, matched between files by the normalised path string; a top-level ``label`` gives a
friendly name. The original (a validate result's ``original``, a bench result's ``baseline``) is a
variant too: fidelity 1.0 by definition, latency and energy from the bench result's ``baseline``
block (the original as ORT runs it best, measured interleaved with the candidate).

Bench results are grouped by *setting* (provider, device, threads): latencies from different
settings are never on one axis. Energy figures are grouped further by their method: ``measured
(nvml)``, ``measured (rapl)`` or ``estimated`` (CPU-seconds x assumed watts); measured and
estimated figures are never on one axis. The plot has one row per setting: fidelity (cosine_mean)
against latency p50, then against energy per inference once per energy method. Pareto-optimal
points (no other point in the panel is at least as fast/frugal and at least as faithful, and
better in one) are marked. Each energy figure also becomes Wh and gCO2e per 1,000 inferences at
the report's grid intensity and PUE (``--grid-intensity``, ``--pue``; Green Algorithms' method),
labelled measured or estimated like the energy.

Nothing is written until every input has been read and the plot has been rendered; then the
three files are written atomically (temporary file beside the destination + os.replace).
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Sequence

from ..bench import carbon as carbon_mod
from ..errors import BadArgumentError
from ..io import atomic_write
from . import markdown, plot
from .build import Report, build
from .sources import FILES, read_sources

# report kind -> (file name, render(report, its JSON) -> str | bytes): one renderer per kind
RENDERERS = {
    "markdown": (FILES["markdown"], lambda rep, data: markdown.render(rep, data)),
    "json": (FILES["json"], lambda rep, data: json.dumps(data, indent=2, allow_nan=False) + "\n"),
    "plot": (FILES["plot"], lambda rep, data: plot.render(rep)),
}


def report(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
           grid_intensity: str | float | None = None, pue: float | None = None) -> tuple[Report, dict]:
    """Build the report from ``inputs`` and write report.md, report.json and pareto.png into ``out_dir``.

    ``grid_intensity`` (gCO2e/kWh or an ISO 3166-1 alpha-3 code) and ``pue``: the carbon settings
    every measurement's Wh and CO2e per 1,000 inferences are computed with (``bench.carbon``).

    Returns the report and its JSON. Every input is read and everything is rendered before anything
    is written; each file is written atomically.
    """
    out = pathlib.Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadArgumentError(f"{out}: exists and is not a folder (-o takes the output folder)")
    rep = build(inputs, carbon_mod.settings(grid_intensity, pue))
    data = rep.to_json()
    blobs = {name: render(rep, data) for name, render in RENDERERS.values()}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BadArgumentError(f"{out}: cannot create the output folder: {e}") from None
    for name, b in blobs.items():
        try:
            atomic_write(out / name, b)
        except OSError as e:
            raise BadArgumentError(f"{out / name}: cannot write: {e}") from None
    return rep, data


__all__ = ["FILES", "RENDERERS", "Report", "build", "read_sources", "report"]
