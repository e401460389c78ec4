"""The op contract: numpy reference == ORT running the function body (no library) == ORT running
our kernel (library registered), for every op x sample x dtype. The activations use the shapes
below; every other op brings its own samples (OpSpec.samples)."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import n6onnx
from n6onnx.ops import DOMAIN, ELEMENTWISE, REGISTRY

from ..conftest import missing

SHAPES = [(0,), (1,), (7,), (3, 5, 33), (2, 128, 1536)]  # the last one takes the multithreaded path


def _model(spec, dtype, shape) -> bytes:
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inputs = [helper.make_tensor_value_info("X", et, list(shape))]
    if "bias" in spec.inputs:
        inputs.append(helper.make_tensor_value_info("bias", et, [shape[-1]]))
    node = helper.make_node(spec.name, [i.name for i in inputs], ["Y"], domain=DOMAIN)
    g = helper.make_graph([node], "contract", inputs, [helper.make_tensor_value_info("Y", et, list(shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(18)])
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def _feeds(spec, dtype, shape, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, size=shape)
    if x.size >= 6:  # exact clamp borders and zero
        x.reshape(-1)[:6] = [-2.0, 2.0, 0.0, -2.5, 2.5, 5 / 12]
    feeds = {"X": x.astype(dtype)}
    if "bias" in spec.inputs:
        feeds["bias"] = rng.uniform(-1, 1, size=shape[-1]).astype(dtype)
    return feeds


def _run(model: bytes, feeds, library: bool, profile_dir=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if library:
        so.register_custom_ops_library(str(n6onnx.library_path()))
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "p")
    s = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    y = s.run(None, feeds)[0]
    prof = s.end_profiling() if profile_dir else None
    return y, prof


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_contract(op, dtype, shape):
    spec = REGISTRY[op]
    if dtype not in spec.dtypes:
        pytest.skip(f"{op} has no {dtype} kernel")
    if "bias" in spec.inputs and len(shape) == 0:
        pytest.skip("bias needs a last axis")
    model = _model(spec, dtype, shape)
    feeds = _feeds(spec, dtype, shape, seed=len(shape))
    ref = spec.reference(*feeds.values())
    tol = spec.tolerance(dtype)
    fallback, _ = _run(model, feeds, library=False)
    assert fallback.dtype == ref.dtype and fallback.shape == ref.shape
    np.testing.assert_allclose(fallback.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)
    assert n6onnx.library_path() is not None, "the custom-op library was not built"
    kernel, _ = _run(model, feeds, library=True)
    assert kernel.dtype == ref.dtype and kernel.shape == ref.shape
    np.testing.assert_allclose(kernel.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_kernel_really_runs(op, tmp_path):
    """With the library the node runs as one custom kernel; without it, as the function's ops."""
    spec = REGISTRY[op]
    shape = (4, 64)
    model = _model(spec, "float32", shape)
    feeds = _feeds(spec, "float32", shape, 0)
    for library in (True, False):
        _, prof = _run(model, feeds, library, str(tmp_path))
        ops = {e["args"].get("op_name") for e in json.load(open(prof)) if e.get("cat") == "Node"}
        if library:
            assert op in ops and "Clip" not in ops and "Cast" not in ops, ops
        else:
            assert op not in ops and "Cast" in ops, ops


@pytest.mark.parametrize("op", ["BiasPhi6", "BiasZetaLn2"])
def test_bad_bias_is_an_ort_error(op):
    """A bias that does not match the last axis is an onnxruntime error, not a crash."""
    spec = REGISTRY[op]
    model = _model(spec, "float32", (3, 8))
    # Same graph, but feed a wrong-length bias: bypass the declared shape with a dynamic model.
    m = onnx.load_from_string(model)
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_param = "n"
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "d"
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "d"
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(n6onnx.library_path()))
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="bias"):
        s.run(None, {"X": np.ones((3, 8), np.float32), "bias": np.ones(5, np.float32)})


def test_reference_matches_the_spec_formulas():
    """The numpy references against the formulas as SPEC.md writes them, in float64."""
    x = np.linspace(-5, 5, 1001)
    c = np.clip(x, -2, 2)
    np.testing.assert_allclose(REGISTRY["Phi6"].reference(x.astype(np.float32)), c * c - c + 1, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(REGISTRY["ZetaLn2"].reference(x.astype(np.float32)), x * x - 5 / 6 * x + 25 / 144, rtol=1e-5, atol=1e-5)
    b = np.full(x.shape[-1], 0.25)
    np.testing.assert_allclose(REGISTRY["BiasPhi6"].reference(x.astype(np.float32), b.astype(np.float32)),
                               np.clip(x + 0.25, -2, 2) ** 2 - np.clip(x + 0.25, -2, 2) + 1, rtol=1e-6, atol=1e-6)
    # Phi6 range is [0.75, 7]
    y = REGISTRY["Phi6"].reference(np.linspace(-100, 100, 10001).astype(np.float32))
    assert y.min() == pytest.approx(0.75) and y.max() == pytest.approx(7.0)


# ------------------------------------------------------------------ ops with their own samples
SAMPLED = sorted(k for k, s in REGISTRY.items() if not s.elementwise)
CASES = [(op, dtype, sample) for op in SAMPLED for dtype in REGISTRY[op].dtypes
         for sample in REGISTRY[op].samples(dtype)]


def _sampled_model(spec, sample) -> bytes:
    m = spec.sample_model(sample)
    onnx.checker.check_model(m, full_check=True)
    return m.SerializeToString()


def _run_all(model: bytes, feeds, library: bool):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    if library:
        so.register_custom_ops_library(str(n6onnx.library_path()))
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("op,dtype,sample", CASES, ids=[f"{o}-{d}-{s.id}" for o, d, s in CASES])
def test_sampled_contract(op, dtype, sample):
    spec = REGISTRY[op]
    model = _sampled_model(spec, sample)
    ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
    refs = ref if isinstance(ref, (tuple, list)) else [ref]
    tol = spec.tolerance(dtype)
    for library in (False, True):
        try:
            got = _run_all(model, sample.feeds, library)
        except ort.capi.onnxruntime_pybind11_state.InvalidGraph as e:
            # a library built before the op gained these inputs (main's build until it is rebuilt)
            if library and "not in range" in str(e):
                missing(f"the custom-op library {n6onnx.library_path()} predates this {op} form: rebuild it")
            raise
        assert len(got) == len(refs)
        for g, r in zip(got, refs):
            assert g.dtype == r.dtype and g.shape == r.shape, (library, g.dtype, g.shape, r.dtype, r.shape)
            np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=tol.rtol, atol=tol.atol,
                                       err_msg=f"{'kernel' if library else 'function fallback'} vs reference")
