"""n6onnx.io.atomic_write / atomic_path: the one atomic write of the package."""

from __future__ import annotations

import os

import pytest

from n6onnx.io import atomic_path, atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write(target, "new ü")
    assert target.read_bytes() == "new ü".encode()
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_atomic_write_gives_a_new_file_the_usual_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "x.txt", "x")
    finally:
        os.umask(mask)
    assert (path.stat().st_mode & 0o777) == 0o644


# --- streaming: io.load reads no weight values; external data is copied file to file -------------

def _external_copy(src, folder, name="m.onnx"):
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / name
    onnx.save_model(onnx.load(str(src)), str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=name + ".data", size_threshold=1024)
    return dst


def test_load_leaves_external_weights_on_disk(zoo_export, tmp_path):
    import onnx_ir as ir

    from n6onnx import io

    src = _external_copy(zoo_export("llama", "dynamo20"), tmp_path)
    m = io.load(src)
    ext = [v.const_value for v in m.graph.initializers.values() if isinstance(v.const_value, ir.ExternalTensor)]
    assert len(ext) >= 8  # the projections of both layers
    assert all(t.raw is None for t in ext)  # nothing mapped, nothing read
    assert all(os.path.isabs(t.location) for t in ext)


def test_truncated_external_data_is_a_clean_error(zoo_export, tmp_path):
    from n6onnx import io
    from n6onnx.errors import BadModelError

    src = _external_copy(zoo_export("llama", "dynamo20"), tmp_path)
    data = tmp_path / "m.onnx.data"
    os.truncate(data, data.stat().st_size // 2)
    with pytest.raises(BadModelError, match="past the end of its file"):
        io.load(src)


@pytest.mark.parametrize("calibrated", [False, True])
def test_rewrite_of_an_external_data_model_equals_the_inline_one(zoo_export, tmp_path, calibrated):
    """The same rewrite (with the ORT runs of calibration) from an external-data copy and from the
    single-file export gives byte-identical outputs; the external one is saved with external data."""
    import numpy as np

    import n6onnx
    from n6onnx import io
    from n6onnx.testing import zoo

    inline = zoo_export("llama", "dynamo20")
    src = _external_copy(inline, tmp_path / "in")
    feeds = zoo.example_inputs("llama")
    cal = None
    if calibrated:
        cal = tmp_path / "cal.npz"
        np.savez(cal, **feeds)
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    n6onnx.rewrite(inline, a, ["ffn=phi-bottleneck:1"], calibrate=cal)
    n6onnx.rewrite(src, b, ["ffn=phi-bottleneck:1"], calibrate=cal)
    assert io.uses_external_data(b) and not io.uses_external_data(a)
    ra = n6onnx.InferenceSession(str(a)).run(None, feeds)
    rb = n6onnx.InferenceSession(str(b)).run(None, feeds)
    assert all(np.array_equal(x, y) for x, y in zip(ra, rb))
    orig = n6onnx.InferenceSession(str(inline)).run(None, feeds)[0]
    assert not np.array_equal(orig, ra[0])  # the rewrite changed something


def test_session_reads_external_weights_from_their_folder(zoo_export, tmp_path):
    """A loaded model's proto (external tensors at absolute locations) runs in onnxruntime as the file does;
    the proto is left as it was."""
    import numpy as np
    import onnx_ir as ir

    from n6onnx import io, runtime
    from n6onnx.testing import zoo

    src = _external_copy(zoo_export("llama", "dynamo20"), tmp_path)
    proto = ir.to_proto(io.load(src))
    before = proto.SerializeToString()
    feeds = zoo.example_inputs("llama")
    got = runtime.session_for(proto).run(None, feeds)[0]
    assert proto.SerializeToString() == before
    want = runtime.InferenceSession(str(src)).run(None, feeds)[0]
    np.testing.assert_array_equal(got, want)
