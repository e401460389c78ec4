"""Quantization-aware healing end to end: `rewrite --quantize int8 --heal` (no pass: the int8 original)
and `n6onnx heal` on an int8 model heal against the int8 path, write exactly the plain quantizer's
graph, improve the int8 model on held-out data (checked in onnxruntime), and refuse other formats."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

import n6onnx
from n6onnx.cli import main
from n6onnx.heal.run import heal_file
from n6onnx.heal.train import HealConfig
from n6onnx.quantize import int8graph, kernel

from .test_heal import _mse, _npz


@pytest.fixture(scope="module")
def setup(zoo_export, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heal_int8")
    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp / "q.onnx", [], quantize="int8")
    return src, tmp, _npz(tmp / "data.npz", 24, 1), _npz(tmp / "held.npz", 8, 2)


def test_heal_an_int8_model_keeps_its_graph_and_improves_it(setup):
    src, tmp, data, held = setup
    before = (tmp / "q.onnx").read_bytes()
    cfg = HealConfig(steps=60, eval_every=10, threads=1)
    rep = heal_file(tmp / "q.onnx", src, data, tmp / "qh.onnx", config=cfg)
    assert (tmp / "q.onnx").read_bytes() == before
    assert rep.fake_quantized == 12 and rep.trainable > 0 and rep.best >= rep.start
    a, b = onnx.load(tmp / "q.onnx"), onnx.load(tmp / "qh.onnx")
    assert int8graph.structure(a) == int8graph.structure(b)
    assert sorted(t.name for t in a.graph.initializer) == sorted(t.name for t in b.graph.initializer)
    # onnxruntime, on samples neither healing nor its early stopping saw
    assert _mse(src, tmp / "qh.onnx", held) < _mse(src, tmp / "q.onnx", held)


def test_rewrite_quantize_heal_without_a_pass(setup):
    src, tmp, data, held = setup
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp / "rq.onnx"), "--quantize", "int8", "--calibrate",
                                  str(data), "--heal", "--heal-steps", "30", "--threads", "1", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["healing"]["fake_quantized"] == 12 and out["healing"]["config"]["quantize"] == "int8"
    assert out["healing"]["int8_kernel"] == ("saturating" if kernel.pairs_saturate() else "exact")  # this CPU's
    assert int8graph.structure(onnx.load(tmp / "rq.onnx")) == int8graph.structure(onnx.load(tmp / "q.onnx"))
    # the same through the API with frequent held-out checks (the CLI checks every 25 steps): better
    # than the plain int8 model in onnxruntime, on samples healing never saw
    n6onnx.rewrite(src, tmp / "ra.onnx", [], calibrate=data, heal=True, quantize="int8",
                   heal_config=HealConfig(steps=60, eval_every=10, threads=1))
    assert int8graph.structure(onnx.load(tmp / "ra.onnx")) == int8graph.structure(onnx.load(tmp / "q.onnx"))
    assert _mse(src, tmp / "ra.onnx", held) < _mse(src, tmp / "q.onnx", held)
    # --no-heal-fake-quant: healing in float, where the int8 original has nothing to train
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp / "rf.onnx"), "--quantize", "int8", "--calibrate",
                                  str(data), "--heal", "--heal-steps", "5", "--no-heal-fake-quant"])
    assert r.exit_code != 0 and "no float initializer" in r.output and "Traceback" not in r.output


def test_heal_an_int4_model_keeps_its_graph_and_improves_it(setup):
    """`n6onnx heal` on a --quantize int4:16 model: dequantized, healed against MatMulNBits' own path,
    quantized again to the same nodes and initializer names; better in onnxruntime on unseen samples."""
    src, tmp, data, held = setup
    n6onnx.rewrite(src, tmp / "q4.onnx", [], quantize="int4:16")
    before = (tmp / "q4.onnx").read_bytes()
    rep = heal_file(tmp / "q4.onnx", src, data, tmp / "q4h.onnx", config=HealConfig(steps=60, eval_every=10, threads=1))
    assert (tmp / "q4.onnx").read_bytes() == before
    assert rep.fake_quantized == 12 and rep.config["quantize"] == "int4:16" and rep.best >= rep.start
    a, b = onnx.load(tmp / "q4.onnx"), onnx.load(tmp / "q4h.onnx")
    assert int8graph.structure(a) == int8graph.structure(b)
    assert sorted(t.name for t in a.graph.initializer) == sorted(t.name for t in b.graph.initializer)
    assert _mse(src, tmp / "q4h.onnx", held) < _mse(src, tmp / "q4.onnx", held)


def test_heal_refuses_other_quantized_formats(setup):
    src, tmp, data, _ = setup
    n6onnx.rewrite(src, tmp / "qs.onnx", [], quantize="int8:static", calibrate=data)
    r = CliRunner().invoke(main, ["heal", str(tmp / "qs.onnx"), "--teacher", str(src), "--calibrate", str(data),
                                  "-o", str(tmp / "never.onnx")])
    assert r.exit_code != 0 and "QuantizeLinear" in r.output and "--quantize int8:static --heal" not in r.output
    assert "rewrite --quantize MODE --heal" in r.output and "Traceback" not in r.output
    assert not (tmp / "never.onnx").exists()


def test_no_gain_writes_the_same_int8_model(setup):
    """When no evaluation beats the start, the start goes back bit for bit (the relative
    parametrisation's round trip alone would move weights by float rounding, and int8 re-rounds)."""
    src, tmp, data, _ = setup
    cfg = HealConfig(steps=10, eval_every=5, threads=1, lr=5.0, local=0.0)  # a step far too large
    rep = heal_file(tmp / "q.onnx", src, data, tmp / "bad.onnx", config=cfg)
    assert rep.best == rep.start and rep.lowest < rep.start
    a = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp / "q.onnx").graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp / "bad.onnx").graph.initializer}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(path).graph.node]


@pytest.mark.parametrize("mode", ["int4", "int8:static"])
def test_rewrite_heals_other_modes_against_their_own_path(setup, mode):
    """int4 (MatMulNBits) and static QDQ int8 heal fake-quantized too: the student's plan covers every
    quantized MatMul, the written graph is the plain quantizer's, and onnxruntime finds the healed
    quantized model closer to the original on samples healing never saw."""
    src, tmp, data, held = setup
    tag = mode.replace(":", "_")
    # the plain quantizer's rounding (int4 with --calibrate fits by default; the heal starts from the float weights)
    n6onnx.rewrite(src, tmp / f"{tag}.onnx", [], calibrate=data, quantize=mode, quantize_fit="none")
    _, rep = n6onnx.rewrite(src, tmp / f"{tag}_h.onnx", [], calibrate=data, heal=True, quantize=mode,
                            heal_config=HealConfig(steps=60, eval_every=10, threads=1))
    assert rep.healing.fake_quantized == 12 and rep.healing.config["quantize"] == str(n6onnx.quantize.parse_mode(mode))
    assert rep.healing.best >= rep.healing.start and not rep.warnings
    assert _ops(tmp / f"{tag}_h.onnx") == _ops(tmp / f"{tag}.onnx")
    assert _mse(src, tmp / f"{tag}_h.onnx", held) < _mse(src, tmp / f"{tag}.onnx", held)


def test_the_int8_kernel_a_heal_mirrors_can_be_named(setup):
    """--heal-int8-kernel heals on this machine for a deployment CPU of the other kind: the report says which
    products the student ran; the option is refused where there is no int8 heal (dynamic or static) to apply it to."""
    src, tmp, data, _ = setup
    for named, said in (("exact", "exact"), ("saturating", "pair sums clipped to int16")):
        args = ["rewrite", str(src), "-o", str(tmp / f"k-{named}.onnx"), "--quantize", "int8", "--calibrate", str(data),
                "--heal", "--heal-steps", "2", "--threads", "1", "--heal-int8-kernel", named]
        r = CliRunner().invoke(main, [*args, "--json"])
        assert r.exit_code == 0, r.output
        h = json.loads(r.output)["healing"]
        assert h["int8_kernel"] == named and h["config"]["int8_kernel"] == named
        r = CliRunner().invoke(main, args)  # the human summary says it too
        assert r.exit_code == 0 and f"int8 products {said} (as --int8-kernel asked)" in " ".join(r.output.split())
    # static QDQ: the MatMuls onnxruntime runs as integer kernels (QGemm, QLinearMatMul) mirror the named kernel
    args = ["rewrite", str(src), "-o", str(tmp / "k-static.onnx"), "--quantize", "int8:static", "--calibrate", str(data),
            "--heal", "--heal-steps", "2", "--threads", "1", "--heal-int8-kernel", "saturating", "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["healing"]["int8_kernel"] == "saturating"
    # nothing rounds or trains for an int8 kernel: no int8 heal, and no int8 fit
    for args in (["--quantize", "int4", "--heal"], ["--quantize", "int8", "--quantize-fit", "none"],
                 ["--quantize", "int8:static"], ["--heal", "--pass", "gelu=phi6"]):
        r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp / "refused.onnx"), "--calibrate", str(data),
                                      "--heal-int8-kernel", "exact", *args])
        assert r.exit_code != 0 and "--int8-kernel" in r.output and "Traceback" not in r.output, r.output
        assert not (tmp / "refused.onnx").exists()
    n6onnx.rewrite(src, tmp / "q4k.onnx", [], quantize="int4:16")
    r = CliRunner().invoke(main, ["heal", str(tmp / "q4k.onnx"), "--teacher", str(src), "--calibrate", str(data),
                                  "-o", str(tmp / "h4.onnx"), "--heal-int8-kernel", "saturating"])
    assert r.exit_code != 0 and "int4" in r.output and not (tmp / "h4.onnx").exists(), r.output
