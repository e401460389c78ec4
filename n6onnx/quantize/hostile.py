"""Is a model in the int8-hostile state? An n6 activation read directly by a (quantized) MatMul.

Phi6 never drops below 0.75 and ZetaLn2 below 0, so their output carries a large constant offset.
A MatMul that reads it uncentred multiplies its int8 weight-rounding error by that offset, a
systematic shift on every token (on all-MiniLM-L6-v2 this took stock per-channel dynamic int8 to
cosine 0.06; see ``n6onnx.calibrate.quantfit``). Calibration (``rewrite --calibrate``) centres the
activation with a constant Add before the down projection; this check finds the places where that
Add is missing. It reads node structure only (no weights, no data).
"""

from __future__ import annotations

import onnx

from ..ops import DOMAIN
from ..graph import proto_consumers

OFFSET_ACTIVATIONS = {"Phi6": 0.75, "BiasPhi6": 0.75, "ZetaLn2": 0.0, "BiasZetaLn2": 0.0}  # op -> its minimum
# what reads a MatMul's activation input, float or after onnxruntime's quantizers
_READERS = {"MatMul", "Gemm", "DynamicQuantizeLinear", "QuantizeLinear", "MatMulNBits", "DynamicQuantizeMatMul",
            "MatMulIntegerToFloat", "MatMulInteger", "QGemm"}


def hostile_activations(proto: onnx.ModelProto) -> list[str]:
    """One warning per n6 activation whose output a MatMul (or a quantizer feeding one) reads directly."""
    readers = proto_consumers(proto)
    found = []
    for n in proto.graph.node:
        if n.domain != DOMAIN or n.op_type not in OFFSET_ACTIVATIONS:
            continue
        hit = [r for r in readers.get(n.output[0], []) if r.op_type in _READERS and r.input[0] == n.output[0]]
        if hit:
            found.append(f"{n.name or n.output[0]} ({n.op_type}) -> {hit[0].op_type} {hit[0].name}")
    if not found:
        return []
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return [f"int8-hostile: {len(found)} n6 activation(s) feed a MatMul uncentred ({shown}); their output never "
            "drops to 0 (Phi6 >= 0.75), so int8 weight rounding of that MatMul becomes a shift on every token. "
            "Calibrate (rewrite --calibrate DATA centres them) before quantizing."]
