"""``--pass block=drop:N|@I,J``: drop whole transformer layers (attention and FFN with their norms),
ranked by the whole-layer redundancy score of ``inspect --calibrate`` or named by index; with
calibration data the layer's mean change of the residual stream stays as a bias. The logic, shared
with ``attention=drop``, is in ``drop``; block numbering across passes is ``passes.targets``."""

from __future__ import annotations

from ...findings import KindReport, Site
from ..base import Inspection, Pass
from . import drop


def detect(view: Inspection) -> KindReport:
    layers, rejected, seen = drop.find_layers(view.model)
    report = KindReport("block", seen=seen, near_misses=rejected)
    for l in layers:
        report.sites.append(Site(nodes=[l.block.label], rule="block.layer",
                                 detail={"index": l.index, "enters": l.x.name, "leaves": l.y.name}))
    return report


PASS = Pass(
    name="block", order=35, options=drop.OPTIONS,
    summary="drop: remove whole layers (attention + FFN), the N with the highest layer redundancy on --calibrate "
            "data (drop:N) or the named ones (drop:@I,J, no data needed); with data the layer's mean change of the "
            "stream stays as a bias",
    parse=lambda option: drop.targets.parse_drop("block", option), run=drop.run_block, detect=detect,
    uses_data=True, repeatable=True, docs="docs/passes/block.md",
)
