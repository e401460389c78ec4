"""MoE kernels of libn6ops_cuda.so on CUDA.

Contract (46 cases): every MoE contract sample (n6onnx/ops/moe.py) x float32/float16: numpy
reference == the function fallback on CUDA (no library) == our CUDA kernel == our CPU kernel,
each within the op's tolerance. float16 also through the opt-in tensor-core GEMMs
(N6ONNX_MOE_CUDA_TC=1, read when a session creates the kernel). Bad inputs (egyptian routing with
G < 3, swiglu without W3, drop without importance, k > G) are ORT errors on CUDA; the MoE node runs
as one kernel on CUDAExecutionProvider. The `sanitize` cases are re-run under compute-sanitizer by
tests/cuda/test_memcheck.py.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
from onnx import helper

from n6onnx.ops import DOMAIN, REGISTRY, Sample
from n6onnx.ops.moe import make_feeds

pytestmark = pytest.mark.cuda

SPEC = REGISTRY["MoE"]
OPSET = 18
SANITIZE = {"topk_swiglu_N7", "group3_topk_drop2_N64", "empty_experts_N64", "multi_tile_N300"}


@functools.lru_cache(maxsize=None)
def samples(dtype: str) -> dict[str, Sample]:
    return {s.id: s for s in SPEC.samples(dtype)}


def model(sample: Sample) -> bytes:
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
              for k, v in sample.feeds.items()]
    names = [n if n in sample.feeds else "" for n in SPEC.inputs]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node("MoE", names, ["Y"], domain=DOMAIN, name="moe", **sample.attrs)
    et = inputs[0].type.tensor_type.elem_type
    g = helper.make_graph([node], "moe", inputs, [helper.make_tensor_value_info("Y", et, [None, None])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=[SPEC.function(OPSET)], ir_version=10)
    return m.SerializeToString()


@pytest.fixture
def tensor_cores(monkeypatch):
    """set(on): N6ONNX_MOE_CUDA_TC for the sessions created after it (restored afterwards)."""
    return lambda on: monkeypatch.setenv("N6ONNX_MOE_CUDA_TC", "1" if on else "0")


def cases(dtypes=SPEC.dtypes):
    for dtype in dtypes:
        for sid in samples(dtype):
            yield pytest.param(dtype, sid, marks=[pytest.mark.sanitize] if sid in SANITIZE else [],
                               id=f"{dtype}-{sid}")


@pytest.mark.parametrize("dtype,sid", list(cases()))
def test_contract(target, tensor_cores, dtype, sid):
    tensor_cores(False)
    s = samples(dtype)[sid]
    ref = SPEC.reference(*[s.feeds.get(n) for n in SPEC.inputs], **s.attrs)
    target.check(model(s), s.feeds, ref, SPEC.tolerance(dtype), target.paths())


@pytest.mark.parametrize("dtype,sid", list(cases(("float16",))))
def test_tensor_core_path(target, tensor_cores, dtype, sid):
    tensor_cores(True)
    s = samples(dtype)[sid]
    ref = SPEC.reference(*[s.feeds.get(n) for n in SPEC.inputs], **s.attrs)
    # a fresh session: the switch is read when the session creates the kernel
    got = target.session(model(s), "cuda_kernel", cache=False).run(None, s.feeds)[0]
    r = target.compare(got, ref, SPEC.tolerance(dtype))
    assert r["ok"], r


def _bad(name, attrs, G, group=1):
    feeds = make_feeds(np.random.default_rng(1), 4, 8, 6, G, group, "float32")
    return pytest.param(Sample("x", feeds, attrs), name, id=name)


BAD = [
    _bad("G >= 3", {"routing": "egyptian"}, G=2),
    _bad("W3", {"activation": "swiglu"}, G=4),
    _bad("importance", {"group": 2, "drop": 1}, G=4, group=2),
    _bad("k must be", {"k": 5}, G=4),
]


@pytest.mark.parametrize("sample,message", BAD)
def test_bad_input_is_an_error(target, sample, message):
    s = target.session(model(sample), "cuda_kernel", quiet=True)
    with pytest.raises(Exception, match=f"MoE: .*{message}"):
        s.run(None, sample.feeds)


def test_placement(target, placement):
    """The MoE node ran as one kernel on the target provider, and nothing else ran."""
    s = samples("float16")["defaults_N64"]
    assert placement(model(s), s.feeds, {"MoE"}) == [("MoE", target.provider)]
