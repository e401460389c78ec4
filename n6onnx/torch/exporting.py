"""Export a torch model built with n6onnx.torch modules straight to the n6 custom ops.

``torch.onnx.export(dynamo=True)`` keeps each n6 custom op (``torch.ops.n6onnx.*``) as one node and
translates it with ``n6onnx.torch.ops.TRANSLATIONS`` into the ONNX op of domain ``n6onnx``
(version 1); then the model-local ONNX function fallbacks are attached exactly as the rewrite
passes attach them (the same finalize step), so the model runs on onnxruntime with the n6 library
and, without it, on stock onnxruntime.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import onnx
import onnx_ir as ir
import torch

from .. import io
from ..api import check, finalize  # the one place this package takes the passes' finalize step from
from ..errors import N6Error
from .ops import TRANSLATIONS

__all__ = ["export"]


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress lines, the graphs of failed capture attempts and warnings about ops
    of packages that are not installed; a failure reaches the caller as one N6Error instead."""
    reg_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    old = reg_logger.level
    reg_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
                contextlib.redirect_stderr(devnull):
            warnings.simplefilter("ignore")
            yield
    finally:
        reg_logger.setLevel(old)


def export(model: torch.nn.Module, args: tuple, path: str | os.PathLike | None = None, *, kwargs: dict | None = None,
           dynamic_shapes=None, input_names=None, output_names=None, opset_version: int | None = None,
           external_data: bool | None = None, optimize: bool = True) -> onnx.ModelProto:
    """Export ``model(*args, **kwargs)`` to ONNX with its n6 modules as n6onnx custom-op nodes.

    ``dynamic_shapes``, ``input_names``, ``output_names``, ``opset_version`` (default: the
    exporter's) and ``optimize`` are passed to ``torch.onnx.export(dynamo=True)``. The result is
    checked (onnx.checker, strict shape inference), written atomically to ``path`` when given
    (external data when asked or above 2 GB) and returned. Call ``model.eval()`` first for
    inference. Raises N6Error with a one-line reason when the export fails."""
    if path is not None:
        io.check_output_path(path)
    if not isinstance(args, tuple):
        args = (args,)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, args, kwargs=kwargs, dynamo=True, custom_translation_table=TRANSLATIONS,
                dynamic_shapes=dynamic_shapes, input_names=input_names, output_names=output_names,
                opset_version=opset_version, optimize=optimize, external_data=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; the user gets one line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        skip = ("Failed", "-", "#", "[", "(", "⬆")
        reason = next((ln for ln in lines if not ln.startswith(skip)), lines[0] if lines else "")
        raise N6Error(f"torch.onnx.export failed: {type(e).__name__}: {reason[:300]}") from e
    m = program.model
    finalize(m)
    proto = ir.serde.serialize_model(m)
    check(proto)
    if path is not None:
        io.save(proto, path, external_data=external_data)
    return proto
