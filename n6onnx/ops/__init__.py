"""The n6 ops: one OpSpec per op (schema, numpy reference, function fallback, tolerances)."""

from ._spec import DOMAIN, DOMAIN_VERSION, OpSpec, Tolerance
from .phi6 import BIAS_PHI6, PHI6
from .zetaln2 import BIAS_ZETALN2, ZETALN2

REGISTRY: dict[str, OpSpec] = {s.name: s for s in (PHI6, BIAS_PHI6, ZETALN2, BIAS_ZETALN2)}


def get(name: str) -> OpSpec:
    return REGISTRY[name]


__all__ = ["DOMAIN", "DOMAIN_VERSION", "OpSpec", "Tolerance", "REGISTRY", "get"]
