"""File-level mutation fuzz: a small model truncated at every cut point, and byte flips. Every
mutant either loads and runs the command, or fails with one clean N6Error (CLI: one line, exit 2);
never a traceback, never a hang, and the mutant file itself is never modified."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import n6onnx
from n6onnx import io
from n6onnx.errors import N6Error


def _small_ffn(path):
    """x -> MatMul -> Add -> Gelu -> MatMul -> Add -> + x: a complete FFN block of a few KB."""
    rng = np.random.default_rng(0)
    D, H = 4, 8

    def t(name, a):
        return onnx.numpy_helper.from_array(a.astype(np.float32), name)

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Gelu", ["h1"], ["g"]), helper.make_node("MatMul", ["g", "w2"], ["o0"]),
             helper.make_node("Add", ["o0", "b2"], ["o1"]), helper.make_node("Add", ["x", "o1"], ["y"])]
    g = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, D])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, D])],
                          [t("w1", rng.standard_normal((D, H))), t("b1", rng.standard_normal(H)),
                           t("w2", rng.standard_normal((H, D))), t("b2", rng.standard_normal(D))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _small_ffn(tmp_path_factory.mktemp("mut") / "ffn.onnx")


def _attempt(path, out):
    """Load, inspect and rewrite a mutant: returns 'ok' or 'error' (an N6Error); anything else raises."""
    try:
        io.load(path)
    except N6Error as e:
        assert "\n" not in str(e).strip(), str(e)
        return "error"
    try:
        n6onnx.inspect(path)
        n6onnx.rewrite(path, out, ["gelu=phi6"])
    except N6Error as e:
        assert "\n" not in str(e).strip(), str(e)
        return "error"
    return "ok"


def test_truncation_at_every_cut_point(small, tmp_path):
    data = small.read_bytes()
    results = {}
    for cut in range(len(data)):
        p = tmp_path / "t.onnx"
        p.write_bytes(data[:cut])
        try:
            io.load(p)
            results[cut] = "ok"
        except N6Error as e:
            assert "\n" not in str(e).strip()
            results[cut] = "error"
        assert p.read_bytes() == data[:cut]
    assert results[0] == "error" and list(results.values()).count("ok") < len(data) // 10


def test_truncation_through_the_cli(small, tmp_path, hx):
    data = small.read_bytes()
    for cut in sorted({0, 1, 7, len(data) // 3, len(data) // 2, len(data) - 1}):
        p = tmp_path / f"t{cut}.onnx"
        p.write_bytes(data[:cut])
        for args in (["inspect", p], ["rewrite", p, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6"],
                     ["validate", p, p, "--random", "1"], ["bench", p, "--seconds", "0.2", "--window", "0.1"]):
            hx.clean(hx.cli(*args))


def test_byte_flips(small, tmp_path):
    data = small.read_bytes()
    rng = np.random.default_rng(18)
    outcomes = []
    for k in range(120):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), size=int(rng.integers(1, 4))):
            b[pos] ^= int(rng.integers(1, 256))
        p = tmp_path / "f.onnx"
        p.write_bytes(bytes(b))
        digest = hashlib.sha256(bytes(b)).hexdigest()
        outcomes.append(_attempt(p, tmp_path / "o.onnx"))
        assert hashlib.sha256(p.read_bytes()).hexdigest() == digest
    assert "error" in outcomes  # the fuzz reached the error paths
