"""GPTQ rounding onto onnxruntime's per-channel int8 grid (n6onnx.quantize.gptq) and the int8-path fit of
`rewrite --quantize int8 --calibrate` (n6onnx.quantize.qfit).

References: onnxruntime's own quantize_dynamic (the emitted weights must come back bit for bit), a numpy
round-to-nearest on the same grid (GPTQ must have a smaller output error on the calibration rows), and
ORT running the original model on held-out feeds (the fitted int8 rewrite is at least as close as the
unfitted one)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import n6onnx
from n6onnx import calibrate as cal
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError
from n6onnx.quantize import gptq, kernel, qfit


def _problem(K=96, N=40, M=600, seed=0):
    rng = np.random.default_rng(seed)
    # correlated inputs with an offset: where error compensation across rows pays
    X = (rng.standard_normal((M, K)) @ rng.standard_normal((K, K)) * 0.2 + 0.7).astype(np.float32)
    W = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
    W[:, 3] = 0.0  # an all-zero column: ORT's scale 1, q 0
    W[5, 7] = -1.0  # a column whose max |w| is negative
    return X, W


def _rtn(W):
    """Round to nearest on ORT's per-channel symmetric grid, numpy (the reference)."""
    amax = np.abs(W).max(0)
    s = np.where(amax > 0, (amax.astype(np.float64) * 2 / 254).astype(np.float32), np.float32(1))
    return np.clip(np.round(W / s), -127, 127).astype(np.float32) * s


def _ort_roundtrip(W, tmp_path):
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, W.shape[0]])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, W.shape[1]])],
                          [numpy_helper.from_array(W, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(tmp_path / "f.onnx"))
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "q.onnx")).graph.initializer}
    return init["W_quantized"], init["W_scale"]


def test_gptq_weights_are_reproduced_bit_for_bit_by_quantize_dynamic(tmp_path):
    X, W = _problem()
    Wg, fallback = gptq.gptq_round(W, X.T.astype(np.float64) @ X)
    assert fallback == 0
    q, s = _ort_roundtrip(Wg, tmp_path)
    assert q.dtype == np.int8 and s.shape == (W.shape[1],)
    deq = q.astype(np.float32) * s
    assert np.array_equal(deq.view(np.int32), Wg.view(np.int32))  # bit for bit
    assert np.abs(q).max(0)[np.abs(W).max(0) > 0].min() == 127  # each column's max pinned: its scale unchanged
    assert np.all(Wg[:, 3] == 0)
    # and the grid is the one ORT computes for the float weights (same scales, to the fixed point)
    _, s_float = _ort_roundtrip(W, tmp_path)
    assert np.allclose(s, s_float, rtol=1e-6, atol=0)


def test_pair_bounded_gptq_keeps_every_pair_inside_int16_and_is_reproduced(tmp_path):
    """With ``pair_codes`` (the largest uint8 code of each input), no same-sign weight pair reaches a sum that a
    saturating u8s8 kernel clips, on uint8 activations up to those codes: onnxruntime's own MatMulInteger of the
    reproduced int8 weights on the worst-case activations equals the exact product, where the unbounded rounding's
    does not on a clipping CPU (numpy reference: the pair-clipped sum of tests/quantize/test_kernel.py)."""
    from .test_kernel import pair_clipped

    rng = np.random.default_rng(3)
    K, N, M = 128, 48, 800
    X = rng.standard_normal((M, K)).astype(np.float32)
    W = rng.standard_normal((K, N)).astype(np.float32)  # large same-sign pairs are common
    codes = rng.integers(150, 256, K).astype(np.float64)
    H = X.T.astype(np.float64) @ X
    free, _ = gptq.gptq_round(W, H)
    bound, fallback = gptq.gptq_round(W, H, pair_codes=codes)
    assert fallback == 0
    q_free, q, s = gptq.ort_grid(free)[0], *_ort_roundtrip(bound, tmp_path)
    assert np.array_equal(q.astype(np.float32) * s, bound)  # onnxruntime reproduces it bit for bit
    assert gptq.unsafe_pairs(q_free, codes) > 0 and gptq.unsafe_pairs(q, codes) == 0
    a = np.broadcast_to(codes.astype(np.uint8), (4, K))  # every input at its largest code
    exact = a.astype(np.int64) @ q.astype(np.int64)
    np.testing.assert_array_equal(pair_clipped(a, q), exact)
    assert not np.array_equal(pair_clipped(a, q_free), a.astype(np.int64) @ q_free.astype(np.int64))
    assert np.abs(q).max(0).min() == 127  # the pinned maxima stay: the scales are onnxruntime's


def test_gptq_has_a_smaller_output_error_than_round_to_nearest():
    X, W = _problem(seed=1)
    Wg, _ = gptq.gptq_round(W, X.T.astype(np.float64) @ X)
    Wr = _rtn(W)
    assert np.array_equal(Wr, gptq.round_to_nearest(W))  # the numpy reference is ORT's rounding
    err = lambda A: float(np.sum((X @ (A - W)).astype(np.float64) ** 2))
    assert err(Wg) < 0.7 * err(Wr), (err(Wg), err(Wr))


def test_levels_follow_quantized_matmul_depth():
    W = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["x", "W"], ["b"]), helper.make_node("MatMul", ["r", "W"], ["c"]),
             helper.make_node("Add", ["c", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [W])
    assert qfit.levels(helper.make_model(g), {"a", "b", "c"}) == {"a": 0, "b": 0, "c": 1}


@pytest.fixture(scope="module")
def bert(zoo_export, tmp_path_factory, bert_npz):
    d = tmp_path_factory.mktemp("gptq")
    return zoo_export("bert", "dynamo20"), bert_npz(d / "calib.npz", 48, 1), bert_npz(d / "held.npz", 12, 2), d


def _exact_twin(path):
    """The int8 model at ``path`` as an exact int8 kernel computes it (kernel.exact_products), written beside it."""
    twin = path.with_name(path.stem + "_exact.onnx")
    onnx.save(kernel.exact_products(onnx.load(str(path))), str(twin))
    return twin


KERNELS = ["exact"] + (["saturating"] if kernel.pairs_saturate() else [])  # saturating: measured where it runs


@pytest.mark.parametrize("int8_kernel", KERNELS)
@pytest.mark.parametrize("passes_", [[], ["gelu=phi6"]], ids=["original", "phi6"])
def test_int8_fit_is_at_least_as_close_to_the_original_on_held_out_feeds(bert, passes_, int8_kernel, held_err):
    """Fitted for a kernel, measured on that kernel: an exact one (VNNI, AMX, ARM) through ``exact_products`` on
    any CPU; the saturating one (x86 without VNNI) where this CPU's kernel is it."""
    src, calib, held, d = bert
    before = onnx.load(str(src)).SerializeToString()
    errs, reps, paths = {}, {}, {}
    for fit in ("none", "gptq", "refit"):
        out = d / f"{'-'.join(passes_) or 'orig'}_{fit}_{int8_kernel}.onnx"
        _, rep = n6onnx.rewrite(src, out, passes_, calibrate=calib, quantize="int8", quantize_fit=fit,
                                **({} if fit == "none" else {"int8_kernel": int8_kernel}))
        paths[fit] = out if int8_kernel == "saturating" else _exact_twin(out)
        errs[fit], reps[fit] = held_err(src, paths[fit], held), rep.quantization
    assert onnx.load(str(src)).SerializeToString() == before  # the input is never modified
    assert reps["none"].fit is None
    for fit in ("gptq", "refit"):
        f = reps[fit].fit
        assert f["matmuls"] == reps[fit].quantized > 0 and f["fallback_columns"] == 0 and f["int8_kernel"] == int8_kernel
        if int8_kernel == "exact":  # its error on the calibration rows is the exact product's
            assert f["rel_err_fit"] < f["rel_err_rtn"] and f["unsafe_pairs"] == 0
        else:  # the random-weight BERT has weight pairs that clip beside its activations' codes
            assert f["unsafe_pairs"] > 0
        # saturating: rounding alone (gptq) trades the clipping for a rounding error of the same size on this
        # random-weight BERT (measured: 1.0476e-5 against 1.0467e-5 with phi6); the refit (the default) compensates it
        if int8_kernel == "exact" or fit == "refit":
            assert errs[fit] <= errs["none"], errs
    if int8_kernel == "saturating":  # kept inside int16: this CPU computes (nearly) what an exact kernel does
        clip = {fit: held_err(paths[fit], _exact_twin(paths[fit]), held) for fit in ("none", "refit")}
        assert clip["refit"] < 0.01 * clip["none"], clip


def test_fit_weights_survive_quantize_dynamic_unchanged(bert):
    src, calib, _, d = bert
    proto = onnx.load(str(src))
    fitted, rep = qfit.fit_quantized(proto, cal.load_batches(str(calib), proto), compensate=True)
    assert rep.matmuls > 0
    onnx.save(fitted, str(d / "fitted.onnx"))
    quantize_dynamic(str(d / "fitted.onnx"), str(d / "fitted_q.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    fi = {t.name: numpy_helper.to_array(t) for t in fitted.graph.initializer}
    qi = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(d / "fitted_q.onnx")).graph.initializer}
    names = [k[: -len("_quantized")] for k in qi if k.endswith("_quantized") and k[: -len("_quantized")] in fi]
    assert len(names) >= rep.matmuls
    same = sum(np.array_equal((qi[f"{w}_quantized"].astype(np.float32) * qi[f"{w}_scale"]).view(np.int32),
                              fi[w].view(np.int32)) for w in names)
    assert same == rep.matmuls


def test_cli_quantize_fit_option(bert, tmp_path):
    src, calib, _, _ = bert
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "o.onnx"), "--quantize", "int8",
                                  "--calibrate", str(calib), "--quantize-fit", "gptq", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["quantization"]["fit"]["method"] == "gptq"
    for named in ("exact", "saturating"):  # --int8-kernel: the deployment CPU's kernel the fit rounds for
        r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / f"k-{named}.onnx"), "--quantize", "int8",
                                      "--calibrate", str(calib), "--int8-kernel", named])
        assert r.exit_code == 0, r.output
        said = " ".join(r.output.split())
        assert ("kept inside int16" in said) == (named == "saturating") and "MatMuls fitted (gptq+refit, on 96 samples)" in said, said
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "p.onnx"), "--quantize", "int8",
                                  "--quantize-fit", "bogus"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "--quantize-fit" in r.output
    for args in (["--quantize", "int8"], ["--quantize", "int8:static", "--calibrate", str(calib)],
                 ["--pass", "gelu=phi6"]):
        out = tmp_path / "q.onnx"
        r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(out), "--quantize-fit", "refit", *args])
        assert r.exit_code == 2 and "Traceback" not in r.output and "--quantize-fit refit needs" in r.output, r.output
        assert not out.exists()


def test_the_default_fit_is_refit_where_it_applies(bert, tmp_path):
    """--quantize-fit auto (the default): refit with --quantize int8 (or int4) --calibrate; no fit without
    --calibrate, with --heal (healing trains against the quantized path itself) or for int8:static; the refit
    model equals an explicit --quantize-fit refit bit for bit."""
    src, calib, _, _ = bert
    _, rep = n6onnx.rewrite(src, tmp_path / "a.onnx", [], calibrate=calib, quantize="int8")
    assert rep.quantization.fit["method"] == "gptq+refit"
    n6onnx.rewrite(src, tmp_path / "r.onnx", [], calibrate=calib, quantize="int8", quantize_fit="refit")
    assert onnx.load(tmp_path / "a.onnx").SerializeToString() == onnx.load(tmp_path / "r.onnx").SerializeToString()
    _, rep = n6onnx.rewrite(src, tmp_path / "n.onnx", [], quantize="int8")
    assert rep.quantization.fit is None
    _, rep = n6onnx.rewrite(src, tmp_path / "q4.onnx", [], calibrate=calib, quantize="int4")
    assert rep.quantization.fit["method"] == "gptq+refit"
    _, rep = n6onnx.rewrite(src, tmp_path / "qs.onnx", [], calibrate=calib, quantize="int8:static")
    assert rep.quantization.fit is None
    with pytest.raises(BadArgumentError, match="auto or one of"):
        n6onnx.rewrite(src, tmp_path / "x.onnx", [], calibrate=calib, quantize="int8", quantize_fit="bogus")


def test_the_fit_runs_on_the_first_quantize_fit_samples(bert, tmp_path):
    """--quantize-fit-samples N: the fit sees the first N calibration samples, so without a pass (the samples feed
    nothing else) the model equals, bit for bit, the one fitted on a DATA capped at N by --calib-samples."""
    src, calib, _, _ = bert
    _, rep = n6onnx.rewrite(src, tmp_path / "a.onnx", [], calibrate=calib, quantize="int8", quantize_fit_samples=16)
    _, ref = n6onnx.rewrite(src, tmp_path / "b.onnx", [], calibrate=calib, calib_samples=16, quantize="int8",
                            quantize_fit_samples=None)
    _, full = n6onnx.rewrite(src, tmp_path / "c.onnx", [], calibrate=calib, quantize="int8", quantize_fit_samples=None)
    assert rep.quantization.fit["samples"] == ref.quantization.fit["samples"] == 16
    assert full.quantization.fit["samples"] == 96 and full.quantization.fit["rows"] > rep.quantization.fit["rows"]
    assert onnx.load(tmp_path / "a.onnx").SerializeToString() == onnx.load(tmp_path / "b.onnx").SerializeToString()
    assert onnx.load(tmp_path / "a.onnx").SerializeToString() != onnx.load(tmp_path / "c.onnx").SerializeToString()
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "d.onnx"), "--quantize", "int8",
                                  "--calibrate", str(calib), "--quantize-fit-samples", "16"])
    assert r.exit_code == 0 and "on 16 samples" in " ".join(r.output.split()), r.output
    with pytest.raises(BadArgumentError, match="quantize_fit_samples"):
        n6onnx.rewrite(src, tmp_path / "e.onnx", [], calibrate=calib, quantize="int8", quantize_fit_samples=0)
    assert not (tmp_path / "e.onnx").exists()
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "f.onnx"), "--quantize", "int8",
                                  "--calibrate", str(calib), "--quantize-fit-samples", "0"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "f.onnx").exists()


def test_a_named_kernel_fits_on_a_cpu_whose_kernel_is_unknown(bert, monkeypatch):
    """Where the probe finds a kernel n6onnx does not know, ``auto`` is a clear error and a named kernel (the way
    out the error names) fits: for an exact one, with rows from the exact-product copy."""
    from n6onnx.errors import N6Error

    src, calib, _, _ = bert
    proto = onnx.load(str(src))
    batches = cal.load_batches(str(calib), proto)

    def unknown():
        raise N6Error("neither exact nor pairwise saturated; name the deployment CPU's with --int8-kernel")
    monkeypatch.setattr(kernel, "pairs_saturate", unknown)
    with pytest.raises(N6Error, match="--int8-kernel"):
        qfit.fit_quantized(proto, batches, compensate=False)
    used = []
    real = kernel.exact_products
    monkeypatch.setattr(kernel, "exact_products", lambda q: used.append(1) or real(q))
    for saturate, name in ((False, "exact"), (True, "saturating")):
        used.clear()
        _, rep = qfit.fit_quantized(proto, batches, compensate=False, saturate=saturate)
        assert rep.int8_kernel == name and rep.matmuls > 0 and bool(used) == (not saturate)
