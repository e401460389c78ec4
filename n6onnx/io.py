"""Loading and saving models safely.

- Loading never modifies the input; every way a file can be unusable becomes a BadModelError with a
  clear message (missing, truncated, not ONNX, unsupported opset, missing external data).
- Saving is atomic: everything is written to a temporary directory beside the destination and
  renamed into place, so an interrupted save never leaves a half-written model. Models whose
  tensors exceed the 2 GB protobuf limit (or whose input used external data) are saved with an
  external data file next to the model.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from .errors import BadArgumentError, BadModelError

MIN_OPSET = 17
# Above this many bytes of tensor data a model is saved with external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX model, raising BadModelError with a clear reason."""
    p = pathlib.Path(path)
    if not p.exists():
        raise BadModelError(f"{p}: no such file")
    if not p.is_file():
        raise BadModelError(f"{p}: not a file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise BadModelError(
            f"{p}: not a readable ONNX model (the file is truncated, corrupt or not ONNX: {e})"
        ) from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise BadModelError(
            f"{p}: not an ONNX model (no IR version, graph or opset import found; "
            "the file may be truncated or of another format)"
        )
    _check_opset(p, model)
    _load_external(p, model)
    try:
        onnx.checker.check_model(model if model.ByteSize() < 2**31 - 1 else str(p))
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
        raise BadModelError(f"{p}: invalid ONNX model: {first}") from None
    return model


def _check_opset(p: pathlib.Path, model: onnx.ModelProto) -> None:
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not default:
        raise BadModelError(f"{p}: the model imports no default ONNX opset")
    if default[0] < MIN_OPSET:
        raise BadModelError(
            f"{p}: opset {default[0]} is not supported (n6onnx needs opset >= {MIN_OPSET}; "
            "convert it first, e.g. with onnx.version_converter)"
        )
    latest = onnx.defs.onnx_opset_version()
    if default[0] > latest:
        raise BadModelError(
            f"{p}: opset {default[0]} is newer than this onnx ({onnx.__version__}) knows ({latest})"
        )


def _load_external(p: pathlib.Path, model: onnx.ModelProto) -> None:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    missing = []
    base = p.parent
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            loc = {e.key: e.value for e in t.external_data}.get("location", "")
            if not (base / loc).is_file():
                missing.append(loc)
    if missing:
        raise BadModelError(
            f"{p}: external data file(s) missing: {', '.join(sorted(set(missing)))} "
            f"(expected next to the model in {base})"
        )
    try:
        onnx.load_external_data_for_model(model, str(base))
    except (OSError, ValueError) as e:
        raise BadModelError(f"{p}: could not read external data: {e}") from None


def uses_external_data(path: str | os.PathLike) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as uses

    m = onnx.load(str(path), load_external_data=False)
    return any(uses(t) for t in _get_all_tensors(m))


def load(path: str | os.PathLike) -> ir.Model:
    """Load as an onnx-ir model (checked)."""
    return ir.serde.deserialize_model(load_proto(path))


def check_output_path(out: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = ()) -> pathlib.Path:
    out = pathlib.Path(out)
    if not out.parent.is_dir():
        raise BadArgumentError(f"{out}: the output directory {out.parent} does not exist")
    if out.is_dir():
        raise BadArgumentError(f"{out}: is a directory; give a file name")
    for i in inputs:
        if pathlib.Path(i).exists() and out.exists() and os.path.samefile(out, i):
            raise BadArgumentError(f"{out}: refusing to overwrite the input model")
    return out


def save(model: ir.Model | onnx.ModelProto, out: str | os.PathLike, *, external_data: bool | None = None) -> pathlib.Path:
    """Atomically save; use external data when asked or when the model exceeds protobuf's 2 GB."""
    out = check_output_path(out)
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    if external_data is None:
        external_data = _tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    data_name = out.name + ".data"
    tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp_model = tmpdir / out.name
        if external_data:
            onnx.save_model(
                proto, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                location=data_name, size_threshold=1024,
            )
        else:
            onnx.save_model(proto, str(tmp_model))
        for f in (tmp_model, tmpdir / data_name):
            if f.exists():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if (tmpdir / data_name).exists():
            os.replace(tmpdir / data_name, out.parent / data_name)
        os.replace(tmp_model, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """A temporary file beside ``path`` to write to: moved onto ``path`` (os.replace, with the
    permissions a new file gets) when the block ends normally, removed when it raises. Readers see
    the old file or the new one, never half of one. For one file; ``save`` handles a model with
    its external data file."""
    path = pathlib.Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = pathlib.Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> pathlib.Path:
    """Write ``data`` (str: UTF-8) to ``path`` atomically (see ``atomic_path``)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return pathlib.Path(path)


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) for t in _get_all_tensors(proto))
