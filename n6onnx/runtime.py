"""n6onnx.InferenceSession: onnxruntime with the n6 custom-op library registered when it exists."""

from __future__ import annotations

import collections
import contextlib
import operator
import os
import pathlib
import tempfile
from typing import Sequence

import onnx
import onnxruntime as ort

from . import io
from ._library import library_path
from .errors import BadArgumentError, N6Error, ProviderUnavailableError

CUDA_PROVIDER = "CUDAExecutionProvider"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": CUDA_PROVIDER}  # --provider NAME -> onnxruntime's provider


def providers_for(provider: str, device_id: int = 0) -> list:
    """onnxruntime's ``providers`` list for ``--provider`` (``cpu`` or ``cuda``: CUDA first, the CPU for
    the nodes CUDA has no kernel for). Raises ``ProviderUnavailableError`` when this onnxruntime has no
    CUDA provider (the CPU-only wheel)."""
    if provider not in PROVIDERS:
        raise BadArgumentError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    try:
        ok = operator.index(device_id) >= 0
    except TypeError:
        ok = False
    if not ok:
        raise BadArgumentError(f"--device-id must be a non-negative integer, got {device_id!r}")
    if provider == "cpu":
        return [PROVIDERS["cpu"]]
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise ProviderUnavailableError(
            f"--provider cuda: CUDAExecutionProvider is not available in this onnxruntime "
            f"({ort.__version__}, providers: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
    return [(CUDA_PROVIDER, {"device_id": operator.index(device_id)}), PROVIDERS["cpu"]]


def check_placed(sess: ort.InferenceSession, provider: str, what: str) -> None:
    """Raise ``ProviderUnavailableError`` when a session asked for CUDA fell back to the CPU."""
    if provider == "cuda" and sess.get_providers()[0] != CUDA_PROVIDER:
        raise ProviderUnavailableError(
            f"onnxruntime fell back to {sess.get_providers()} for {what}: the CUDA provider did not load "
            "(CUDA/cuDNN libraries missing?)")


def _provider_names(providers: Sequence | None) -> list[str]:
    """Provider names of an onnxruntime ``providers`` list (names or ``(name, options)`` pairs)."""
    names = []
    for p in providers or ():
        names.append(p[0] if isinstance(p, (tuple, list)) else str(p))
    return names


def library_kind_for(providers: Sequence | None) -> str | None:
    """Which n6 library suits a session with these providers: ``"cuda"``, ``"cpu"`` or None (none built).

    The CUDA library (CPU and CUDA kernels in one domain) when CUDA is asked for, this onnxruntime
    has the CUDA provider and the CUDA library was built; otherwise the CPU library, which never
    loads CUDA code.
    """
    if (
        CUDA_PROVIDER in _provider_names(providers)
        and CUDA_PROVIDER in ort.get_available_providers()
        and library_path("cuda") is not None
    ):
        return "cuda"
    if library_path("cpu") is not None:
        return "cpu"
    return None


def session_options(
    threads: int | None = None,
    *,
    use_library: bool = True,
    base: ort.SessionOptions | None = None,
    kind: str = "cpu",
) -> tuple[ort.SessionOptions, bool]:
    """Session options with ORT_ENABLE_ALL and, if available and wanted, our library registered.

    ``kind`` picks the library: ``"cpu"`` (libn6ops) or ``"cuda"`` (libn6ops_cuda: CPU and CUDA
    kernels). Returns the options and whether the library was registered.
    """
    so = base or ort.SessionOptions()
    if base is None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    registered = False
    if use_library:
        lib = library_path(kind)
        if lib is not None:
            so.register_custom_ops_library(str(lib))
            registered = True
    return so, registered


class InferenceSession(ort.InferenceSession):
    """An ``onnxruntime.InferenceSession`` that runs n6 ops with our kernels when possible.

    With ``use_library=True`` (the default) the n6 custom-op library is registered when it was
    built; otherwise (or without it) the model-local ONNX functions that every n6 node carries are
    executed by stock onnxruntime. ``self.uses_library`` says which happened, and
    ``self.library_kind`` which library: ``"cuda"`` when ``CUDAExecutionProvider`` is among the
    providers, this onnxruntime has it and libn6ops_cuda was built (its CPU kernels also serve
    nodes placed on the CPU provider), ``"cpu"`` for libn6ops, None without a library.
    """

    def __init__(
        self,
        path_or_bytes: str | os.PathLike | bytes,
        sess_options: ort.SessionOptions | None = None,
        providers: Sequence | None = None,
        *,
        threads: int | None = None,
        use_library: bool = True,
        **kwargs,
    ) -> None:
        providers = list(providers or ["CPUExecutionProvider"])
        kind = library_kind_for(providers) if use_library else None
        so, self.uses_library = session_options(
            threads, use_library=kind is not None, base=sess_options, kind=kind or "cpu"
        )
        self.library_kind: str | None = kind if self.uses_library else None
        if isinstance(path_or_bytes, os.PathLike):
            path_or_bytes = os.fspath(path_or_bytes)
        super().__init__(path_or_bytes, sess_options=so, providers=providers, **kwargs)


def session_for(proto, sess_options: ort.SessionOptions | None = None, **kwargs) -> InferenceSession:
    """An ``InferenceSession`` for an in-memory ``onnx.ModelProto`` of any size.

    Up to ``io.EXTERNAL_DATA_THRESHOLD`` bytes of tensors the model is passed as bytes. Above it
    (protobuf cannot serialise more than 2 GB) it is written to a temporary folder with its tensors
    in one external data file; the folder lives as long as the session. ``proto`` is consumed: in
    that case its tensors are moved to the external file.

    Tensors that a ``io.load``ed model keeps in external data (absolute locations) are read by
    onnxruntime from their files (memory-mapped), never copied through Python."""
    ext = io.external_tensors(proto)
    if io._tensor_bytes(proto) <= io.EXTERNAL_DATA_THRESHOLD:
        with _external_relative(ext) as folder:
            so = sess_options
            if folder is not None:
                so = sess_options or ort.SessionOptions()  # (its default optimisation level is ORT_ENABLE_ALL)
                so.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
            return InferenceSession(proto.SerializeToString(), so, **kwargs)
    tmp = tempfile.TemporaryDirectory(prefix="n6onnx-session-")
    path = pathlib.Path(tmp.name) / "model.onnx"
    for k, t in enumerate(ext):  # the model's own data files, linked beside the temporary copy
        info = {e.key: e for e in t.external_data}
        if os.path.isabs(info["location"].value):
            link = pathlib.Path(tmp.name) / f"source-{k}.data"
            os.symlink(info["location"].value, link)
            info["location"].value = link.name
    try:
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
    except OSError as e:
        tmp.cleanup()
        raise N6Error(f"the model is over protobuf's 2 GB limit, and writing its temporary copy for onnxruntime "
                      f"to {tempfile.gettempdir()} failed ({e}); free space there or set TMPDIR") from None
    sess = InferenceSession(str(path), sess_options, **kwargs)
    sess._n6onnx_tmp = tmp  # removed with the session
    return sess


@contextlib.contextmanager
def _external_relative(ext: list[onnx.TensorProto]):
    """While the block runs, the absolute external locations (from ``io.load``) are made relative to one
    folder, which is yielded (None without any); tensors in other folders are read into memory. The
    tensors are restored afterwards (the caller's proto is unchanged)."""
    absolute = [t for t in ext if os.path.isabs({e.key: e.value for e in t.external_data}["location"])]
    if not absolute:
        yield None
        return
    saved = [(t, [(e.key, e.value) for e in t.external_data], t.data_location) for t in absolute]
    dirs = collections.Counter(os.path.dirname({e.key: e.value for e in t.external_data}["location"])
                               for t in absolute)
    folder = dirs.most_common(1)[0][0]
    try:
        for t in absolute:
            info = {e.key: e for e in t.external_data}
            if os.path.dirname(info["location"].value) == folder:
                info["location"].value = os.path.basename(info["location"].value)
            else:
                t.raw_data = io.read_external(t)
                del t.external_data[:]
                t.data_location = onnx.TensorProto.DEFAULT
        yield folder
    finally:
        for t, entries, loc in saved:
            t.ClearField("raw_data")
            del t.external_data[:]
            for key, value in entries:
                t.external_data.add(key=key, value=value)
            t.data_location = loc
