"""n6onnx.quantize: the mode grammar, onnxruntime's quantizers as a stage, n6 nodes kept float."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from n6onnx import quantize as Q
from n6onnx import runtime
from n6onnx.testing import zoo
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError


@pytest.mark.parametrize("text,kind,block", [("int8", "int8", None), ("INT8", "int8", None),
                                             ("int8:static", "int8:static", None), ("int4", "int4", 32),
                                             ("int4:128", "int4", 128)])
def test_mode_grammar(text, kind, block):
    m = Q.parse_mode(text)
    assert (m.kind, m.block) == (kind, block)
    assert Q.parse_mode(str(m)) == m


@pytest.mark.parametrize("text", ["int9", "int4:abc", "int4:24", "int4:8", "", "int8:dyn"])
def test_mode_grammar_rejects(text):
    with pytest.raises(BadArgumentError, match="int4|quantize mode"):
        Q.parse_mode(text)


def _run(path, feeds, library=True):
    so, _ = runtime.session_options(2, use_library=library)
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [s.run(None, f)[0] for f in feeds]


def _cos(a, b):
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def _feeds(n=4, seed=0):
    base = zoo.example_inputs("bert")
    rng = np.random.default_rng(seed)
    return [{k: (rng.integers(1, 1000, a.shape).astype(a.dtype) if k == "input_ids" else a) for k, a in base.items()}
            for _ in range(n)]


@pytest.mark.parametrize("mode,min_cos", [("int8", 0.99), ("int8:static", 0.97), ("int4", 0.97)])
def test_quantize_modes_against_original(zoo_export, tmp_path, mode, min_cos):
    src = zoo_export("bert", "dynamo20")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    feeds = _feeds()
    dst = tmp_path / "q.onnx"
    rep = Q.quantize(src, dst, mode, calibration_feeds=_feeds(seed=1) if mode == "int8:static" else None)
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # input untouched
    assert rep.candidates > 0 and rep.quantized > 0 and rep.op_counts
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ops & {"MatMulInteger", "MatMulNBits", "DequantizeLinear"}
    ref, got = _run(src, feeds), _run(dst, feeds)
    assert all(_cos(r, g) >= min_cos for r, g in zip(ref, got))
    assert any(not np.array_equal(r, g) for r, g in zip(ref, got))  # it was really quantized


def test_quantize_is_deterministic_and_excludes(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    ra = Q.quantize(src, a, "int8")
    Q.quantize(src, b, "int8")
    assert a.read_bytes() == b.read_bytes()
    first = next(n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul")
    rc = Q.quantize(src, tmp_path / "c.onnx", "int8", exclude_nodes=[first])
    assert rc.quantized == ra.quantized - 1
    assert first in {n.name for n in onnx.load(str(tmp_path / "c.onnx")).graph.node if n.op_type == "MatMul"}
    with pytest.raises(BadArgumentError, match="no node named"):
        Q.quantize(src, tmp_path / "d.onnx", "int8", exclude_nodes=["nope"])
    with pytest.raises(BadArgumentError, match="needs calibration"):
        Q.quantize(src, tmp_path / "d.onnx", "int8:static")
    assert not (tmp_path / "d.onnx").exists()


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_n6_nodes_stay_float_and_run_without_library(zoo_export, tmp_path, mode):
    import n6onnx

    src = zoo_export("bert", "dynamo20")
    phi6 = tmp_path / "phi6.onnx"
    n6onnx.rewrite(src, phi6, ["gelu=phi6"])
    dst = tmp_path / "q.onnx"
    rep = Q.quantize(phi6, dst, mode)
    before = [n for n in onnx.load(str(phi6)).graph.node if n.domain == "n6onnx"]
    after = [n for n in onnx.load(str(dst)).graph.node if n.domain == "n6onnx"]
    assert rep.float_n6_nodes == len(before) == len(after) > 0
    assert [n.op_type for n in after] == [n.op_type for n in before]
    assert set(rep.functions) >= {n.op_type for n in after}
    feeds = _feeds(2)
    with_lib, without = _run(dst, feeds, True), _run(dst, feeds, False)
    for x, y in zip(with_lib, without):
        assert np.all(np.isfinite(x)) and _cos(x, y) > 0.999


def test_cli_quantize_without_pass(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8", "--json"])
    assert r.exit_code == 0, r.output
    import json

    d = json.loads(r.output)
    assert d["quantization"]["mode"] == "int8" and d["quantization"]["quantized"] > 0
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "x.onnx"), "--quantize", "int3"])
    assert r.exit_code == 2 and "unknown quantize mode 'int3'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "x.onnx")])
    assert r.exit_code == 2 and "no pass given" in r.output
    assert not (tmp_path / "x.onnx").exists()


def test_int8_quantizes_a_graph_that_onnxruntime_fused(decoder_export, tmp_path):
    """A graph fused by onnxruntime's transformer optimizer holds onnxruntime-only ops (GPT-2: FastGelu, the
    FullyConnect MatMul) whose outputs ONNX shape inference cannot type; the int8 stage still quantizes it
    (bench and tune quantize ORT's fused original as the "fused, then quantized" int8 reference), and the
    result keeps the original's next token as ORT runs the original."""
    from onnxruntime.transformers import optimizer
    from n6onnx.testing import zoo_decoder

    src = decoder_export("gpt2", "nokv")
    fused, out = tmp_path / "fused.onnx", tmp_path / "q.onnx"
    optimizer.optimize_model(str(src), model_type="gpt2", num_heads=zoo_decoder.HEADS, hidden_size=64,
                             opt_level=0).save_model_to_file(str(fused))
    assert "FastGelu" in {n.op_type for n in onnx.load(str(fused)).graph.node}
    Q.quantize(fused, out, "int8")
    m = onnx.load(str(out))
    assert sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in m.graph.node) >= 4
    feeds = zoo_decoder.example_inputs("gpt2", 2, 16, form="nokv")
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == ref.shape
    assert np.mean(got.argmax(-1) == ref.argmax(-1)) >= 0.9


def test_int4_logs_nothing_in_a_fresh_process(zoo_export, tmp_path):
    """onnxruntime's MatMulNBits quantizer runs logging.basicConfig(level=INFO) when first imported; the stage
    keeps the root logger's level, so `rewrite --quantize int4` does not print a "skip to quantize" line for
    every other node of the graph, nor does the rest of the run inherit INFO logging."""
    import subprocess
    import sys

    code = ("import logging, sys; from n6onnx import quantize as Q; Q.quantize(sys.argv[1], sys.argv[2], 'int4'); "
            "print(logging.getLogger().level)")
    r = subprocess.run([sys.executable, "-c", code, str(zoo_export("bert", "dynamo20")), str(tmp_path / "q.onnx")],
                       capture_output=True, text=True, check=True)
    assert "[INFO]" not in r.stderr, r.stderr[:500]
    assert r.stdout.split() == [str(30)]  # WARNING, Python's default, as before the call
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(tmp_path / "q.onnx")).graph.node)
