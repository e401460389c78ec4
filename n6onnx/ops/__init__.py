"""The n6 ops: one OpSpec per op (schema, numpy reference, function fallback, tolerances)."""

from ._spec import DOMAIN, DOMAIN_VERSION, OpSpec, Sample, Tolerance
from .egyptian_attention import EGYPTIAN_ATTENTION
from .fftmix import FFTMIX
from .moe import MOE
from .phi6 import BIAS_PHI6, PHI6
from .zetaln2 import BIAS_ZETALN2, ZETALN2

# Every n6 op. ELEMENTWISE: the activations (X[, bias]) -> Y; the others carry contract samples.
REGISTRY: dict[str, OpSpec] = {s.name: s for s in (PHI6, BIAS_PHI6, ZETALN2, BIAS_ZETALN2, FFTMIX, EGYPTIAN_ATTENTION, MOE)}
ELEMENTWISE: dict[str, OpSpec] = {k: s for k, s in REGISTRY.items() if s.elementwise}


def get(name: str) -> OpSpec:
    return REGISTRY[name]


__all__ = ["DOMAIN", "DOMAIN_VERSION", "OpSpec", "Sample", "Tolerance", "REGISTRY", "ELEMENTWISE", "get"]
