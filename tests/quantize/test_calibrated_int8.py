"""A calibrated gelu=phi6 model survives onnxruntime's stock int8 (the phi6+int8 collapse, issue 17),
and inspect/validate warn when an n6 activation feeds a MatMul uncentred (the int8-hostile state).

Reference: onnxruntime running the original model. The bar comes from the same data: the
original's own int8 error (1 - cosine) plus the calibrated float model's error, times a margin."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from onnxruntime.quantization import QuantType, quantize_dynamic

import n6onnx
from n6onnx import calibrate as cal
from n6onnx.cli import main

from n6onnx.quantize import kernel


def _err(src, cand, held):
    r = n6onnx.validate(src, cand, feeds=held, threads=2).to_json()["outputs"]["last_hidden_state"]
    return 1.0 - r["cosine_mean"]


def _stock(src, dst, per_channel):
    # reduce_range (7-bit weights) where the CPU's u8s8 kernel clips pair sums (x86 without VNNI): onnxruntime's
    # own advice for such CPUs, so that what is measured is the model's int8 error, not the clipping's
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                     op_types_to_quantize=["MatMul", "Gemm"], reduce_range=kernel.pairs_saturate())
    return dst


@pytest.fixture(scope="module")
def bert_phi6(zoo_export, tmp_path_factory, bert_npz):
    d = tmp_path_factory.mktemp("cq")
    src = zoo_export("bert", "dynamo20")
    calib, held = bert_npz(d / "calib.npz", 48, 1), bert_npz(d / "held.npz", 12, 2)
    out = {}
    for name, kw in {"centred": {}, "uncentred": {"centre": False}}.items():
        saved = dict(cal.calibrate_swap.__kwdefaults__)
        cal.calibrate_swap.__kwdefaults__.update(kw)
        try:
            n6onnx.rewrite(src, d / f"{name}.onnx", ["gelu=phi6"], calibrate=calib)
        finally:
            cal.calibrate_swap.__kwdefaults__.update(saved)
        out[name] = d / f"{name}.onnx"
    return src, out, held, d


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_calibrated_phi6_survives_stock_int8(bert_phi6, per_channel):
    src, models, held, d = bert_phi6
    tag = "pc" if per_channel else "pt"
    e_orig_q = _err(src, _stock(src, d / f"orig_{tag}.onnx", per_channel), held)
    e_float = _err(src, models["centred"], held)
    e_q = _err(src, _stock(models["centred"], d / f"cal_{tag}.onnx", per_channel), held)
    bound = e_float + 3 * e_orig_q  # errors 1e-7 .. 1e-6 on this tiny random model, deterministic
    assert e_q <= bound, (e_q, e_float, e_orig_q)
    # without the centring (the state that collapsed MiniLM) the same bar is missed
    e_unc = _err(src, _stock(models["uncentred"], d / f"unc_{tag}.onnx", per_channel), held)
    assert e_unc > bound, (e_unc, bound)  # measured ~6x over it


def test_inspect_and_validate_warn_on_the_int8_hostile_state(bert_phi6):
    src, models, held, _ = bert_phi6
    assert not n6onnx.inspect(models["centred"]).warnings
    warn = n6onnx.inspect(models["uncentred"]).warnings
    assert len(warn) == 1 and "int8-hostile" in warn[0] and "2 n6 activation" in warn[0]
    notes = n6onnx.validate(src, models["uncentred"], feeds=held).notes
    assert any("int8-hostile" in n for n in notes)
    assert not any("int8-hostile" in n for n in n6onnx.validate(src, models["centred"], feeds=held).notes)
    r = CliRunner().invoke(main, ["inspect", str(models["uncentred"])])
    assert r.exit_code == 0 and "int8-hostile" in r.output
    r = CliRunner().invoke(main, ["inspect", "--json", str(models["uncentred"])])
    assert "int8-hostile" in json.loads(r.output)["warnings"][0]
