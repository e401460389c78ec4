"""Fake quantization in the heal student: its forward equals onnxruntime running the model that
``--quantize int8`` (and ``int4``, ``int8:static``) writes, its weight grids are onnxruntime's exactly,
the float path stays exact, and the backward is straight-through (masked where a static range clips)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import onnx_ir as ir
import pytest
import torch

import n6onnx
from n6onnx import feeds as F
from n6onnx import io
from n6onnx.heal import executor, fakequant
from n6onnx.heal.run import load_data
from n6onnx.heal.train import HealConfig, heal
from n6onnx.heal.executor import GraphModule
from n6onnx.quantize import kernel, quantize_proto
from n6onnx.runtime import session_for

from .test_heal import _npz

# Bound of |student fake-quant - ORT int8| / max|ORT int8|. The student computes the integer
# product in float32 (onnxruntime: exact int32, then one scale), so the two differ by float32
# accumulation order, measured 1.8e-7 .. 3.3e-7 on these models (the float student against ORT
# float: 1.7e-7 .. 3.3e-7). An activation rounded to the other uint8 level would move its element
# by a whole step, (range / 255), about 4e-3 of the range: 1e-5 admits rounding noise only. The
# int8 error itself (float against int8) is 5e-4 .. 7e-3 here, 50x the bound and more.
BOUND = 1e-5


def _model(zoo_export, model: str, spec: str | None) -> onnx.ModelProto:
    src = zoo_export(model, "dynamo20")
    if spec is None:
        return io.load_proto(src)
    m, _ = n6onnx.rewrite(src, None, [spec])
    return io.materialize(ir.to_proto(m))


@pytest.mark.parametrize("model,spec", [("bert", None), ("bert", "gelu=phi6"), ("gpt2", None)])
def test_fake_quant_forward_equals_ort_int8(zoo_export, model, spec):
    proto = _model(zoo_export, model, spec)
    plan = fakequant.plan(proto)
    assert plan and all(s.weight == ("int8", True) and s.act == "dynamic" for s in plan.values())  # per channel
    _, qproto = quantize_proto(proto, "int8")
    sq, sf = session_for(qproto), session_for(proto)
    fq, flt = GraphModule(proto, fake_quant=plan), GraphModule(proto)
    for seed in range(3):
        fd = F.random_feeds(sf, 1, seed=seed)[0]
        ref_q, ref_f = sq.run(None, fd)[0], sf.run(None, fd)[0]
        with torch.no_grad():
            got_q = next(iter(fq(fd).values())).numpy()
            got_f = next(iter(flt(fd).values())).numpy()
        scale = np.abs(ref_q).max()
        err_q = np.abs(got_q - ref_q).max() / scale
        assert err_q < BOUND
        assert np.abs(ref_f - ref_q).max() / scale > 50 * BOUND  # the int8 error is really there
        assert np.abs(got_f - ref_f).max() / np.abs(ref_f).max() < BOUND  # float path unchanged


@pytest.mark.parametrize("model", ["bert", "gpt2"])
def test_the_named_int8_kernel_is_what_the_student_runs(zoo_export, model):
    """``plan(saturate=)``, as --heal-int8-kernel sets it: the kernel of this CPU's kind matches onnxruntime here,
    within BOUND; the other kind misses it by the pair clipping (these models have pairs that clip), on any CPU."""
    proto = _model(zoo_export, model, None)
    here = kernel.pairs_saturate()
    sq, sf = session_for(quantize_proto(proto, "int8")[1]), session_for(proto)
    for saturate in (here, not here):
        p = fakequant.plan(proto, "int8", saturate=saturate)
        assert fakequant.products(p) == ("saturating" if saturate else "exact")
        errs = []
        for seed in range(2):
            fd = F.random_feeds(sf, 1, seed=seed)[0]
            ref = sq.run(None, fd)[0]
            with torch.no_grad():
                errs.append(np.abs(next(iter(GraphModule(proto, fake_quant=p)(fd).values())).numpy() - ref).max()
                            / np.abs(ref).max())
        assert (max(errs) < BOUND) if saturate == here else (max(errs) > 100 * BOUND), (saturate, errs)
    assert fakequant.products(fakequant.plan(proto, "int4:32")) is None


# int4: the activation is rounded per block to int8 (MatMulNBits' int8 compute path), so a float32
# difference upstream can flip one activation element to the next int8 step; that moves the output by
# about 1/127 of a block's range times a weight: measured up to 5.5e-4 of the output's range on one
# feed of six, against 3e-3 .. 3.5e-2 for the int4 error itself. Most feeds flip nothing (< BOUND).
INT4_FLIP = 1e-3


def site_errors(proto: onnx.ModelProto, plan: fakequant.Plan, quantized: onnx.ModelProto, feed: dict,
                options: ort.SessionOptions | None = None) -> dict[str, float]:
    """Teacher-forced: each fake-quantized node of ``plan`` run alone in the student on onnxruntime's own values
    of its inputs in ``quantized`` (captured as graph outputs); {site: max |student - onnxruntime| / max
    |onnxruntime| at that site}. A float32 difference upstream cannot reach a site, so a rounding step there is
    the site's own error: every site must be within BOUND."""
    nodes = {n.output[0]: n for n in proto.graph.node}
    inits = {t.name: t for t in proto.graph.initializer}
    ins = {y: [i for i in nodes[y].input if i and i not in inits] for y in plan}
    q = onnx.ModelProto()
    q.CopyFrom(quantized)
    have = {o.name for o in q.graph.output}
    q.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n)
                          for n in sorted({n for y in plan for n in (y, *ins[y])} - have))
    sess = session_for(q, options)
    vals = dict(zip((o.name for o in sess.get_outputs()), sess.run(None, feed)))
    errs = {}
    for y, xs in ins.items():
        n = nodes[y]
        g = onnx.helper.make_graph([n], "site", [onnx.helper.make_empty_tensor_value_info(x) for x in xs],
                                   [onnx.helper.make_empty_tensor_value_info(y)],
                                   [inits[i] for i in n.input if i in inits])
        one = fakequant.Plan({y: plan[y]}, {x: plan.tensors[x] for x in xs if x in plan.tensors})
        with torch.no_grad():
            got = GraphModule(onnx.helper.make_model(g, opset_imports=proto.opset_import),
                              fake_quant=one)({x: vals[x] for x in xs})[y].numpy()
        errs[y] = float(np.abs(got - vals[y]).max() / np.abs(vals[y]).max())
    return errs


def _unfused() -> ort.SessionOptions:
    """The graph as written, no fusions: the QDQ graph's own arithmetic. With ORT_ENABLE_ALL onnxruntime
    fuses DequantizeLinear -> MatMul into integer kernels whose float results differ in the last bits,
    and a later QuantizeLinear then rounds an element to the neighbouring uint8 step: measured 7.8e-3 ..
    8.5e-3 of the output's range on 3 of 8 BERT feeds, the others within 2.1e-7."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


@pytest.mark.parametrize("spec", [None, "gelu=phi6"])
@pytest.mark.parametrize("mode", ["int4:16", "int4:32", "int8:static"])
def test_fake_quant_forward_equals_ort_other_modes(zoo_export, spec, mode):
    proto = _model(zoo_export, "bert", spec)
    sf = session_for(proto)
    cal = F.random_feeds(sf, 4, seed=10)
    static = mode == "int8:static"
    # exact products: the arithmetic of the unfused QDQ graph (DequantizeLinear, float MatMul)
    plan = fakequant.plan(proto, mode, cal, saturate=False)
    _, qproto = quantize_proto(proto, mode, calibration_feeds=cal)
    sq = session_for(qproto, _unfused() if static else None)
    sq_fused = session_for(qproto) if static else sq  # what is deployed
    inits = {t.name for t in proto.graph.initializer}
    assert set(plan) == {n.output[0] for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in inits}
    assert bool(plan.tensors) == static  # static: fixed activation ranges
    # int4 sites have no integer input; static ones do where onnxruntime fuses them into QGemm or QLinearMatMul
    # (u8s8, this CPU's kernel); a MatMul fused with its bias Add into a Gemm first stays a float product
    assert fakequant.products(plan) == ("exact" if static else None) and not any(s.saturate for s in plan.values())
    here = fakequant.plan(proto, mode, cal) if static else plan  # as --heal mirrors this CPU's kernel
    assert fakequant.products(here) == (("saturating" if kernel.pairs_saturate() else "exact") if static else None)
    fq, fq_here = GraphModule(proto, fake_quant=plan), GraphModule(proto, fake_quant=here)
    errs, fused, missed = [], [], []
    for seed in range(3):
        fd = F.random_feeds(sf, 1, seed=seed)[0]
        ref_q, ref_f, ref_d = sq.run(None, fd)[0], sf.run(None, fd)[0], sq_fused.run(None, fd)[0]
        with torch.no_grad():
            got = next(iter(fq(fd).values())).numpy()
            deployed = next(iter(fq_here(fd).values())).numpy()
        scale = np.abs(ref_q).max()
        errs.append(np.abs(got - ref_q).max() / scale)
        fused.append(np.abs(deployed - ref_d).max() / scale)
        missed.append(np.abs(got - ref_d).max() / scale)
        assert np.abs(ref_f - ref_q).max() / scale > 2 * INT4_FLIP  # the quantization error is really there
    if static:  # the deployed (fused) kernels too, pair clipping included, but for a rounding flip on some feeds
        assert max(errs) < BOUND and sorted(fused)[1] < BOUND, (errs, fused)
        if kernel.pairs_saturate():  # where the CPU clips, exact products miss them (measured 0.8-1.5% of the range)
            assert min(missed) > 100 * BOUND, missed
    else:
        assert max(errs) < INT4_FLIP and sorted(errs)[1] < BOUND


def test_int4_plan_covers_split_gemms(zoo_export):
    """GPT-2's Gemms, split into MatMul + Add for MatMulNBits, run fake-quantized as the Gemm they are in
    the student; its forward equals onnxruntime running the int4 model."""
    proto = _model(zoo_export, "gpt2", None)
    plan = fakequant.plan(proto, "int4:16")
    assert set(plan) == {n.output[0] for n in proto.graph.node if n.op_type == "Gemm"}
    q4 = quantize_proto(proto, "int4:16")[1]
    sf, sq = session_for(proto), session_for(q4)
    fq = GraphModule(proto, fake_quant=plan)
    errs, int4 = [], []
    for seed in range(3):
        fd = F.random_feeds(sf, 1, seed=seed)[0]
        sites = site_errors(proto, plan, q4, fd)
        assert set(sites) == set(plan) and max(sites.values()) < BOUND, sites  # every site, every feed
        ref = sq.run(None, fd)[0]
        with torch.no_grad():
            errs.append(np.abs(next(iter(fq(fd).values())).numpy() - ref).max() / np.abs(ref).max())
        int4.append(np.abs(sf.run(None, fd)[0] - ref).max() / np.abs(ref).max())  # the int4 error itself
    # the whole model: most feeds to float rounding; on a feed where an upstream float32 difference flips a rounded
    # activation (INT4_FLIP; on an AVX2 CPU one of these three moved 1.26e-3 of the range, whose int4 error was
    # 3.8e-3) every site above is still exact, and the output stays far closer to int4 than float is
    assert sorted(errs)[1] < BOUND
    assert all(e < q / 2 for e, q in zip(errs, int4)), (errs, int4)


def test_static_gemm_bias_is_rounded_as_int32(zoo_export):
    """GPT-2's Gemms carry their bias: static QDQ stores it as int32 at input scale x weight scale, and
    a later rounded input flips when the float bias differs: without that rounding the student misses
    onnxruntime by whole uint8 steps, with it by float rounding."""
    proto = _model(zoo_export, "gpt2", None)
    sf = session_for(proto)
    cal = F.random_feeds(sf, 4, seed=10)
    plan = fakequant.plan(proto, "int8:static", cal, saturate=False)  # exact products: against the unfused graph
    assert {n.output[0] for n in proto.graph.node if n.op_type == "Gemm"} <= {y for y, s in plan.items() if s.bias}
    sq = session_for(quantize_proto(proto, "int8:static", calibration_feeds=cal)[1], _unfused())
    fd = F.random_feeds(sf, 1, seed=0)[0]
    ref = sq.run(None, fd)[0]
    with torch.no_grad():
        got = next(iter(GraphModule(proto, fake_quant=plan)(fd).values())).numpy()
        bare = fakequant.Plan({y: fakequant.Site(s.weight, s.act) for y, s in plan.items()}, plan.tensors)
        nobias = next(iter(GraphModule(proto, fake_quant=bare)(fd).values())).numpy()
    scale = np.abs(ref).max()
    assert np.abs(got - ref).max() / scale < BOUND
    assert np.abs(nobias - ref).max() / scale > 100 * BOUND


def test_int4_grid_is_matmulnbits():
    """Our 4-bit grid equals the one onnxruntime's MatMulNBits quantizer stores (unpacked from its blob),
    K not a multiple of the block included."""
    rng = np.random.default_rng(4)
    for k, block in ((128, 32), (80, 32), (64, 16)):
        w = rng.normal(size=(k, 24)).astype(np.float32)
        g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, k])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 24])],
                                   [onnx.numpy_helper.from_array(w, "w")])
        _, q = quantize_proto(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]),
                              f"int4:{block}")
        qi = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
        blob, scales = qi["w_Q4"], qi["w_scales"].reshape(24, -1)
        nib = np.stack([blob & 15, blob >> 4], -1).reshape(24, -1, block).astype(np.float32) - 8
        grid, scale = fakequant.int4_grid(torch.tensor(w), block)
        valid = lambda a: a.reshape(24, -1)[:, :k]  # noqa: E731  (the padding past K is the blob's own)
        np.testing.assert_array_equal(valid(grid.numpy()), valid(nib))
        np.testing.assert_array_equal(scale.numpy(), scales)
        ref = (nib * scales[..., None]).reshape(24, -1)[:, :k].T
        np.testing.assert_allclose(fakequant.weight(torch.tensor(w), ("int4", block)).numpy(), ref, rtol=0, atol=1e-6)


def test_fixed_rounding_masks_the_gradient_where_it_clips():
    x = torch.tensor([-1.0, 0.0, 0.26, 1.0, 3.0], requires_grad=True)
    y = fakequant.fixed(x, 0.01, 100)  # range [-1.00, 1.55]
    torch.testing.assert_close(y.detach(), torch.tensor([-1.0, 0.0, 0.26, 1.0, 1.55]))
    y.backward(torch.ones(5))
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0]))


def test_plan_is_what_the_quantizer_replaces(zoo_export):
    proto = _model(zoo_export, "bert", None)
    plan = fakequant.plan(proto)
    inits = {t.name for t in proto.graph.initializer}
    mm = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert set(plan) == {n.output[0] for n in mm if n.input[1] in inits}
    assert len(plan) < len(mm)  # the attention-score MatMuls (two activations) stay float
    gemm = _model(zoo_export, "gpt2", None)
    assert set(fakequant.plan(gemm)) == {n.output[0] for n in gemm.graph.node if n.op_type == "Gemm"}


def test_weight_grid_is_onnxruntimes(zoo_export):
    proto = _model(zoo_export, "bert", "gelu=phi6")
    _, q = quantize_proto(proto, "int8")
    qi = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    fi = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    plan = fakequant.plan(proto)
    checked = 0
    for n in proto.graph.node:
        if n.op_type == "MatMul" and n.output[0] in plan:
            g, s = fakequant.weight_grid(torch.tensor(fi[n.input[1]]))
            np.testing.assert_array_equal(g.numpy().astype(np.int8), qi[f"{n.input[1]}_quantized"])
            np.testing.assert_array_equal(s.numpy(), qi[f"{n.input[1]}_scale"])
            checked += 1
    assert checked == len(plan)


def test_activation_grid_is_dynamic_quantize_linears():
    x = np.random.default_rng(0).normal(size=(3, 7, 5)).astype(np.float32) * 3 + 1
    node = onnx.helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"])
    deq = onnx.helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])
    g = onnx.helper.make_graph([node, deq], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 20)])
    ref = session_for(m).run(None, {"x": x})[0]
    np.testing.assert_array_equal(fakequant.activation(torch.tensor(x)).numpy(), ref)


def test_backward_is_straight_through():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(4, 6)).astype(np.float32), requires_grad=True)
    w = torch.tensor(rng.normal(size=(6, 3)).astype(np.float32), requires_grad=True)
    g = torch.tensor(rng.normal(size=(4, 3)).astype(np.float32))
    a, b = fakequant.inputs("MatMul", {}, [x, w])
    y = a @ b
    assert not torch.equal(y, x @ w)  # forward is quantized
    y.backward(g)
    # d/dx = g @ Q(w)^T and d/dw = Q(x)^T @ g: the quantizers pass the gradient through unchanged
    torch.testing.assert_close(x.grad, g @ b.detach().T)
    torch.testing.assert_close(w.grad, a.detach().T @ g)


def test_grids_reuse_an_unchanged_weight_and_see_every_change():
    rng = np.random.default_rng(2)
    w = torch.tensor(rng.normal(size=(6, 5)).astype(np.float32))
    grids = fakequant.Grids()
    ref = fakequant.weight(w)
    first = grids.weight(w)
    again = grids.weight(w)
    assert again is first and grids.hits == 1 and torch.equal(first, ref)
    with torch.no_grad():
        w.mul_(1.7)  # an in-place write bumps the version counter: recomputed, not reused
    assert torch.equal(grids.weight(w), fakequant.weight(w)) and grids.misses == 2
    w2 = w.clone()  # same values, another tensor: its own entry
    assert torch.equal(grids.weight(w2), fakequant.weight(w)) and grids.misses == 3
    del w2
    assert len(grids.entries) == 1  # the entry went with its tensor
    # a Gemm's transB weight: quantized along its output axis (rows of the stored weight), as uncached
    gt = grids.weight(w, True, transposed=True)
    assert torch.equal(gt, fakequant.weight(w.T).T) and not torch.equal(gt, fakequant.weight(w))
    # per channel vs per tensor: distinct entries
    assert torch.equal(grids.weight(w, False), fakequant.weight(w, False))


def test_grids_keep_the_gradient_of_a_trained_weight():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(4, 6)).astype(np.float32))
    w = torch.tensor(rng.normal(size=(6, 3)).astype(np.float32), requires_grad=True)
    g = torch.tensor(rng.normal(size=(4, 3)).astype(np.float32))
    grids = fakequant.Grids()
    for _ in range(2):  # the second call reuses the grid, and still reaches w
        w.grad = None
        a, b = fakequant.inputs("MatMul", {}, [x, w], True, grids)
        (a @ b).backward(g)
        torch.testing.assert_close(w.grad, a.detach().T @ g)
        assert torch.equal(b.detach(), fakequant.weight(w).detach())
    assert grids.hits == 1


def test_heal_with_the_grid_cache_is_bit_identical_to_without(zoo_export, tmp_path, monkeypatch):
    """The same fake-quantized heal with and without ``Grids`` writes the same weights, bit for bit,
    and the cache was really used (every held-out check reuses each weight's grid)."""
    src = zoo_export("bert", "dynamo20")
    data = _npz(tmp_path / "data.npz", 24, 1)
    cfg = HealConfig(steps=12, eval_every=4, threads=1, quantize="int8", local=0.5, holdout_batches=4)
    made, Grids = [], fakequant.Grids

    def counting():
        made.append(Grids())
        return made[-1]

    def run() -> dict:
        model, original = io.load(src), io.load(src)
        batches = load_data(data, original)
        rep = heal(model, original, batches, cfg)
        assert rep.fake_quantized > 0 and rep.best > rep.start  # trained weights are written
        return {n: v.const_value.numpy().copy() for n, v in model.graph.initializers.items()}

    monkeypatch.setattr(executor.fakequant, "Grids", counting)
    cached = run()
    assert made and sum(g.hits for g in made) > 0
    # no entry outlives its weight (the trained values of each step and check are dropped with them)
    assert all(e[0]() is not None for g in made for e in g.entries.values())
    monkeypatch.setattr(executor.fakequant, "Grids", lambda: None)
    plain = run()
    assert cached.keys() == plain.keys()
    changed = 0
    for n in cached:
        np.testing.assert_array_equal(cached[n], plain[n])
        changed += not np.array_equal(cached[n], io.load(src).graph.initializers[n].const_value.numpy())
    assert changed > 0


def test_plan_refuses_what_it_cannot_mirror(zoo_export):
    from n6onnx.errors import BadArgumentError

    proto = _model(zoo_export, "bert", None)
    with pytest.raises(BadArgumentError, match="mirrors --quantize"):
        fakequant.plan(proto, "fp16")
    with pytest.raises(BadArgumentError, match="calibration feeds"):
        fakequant.plan(proto, "int8:static")


@pytest.mark.parametrize("op,trans", [("MatMul", 0), ("Gemm", 1)])
def test_saturation_is_the_pair_clipping_of_the_int8_product(op, trans):
    """``fakequant.saturation`` against the numpy reference of a pair-clipping kernel (tests/quantize/
    test_kernel.py) on the codes onnxruntime's grids give: exact int8 product plus the saturation equals the
    clipped product, times the scales; K odd (a zero-padded last pair) included. On any CPU (no onnxruntime)."""
    from ..quantize.test_kernel import pair_clipped

    rng = np.random.default_rng(3)
    for k in (64, 65):
        w = rng.standard_normal((k, 24)).astype(np.float32)
        w[:, :4] = np.abs(w[:, :4]) + 2  # columns whose pairs reach the clip
        x = (rng.standard_normal((2, 5, k)) + 3).astype(np.float32)
        site = fakequant.Site(("int8", True), saturate=True)
        wt = torch.tensor(w.T.copy() if trans else w)
        sat = fakequant.saturation(op, {"transB": trans}, torch.tensor(x), wt, site).numpy().reshape(-1, 24)
        q, sw = fakequant.weight_grid(torch.tensor(w))
        sx, zp = fakequant.dynamic_grid(torch.tensor(x))
        codes = torch.div(torch.tensor(x).reshape(-1, k), sx).round().add(zp).clamp(0, 255).numpy().astype(np.int64)
        qi = q.numpy().astype(np.int64)
        pad = k % 2
        a, b = np.pad(codes, ((0, 0), (0, pad))), np.pad(qi, ((0, pad), (0, 0)))
        want = (pair_clipped(a, b) - a @ b) * (sw.numpy() * sx.item())  # the clipping's part of the output
        assert np.abs(want).max() > 0  # the clip is really reached
        np.testing.assert_allclose(sat, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
