"""GPTQ rounding onto MatMulNBits' 4-bit block grid (n6onnx.quantize.gptq.gptq_round_int4) and the int4 fit
of `rewrite --quantize int4 --calibrate` (n6onnx.quantize.qfit with mode int4).

References: onnxruntime's own MatMulNBitsQuantizer (its packed 4-bit blob and scales, unpacked here, must give
back the emitted weights bit for bit, and its round to nearest is the baseline GPTQ must beat on the
calibration rows) and ORT running the original model on held-out feeds (the fitted int4 model is closer to
it than the plain one)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import n6onnx
from n6onnx.quantize import gptq, qfit, quantize_proto
from n6onnx.testing import zoo


def _matmul(W: np.ndarray) -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, W.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, W.shape[1]])],
                          [numpy_helper.from_array(W, "W")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])


def _ort_int4(W: np.ndarray, block: int) -> np.ndarray:
    """W as onnxruntime's MatMulNBitsQuantizer stores it (symmetric, blocks of ``block`` along K),
    dequantized from its packed blob: uint8 [N, blocks, block / 2], two 4-bit values a byte (low nibble
    first), each stored as q + 8; scales [N * blocks]."""
    _, q = quantize_proto(_matmul(W), f"int4:{block}")
    node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
    assert len(node.input) == 3  # symmetric: no zero points
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    blob, scales = init[node.input[1]], init[node.input[2]]
    K, N = W.shape
    nib = np.stack([blob & 0x0F, blob >> 4], -1).reshape(N, -1).astype(np.int64) - 8  # [N, blocks * block]
    s = scales.reshape(N, -1)
    deq = nib.astype(np.float32) * np.repeat(s, block, axis=1)
    return deq[:, :K].T.copy()


def _problem(K=200, N=40, M=800, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((M, K)) @ rng.standard_normal((K, K)) * 0.2 + 0.5).astype(np.float32)
    W = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    W[:32, 3] = 0.0  # an all-zero block
    W[40, 7] = -1.0  # a block whose largest |w| is negative
    W[70, 8] = 1.0  # ... and one whose largest is positive
    return X, W


@pytest.mark.parametrize("block", [16, 32, 64])
def test_int4_grid_is_the_quantizers_own(block):
    _, W = _problem()
    q, S = gptq.int4_grid(W, block)
    assert q.min() >= -8 and q.max() <= 7
    assert np.array_equal((q.astype(np.float32) * S).view(np.int32), _ort_int4(W, block).view(np.int32))


@pytest.mark.parametrize("block", [16, 32])
def test_gptq_int4_weights_are_reproduced_bit_for_bit_and_beat_round_to_nearest(block):
    X, W = _problem(seed=1)
    Wg, fallback = gptq.gptq_round_int4(W, X.T.astype(np.float64) @ X, block)
    assert fallback == 0
    assert np.array_equal(_ort_int4(Wg, block), Wg)  # value for value (a 0 times a negative scale is -0.0)
    assert np.all(Wg[:32, 3] == 0)
    # the grid is the float weights' own: every block keeps its round-to-nearest scale
    _, S = gptq.int4_grid(W, block)
    _, Sg = gptq.int4_grid(Wg, block)
    assert np.array_equal(S, Sg)
    err = lambda A: float(np.sum((X @ (A - W)).astype(np.float64) ** 2))  # noqa: E731
    rtn = _ort_int4(W, block)
    assert err(Wg) < 0.8 * err(rtn), (err(Wg), err(rtn))


@pytest.fixture(scope="module")
def bert(zoo_export, tmp_path_factory, bert_npz):
    d = tmp_path_factory.mktemp("gptq4")
    return zoo_export("bert", "dynamo20"), bert_npz(d / "calib.npz", 48, 1), bert_npz(d / "held.npz", 12, 2), d


def test_int4_fit_is_closer_to_the_original_on_held_out_feeds(bert, held_err):
    """--quantize int4 --calibrate fits by default (refit + GPTQ); held-out error against ORT running the
    original: refit < plain round to nearest, gptq <= plain; the graph is the plain int4 graph."""
    src, calib, held, d = bert
    before = onnx.load(str(src)).SerializeToString()
    errs, reps = {}, {}
    for fit in ("none", "gptq", "auto"):
        out = d / f"int4_{fit}.onnx"
        _, rep = n6onnx.rewrite(src, out, [], calibrate=calib, quantize="int4:16", quantize_fit=fit)
        errs[fit], reps[fit] = held_err(src, out, held), rep.quantization
    assert onnx.load(str(src)).SerializeToString() == before  # the input is never modified
    assert reps["none"].fit is None and reps["auto"].fit["method"] == "gptq+refit"
    for fit in ("gptq", "auto"):
        f = reps[fit].fit
        assert f["matmuls"] == reps[fit].quantized > 0 and f["fallback_columns"] == 0
        assert f["rel_err_fit"] < f["rel_err_rtn"]
        assert reps[fit].op_counts == reps["none"].op_counts
    assert errs["gptq"] <= errs["none"] and errs["auto"] < errs["none"], errs


def test_int4_fit_splits_gemms_and_its_weights_survive_the_quantizer(zoo_export):
    """GPT-2-style exports write Linear layers as Gemm: the fit splits them as the int4 stage does, and
    every fitted weight comes back unchanged from MatMulNBits."""
    src = zoo_export("gpt2", "dynamo20")
    proto = onnx.load(str(src))
    assert any(n.op_type == "Gemm" for n in proto.graph.node)
    rng = np.random.default_rng(0)
    base = zoo.example_inputs("gpt2")
    vocab = zoo._vocab_size("gpt2")
    batches = [{k: (rng.integers(1, vocab, a.shape).astype(a.dtype) if k == "input_ids" else a)
                for k, a in base.items()} for _ in range(24)]
    fitted, rep = qfit.fit_quantized(proto, batches, compensate=True, mode="int4:16")
    assert not any(n.op_type == "Gemm" for n in fitted.graph.node)
    assert rep.matmuls > 0 and rep.fallback_columns == 0 and rep.rel_err_fit < rep.rel_err_rtn
    fi = {t.name: numpy_helper.to_array(t) for t in fitted.graph.initializer}
    weights = [n.input[1] for n in fitted.graph.node if n.op_type == "MatMul" and n.input[1] in fi
               and fi[n.input[1]].ndim == 2]
    same = sum(np.array_equal(_ort_int4(fi[w], 16), fi[w]) for w in weights)
    assert same == rep.matmuls
