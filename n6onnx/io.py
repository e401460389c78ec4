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
import signal
import tempfile
import threading
from typing import Iterator

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from .errors import BadArgumentError, BadModelError, N6Error

MIN_OPSET = 17
# Above this many bytes of tensor data a model is saved with external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def load_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Load and check an ONNX model with its external data read into memory, raising BadModelError with
    a clear reason. ``load`` reads no weight values (use it where the model may be large)."""
    p = pathlib.Path(path)
    model = _read_checked(p)
    try:
        onnx.load_external_data_for_model(model, str(p.parent))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise BadModelError(f"{p}: could not read external data: {first_line(e) if str(e).strip() else repr(e)}") from None
    return model


def _read_checked(p: pathlib.Path) -> onnx.ModelProto:
    """The model's protobuf, checked, without its external data (whose files are checked to exist, to
    stay in the model's folder and to hold every tensor's bytes)."""
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
    bad = _bad_text(model)
    if bad:
        raise BadModelError(f"{p}: not a valid ONNX model: the text field {bad} is not UTF-8 (the file is corrupt)")
    external = _check_external(p, model)
    try:
        # by path when tensors are external: the checker then finds their files beside the model
        onnx.checker.check_model(str(p) if external else model)
        # types and shapes must agree: a corrupt file can pass the checker and fail every pass later
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise BadModelError(f"{p}: invalid ONNX model: {first_line(e)}") from None
    return model


def first_line(e: BaseException) -> str:
    """An exception's message as one line: its first non-empty line (onnx's reports are multi-line)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] + (f" (and {len(lines) - 1} more line(s))" if len(lines) > 1 else "")


def _bad_text(msg, where: str = "model") -> str | None:
    """The first string field of ``msg`` (recursively) that protobuf kept as undecodable bytes, or None.
    ONNX's loader and checker accept such fields; onnx-ir's serializer later fails on them."""
    from google.protobuf.descriptor import FieldDescriptor as F

    for field, value in msg.ListFields():
        repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == F.LABEL_REPEATED
        if field.type == F.TYPE_STRING:
            for v in value if repeated else (value,):
                if isinstance(v, bytes):
                    try:
                        v.decode("utf-8")
                    except UnicodeDecodeError:
                        return f"{where}.{field.name}"
        elif field.type == F.TYPE_MESSAGE:
            items = value if repeated else (value,)
            for k, v in enumerate(items):
                if not hasattr(v, "ListFields"):  # map fields
                    continue
                bad = _bad_text(v, f"{where}.{field.name}[{k}]" if repeated else f"{where}.{field.name}")
                if bad:
                    return bad
    return None


def proto_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain opset a ModelProto imports (None when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opset(p: pathlib.Path, model: onnx.ModelProto) -> None:
    opset = proto_opset(model)
    if opset is None:
        raise BadModelError(f"{p}: the model imports no default ONNX opset")
    if opset < MIN_OPSET:
        raise BadModelError(
            f"{p}: opset {opset} is not supported (n6onnx needs opset >= {MIN_OPSET}; "
            "convert it first, e.g. with onnx.version_converter)"
        )
    latest = onnx.defs.onnx_opset_version()
    if opset > latest:
        raise BadModelError(
            f"{p}: opset {opset} is newer than this onnx ({onnx.__version__}) knows ({latest})"
        )


def _external_info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def _check_external(p: pathlib.Path, model: onnx.ModelProto) -> bool:
    """Check the external data of ``model`` (loaded from ``p``) without reading it: every location
    stays in the model's folder, names an existing file, and that file holds offset + length bytes.
    Returns whether any tensor is external."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    missing, outside, short = [], [], []
    base = p.parent
    sizes: dict[str, int] = {}
    found = False
    for t in _get_all_tensors(model):
        if not uses_external_data(t):
            continue
        found = True
        info = _external_info(t)
        loc = info.get("location", "")
        norm = os.path.normpath(loc)
        if not loc or os.path.isabs(loc) or norm == ".." or norm.startswith(".." + os.sep):
            outside.append(loc)
            continue
        f = base / norm
        if norm not in sizes:
            sizes[norm] = f.stat().st_size if f.is_file() else -1
        if sizes[norm] < 0:
            missing.append(loc)
            continue
        try:
            offset, length = int(info.get("offset", 0)), int(info["length"]) if "length" in info else None
        except ValueError:
            short.append(t.name)
            continue
        if offset < 0 or (length is not None and (length < 0 or offset + length > sizes[norm])) or offset > sizes[norm]:
            short.append(t.name)
    if outside:
        raise BadModelError(
            f"{p}: external data location(s) {', '.join(repr(x) for x in sorted(set(outside)))} point outside the "
            f"model's folder {base}; ONNX only reads external data from files beside (or below) the model"
        )
    if missing:
        raise BadModelError(
            f"{p}: external data file(s) missing: {', '.join(sorted(set(missing)))} "
            f"(expected next to the model in {base})"
        )
    if short:
        raise BadModelError(f"{p}: could not read external data: the data of tensor(s) {', '.join(short[:3])}"
                            f"{' ...' if len(short) > 3 else ''} lies past the end of its file (truncated?)")
    return found


def uses_external_data(path: str | os.PathLike) -> bool:
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as uses

    m = onnx.load(str(path), load_external_data=False)
    return any(uses(t) for t in _get_all_tensors(m))


def load(path: str | os.PathLike) -> ir.Model:
    """Load as an onnx-ir model (checked), reading no weight values: tensors kept in external data stay
    on disk as ``ir.ExternalTensor``s (memory-mapped only when a pass reads their values, and copied
    file to file by ``save``). Their locations are made absolute (see ``session_for_proto`` in
    ``n6onnx.runtime`` and ``save``, which turn them back into relative ones)."""
    p = pathlib.Path(path)
    model = ir.serde.deserialize_model(_read_checked(p))
    base = p.parent.resolve()
    for g in model.graphs():
        for v in g.initializers.values():
            v.const_value = _absolute(v.const_value, base)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for name, a in list(node.attributes.items()):
            if a.type == ir.AttributeType.TENSOR:
                node.attributes[name] = ir.AttrTensor(name, _absolute(a.value, base))
            elif a.type == ir.AttributeType.TENSORS:
                node.attributes[name] = ir.AttrTensors(name, [_absolute(t, base) for t in a.value])
    return model


def _absolute(t, base: pathlib.Path):
    """An external tensor whose location is the absolute path of its file (others unchanged)."""
    if not isinstance(t, ir.ExternalTensor) or os.path.isabs(t.location):
        return t
    return ir.ExternalTensor(str(base / os.path.normpath(t.location)), t.offset, t.length, t.dtype, shape=t.shape,
                             name=t.name, doc_string=t.doc_string, metadata_props=dict(t.metadata_props))


def external_files(path: str | os.PathLike) -> list[pathlib.Path]:
    """The external data files a model file refers to (resolved; empty when it has none or is unreadable)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data as uses

    p = pathlib.Path(path)
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable file refers to nothing
        return []
    locs = {({e.key: e.value for e in t.external_data}.get("location", "")) for t in _get_all_tensors(m) if uses(t)}
    return sorted({(p.parent / loc).resolve() for loc in locs if loc})


def _same(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output_path(out: str | os.PathLike, inputs: tuple[str | os.PathLike, ...] = ()) -> pathlib.Path:
    """Refuse an output that cannot be written as a file, or that would overwrite an input model or
    one of its external data files (OUT itself, or OUT.data, which an external-data save writes and
    an inline save removes)."""
    out = pathlib.Path(out)
    if not out.name or out.name in (".", ".."):
        raise BadArgumentError(f"{out}: give a file name for the output")
    if not out.parent.is_dir():
        raise BadArgumentError(f"{out}: the output directory {out.parent} does not exist")
    if out.is_dir():
        raise BadArgumentError(f"{out}: is a directory; give a file name")
    if out.exists() and not out.is_file():
        raise BadArgumentError(f"{out}: exists and is not a regular file (a device, pipe or socket); "
                               "give a file name")
    data = out.parent / (out.name + ".data")
    for i in inputs:
        i = pathlib.Path(i)
        if _same(out, i):
            raise BadArgumentError(f"{out}: refusing to overwrite the input model")
        for f in [i] + external_files(i):
            if _same(out, f):
                raise BadArgumentError(f"{out}: refusing to overwrite {f.name}, the external data of the input model")
            if _same(data, f):
                what = "the input model" if f == i else "the input model's external data"
                raise BadArgumentError(f"{out}: its data file {data.name} would overwrite {what} ({f}); "
                                       "choose another output name")
    return out


class Interrupted(SystemExit):
    """Raised in place of a terminating signal while a file is being written, so that cleanup runs."""


@contextlib.contextmanager
def cleanup_on_signal():
    """Turn SIGTERM and SIGHUP into an exception (exit status 128 + signal) inside the block, so
    ``finally`` clauses remove temporary files; the previous handlers come back afterwards. Only in
    the main thread (signal handlers can be set nowhere else); SIGINT already raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def umask() -> int:
    """The process umask (read without changing it where /proc tells it)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save(model: ir.Model | onnx.ModelProto, out: str | os.PathLike, *, external_data: bool | None = None,
         inputs: tuple[str | os.PathLike, ...] = ()) -> pathlib.Path:
    """Atomically save; use external data when asked or when the model exceeds protobuf's 2 GB.

    Everything is written into a hidden temporary folder beside ``out`` and renamed into place; the
    folder is removed on any error, on KeyboardInterrupt and on SIGTERM/SIGHUP. Files get the
    permissions of any file the user writes (0666 minus the umask). External data files that the
    previous ``out`` used and the new one does not (an inline save over an external-data one) are
    removed. OS errors become one-line ``N6Error``s. ``inputs`` are never overwritten."""
    out = check_output_path(out, inputs)
    if isinstance(model, onnx.ModelProto) and external_tensors(model):
        model = ir.serde.deserialize_model(model)  # its external tensors (from ``load``) are copied file to file
    if isinstance(model, ir.Model):
        if external_data is None:
            external_data = _ir_tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD
        # with external data, onnx-ir writes tensor by tensor (external ones file to file): no copy in memory
        proto = None if external_data else materialize(ir.serde.serialize_model(model))
    else:
        proto = model
        if external_data is None:
            external_data = _tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD
    data_name = out.name + ".data"
    protected = {pathlib.Path(i).resolve() for i in inputs} | {f for i in inputs for f in external_files(i)}
    stale = [f for f in external_files(out) if f.parent == out.parent.resolve() and f not in protected] \
        if out.exists() else []
    mode = 0o666 & ~umask()
    try:
        with cleanup_on_signal():
            tmpdir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
            try:
                tmp_model = tmpdir / out.name
                if proto is None:
                    _save_streaming(model, tmp_model, data_name)
                elif external_data:
                    onnx.save_model(
                        proto, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024,
                    )
                else:
                    onnx.save_model(proto, str(tmp_model))
                written = [f for f in (tmp_model, tmpdir / data_name) if f.exists()]
                for f in written:
                    os.chmod(f, mode)
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
                if (tmpdir / data_name).exists():
                    os.replace(tmpdir / data_name, out.parent / data_name)
                os.replace(tmp_model, out)
            finally:
                shutil.rmtree(tmpdir, ignore_errors=True)
            keep = (out.parent / data_name).resolve() if external_data else None
            for f in stale:
                if f != keep and f.is_file():
                    f.unlink()
    except OSError as e:
        raise N6Error(f"{out}: cannot write the model: {e.strerror or e}") from None
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


def _save_streaming(model: ir.Model, path: pathlib.Path, data_name: str) -> None:
    """Save ``model`` to ``path`` with tensors of 1024 bytes or more in ``data_name`` beside it, written one
    tensor at a time by onnx-ir (external ones copied file to file); the model is left as it was (as
    ``ir.save`` does)."""
    _inline_attribute_tensors(model)
    values = [v for g in model.graphs() for v in g.initializers.values()]
    tensors = [v.const_value for v in values]
    try:
        ir.external_data.unload_from_model(model, path.parent, data_name, size_threshold_bytes=1023)
        onnx.save_model(ir.serde.serialize_model(model), str(path))
    finally:
        for v, t in zip(values, tensors):
            v.const_value = t


def _ir_tensor_bytes(model: ir.Model) -> int:
    """Bytes of the model's initializers, from their shapes (no data is read)."""
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None)


def _inline_attribute_tensors(model: ir.Model) -> None:
    """Tensor attributes kept in external data are read into memory (``ir.save`` moves initializers only)."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for name, a in list(node.attributes.items()):
            if a.type == ir.AttributeType.TENSOR and isinstance(a.value, ir.ExternalTensor):
                node.attributes[name] = ir.AttrTensor(name, ir.Tensor(a.value.numpy().copy(), name=a.value.name))


def external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``proto`` (graph, subgraphs, attributes) whose data is in external files."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def read_external(t: onnx.TensorProto, base: str | os.PathLike = "") -> bytes:
    """The bytes of an external tensor (its location absolute, as ``load`` makes it, or relative to ``base``)."""
    info = _external_info(t)
    path = os.path.join(base, info["location"])
    with open(path, "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def materialize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Read the external tensors of a proto made from a ``load``ed model into it, in place (for tools that
    need every value in memory: onnxruntime's quantizer, healing, an inline save). Returns ``proto``."""
    for t in external_tensors(proto):
        t.raw_data = read_external(t)
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
    return proto


def structure(model: onnx.ModelProto | ir.Model, threshold: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` for the checker and shape inference without its weight values: initializers
    of ``threshold`` bytes or more, and every external one, become graph inputs of the same type and
    shape (small ones, such as shapes that inference reads, stay). Tensors are not copied."""
    from onnx.external_data_helper import uses_external_data

    if isinstance(model, ir.Model):  # large in-memory tensors stand in as external ones while serialising
        swapped = [(v, v.const_value) for g in model.graphs() for v in g.initializers.values()
                   if v.const_value is not None and not isinstance(v.const_value, ir.ExternalTensor)
                   and v.const_value.nbytes >= threshold]
        try:
            for v, t in swapped:
                v.const_value = ir.ExternalTensor("n6onnx-structure-only", 0, t.nbytes, t.dtype, shape=t.shape,
                                                  name=v.name)
            proto = ir.serde.serialize_model(model)
        finally:
            for v, t in swapped:
                v.const_value = t
    else:
        proto = model

    m = onnx.ModelProto()
    _copy_fields(m, proto, skip=("graph",))
    g, src = m.graph, proto.graph
    _copy_fields(g, src, skip=("initializer",))
    for t in src.initializer:
        big = uses_external_data(t) or len(t.raw_data) >= threshold
        if not big:
            g.initializer.append(t)
        elif not any(i.name == t.name for i in src.input):
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return m


def _copy_fields(dst, src, skip: tuple[str, ...]) -> None:
    """Copy the set fields of protobuf message ``src`` into ``dst``, but those named in ``skip``."""
    for f, v in src.ListFields():
        if f.name in skip:
            continue
        if (f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED):
            getattr(dst, f.name).extend(v)
        elif f.message_type is not None:
            getattr(dst, f.name).CopyFrom(v)
        else:
            setattr(dst, f.name, v)
