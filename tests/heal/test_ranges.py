"""Trained static int8 ranges (``heal.ranges``, ``fakequant.LearnedRange``): at the start a learned range
rounds exactly as the calibrated one; its gradient is LSQ's (checked against the formula in numpy); the
ranges a static heal ends with are what onnxruntime runs in the written QDQ graph; and training them
lowers the error of an outlier-dominated MinMax range on data the training never saw."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

import n6onnx
from n6onnx.cli import main
from n6onnx import feeds as F
from n6onnx.heal import fakequant, ranges
from n6onnx.heal.executor import GraphModule
from n6onnx.heal.train import HealConfig
from n6onnx.quantize import quantize_proto
from n6onnx.runtime import session_for

from .test_fakequant import BOUND, _model, _unfused, site_errors
from .test_heal import _mse, _npz


def _x(seed: int = 0) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).normal(scale=2.0, size=(64, 33)).astype(np.float32))
    x[0, 0], x[1, 1] = 90.0, -40.0  # outside the range below: clipped on both sides
    return x


def test_a_learned_range_starts_as_the_fixed_one():
    x, (s, z) = _x(), (0.1234567, 117)
    ref = fakequant.fixed(x, s, z)
    r = fakequant.LearnedRange(s, z)
    assert r.value() == (float(np.float32(s)), z)
    with torch.no_grad():
        assert torch.equal(r(x), ref)
    assert torch.equal(r(x).detach(), ref)  # the training forward too


def test_a_learned_range_has_lsq_gradients():
    """d out / d scale is round(v) - v inside the range (v = x / s + z), the clip edge's (255 - z or -z)
    outside it; d out / d zero point is 0 inside and -s outside; d out / d x is 1 inside, 0 outside."""
    x, (s, z) = _x().requires_grad_(True), (0.1, 100)
    r = fakequant.LearnedRange(s, z)
    r(x).sum().backward()
    xs = x.detach().numpy().astype(np.float64)
    s32 = np.float64(np.float32(s))
    v = xs / s32 + z
    inside = (np.round(v) >= 0) & (np.round(v) <= 255)
    ds = np.where(inside, np.round(v) - v, np.where(np.round(v) > 255, 255 - z, -z))
    assert not inside.all() and inside.any()
    np.testing.assert_allclose(r.log_gain.grad.item(), (ds * s32).sum(), rtol=1e-4)
    # inside, the zero point's +s and -s cancel: float32 leaves ~1e-8 per element of the 2112 (measured 3e-6 in all)
    np.testing.assert_allclose(r.zero_point.grad.item(), (-s32 * ~inside).sum(), atol=2e-5)
    np.testing.assert_array_equal(x.grad.numpy(), inside.astype(np.float32))


def test_written_ranges_are_what_the_student_ran(zoo_export):
    """The student with moved ranges equals onnxruntime running the QDQ graph written with those ranges
    (``quantize_proto(ranges=)``: TensorQuantOverrides), not the one calibrated again."""
    proto = _model(zoo_export, "bert", None)
    sf = session_for(proto)
    cal = F.random_feeds(sf, 4, seed=10)
    plan = fakequant.plan(proto, "int8:static", cal, saturate=False)  # exact products: the unfused QDQ graph's
    moved = {n: fakequant.LearnedRange(s, z) for n, (s, z) in plan.tensors.items()}
    with torch.no_grad():
        for k, r in enumerate(moved.values()):
            r.log_gain.fill_(np.log(0.6 + 0.05 * (k % 5)))
            r.zero_point.add_(3 * (k % 3) - 3)
    student = GraphModule(proto, fake_quant=fakequant.Plan(plan, moved))
    written = {n: r.value() for n, r in moved.items()}
    qwritten = quantize_proto(proto, "int8:static", calibration_feeds=cal, ranges=written)[1]
    sq = session_for(qwritten, _unfused())
    sc = session_for(quantize_proto(proto, "int8:static", calibration_feeds=cal)[1], _unfused())
    errs = []
    for seed in range(3):
        fd = F.random_feeds(sf, 1, seed=seed)[0]
        sites = site_errors(proto, fakequant.Plan(plan, moved), qwritten, fd, _unfused())
        assert set(sites) == set(plan) and max(sites.values()) < BOUND, sites  # every site, every feed
        with torch.no_grad():
            got = next(iter(student(fd).values())).numpy()
        ref, calibrated = sq.run(None, fd)[0], sc.run(None, fd)[0]
        scale = np.abs(ref).max()
        errs.append(np.abs(got - ref).max() / scale)
        assert np.abs(got - calibrated).max() / scale > 100 * BOUND
        assert errs[-1] < np.abs(got - calibrated).max() / scale / 30  # every feed: the written ranges, not the old
    # the whole model: most feeds to float rounding; on one, a value that float32 differences upstream (torch against this CPU's
    # onnxruntime kernels) put on the other side of a rounding boundary moves an element by one uint8 step
    # (measured on an AVX2 CPU: 2.8e-5 of the range, 62 of 2048 elements, one feed of three)
    assert sorted(errs)[1] < BOUND


def written_ranges(path) -> dict:
    """{activation tensor: (scale, zero point)} of a QDQ model's activation QuantizeLinear nodes (a graph output's
    by its own name)."""
    q = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    return {n.input[0].removesuffix("_QuantizeLinear_Input"): (float(inits[n.input[1]]), int(inits[n.input[2]]))
            for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def _matmul_proto(w: np.ndarray) -> onnx.ModelProto:
    g = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", w.shape[0]])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", w.shape[1]])],
                               [onnx.numpy_helper.from_array(w, "w")])
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_training_a_range_lowers_the_error_on_unseen_data():
    """One MatMul whose input is heavy-tailed (Student's t, 3 degrees of freedom): MinMax on the first 8
    batches (as calibration takes the first samples of DATA) sets a range that later batches exceed. Trained
    on the float output over 32 batches, the range lowers the error on 8 batches neither step saw, by more
    than 30%; the plan ends holding the best range as fixed values."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(33, 8)).astype(np.float32)
    proto = _matmul_proto(w)

    def batch(seed):
        return {"x": np.random.default_rng(seed).standard_t(3.0, size=(64, 33)).astype(np.float32)}

    train_b, held_b = [batch(s) for s in range(1, 33)], [batch(s) for s in range(100, 108)]
    plan = fakequant.plan(proto, "int8:static", train_b[:8])
    calibrated = plan.tensors["x"]
    student = GraphModule(proto, fake_quant=plan)
    ref = {id(b): torch.from_numpy(b["x"] @ w) for b in train_b + held_b}

    def err(b) -> torch.Tensor:
        return ((student(b)["y"] - ref[id(b)]) ** 2).mean()

    def check() -> np.ndarray:
        with torch.no_grad():
            return np.array([-float(err(b)) for b in held_b])

    start = check()
    it = iter(train_b * 20)
    found, best, steps, rows = ranges.train(plan, lambda: err(next(it)), check, start, float("inf"), lr=2e-2,
                                            every=10, margin=lambda v, b: 0.0, steps=200)
    assert steps == 200 and len(rows) == 20
    assert found["x"] != calibrated and plan.tensors["x"] == found["x"]
    assert best.mean() == pytest.approx(max([start.mean()] + [r[2] for r in rows]), abs=1e-6)  # the best is kept (rows: 6 digits)
    assert -best.mean() < 0.7 * -start.mean()
    np.testing.assert_allclose(check(), best)  # the plan holds it: the same check again


@pytest.mark.parametrize("share", [0.0, 0.3])
def test_a_static_heal_writes_the_ranges_it_trained(zoo_export, tmp_path, share):
    """``rewrite --quantize int8:static --heal``: with a ranges share the last steps train the ranges
    (curve phase "ranges", no check below the start), and the written QuantizeLinear nodes carry exactly
    the reported ranges; with 0 the ranges are calibrated again on write-out, as before. Either way the
    healed model is closer to the original than the plain quantizer's in onnxruntime, on samples healing
    never saw."""
    src = zoo_export("bert", "dynamo20")
    data, held = _npz(tmp_path / "d.npz", 24, 1), _npz(tmp_path / "h.npz", 8, 2)
    n6onnx.rewrite(src, tmp_path / "s.onnx", [], calibrate=data, quantize="int8:static")
    _, rep = n6onnx.rewrite(src, tmp_path / "h.onnx", [], calibrate=data, quantize="int8:static", heal=True,
                            heal_config=HealConfig(steps=60, eval_every=6, threads=1, ranges=share))
    h = rep.healing
    phases = [c[4] for c in h.curve if len(c) > 4]
    written = written_ranges(tmp_path / "h.onnx")
    if share:
        assert "ranges" in phases and h.steps == 60 and h.best >= h.start
        assert all(c[2] >= h.start - 0.001 for c in h.curve if len(c) > 4 and c[4] == "ranges")
        assert h.ranges == written
    else:
        assert "ranges" not in phases and h.ranges is None
    assert _mse(src, tmp_path / "h.onnx", held) < _mse(src, tmp_path / "s.onnx", held)


def test_the_cli_trains_and_reports_the_ranges(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    data = _npz(tmp_path / "d.npz", 24, 1)
    args = ["rewrite", str(src), "-o", str(tmp_path / "c.onnx"), "--quantize", "int8:static", "--calibrate", str(data),
            "--heal", "--heal-steps", "40", "--threads", "1"]
    r = CliRunner().invoke(main, args + ["--heal-ranges", "0.5"])
    assert r.exit_code == 0, r.output
    assert "activation ranges" in r.output and "16 activation ranges" in r.output
    r = CliRunner().invoke(main, args + ["--heal-ranges", "1"])  # nothing left for the weights: refused
    assert r.exit_code != 0 and "--heal-ranges" in r.output
    # where there are no static ranges, the option is refused by name, and nothing is written
    for q in (["--quantize", "int8"], []):
        bad = ["rewrite", str(src), "-o", str(tmp_path / "d.onnx"), "--pass", "gelu=phi6", "--calibrate", str(data),
               "--heal", "--heal-ranges", "0.3"] + q
        r = CliRunner().invoke(main, bad)
        assert r.exit_code != 0 and "--heal-ranges" in r.output and not (tmp_path / "d.onnx").exists()
    r = CliRunner().invoke(main, ["heal", str(tmp_path / "c.onnx"), "--teacher", str(src), "--calibrate", str(data),
                                  "-o", str(tmp_path / "e.onnx"), "--heal-ranges", "0.3"])
    assert r.exit_code != 0 and "--heal-ranges" in r.output and not (tmp_path / "e.onnx").exists()
