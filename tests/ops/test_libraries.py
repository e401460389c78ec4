"""The two custom-op libraries as a machine without a GPU sees them: the CPU library carries no
CUDA code, the CUDA library (when it was built: nvcc present at build time) loads into a CPU-only
onnxruntime and its CPU kernels work, and InferenceSession picks the right one.
The CUDA kernels themselves run only on a GPU machine: tests/cuda (pytest -m cuda)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN
from n6onnx.ops import ELEMENTWISE as REGISTRY
from n6onnx.runtime import library_kind_for

from ..conftest import missing


def _model(op: str, shape=(4, 37)) -> bytes:
    spec = REGISTRY[op]
    ins = [helper.make_tensor_value_info("X", 1, list(shape))]
    if "bias" in spec.inputs:
        ins.append(helper.make_tensor_value_info("bias", 1, [shape[-1]]))
    node = helper.make_node(op, [i.name for i in ins], ["Y"], domain=DOMAIN)
    g = helper.make_graph([node], "t", ins, [helper.make_tensor_value_info("Y", 1, list(shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(18)], ir_version=10)
    return m.SerializeToString()


def test_cpu_library_has_no_cuda_code():
    lib = n6onnx.library_path("cpu")
    assert lib is not None, "the CPU library was not built"
    data = lib.read_bytes().lower()
    assert b"cudart" not in data and b"cuda" not in data


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_cuda_library_cpu_kernels_run_without_a_gpu(op):
    if n6onnx.library_path("cuda") is None:
        missing("libn6ops_cuda.so was not built (no nvcc)")
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(n6onnx.library_path("cuda")))
    s = ort.InferenceSession(_model(op), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"X": rng.uniform(-4, 4, (4, 37)).astype(np.float32)}
    if "bias" in REGISTRY[op].inputs:
        feeds["bias"] = rng.uniform(-1, 1, 37).astype(np.float32)
    got = s.run(None, feeds)[0]
    np.testing.assert_array_equal(got, REGISTRY[op].reference(*feeds.values()))


def test_session_picks_the_cpu_library_without_cuda():
    s = n6onnx.InferenceSession(_model("Phi6"), providers=["CPUExecutionProvider"])
    assert s.uses_library and s.library_kind == "cpu"
    s = n6onnx.InferenceSession(_model("Phi6"), use_library=False)
    assert not s.uses_library and s.library_kind is None


@pytest.mark.filterwarnings("ignore:Specified provider")
@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="needs a CPU-only onnxruntime")
def test_cuda_requested_but_not_available_uses_the_cpu_library():
    providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
    assert library_kind_for(providers) == "cpu"
    s = n6onnx.InferenceSession(_model("Phi6"), providers=providers)
    assert s.library_kind == "cpu" and s.get_providers() == ["CPUExecutionProvider"]


def test_library_kind_for_cuda(monkeypatch, tmp_path):
    """With a CUDA-capable onnxruntime and a built CUDA library, CUDA sessions get the CUDA library."""
    fake = tmp_path / "libn6ops_cuda.so"
    fake.write_bytes(b"")
    monkeypatch.setenv("N6ONNX_CUDA_LIBRARY", str(fake))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert library_kind_for(["CUDAExecutionProvider", "CPUExecutionProvider"]) == "cuda"
    assert library_kind_for([("CUDAExecutionProvider", {}), "CPUExecutionProvider"]) == "cuda"
    assert library_kind_for(["CPUExecutionProvider"]) == "cpu"
    monkeypatch.setenv("N6ONNX_CUDA_LIBRARY", str(tmp_path / "missing.so"))
    assert library_kind_for(["CUDAExecutionProvider"]) == "cpu"
