"""Output files: OS errors are one line; a SIGTERM during the save leaves nothing behind; an
inline save over an external-data output removes the stale .data; outputs follow the umask; an
output never aliases an input model or its external data; external data pointing outside the
model's folder is a clean error. The input and its data stay byte- and inode-identical."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import onnx
import pytest

import n6onnx
from n6onnx import io
from n6onnx.errors import N6Error


def _external(src, folder, name="in.onnx", location=None):
    """A copy of ``src`` in ``folder`` with its tensors in one external data file."""
    folder.mkdir(parents=True, exist_ok=True)
    m = onnx.load(str(src))
    dst = folder / name
    onnx.save_model(m, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location or name + ".data", size_threshold=1024)
    return dst


@pytest.fixture
def bert(zoo_export):
    return zoo_export("bert", "dynamo20")


def test_output_in_missing_folder_or_proc(bert, tmp_path, hx):
    hx.clean(hx.cli("rewrite", bert, "-o", tmp_path / "nope" / "o.onnx", "--pass", "gelu=phi6"), "does not exist")
    hx.clean(hx.cli("rewrite", bert, "-o", "/proc/n6onnx-hostile.onnx", "--pass", "gelu=phi6"), "cannot write")


def test_output_that_is_a_fifo_is_refused_not_replaced(bert, tmp_path, hx):
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    hx.clean(hx.cli("rewrite", bert, "-o", fifo, "--pass", "gelu=phi6"), "not a regular file")
    assert fifo.is_fifo()


def test_output_whose_parent_is_a_file(bert, tmp_path, hx):
    (tmp_path / "f").write_text("x")
    hx.clean(hx.cli("rewrite", bert, "-o", tmp_path / "f" / "o.onnx", "--pass", "gelu=phi6"))


def test_full_disk_is_one_line(bert, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    with pytest.raises(N6Error, match="No space left"):
        n6onnx.rewrite(bert, tmp_path / "o.onnx", ["gelu=phi6"])
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_save_leaves_nothing(bert, tmp_path):
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    script = textwrap.dedent(f"""
        import os, signal, onnx, n6onnx
        real = onnx.save_model
        def slow(proto, path, *a, **k):
            real(proto, path, *a, **k)            # a partial model now sits in the temporary folder
            os.kill(os.getpid(), signal.SIGTERM)  # killed while saving
        onnx.save_model = slow
        n6onnx.rewrite({str(bert)!r}, {str(out)!r}, ["gelu=phi6"], external_data=True)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 128 + 15, r.stderr[-2000:]
    assert list(out.parent.iterdir()) == [], "temporary files left behind"


def test_inline_over_external_output_removes_stale_data(bert, tmp_path):
    out = tmp_path / "o.onnx"
    n6onnx.rewrite(bert, out, ["gelu=phi6"], external_data=True)
    assert (tmp_path / "o.onnx.data").is_file()
    n6onnx.rewrite(bert, out, ["gelu=phi6"], external_data=False)
    assert not (tmp_path / "o.onnx.data").exists()
    io.load(out)  # loads on its own


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_outputs_follow_the_umask(bert, tmp_path, mask):
    out = tmp_path / "o.onnx"
    old = os.umask(mask)
    try:
        n6onnx.rewrite(bert, out, ["gelu=phi6"], external_data=True)
    finally:
        os.umask(old)
    for f in (out, tmp_path / "o.onnx.data"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, (f, oct(f.stat().st_mode))


def test_input_data_named_like_the_output_data_is_never_overwritten(bert, tmp_path, hx):
    src = _external(bert, tmp_path, "in.onnx", location="out.onnx.data")
    before = hx.fingerprint(src, tmp_path / "out.onnx.data")
    for ext in ("--external-data", "--no-external-data"):
        r = hx.cli("rewrite", src, "-o", tmp_path / "out.onnx", "--pass", "gelu=phi6", ext)
        hx.clean(r, "out.onnx.data", "input")
        assert hx.fingerprint(src, tmp_path / "out.onnx.data") == before
    io.load(src)


def test_output_equal_to_the_inputs_external_data_is_refused(bert, tmp_path, hx):
    src = _external(bert, tmp_path, "in.onnx", location="w.bin")
    before = hx.fingerprint(src, tmp_path / "w.bin")
    hx.clean(hx.cli("rewrite", src, "-o", tmp_path / "w.bin", "--pass", "gelu=phi6"), "external data")
    hx.clean(hx.cli("rewrite", src, "-o", src, "--pass", "gelu=phi6"), "input model")
    assert hx.fingerprint(src, tmp_path / "w.bin") == before


def test_inline_save_keeps_data_shared_with_the_input(bert, tmp_path, hx):
    """The old output refers to the input's data file: an inline save over it must not delete it."""
    src = _external(bert, tmp_path, "in.onnx", location="w.bin")
    shutil.copy(src, tmp_path / "out.onnx")  # an earlier copy sharing w.bin
    before = hx.fingerprint(src, tmp_path / "w.bin")
    n6onnx.rewrite(src, tmp_path / "out.onnx", ["gelu=phi6"], external_data=False)
    assert hx.fingerprint(src, tmp_path / "w.bin") == before
    io.load(src)


def test_rewrite_of_external_input_leaves_it_identical(bert, tmp_path, hx):
    src = _external(bert, tmp_path / "in", "m.onnx")
    before = hx.fingerprint(src, src.parent / "m.onnx.data")
    r = hx.cli("rewrite", src, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o.onnx.data").is_file()
    assert hx.fingerprint(src, src.parent / "m.onnx.data") == before


@pytest.mark.parametrize("loc", ["../outside.data", "/etc/hostname", "a/../../x.data"])
def test_external_data_outside_the_folder(bert, tmp_path, hx, loc):
    m = onnx.load(str(bert))
    src = _external(bert, tmp_path / "m", "in.onnx", location="in.data")
    m = onnx.load(str(src), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = loc
    onnx.save_model(m, str(src))
    hx.clean(hx.cli("inspect", src), "outside")
