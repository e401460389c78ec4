"""The activation kernels of libn6ops_cuda.so (Phi6, BiasPhi6, ZetaLn2, BiasZetaLn2) on CUDA.

Contract (108 cases: 4 ops x float32/float16/bfloat16 x 7 plain or 9 bias shapes, plus one
inf/NaN case each): the numpy reference == the function fallback on CUDA (no library) == our CUDA
kernel == our CPU kernel, each within the op's tolerance (bfloat16: rtol = atol = 1e-2, the spec
has none), and the two kernels bit for bit equal to the reference (the activations are exact to
their fp32 definition, README "CUDA"). Shapes: odd sizes, scalar tails, a bias with an odd last
dim, 0 elements, 1M+3 elements. bfloat16 models take and return float32 and Cast inside the
graph (numpy has no bfloat16); their inputs are bfloat16-representable, so the Casts are exact.
Also: misaligned device buffers through IO binding (x and y at equal and at different offsets
from a 16-byte boundary, a misaligned bias) with guard elements around the output; a wrong bias
length is an ORT error; every n6 node runs on CUDAExecutionProvider.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from n6onnx.ops import DOMAIN, ELEMENTWISE, Tolerance

pytestmark = pytest.mark.cuda

DTYPES = ("float32", "float16", "bfloat16")
BF16_TOL = Tolerance(rtol=1e-2, atol=1e-2)
OPSET = 18
PLAIN_SHAPES = [(0,), (1,), (7,), (1031,), (3, 5, 33), (8, 128, 1536), ((1 << 20) + 3,)]
BIAS_SHAPES = [(0, 8), (1, 1), (7,), (3, 1031), (64, 5), (16, 3), (4, 1536), (2, 3, 33), (8, 128, 1536)]
SPECIALS = (np.nan, np.inf, -np.inf, -2.0, 2.0, 0.0, np.nan, 3.0, -7.0)
# (x offset, y offset, bias offset) in elements from 256-byte-aligned device buffers
MISALIGNED = [(0, 0, 0), (1, 1, 0), (1, 2, 0), (0, 1, 1), (3, 3, 1)]
MISALIGNED_SHAPES = {"plain": [(1031,), (8, 1536)], "bias": [(3, 1031), (8, 1536), (64, 5)]}
GUARD = 64  # elements around bound output windows


def has_bias(op: str) -> bool:
    return "bias" in ELEMENTWISE[op].inputs


def round_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    a = np.asarray(a, np.float32)
    u = a.view(np.uint32).astype(np.uint64)
    r = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16) & 0xFFFFFFFF
    return np.where(np.isnan(a), a, r.astype(np.uint32).view(np.float32)).astype(np.float32)


def make_inputs(op: str, dtype: str, shape, seed: int, specials=(-2.0, 2.0, 0.0, -2.5, 2.5, 5 / 12, 1e4, -1e4)):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, size=shape).astype(np.float32)
    flat = x.reshape(-1)
    k = min(len(specials), flat.size)
    flat[:k] = np.asarray(specials[:k], np.float32)
    feeds = {"X": x}
    if has_bias(op):
        feeds["bias"] = rng.uniform(-1, 1, size=shape[-1]).astype(np.float32)
    return {n: round_bf16(v) if dtype == "bfloat16" else v.astype(dtype) for n, v in feeds.items()}


def reference(op: str, dtype: str, feeds) -> np.ndarray:
    spec = ELEMENTWISE[op]
    with np.errstate(over="ignore", invalid="ignore"):  # float16 overflow to inf is part of the test
        if dtype == "bfloat16":
            return round_bf16(spec.reference(*[np.asarray(v, np.float32) for v in feeds.values()]))
        return spec.reference(*feeds.values())


def tolerance(op: str, dtype: str) -> Tolerance:
    return BF16_TOL if dtype == "bfloat16" else ELEMENTWISE[op].tolerance(dtype)


def op_model(op: str, dtype: str, rank: int) -> bytes:
    """One n6 node with dynamic dims; bfloat16: float32 graph IO with Casts around the node."""
    spec = ELEMENTWISE[op]
    et = TensorProto.FLOAT if dtype == "bfloat16" else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    dims = [f"d{i}" for i in range(rank)]
    inputs = [helper.make_tensor_value_info("X", et, dims)]
    if has_bias(op):
        inputs.append(helper.make_tensor_value_info("bias", et, [dims[-1]]))
    nodes, names, out = [], [i.name for i in inputs], "Y"
    if dtype == "bfloat16":
        nodes += [helper.make_node("Cast", [n], [n + "_bf16"], to=TensorProto.BFLOAT16) for n in names]
        names, out = [n + "_bf16" for n in names], "Y_bf16"
    nodes.append(helper.make_node(op, names, [out], domain=DOMAIN, name="n6_node"))
    if dtype == "bfloat16":
        nodes.append(helper.make_node("Cast", [out], ["Y"], to=TensorProto.FLOAT))
    g = helper.make_graph(nodes, "cuda_contract", inputs, [helper.make_tensor_value_info("Y", et, dims)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
                          functions=[spec.function(OPSET)], ir_version=10)
    return m.SerializeToString()


def contract_cases():
    for op in sorted(ELEMENTWISE):
        for dtype in DTYPES:
            for seed, shape in enumerate(BIAS_SHAPES if has_bias(op) else PLAIN_SHAPES):
                yield pytest.param(op, dtype, shape, seed, marks=pytest.mark.sanitize,
                                   id=f"{op}-{dtype}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("op,dtype,shape,seed", list(contract_cases()))
def test_contract(target, op, dtype, shape, seed):
    feeds = make_inputs(op, dtype, shape, seed)
    ref = reference(op, dtype, feeds)
    results = target.check(op_model(op, dtype, len(shape)), feeds, ref, tolerance(op, dtype), target.paths())
    inexact = [p for p in ("cuda_kernel", "cpu_kernel") if p in results and not results[p]["bit_exact"]]
    assert not inexact, f"not bit-exact to the reference: {inexact}: {results}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
@pytest.mark.sanitize
def test_inf_nan(target, op, dtype):
    """inf / NaN through the kernels (the function fallback's Clip need not propagate NaN)."""
    shape = (4, 1031) if has_bias(op) else (1031,)
    feeds = make_inputs(op, dtype, shape, seed=99, specials=SPECIALS)
    ref = reference(op, dtype, feeds)
    results = target.check(op_model(op, dtype, len(shape)), feeds, ref, tolerance(op, dtype),
                           target.paths(fallback=False))
    assert all(r["bit_exact"] for r in results.values()), results


def misaligned_cases():
    for op in sorted(ELEMENTWISE):
        for dtype in ("float32", "float16"):
            for shape in MISALIGNED_SHAPES["bias" if has_bias(op) else "plain"]:
                yield pytest.param(op, dtype, shape, id=f"{op}-{dtype}-{'x'.join(map(str, shape))}")


@pytest.mark.parametrize("op,dtype,shape", list(misaligned_cases()))
def test_misaligned_buffers(target, op, dtype, shape):
    """IO binding with device buffers at element offsets from 16-byte boundaries; guards intact."""
    where, np_dtype = target.device, np.dtype(dtype)
    s = target.session(op_model(op, dtype, len(shape)), "cuda_kernel")
    n = int(np.prod(shape))
    failures = []
    for xo, yo, bo in MISALIGNED:
        feeds = make_inputs(op, dtype, shape, seed=xo + 3 * yo)
        ref = reference(op, dtype, feeds)
        io = s.io_binding()
        xbuf = np.zeros(n + GUARD, np_dtype)
        xbuf[xo:xo + n] = feeds["X"].reshape(-1)
        xv = ort.OrtValue.ortvalue_from_numpy(xbuf, where, 0)
        io.bind_input("X", where, 0, np_dtype, list(shape), xv.data_ptr() + xo * np_dtype.itemsize)
        if has_bias(op):
            d = shape[-1]
            bbuf = np.zeros(d + GUARD, np_dtype)
            bbuf[bo:bo + d] = feeds["bias"]
            bv = ort.OrtValue.ortvalue_from_numpy(bbuf, where, 0)
            io.bind_input("bias", where, 0, np_dtype, [d], bv.data_ptr() + bo * np_dtype.itemsize)
        sentinel = np.full(n + 2 * GUARD, 12345.0, np_dtype)
        yv = ort.OrtValue.ortvalue_from_numpy(sentinel, where, 0)
        io.bind_output("Y", where, 0, np_dtype, list(shape), yv.data_ptr() + (GUARD + yo) * np_dtype.itemsize)
        s.run_with_iobinding(io)
        yall = yv.numpy()
        r = target.compare(yall[GUARD + yo:GUARD + yo + n].reshape(shape), ref, tolerance(op, dtype))
        guards = bool(np.all(yall[:GUARD + yo] == sentinel[0]) and np.all(yall[GUARD + yo + n:] == sentinel[0]))
        if not (r["ok"] and r["bit_exact"] and guards):
            failures.append({"offsets": (xo, yo, bo), "guards_intact": guards, **r})
    assert not failures, failures


def test_bad_bias_is_an_error(target):
    s = target.session(op_model("BiasPhi6", "float32", 2), "cuda_kernel", quiet=True)
    with pytest.raises(Exception, match="bias length 5 does not match the last dimension 8"):
        s.run(None, {"X": np.ones((3, 8), np.float32), "bias": np.ones(5, np.float32)})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_placement(placement, op, dtype):
    placement(op_model(op, dtype, 2), make_inputs(op, dtype, (4, 64), 0), {op})
