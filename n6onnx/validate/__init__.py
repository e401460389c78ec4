"""``n6onnx validate``: compare a candidate model with the original on the same inputs.

Per output: max absolute / relative error, per-sample cosine (mean and worst); for embedding
outputs the mean-pooled embedding cosine and nearest-neighbour agreement; for logits top-1
agreement, KL divergence and (with labels) task accuracy. Gates turn metrics into pass/fail.
Metric definitions are in :mod:`n6onnx.validate.metrics`.
"""

from . import metrics
from .report import Gate, OutputReport, ValidateReport
from .run import validate

__all__ = ["Gate", "OutputReport", "ValidateReport", "metrics", "validate"]
