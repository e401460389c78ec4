"""n6onnx: an ONNX model transformation compiler for the n6 techniques, with honest measurement."""

from ._library import library_path, library_status
from ._version import __version__
from .api import inspect, rewrite, validate  # validate: the function (n6onnx/validate/ is its package)
from .api import bench  # the function (n6onnx/bench/ is its package)
from .errors import BadArgumentError, BadModelError, N6Error
from .runtime import InferenceSession

__all__ = [
    "BadArgumentError", "BadModelError", "InferenceSession", "bench", "N6Error", "inspect",
    "library_path", "library_status", "rewrite", "validate", "__version__",
]
