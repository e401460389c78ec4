"""The CLI: inspect/rewrite output, and bad input: a clear message, a non-zero exit, no output
file, and the input file byte-identical afterwards."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import n6onnx
from n6onnx.cli import main


def _gelu_model(opset=18, n=32):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "W")
    b = numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "B")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Add", ["m", "B"], ["a"])]
    if opset >= 20:
        nodes.append(helper.make_node("Gelu", ["a"], ["y"]))
    else:
        half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
        one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
        s2 = numpy_helper.from_array(np.array(2 ** 0.5, np.float32), "s2")
        nodes += [helper.make_node("Div", ["a", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
                  helper.make_node("Add", ["e", "one"], ["p"]), helper.make_node("Mul", ["a", "p"], ["q"]),
                  helper.make_node("Mul", ["q", "half"], ["y"])]
        w, b = w, b
    inits = [w, b] + ([] if opset >= 20 else [half, one, s2])
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, n])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, n])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture
def model_file(tmp_path) -> pathlib.Path:
    p = tmp_path / "model.onnx"
    onnx.save(_gelu_model(), str(p))
    return p


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_inspect_json(model_file):
    r = invoke("inspect", model_file, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    for kind in ("gelu", "ffn", "attention", "moe"):
        assert isinstance(data[kind]["found"], int)
    assert data["gelu"]["found"] == 1 and data["gelu"]["sites"][0]["nodes"]


def test_rewrite_json_and_output(model_file, tmp_path):
    out = tmp_path / "out.onnx"
    r = invoke("rewrite", model_file, "-o", out, "--pass", "gelu=phi6", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["rewritten"] == {"gelu": 1}
    assert out.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_rewrite_human_output_warns_uncalibrated(model_file, tmp_path):
    r = invoke("rewrite", model_file, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6")
    assert r.exit_code == 0
    assert "uncalibrated" in r.output


def _truncated(p: pathlib.Path):
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _not_onnx(p: pathlib.Path):
    p.write_text("this is a text file, not a model\n" * 10)


def _old_opset(p: pathlib.Path):
    m = _gelu_model()
    m.opset_import[0].version = 11
    onnx.save(m, str(p))


def _missing_external(p: pathlib.Path):
    m = _gelu_model()
    onnx.save_model(m, str(p), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    (p.parent / "model.onnx.data").unlink()


def _png(p: pathlib.Path):
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (_truncated, "truncated"),
        (_not_onnx, "not"),
        (_png, "not"),
        (_old_opset, "opset 11 is not supported"),
        (_missing_external, "external data file(s) missing"),
    ],
    ids=["truncated", "text", "binary", "old-opset", "missing-external-data"],
)
@pytest.mark.parametrize("command", ["inspect", "rewrite"])
def test_bad_model(corrupt, message, command, model_file, tmp_path):
    corrupt(model_file)
    before = model_file.read_bytes()
    files_before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "out.onnx"
    args = ["inspect", model_file] if command == "inspect" else ["rewrite", model_file, "-o", out, "--pass", "gelu=phi6"]
    r = invoke(*args)
    assert r.exit_code != 0
    assert "error:" in r.output and message in r.output.replace("\n", " "), r.output
    assert "Traceback" not in r.output
    assert model_file.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == files_before  # nothing written


def test_output_in_missing_directory(model_file, tmp_path):
    before = model_file.read_bytes()
    r = invoke("rewrite", model_file, "-o", tmp_path / "nope" / "out.onnx", "--pass", "gelu=phi6")
    assert r.exit_code != 0 and "does not exist" in r.output
    assert not (tmp_path / "nope").exists() and model_file.read_bytes() == before


@pytest.mark.parametrize("spec", ["gelu=nope", "attention=magic", "gelu"])
def test_unknown_pass(spec, model_file, tmp_path):
    before = model_file.read_bytes()
    r = invoke("rewrite", model_file, "-o", tmp_path / "out.onnx", "--pass", spec)
    assert r.exit_code != 0 and "pass" in r.output and "gelu=phi6" in r.output
    assert not (tmp_path / "out.onnx").exists() and model_file.read_bytes() == before


def test_unknown_int8_guard(model_file, tmp_path):
    r = invoke("rewrite", model_file, "-o", tmp_path / "out.onnx", "--pass", "gelu=phi6", "--int8-guard", "per-row")
    assert r.exit_code != 0 and "--int8-guard" in r.output and "per-channel" in r.output
    assert not (tmp_path / "out.onnx").exists()


def test_refuses_to_overwrite_input(model_file):
    before = model_file.read_bytes()
    r = invoke("rewrite", model_file, "-o", model_file, "--pass", "gelu=phi6")
    assert r.exit_code != 0 and "input" in r.output
    assert model_file.read_bytes() == before


def test_missing_file(tmp_path):
    r = invoke("inspect", tmp_path / "absent.onnx")
    assert r.exit_code != 0 and "no such file" in r.output


def test_external_data_round_trip(tmp_path):
    """A model with external data loads, and its rewrite is saved with external data too."""
    src = tmp_path / "ext.onnx"
    onnx.save_model(_gelu_model(), str(src), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "out.onnx"
    r = invoke("rewrite", src, "-o", out, "--pass", "gelu=phi6")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out.onnx.data").is_file()
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    y = n6onnx.InferenceSession(out).run(None, {"x": x})[0]
    m = onnx.load(str(src))
    w = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "W"))
    b = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "B"))
    c = np.clip(x @ w + b, -2, 2)
    np.testing.assert_allclose(y, c * c - c + 1, rtol=1e-5, atol=1e-5)


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    """Above the protobuf limit (threshold lowered here) the output goes to external data."""
    from n6onnx import io

    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 1000)
    src = tmp_path / "m.onnx"
    onnx.save(_gelu_model(), str(src))
    n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=phi6"])
    assert (tmp_path / "o.onnx.data").is_file()
    assert io.uses_external_data(tmp_path / "o.onnx")


def test_opset20_gelu_op(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(_gelu_model(opset=20), str(src))
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=phi6"])
    assert rep.rewritten == {"gelu": 1}
