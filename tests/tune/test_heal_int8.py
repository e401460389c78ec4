"""n6onnx tune heals an int8 recipe against its int8 graph (fake quantization, as ``rewrite --quantize
int8 --heal`` does) and an fp32 recipe in float; the int8 graph it measures and writes is the quantization
of the healed weights, and its reported fidelity is what an independent validate run against the
original gives. A real (short) heal, no stub."""

from __future__ import annotations

import pathlib
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import n6onnx
from n6onnx.quantize import int8graph, quantize_proto
from n6onnx.tune import stages, study, tune
from ..conftest import require
from .test_tune import FAST, KEEP, MODEL, _npz, _speeds


def _int8_weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.endswith("_quantized")}


def test_int8_recipe_is_healed_under_fake_quant_and_fp32_in_float(zoo_export, tmp_path, monkeypatch):
    require("torch")
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    hook, why = stages.default_heal(threads=1, steps=6)
    assert hook is not None, why
    calls, healed_float = [], {}

    def recording(model, out, **kw):  # the real hook; the test keeps what it wrote
        calls.append(kw["quantize"])
        res = hook(model, out, **kw)
        healed_float[kw["quantize"]] = shutil.copyfile(out, tmp_path / f"healed-{kw['quantize']}.onnx")
        return res

    measured = {}
    real_fidelity = study.measure.fidelity

    def fidelity(original, candidate, held, threads, *where):  # the real measurement; the test keeps the candidate
        res = real_fidelity(original, candidate, held, threads, *where)
        measured[res["cosine"]] = shutil.copyfile(candidate, tmp_path / f"measured-{len(measured)}.onnx")
        return res

    monkeypatch.setattr(study.measure, "fidelity", fidelity)
    # first the int8 original healed (a seed of every study with a heal hook), then fp32 gelu=phi6 healed
    monkeypatch.setattr(study.space, "seeds", lambda info, heal, **_: [{**KEEP, "int8": True, "heal": True},
                                                                  {**KEEP, "gelu": "phi6", "int8": False,
                                                                   "heal": True}])
    # the speed-ups, in timing order (the two int8 references, then the trials), fixed: which recipe is written
    # must not depend on whether this CPU's int8 kernel beats fp32 on a tiny model (on x86 without VNNI it may not)
    _speeds(monkeypatch, [0.9, 0.95, 1.5, 1.4])
    rep = tune(src, tmp_path / "out.onnx", calibrate=data, min_cosine=-1.0, trials=2, heal=recording,
               heal_minutes=2, seed=0, **FAST)
    assert calls == ["int8", None]
    q8, f32 = rep.trials
    assert (q8.recipe.passes, q8.recipe.quantize, q8.recipe.heal) == ((), "int8", True)
    assert (f32.recipe.passes, f32.recipe.quantize, f32.recipe.heal) == (("gelu=phi6",), None, True)
    assert q8.status == f32.status == "complete", (q8.reason, f32.reason)

    # trained against the int8 graph: every MatMul that --quantize int8 replaces ran fake-quantized
    n_int8 = len(int8graph.quantized_matmuls(*_float_and_int8(healed_float["int8"])))
    assert n_int8 > 0 and q8.healing["fake_quantized"] == n_int8 and q8.healing["steps"] == 6
    assert q8.healing["mode"] == "fake-quant int8" and q8.healing["seconds"] > 0
    assert f32.healing["mode"] == "float" and f32.healing["fake_quantized"] == 0

    # what tune measured for the int8 recipe is the int8 graph of the healed weights (then fused) ...
    got = onnx.load(measured[q8.cosine])
    want = _float_and_int8(healed_float["int8"])[1]
    assert int8graph.is_quantized(got)
    assert sum(n.op_type == "MatMulInteger" for n in got.graph.node) == n_int8
    a, b = _int8_weights(got), _int8_weights(want)
    assert a.keys() == b.keys() and len(a) == n_int8 and all(np.array_equal(a[k], b[k]) for k in a)
    # ... and its reported fidelity is an independent validate run's on the held-out part (batches 3, 7)
    d = np.load(data)
    held = [{n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")} for k in (3, 7)]
    assert n6onnx.validate(src, measured[q8.cosine], feeds=held).cosine_mean == pytest.approx(q8.cosine, abs=1e-6)
    # the written model is the chosen point's graph, as measured
    assert rep.chosen is q8  # the fastest that met the gates
    assert n6onnx.validate(src, tmp_path / "out.onnx", feeds=held).cosine_mean == pytest.approx(rep.chosen.cosine,
                                                                                                 abs=1e-6)
    assert _int8_weights(onnx.load(tmp_path / "out.onnx")).keys() == a.keys()

    # the report says how each healed recipe was healed, and for how long
    j = rep.to_json()
    by_label = {t["label"]: t for t in j["trials"]}
    assert by_label[q8.recipe.label]["healing"]["mode"] == "fake-quant int8"
    assert by_label[f32.recipe.label]["healing"]["mode"] == "float"
    rows = {r[1]: r for r in study.render.rows(rep)}
    assert rows[q8.recipe.label][2].startswith("fake-quant int8, ") and rows[f32.recipe.label][2].startswith("float, ")
    assert rows[f"int8 ({study.FUSED_FIRST})"][2] == rows[f"int8 ({study.QUANTIZED_FIRST})"][2] == "-"


def _float_and_int8(path: pathlib.Path) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    m = onnx.load(path)
    return m, quantize_proto(m, "int8")[1]
