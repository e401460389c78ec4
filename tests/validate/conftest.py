"""Fixtures for the validate tests: small hand-built ONNX models (onnx.helper), a CLI runner, and
independent numpy references (nothing here calls n6onnx.validate.metrics)."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper



def _save(graph, path: pathlib.Path, opset: int = 18) -> pathlib.Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def linear_model(tmp_path):
    """``make(W, name="logits", batch=4, in_name="x", dtype=np.float32) -> path``: ``out = x @ W``."""
    counter = iter(range(10_000))

    def make(w: np.ndarray, name: str = "logits", batch=4, in_name: str = "x", in_type=TensorProto.FLOAT):
        d_in, d_out = w.shape
        nodes = []
        x = in_name
        if in_type != TensorProto.FLOAT:
            nodes.append(helper.make_node("Cast", [in_name], ["xf"], to=TensorProto.FLOAT))
            x = "xf"
        nodes.append(helper.make_node("MatMul", [x, "W"], [name]))
        g = helper.make_graph(
            nodes, "linear",
            [helper.make_tensor_value_info(in_name, in_type, [batch, d_in])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, d_out])],
            [numpy_helper.from_array(np.asarray(w, np.float32), "W")],
        )
        return _save(g, tmp_path / f"linear{next(counter)}.onnx")

    return make


@pytest.fixture
def hidden_model(tmp_path):
    """``make(scale, batch=2, seq=4) -> path``: inputs ``x`` float [B, L, H] and ``attention_mask``
    int64 [B, L]; output ``last_hidden_state = x * scale * mask[..., None]`` (scale: [H])."""
    counter = iter(range(10_000))

    def make(scale: np.ndarray, batch=2, seq=4, out_name="last_hidden_state"):
        h = len(scale)
        nodes = [
            helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["mf", "axes"], ["m3"]),
            helper.make_node("Mul", ["x", "S"], ["xs"]),
            helper.make_node("Mul", ["xs", "m3"], [out_name]),
        ]
        g = helper.make_graph(
            nodes, "hidden",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, h]),
             helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, seq])],
            [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [batch, seq, h])],
            [numpy_helper.from_array(np.asarray(scale, np.float32), "S"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes")],
        )
        return _save(g, tmp_path / f"hidden{next(counter)}.onnx")

    return make


@pytest.fixture
def token_model(tmp_path):
    """``make(batch=2, seq=8, names=(input_ids, attention_mask, token_type_ids), dims=None) -> path``:
    output ``y`` float [B, L] = input_ids * attention_mask + 1000 * token_type_ids (as float)."""
    counter = iter(range(10_000))

    def make(batch=2, seq=8, names=("input_ids", "attention_mask", "token_type_ids"), dtype=TensorProto.INT64):
        nodes = []
        for n in names:
            nodes.append(helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Identity", ["input_ids_f"], ["t0"]))
        acc = "t0"
        if "attention_mask" in names:
            nodes.append(helper.make_node("Mul", [acc, "attention_mask_f"], ["t1"]))
            acc = "t1"
        if "token_type_ids" in names:
            nodes.append(helper.make_node("Mul", ["token_type_ids_f", "K"], ["tt"]))
            nodes.append(helper.make_node("Add", [acc, "tt"], ["t2"]))
            acc = "t2"
        nodes.append(helper.make_node("Identity", [acc], ["y"]))
        g = helper.make_graph(
            nodes, "tokens",
            [helper.make_tensor_value_info(n, dtype, [batch, seq]) for n in names],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq])],
            [numpy_helper.from_array(np.array(1000.0, np.float32), "K")],
        )
        return _save(g, tmp_path / f"tokens{next(counter)}.onnx")

    return make


@pytest.fixture
def cli():
    from n6onnx.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def ref():
    """Independent float64 numpy references."""

    class Ref:
        @staticmethod
        def cos(a, b):
            a = np.asarray(a, np.float64).reshape(len(a), -1)
            b = np.asarray(b, np.float64).reshape(len(b), -1)
            return np.array([float(u @ v / np.sqrt((u @ u) * (v @ v))) for u, v in zip(a, b)])

        @staticmethod
        def pool(h, m):
            h = np.asarray(h, np.float64)
            return np.stack([h[i][np.asarray(m[i]) > 0].mean(axis=0) for i in range(len(h))])

        @staticmethod
        def kl(o, c):
            o = np.asarray(o, np.float64)
            c = np.asarray(c, np.float64)
            p = np.exp(o) / np.exp(o).sum(-1, keepdims=True)
            q = np.exp(c) / np.exp(c).sum(-1, keepdims=True)
            return (p * np.log(p / q)).sum(-1)

        @staticmethod
        def nn(e):
            e = np.asarray(e, np.float64)
            n = len(e)
            out = []
            for i in range(n):
                best, arg = -2.0, -1
                for j in range(n):
                    if j != i:
                        s = e[i] @ e[j] / np.sqrt((e[i] @ e[i]) * (e[j] @ e[j]))
                        if s > best:
                            best, arg = s, j
                out.append(arg)
            return np.array(out)

    return Ref()
