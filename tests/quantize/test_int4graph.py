"""quantize.int4graph: the float graph back from what --quantize int4 wrote; quantizing it again with
the same block gives the same graph and the same 4-bit blobs and scales; other forms are refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from n6onnx import feeds as F
from n6onnx import io
from n6onnx.errors import BadArgumentError
from n6onnx.quantize import int4graph, int8graph, quantize_proto
from n6onnx.runtime import session_for


@pytest.mark.parametrize("model,mode", [("bert", "int4:16"), ("bert", "int4:32"), ("gpt2", "int4:16")])
def test_dequantize_then_quantize_is_the_same_model(zoo_export, model, mode):
    proto = io.load_proto(zoo_export(model, "dynamo20"))
    _, q = quantize_proto(proto, mode)
    before = q.SerializeToString()
    f, got_mode = int4graph.dequantize(q)
    assert q.SerializeToString() == before and got_mode == mode
    assert not int4graph.is_int4(f) and int4graph.is_int4(q)
    if model == "bert":  # (GPT-2's Gemms come back as MatMul + Add)
        assert sorted(t.name for t in f.graph.initializer) == sorted(t.name for t in proto.graph.initializer)
    onnx.checker.check_model(f, full_check=True)
    _, q2 = quantize_proto(f, mode)
    assert int8graph.structure(q2) == int8graph.structure(q)
    a = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in q2.graph.initializer}
    assert a.keys() == b.keys()
    for name, v in a.items():
        np.testing.assert_array_equal(b[name], v, err_msg=name)
    # the dequantized weights are the int4 model's (onnxruntime: float activations against its int8 ones)
    s_f, s_q, s_o = session_for(f), session_for(q), session_for(proto)
    fd = F.random_feeds(s_o, 1, seed=0)[0]
    ref, got, orig = s_q.run(None, fd)[0], s_f.run(None, fd)[0], s_o.run(None, fd)[0]
    assert np.abs(got - ref).max() < 0.2 * np.abs(orig - ref).max()


def _one_matmul_int4(extra_inputs=(), block: int = 16) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(32, 8)).astype(np.float32)
    g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 32])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
                               [onnx.numpy_helper.from_array(w, "w")])
    _, q = quantize_proto(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]), f"int4:{block}")
    for name, arr in extra_inputs:
        q.graph.initializer.append(onnx.numpy_helper.from_array(arr, name))
        q.graph.node[0].input.append(name)
    return q


def test_other_forms_are_refused_by_name():
    zp = ("w_zero_points", np.full((8, 1), 0x88, np.uint8))
    with pytest.raises(BadArgumentError, match="no zero points"):
        int4graph.dequantize(_one_matmul_int4([zp]))
    q = _one_matmul_int4()
    q.graph.node.append(onnx.helper.make_node("DynamicQuantizeLinear", ["y"], ["a", "b", "c"]))
    with pytest.raises(BadArgumentError, match="DynamicQuantizeLinear"):
        int4graph.dequantize(q)


def test_gemms_are_split_and_quantized(zoo_export):
    """GPT-2-style exports put their Linear layers in Gemm, which MatMulNBits does not take: --quantize int4
    splits them into MatMul + Add first, so every Gemm of a constant weight is quantized (not none)."""
    proto = io.load_proto(zoo_export("gpt2", "dynamo20"))
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    split, outs = int4graph.split_gemms(proto)
    assert len(outs) == len(gemms) > 0 and not any(n.op_type == "Gemm" for n in split.graph.node)
    assert int4graph.split_outputs(proto) == outs  # the same mapping, without the copy
    s_o, s_s = session_for(proto), session_for(split)
    fd = F.random_feeds(s_o, 1, seed=0)[0]
    np.testing.assert_allclose(s_s.run(None, fd)[0], s_o.run(None, fd)[0], rtol=1e-5, atol=1e-5)
    rep, q = quantize_proto(proto, "int4")
    assert rep.quantized == len(gemms) and rep.op_counts == {"MatMulNBits": len(gemms)} and not rep.warnings
    ref, got = s_o.run(None, fd)[0], session_for(q).run(None, fd)[0]
    assert 0 < np.abs(got - ref).max() < 0.2 * np.abs(ref).max()


def test_an_excluded_gemm_stays_float(zoo_export):
    proto = io.load_proto(zoo_export("gpt2", "dynamo20"))
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    rep, q = quantize_proto(proto, "int4", exclude_nodes=[gemms[0].name])
    assert rep.candidates == len(gemms) + sum(n.op_type == "MatMul" for n in proto.graph.node)
    assert rep.quantized == len(gemms) - 1
    assert [n.name for n in q.graph.node if n.op_type == "Gemm"] == [gemms[0].name]
