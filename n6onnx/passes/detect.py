"""Detection of every kind for ``inspect``: GELU via the gelu pass's rules on a copy, and the
FFN, attention and MoE detectors."""

from __future__ import annotations

import onnx_ir as ir

from . import attention, ffn, gelu, moe
from ._common import KindReport


def detect_all(model: ir.Model) -> dict[str, KindReport]:
    """``model`` must be canonicalised. It is not modified."""
    work = ir.from_proto(ir.to_proto(model))
    g = gelu.run(work, "phi6")  # collapses every GELU into one node: FFN detection sees them
    g.rewritten = 0
    return {
        "gelu": g,
        "ffn": ffn.detect(work, g),
        "attention": attention.detect(model),
        "moe": moe.detect(model),
    }
