"""Carbon figures (Wh and gCO2e per 1,000 inferences): they follow from the energy and the options
by the Green Algorithms formula (recomputed here independently), the defaults come from
CodeCarbon's data (read here from its own JSON files) and Green Algorithms' PUE, estimated energy
stays labelled estimated, and bad options are refused with one line and exit 2 (bench and report)."""

from __future__ import annotations

import json
import pathlib

import pytest
from click.testing import CliRunner

import n6onnx
from n6onnx.bench import carbon, energy
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError

from ..conftest import require

codecarbon = require("codecarbon")
CC_DATA = pathlib.Path(codecarbon.__file__).parent / "data" / "private_infra"


def _expected(joules_per_inference, g_per_kwh, pue):
    kwh_per_1k = joules_per_inference * 1000 / 3.6e6  # 1 kWh = 3.6 MJ
    return kwh_per_1k * 1000, kwh_per_1k * pue * g_per_kwh


def test_defaults_are_codecarbon_world_average_and_green_algorithms_pue():
    world = json.loads((CC_DATA / "carbon_intensity_per_source.json").read_text())["world_average"]
    cs = carbon.settings()
    assert cs.grid.g_per_kwh == world and "CodeCarbon" in cs.grid.source and "world average" in cs.grid.source
    assert cs.pue == 1.56 and "Green Algorithms" in cs.pue_source
    assert "Green Algorithms" in cs.to_json()["methodology"]


def test_country_code_reads_codecarbon_energy_mix():
    mix = json.loads((CC_DATA / "global_energy_mix.json").read_text())
    cs = carbon.settings("fra", 1.2)
    assert cs.grid.g_per_kwh == mix["FRA"]["carbon_intensity"] and "France" in cs.grid.source
    assert cs.pue == 1.2 and "given" in cs.pue_source


@pytest.mark.parametrize("method,band", [("measured", None), ("estimated", (0.5, 1.5))])
def test_figures_follow_from_energy_and_options(method, band):
    j = 0.0123
    e = {"joules_per_inference": j, "method": method, "meter": "m"}
    if band:
        e["band"] = {"low": j * band[0], "high": j * band[1]}
    f = carbon.per_1k(e, carbon.settings("420", 1.3))
    wh, g = _expected(j, 420, 1.3)
    assert f["wh_per_1k"] == pytest.approx(wh, rel=1e-12) and f["co2e_g_per_1k"] == pytest.approx(g, rel=1e-12)
    assert f["facility_wh_per_1k"] == pytest.approx(wh * 1.3, rel=1e-12)
    assert f["label"] == method and f["pue"] == 1.3 and f["grid_intensity_g_per_kwh"] == 420
    if band:
        lo, hi = _expected(j * 0.5, 420, 1.3), _expected(j * 1.5, 420, 1.3)
        assert f["band"]["wh_per_1k"] == pytest.approx([lo[0], hi[0]])
        assert f["band"]["co2e_g_per_1k"] == pytest.approx([lo[1], hi[1]])
    else:
        assert "band" not in f
    assert method in carbon.describe(f) and "420 gCO2e/kWh" in carbon.describe(f)
    assert carbon.per_1k({"joules_per_inference": None}, carbon.settings()) is None


@pytest.mark.parametrize("grid,pue,msg", [("-5", None, "non-negative"), ("nan", None, "non-negative"),
                                          ("XYZ", None, "no carbon intensity"), ("France", None, "alpha-3"),
                                          (None, 0.9, ">= 1"), (None, "high", ">= 1")])
def test_bad_options_are_refused(grid, pue, msg):
    with pytest.raises(BadArgumentError, match=msg):
        carbon.settings(grid, pue)


def test_bench_reports_carbon_from_its_energy(bert):
    ticks = iter(range(0, 10**9, 7))
    fake = energy.CounterMeter(lambda: next(ticks), 1e-3, 2**16, name="fake", scope="test", source="fake counter")
    j = n6onnx.bench(bert, bert, meters=[fake], fuse_candidate=False, seconds=0.3, window=0.1, idle_seconds=0,
                     warmup=0.05, threads=1, profile_runs=3, grid_intensity="300", pue=1.1).to_json()
    for v in (j, j["baseline"]):
        c = v["carbon"]["primary"]
        wh, g = _expected(v["energy"]["joules_per_inference"], 300, 1.1)
        assert c["label"] == "measured" and c["wh_per_1k"] == pytest.approx(wh) and c["co2e_g_per_1k"] == pytest.approx(g)
    s = j["settings"]["carbon"]
    assert s["grid_intensity_g_per_kwh"] == 300 and s["pue"] == 1.1 and "Green Algorithms" in s["methodology"]


def test_bench_cli_labels_and_refuses_bad_options(bert):
    args = ["bench", str(bert), "--seconds", "0.3", "--window", "0.1", "--idle-seconds", "0", "--warmup", "0.05",
            "--threads", "1"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = " ".join(res.stdout.split())
    assert "Wh/1k inf (estimated)" in out and "gCO2e/1k inf (estimated)" in out
    assert "Green Algorithms" in out and "PUE 1.56" in out
    for bad in (["--pue", "0.5"], ["--grid-intensity", "-1"], ["--grid-intensity", "QQQ"]):
        res = CliRunner().invoke(main, args + bad)
        assert res.exit_code == 2, (bad, res.output)
        errors = [ln for ln in res.output.splitlines() if "rror" in ln]
        assert "Traceback" not in res.output and len(errors) == 1 and bad[0] in errors[0], res.output


def test_report_cli_takes_and_checks_the_carbon_options(tmp_path):
    d = {"tool": "n6onnx bench", "model": "m.onnx", "latency_ms": {"p50": 1.0, "p90": 1.1, "p99": 1.2},
         "throughput": 100.0, "energy": {"meter": "nvml", "method": "measured", "joules_per_inference": 0.5},
         "baseline": None, "ratio": None, "settings": {"provider": "cuda", "threads": None, "device_id": 0},
         "hardware": {"gpu": "G"}, "warnings": []}
    (tmp_path / "b.json").write_text(json.dumps(d))
    res = CliRunner().invoke(main, ["report", str(tmp_path / "b.json"), "-o", str(tmp_path / "o"), "--json",
                                    "--grid-intensity", "100", "--pue", "1.2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    k1 = data["variants"][0]["bench"][0]["energy"]["per_1k"]
    wh, g = _expected(0.5, 100, 1.2)
    assert k1["label"] == "measured" and k1["wh_per_1k"] == pytest.approx(wh) and k1["co2e_g_per_1k"] == pytest.approx(g)
    assert data["carbon"]["grid_intensity_g_per_kwh"] == 100 and data["carbon"]["pue"] == 1.2
    res = CliRunner().invoke(main, ["report", str(tmp_path / "b.json"), "-o", str(tmp_path / "o2"),
                                    "--grid-intensity", "nowhere"])
    assert res.exit_code == 2 and "alpha-3" in res.output and not (tmp_path / "o2").exists()
