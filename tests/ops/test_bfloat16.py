"""The activation ops in bfloat16 on the CPU: the kernels (and the function bodies) widen to float32,
compute, and round once, so the result is the float32 reference rounded to bfloat16. numpy has no
bfloat16 and onnxruntime takes none from it: the model casts float32 -> bfloat16 -> op -> float32,
and ml_dtypes (an onnx dependency) rounds the reference."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import n6onnx
from n6onnx.ops import DOMAIN, ELEMENTWISE

from ..conftest import missing

SHAPE = (3, 5, 33)


def _model(spec) -> bytes:
    f, bf = TensorProto.FLOAT, TensorProto.BFLOAT16
    inputs = [helper.make_tensor_value_info("x", f, list(SHAPE))]
    nodes = [helper.make_node("Cast", ["x"], ["X"], to=bf)]
    args = ["X"]
    if "bias" in spec.inputs:
        inputs.append(helper.make_tensor_value_info("b", f, [SHAPE[-1]]))
        nodes.append(helper.make_node("Cast", ["b"], ["bias"], to=bf))
        args.append("bias")
    nodes += [helper.make_node(spec.name, args, ["Y"], domain=DOMAIN), helper.make_node("Cast", ["Y"], ["y"], to=f)]
    g = helper.make_graph(nodes, "bf16", inputs, [helper.make_tensor_value_info("y", f, list(SHAPE))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(18)])
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def _bf16(a: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (nearest, ties to even) and back to float32."""
    return a.astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("library", [True, False], ids=["kernel", "function"])
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_bfloat16_is_the_float32_reference_rounded_once(op, library, tmp_path):
    spec = ELEMENTWISE[op]
    if library and n6onnx.library_path() is None:
        missing("the custom-op library was not built")
    rng = np.random.default_rng(0)
    x = rng.uniform(-4, 4, SHAPE).astype(np.float32)
    x.reshape(-1)[:6] = [-2.0, 2.0, 0.0, -2.5, 2.5, 5 / 12]
    feeds = {"x": x}
    args = [_bf16(x)]
    if "bias" in spec.inputs:
        feeds["b"] = rng.uniform(-1, 1, SHAPE[-1]).astype(np.float32)
        args.append(_bf16(feeds["b"]))
    want = _bf16(np.asarray(spec.reference(*args), np.float32))
    so = ort.SessionOptions()
    if library:
        so.register_custom_ops_library(str(n6onnx.library_path()))
    so.enable_profiling, so.profile_file_prefix = True, str(tmp_path / "p")
    sess = ort.InferenceSession(_model(spec), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    ran = {e["args"].get("op_name") for e in json.load(open(sess.end_profiling())) if e.get("cat") == "Node"}
    assert (op in ran) == library, f"library={library}: ran {sorted(ran)}"  # the kernel, or the function body
    np.testing.assert_array_equal(got, want)
