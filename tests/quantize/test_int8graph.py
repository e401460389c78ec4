"""quantize.int8graph: the float graph back from what --quantize int8 wrote; quantizing it again gives
the same graph and the same int8 weights; other formats are refused by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from n6onnx import io
from n6onnx.errors import BadArgumentError
from n6onnx.quantize import int8graph, quantize_proto
from n6onnx.runtime import session_for
from n6onnx import feeds as F


@pytest.mark.parametrize("model", ["bert", "gpt2"])  # gpt2: Gemm, which the quantizer turns into MatMul + Add
def test_dequantize_then_quantize_is_the_same_model(zoo_export, model):
    proto = io.load_proto(zoo_export(model, "dynamo20"))
    _, q = quantize_proto(proto, "int8")
    before = q.SerializeToString()
    f = int8graph.dequantize(q)
    assert q.SerializeToString() == before  # input not modified
    assert not int8graph.is_quantized(f) and int8graph.is_quantized(q)
    onnx.checker.check_model(f, full_check=True)
    _, q2 = quantize_proto(f, "int8")
    assert int8graph.structure(q2) == int8graph.structure(q)
    a = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in q2.graph.initializer}
    for name, v in a.items():
        if name.endswith(("_quantized", "_scale", "_zero_point")):
            np.testing.assert_array_equal(b[name], v, err_msg=name)
    # the dequantized float model computes what the int8 model's weights say (activations float)
    s_f, s_o = session_for(f), session_for(proto)
    fd = F.random_feeds(s_o, 1, seed=0)[0]
    ref = s_o.run(None, fd)[0]
    assert np.abs(s_f.run(None, fd)[0] - ref).max() < 0.05 * np.abs(ref).max()


def test_quantized_matmuls_counts_the_replaced_nodes(zoo_export):
    proto = io.load_proto(zoo_export("bert", "dynamo20"))
    rep, q = quantize_proto(proto, "int8")
    got = int8graph.quantized_matmuls(proto, q)
    assert len(got) == rep.quantized and all(got.values())


@pytest.mark.parametrize("mode,op", [("int4", "MatMulNBits"), ("int8:static", "QuantizeLinear")])
def test_other_formats_are_refused_by_name(zoo_export, mode, op):
    proto = io.load_proto(zoo_export("bert", "dynamo20"))
    feeds = F.random_feeds(session_for(proto), 2, seed=0)
    _, q = quantize_proto(proto, mode, calibration_feeds=feeds)
    with pytest.raises(BadArgumentError, match=op):
        int8graph.dequantize(q)


def test_per_tensor_weights_are_refused(zoo_export, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = zoo_export("bert", "dynamo20")
    quantize_dynamic(str(src), str(tmp_path / "pt.onnx"), per_channel=False, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul"])
    with pytest.raises(BadArgumentError, match="per tensor"):
        int8graph.dequantize(onnx.load(tmp_path / "pt.onnx"))
