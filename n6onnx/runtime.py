"""n6onnx.InferenceSession: onnxruntime with the n6 custom-op library registered when it exists."""

from __future__ import annotations

import os
from typing import Sequence

import onnxruntime as ort

from ._library import library_path


def session_options(
    threads: int | None = None, *, use_library: bool = True, base: ort.SessionOptions | None = None
) -> tuple[ort.SessionOptions, bool]:
    """Session options with ORT_ENABLE_ALL and, if available and wanted, our library registered."""
    so = base or ort.SessionOptions()
    if base is None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    registered = False
    if use_library:
        lib = library_path()
        if lib is not None:
            so.register_custom_ops_library(str(lib))
            registered = True
    return so, registered


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` that runs n6 ops with our kernels when possible.

    With ``use_library=True`` (the default) the n6 custom-op library is registered when it was
    built; otherwise (or without it) the model-local ONNX functions that every n6 node carries are
    executed by stock onnxruntime. ``self.uses_library`` says which happened.
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence[str] | None = None,
        *,
        threads: int | None = None,
        use_library: bool = True,
        **kwargs,
    ) -> None:
        so, self.uses_library = session_options(threads, use_library=use_library, base=sess_options)
        if isinstance(path_or_bytes, os.PathLike):
            path_or_bytes = os.fspath(path_or_bytes)
        super().__init__(
            path_or_bytes, sess_options=so, providers=list(providers or ["CPUExecutionProvider"]),
            **kwargs,
        )
