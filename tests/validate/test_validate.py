"""n6onnx.validate end to end on hand-built models: every metric against an independent numpy
reference, the padding rows of a static batch size never counted, the JSON shape, labels."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import n6onnx
from n6onnx import feeds as feeds_mod


def _pair_linear(linear_model, seed=0, noise=0.3, d_in=6, d_out=5):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d_in, d_out)).astype(np.float32)
    w2 = (w + noise * rng.standard_normal(w.shape)).astype(np.float32)
    return w, w2, linear_model(w), linear_model(w2)


def test_logits_metrics_match_reference(linear_model, ref, tmp_path):
    w, w2, a, b = _pair_linear(linear_model, noise=1.0)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(3)]
    npz = tmp_path / "feeds.npz"
    np.savez(npz, **{f"x/{k}": x for k, x in enumerate(xs)})
    rep = n6onnx.validate(a, b, feeds=npz)

    x = np.concatenate(xs).astype(np.float64)
    o, c = x @ w.astype(np.float64), x @ w2.astype(np.float64)
    r = rep.outputs["logits"]
    assert r.kind == "logits" and r.samples == 12 and rep.inputs["batches"] == 3
    assert r.max_abs_err == pytest.approx(np.abs(o - c).max(), rel=1e-4)
    assert rep.max_abs_err == r.max_abs_err
    assert r.max_rel_err == pytest.approx((np.abs(o - c) / np.maximum(np.abs(o), 1e-6)).max(), rel=1e-3)
    assert r.rel_l2_err == pytest.approx(np.linalg.norm(o - c) / np.linalg.norm(o), rel=1e-4)
    cos = ref.cos(o, c)
    assert r.cosine_mean == pytest.approx(cos.mean(), abs=1e-6)
    assert r.cosine_min == pytest.approx(cos.min(), abs=1e-6)
    assert r.cosine_min_sample == int(np.argmin(cos))
    assert rep.cosine_mean == pytest.approx(cos.mean(), abs=1e-6)  # no embedding output: first output's
    assert r.logits["top1_agreement"] == pytest.approx(np.mean(o.argmax(1) == c.argmax(1)))
    assert 0 < r.logits["top1_agreement"] < 1  # the test data exercises both outcomes
    assert r.logits["kl_divergence"] == pytest.approx(ref.kl(o, c).mean(), rel=1e-4)
    assert r.embedding is None and rep.passed and rep.gates == []


def test_embedding_metrics_match_reference(hidden_model, ref):
    rng = np.random.default_rng(2)
    s1 = np.array([1.0, 2.0, 3.0], np.float32)
    s2 = np.array([1.0, -2.0, 3.5], np.float32)
    a, b = hidden_model(s1), hidden_model(s2)
    batches = []
    for _ in range(4):
        mask = np.ones((2, 4), np.int64)
        mask[1, 2:] = 0
        batches.append({"x": rng.standard_normal((2, 4, 3)).astype(np.float32), "attention_mask": mask})
    rep = n6onnx.validate(a, b, feeds=batches)

    x = np.concatenate([f["x"] for f in batches]).astype(np.float64)
    m = np.concatenate([f["attention_mask"] for f in batches])
    o = x * s1 * m[..., None]
    c = x * s2 * m[..., None]
    r = rep.outputs["last_hidden_state"]
    assert r.kind == "embedding" and r.samples == 8
    assert r.max_abs_err == pytest.approx(np.abs(o - c).max(), rel=1e-5)
    cos = ref.cos(o, c)
    assert r.cosine_mean == pytest.approx(cos.mean(), abs=1e-6) and r.cosine_min == pytest.approx(cos.min(), abs=1e-6)
    po, pc = ref.pool(o, m), ref.pool(c, m)
    pcos = ref.cos(po, pc)
    e = r.embedding
    assert e["samples"] == 8
    assert e["cosine_mean"] == pytest.approx(pcos.mean(), abs=1e-6)
    assert e["cosine_min"] == pytest.approx(pcos.min(), abs=1e-6)
    assert e["nn_agreement"] == pytest.approx(np.mean(ref.nn(po) == ref.nn(pc)))
    assert rep.cosine_mean == pytest.approx(pcos.mean(), abs=1e-6)  # the embedding cosine is the headline
    assert "mean-pooled" in rep.cosine_source


def test_identical_models_are_exact(hidden_model):
    a = hidden_model(np.array([1.0, 2.0], np.float32))
    rep = n6onnx.validate(a, a, random=5, min_cosine=0.999999, max_abs_err=0.0)
    r = rep.outputs["last_hidden_state"]
    assert rep.passed and r.max_abs_err == 0.0 and r.cosine_min == 1.0 and r.embedding["nn_agreement"] == 1.0


def test_padding_rows_of_the_last_batch_are_not_counted(linear_model, ref):
    """5 random samples on a model with static batch 4: 2 runs, 5 rows measured, not 8."""
    w, w2, a, b = _pair_linear(linear_model, seed=3)
    rep = n6onnx.validate(a, b, random=5, seed=7)
    assert rep.inputs["samples"] == 5 and rep.inputs["batches"] == 2
    r = rep.outputs["logits"]
    assert r.samples == 5 and r.logits["rows"] == 5
    sess = n6onnx.InferenceSession(str(a))
    got = feeds_mod.random_samples(sess, 5, seed=7)
    x = np.concatenate([f["x"] for f in got])[:5].astype(np.float64)  # the real rows only
    o, c = x @ w.astype(np.float64), x @ w2.astype(np.float64)
    cos = ref.cos(o, c)
    assert r.cosine_mean == pytest.approx(cos.mean(), abs=1e-6)
    assert r.logits["kl_divergence"] == pytest.approx(ref.kl(o, c).mean(), rel=1e-4)
    # counting the three repeats of row 4 would give a different mean
    assert abs(np.mean(np.r_[cos, [cos[4]] * 3]) - cos.mean()) > 1e-6


def test_json_shape(hidden_model):
    a = hidden_model(np.array([1.0, 2.0], np.float32))
    b = hidden_model(np.array([1.0, 2.5], np.float32))
    data = n6onnx.validate(a, b, random=4, min_cosine=0.5).to_json()
    json.dumps(data, allow_nan=False)  # strict JSON
    assert data["passed"] is True and data["failed"] == []
    assert isinstance(data["cosine_mean"], float) and isinstance(data["max_abs_err"], float)
    assert list(data["outputs"]) == ["last_hidden_state"]
    block = data["outputs"]["last_hidden_state"]
    for key in ("kind", "max_abs_err", "max_rel_err", "cosine_mean", "cosine_min", "embedding", "logits"):
        assert key in block
    assert block["embedding"]["nn_agreement"] is not None
    assert data["gates"][0]["metric"] == "cosine_mean" and data["gates"][0]["passed"] is True


def test_nan_in_candidate_fails_gates_and_stays_valid_json(linear_model):
    w = np.ones((3, 2), np.float32)
    wn = w.copy()
    wn[0, 0] = np.nan
    rep = n6onnx.validate(linear_model(w), linear_model(wn), random=4, max_abs_err=1.0, min_cosine=0.0)
    assert not rep.passed and set(rep.failed) == {"cosine_mean", "max_abs_err"}
    data = rep.to_json()
    json.dumps(data, allow_nan=False)
    assert data["max_abs_err"] is None and data["outputs"]["logits"]["nonfinite"]["candidate"] > 0


@pytest.mark.parametrize("fmt", ["txt", "npy"])
def test_labels_accuracy_of_both_models(linear_model, tmp_path, fmt):
    w, w2, a, b = _pair_linear(linear_model, seed=4)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 6)).astype(np.float32)
    labels = rng.integers(0, 5, 8)
    if fmt == "txt":
        path = tmp_path / "labels.txt"
        path.write_text("\n".join(map(str, labels)) + "\n")
    else:
        path = tmp_path / "labels.npy"
        np.save(path, labels)
    rep = n6onnx.validate(a, b, feeds=[{"x": x[:4]}, {"x": x[4:]}], labels=path)
    acc = rep.outputs["logits"].logits["accuracy"]
    o, c = x.astype(np.float64) @ w, x.astype(np.float64) @ w2
    assert acc["original"] == pytest.approx(np.mean(o.argmax(1) == labels))
    assert acc["candidate"] == pytest.approx(np.mean(c.argmax(1) == labels))
    assert acc["labels"] == 8


def test_inputs_are_never_modified(linear_model, tmp_path):
    _, _, a, b = _pair_linear(linear_model)
    npz = tmp_path / "f.npz"
    np.savez(npz, x=np.ones((4, 6), np.float32))
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, npz)}
    n6onnx.validate(a, b, feeds=npz, min_cosine=0.0)
    assert before == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b, npz)}
    assert sorted(x.name for x in tmp_path.iterdir()) == sorted(p.name for p in (a, b, npz))


def _two_output_model(path, w):
    """x [4, 3] -> logits = x @ W (float) and pred = argmax(logits) (int64 [4])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("ArgMax", ["logits"], ["pred"], axis=1, keepdims=0),
         helper.make_node("MatMul", ["x", "W"], ["logits"])][::-1], "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("pred", TensorProto.INT64, [4]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [4, 6])],
        [numpy_helper.from_array(w, "W")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_integer_output_and_max_over_outputs(tmp_path, ref):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((3, 6)).astype(np.float32)
    w2 = (w + rng.standard_normal(w.shape)).astype(np.float32)
    a = _two_output_model(tmp_path / "a.onnx", w)
    b = _two_output_model(tmp_path / "b.onnx", w2)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    rep = n6onnx.validate(a, b, feeds=[{"x": x[:4]}, {"x": x[4:]}])
    o, c = x.astype(np.float64) @ w, x.astype(np.float64) @ w2
    po, pc = o.argmax(1), c.argmax(1)
    p = rep.outputs["pred"]
    assert p.kind == "exact" and p.cosine_mean is None
    assert p.equal_fraction == pytest.approx(np.mean(po == pc)) and p.max_abs_err == np.abs(po - pc).max()
    assert rep.max_abs_err == max(p.max_abs_err, rep.outputs["logits"].max_abs_err)
    # the first output is integer: the headline cosine is the first floating-point output's
    assert rep.cosine_mean == pytest.approx(ref.cos(o, c).mean(), abs=1e-6)
    assert rep.cosine_source == "logits: per-sample cosine"


def test_validate_name_is_the_function_and_the_package_imports():
    from n6onnx.validate import metrics, run  # noqa: F401

    assert callable(n6onnx.validate) and n6onnx.validate.__module__ == "n6onnx.api"


def _int8_linear(linear_model, tmp_path):
    """A linear model whose int8 pairs clip on a saturating kernel, its dynamic int8 copy and random feeds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(5)
    w = (rng.uniform(0.5, 1.0, (64, 16)) * np.where(rng.random(16) < 0.5, 1, -1)).astype(np.float32)
    src = linear_model(w, batch=8)
    q = tmp_path / "q.onnx"
    quantize_dynamic(str(src), str(q), per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    xs = [rng.uniform(0.6, 1.0, (8, 64)).astype(np.float32) for _ in range(3)]
    xs[0][0, 0] = -0.05  # a small negative minimum: the bytes of the bulk sit high
    npz = tmp_path / "feeds.npz"
    np.savez(npz, **{f"x/{k}": x for k, x in enumerate(xs)})
    return w, src, q, xs, npz


def _int8_reference(xs, q, clip):
    """numpy: DynamicQuantizeLinear of each batch, the int8 weights of ``q``, the integer product exact or with
    each pair of neighbouring products clipped to int16 (VPMADDUBSW), then the scales."""
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(q)).graph.initializer}
    wq = next(v for k, v in init.items() if k.endswith("_quantized")).astype(np.int64)
    ws = next(v for k, v in init.items() if k.endswith("_scale")).astype(np.float64)
    out = []
    for x in xs:
        lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
        s = np.float32((hi - lo) / 255.0)
        z = np.float32(np.clip(np.round(-lo / s), 0, 255))
        a = np.clip(np.round(x / s) + z, 0, 255).astype(np.int64)
        p = a[:, :, None] * wq[None]  # [B, K, N]
        acc = np.clip(p[:, 0::2] + p[:, 1::2], -32768, 32767).sum(1) if clip else p.sum(1)
        acc = acc - int(z) * wq.sum(0)
        out.append(acc * float(s) * ws)
    return np.concatenate(out)


def test_int8_kernel_exact_computes_the_exact_int8_products_on_any_cpu(linear_model, tmp_path):
    """--int8-kernel exact: an int8 candidate's error against the float original is the exact int8 product's
    (numpy reference), on a CPU whose kernel clips pairs too; auto: this CPU's kernel, whichever it is."""
    from n6onnx.quantize import kernel

    w, src, q, xs, npz = _int8_linear(linear_model, tmp_path)
    want = np.concatenate(xs).astype(np.float64) @ w.astype(np.float64)
    exact, clipped = _int8_reference(xs, q, False), _int8_reference(xs, q, True)
    assert np.abs(exact - clipped).max() > 0.1 * np.abs(want - exact).max()  # these feeds clip
    rep = n6onnx.validate(src, q, feeds=npz, int8_kernel="exact")
    assert rep.outputs["logits"].max_abs_err == pytest.approx(np.abs(want - exact).max(), rel=1e-3)
    auto = n6onnx.validate(src, q, feeds=npz)
    here = clipped if kernel.pairs_saturate() else exact
    assert auto.outputs["logits"].max_abs_err == pytest.approx(np.abs(want - here).max(), rel=1e-3)
    assert any("exact int8 kernel" in n for n in rep.notes) == kernel.pairs_saturate()


def test_int8_kernel_refusals(linear_model, tmp_path, cli):
    """A clipping kernel is not emulated on an exact CPU; onnxruntime's pre-fused integer ops are refused by name
    where the exact products are emulated; nothing is written either way."""
    import onnxruntime as ort

    from n6onnx.quantize import kernel

    _, src, q, _, npz = _int8_linear(linear_model, tmp_path)
    if not kernel.pairs_saturate():
        with pytest.raises(n6onnx.BadArgumentError, match="saturating"):
            n6onnx.validate(src, q, feeds=npz, int8_kernel="saturating")
        return
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    import onnx

    fused = {n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node} & set(kernel.INTEGER_OPS)
    assert fused and "MatMulInteger" not in fused  # onnxruntime fused the quantizer's MatMulInteger
    r = cli("validate", str(src), str(tmp_path / "fused.onnx"), "--feeds", str(npz), "--int8-kernel", "exact")
    assert r.exit_code == 2 and "Traceback" not in r.output and f"fused {min(fused)}" in r.output, r.output


def test_int8_kernel_exact_leaves_a_static_qdq_model_unfused(linear_model, tmp_path):
    """A static QDQ candidate under --int8-kernel exact: its output equals onnxruntime running the QDQ graph
    without any graph optimisation (DequantizeLinear, then float products: exact), wherever the test runs."""
    import onnxruntime as ort

    from n6onnx.quantize import kernel

    w, src, _, xs, npz = _int8_linear(linear_model, tmp_path)
    q = tmp_path / "qs.onnx"
    n6onnx.quantize.quantize(src, q, "int8:static", calibration_feeds=[{"x": x} for x in xs])
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    got = np.concatenate([plain.run(None, {"x": x})[0] for x in xs]).astype(np.float64)
    want = np.concatenate(xs).astype(np.float64) @ w.astype(np.float64)
    rep = n6onnx.validate(src, q, feeds=npz, int8_kernel="exact")
    assert rep.outputs["logits"].max_abs_err == pytest.approx(np.abs(want - got).max(), rel=1e-3)
    assert any("exact int8 kernel" in n for n in rep.notes) == kernel.pairs_saturate()
    auto = n6onnx.validate(src, q, feeds=npz).outputs["logits"].max_abs_err  # this CPU's fused integer kernel
    if kernel.pairs_saturate():  # measured on an AVX2 VM: 9.2 against 0.037
        assert auto > 10 * rep.outputs["logits"].max_abs_err
    else:
        assert auto == pytest.approx(rep.outputs["logits"].max_abs_err, rel=1e-3)


def test_int8_kernel_exact_on_a_float_candidate_says_it_changed_nothing(linear_model, tmp_path, monkeypatch):
    """Emulating the exact kernel (as on a clipping CPU) for a candidate with no int8 MatMul: the same result as
    without it, and a note that says so rather than claiming exact int8 products."""
    from n6onnx.quantize import kernel

    w, src, _, _, npz = _int8_linear(linear_model, tmp_path)
    monkeypatch.setattr(kernel, "kind", lambda: "saturating")
    built = []  # the float candidate is loaded as it is: no exact-product copy is made of it
    real = kernel.exact_products
    monkeypatch.setattr(kernel, "exact_products", lambda q: built.append(q) or real(q))
    rep = n6onnx.validate(src, src, feeds=npz, int8_kernel="exact")
    assert built == []
    assert rep.outputs["logits"].max_abs_err == 0.0
    assert any("changed nothing" in n for n in rep.notes) and not any("computed as an exact" in n for n in rep.notes)
