"""bench end to end on the tiny BERT: complete, sane JSON (no timing assertion: the machine is
shared), the CLI's --json, feeds from an .npz, CUDA unavailable, placement from a profile."""

from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import n6onnx
from n6onnx.bench import energy, session
from n6onnx.cli import main
from n6onnx.quantize import kernel

QUICK = dict(seconds=0.3, window=0.1, idle_seconds=0.05, warmup=0.05, threads=1, profile_runs=3)
PER_MODEL = ("model", "latency_ms", "throughput", "energy", "fusion", "session")


def _check_variant(v: dict, *, fused: bool) -> None:
    for k in PER_MODEL:
        assert k in v, k
    lat = v["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert lat["runs"] >= 3
    assert v["throughput"] > 0
    e = v["energy"]
    assert e["method"] in ("measured", "estimated") and e["meter"] and e["source"] and e["scope"]
    assert e["joules_per_inference"] > 0 and math.isfinite(e["joules_per_inference"])
    assert e["spread"]["n"] == e["windows"] >= 3
    assert "dynamic_joules_per_inference" in e and e["idle_watts"] is not None
    if e["method"] == "estimated":
        assert e["band"]["low"] < e["joules_per_inference"] < e["band"]["high"]
    for o in e["other"]:  # never mixed: each figure carries its own method
        assert o["method"] in ("measured", "estimated")
    s = v["session"]
    assert s["placement"]["nodes"] > 0 and s["placement"]["cpu_fallback"] is False
    assert s["op_time"]["by_op_type_ms"]
    if fused:
        assert v["fusion"]["chosen"] != "none" and v["fusion"]["fused_ops"] > 0


def test_bench_candidate_against_baseline(bert, bert_phi6):
    rep = n6onnx.bench(bert_phi6, bert, **QUICK)
    j = json.loads(json.dumps(rep.to_json()))  # JSON-serialisable
    _check_variant(j, fused=True)
    _check_variant(j["baseline"], fused=True)
    assert j["baseline"]["fusion"]["fused"]["Attention"] == 2
    assert j["baseline"]["fusion"]["fused"]["BiasGelu"] == 2
    assert j["session"]["custom_op_library"] == (str(n6onnx.library_path()) if n6onnx.library_path() else None)
    r = j["ratio"]
    for k in ("latency_p50", "throughput"):
        assert r[k]["n"] == 3 and r[k]["q1"] <= r[k]["median"] <= r[k]["q3"] and r[k]["median"] > 0
    assert r["energy"]["method"] == j["energy"]["method"] and r["energy"]["total"]["median"] > 0
    assert "definition" in r
    s = j["settings"]
    assert s["order"] == "ABBA" and s["blocks_per_variant"] == 3 and s["threads"] == 1
    assert s["cpu_watts_per_core"] == 10.0 and s["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert j["memory"]["peak_rss_mb"] > 0
    assert j["hardware"]["onnxruntime"] == ort.__version__ and j["hardware"]["logical_cpus"] >= 1
    # which int8 products this CPU computes (the probe itself is checked against onnxruntime in tests/quantize)
    assert j["hardware"]["int8_kernel"] == kernel.kind() != "unknown"
    assert j["method"]
    # here (no RAPL, no GPU) the only figure is the labelled estimate
    if not any(m["method"] == "measured" for m in s["meters"]):
        assert j["energy"]["method"] == "estimated" and j["energy"]["other"] == []


def test_bench_without_baseline_has_no_ratio(bert):
    j = n6onnx.bench(bert, **QUICK).to_json()
    assert j["baseline"] is None and j["ratio"] is None
    assert j["fusion"] is None  # the model is measured as given
    _check_variant(j, fused=False)
    assert j["settings"]["order"] == "single variant"


def test_bench_with_an_injected_measured_meter(bert):
    ticks = iter(range(0, 10**9, 7))
    fake = energy.CounterMeter(lambda: next(ticks), 1e-3, 2**16, name="fake", scope="test", source="fake counter")
    j = n6onnx.bench(bert, bert, meters=[fake], fuse_candidate=False, **QUICK).to_json()
    e = j["energy"]
    assert e["meter"] == "fake" and e["method"] == "measured" and "band" not in e
    assert j["ratio"]["energy"]["meter"] == "fake"
    # a counter that ignores the work: its dynamic share is noise, so no dynamic ratio and a warning
    assert j["ratio"]["energy"]["dynamic"] is None and e["dynamic_resolved"] is False
    assert any("not above idle" in w for w in j["warnings"])
    assert j["fusion"] is None and j["baseline"]["fusion"]["chosen"] != "none"
    assert any("--no-fuse-candidate" in w for w in j["warnings"])


def test_bench_feeds_from_npz(bert, tmp_path):
    from n6onnx.testing import zoo

    f = tmp_path / "feeds.npz"
    np.savez(f, **zoo.example_inputs("bert"))
    j = n6onnx.bench(bert, feeds=f, **QUICK).to_json()
    assert j["settings"]["feeds"]["source"] == str(f)
    assert j["settings"]["feeds"]["shapes"]["input_ids"] == [2, 16]


def test_cli_json_is_json_only(bert, bert_phi6):
    res = CliRunner().invoke(main, [
        "bench", str(bert_phi6), "--baseline", str(bert), "--seconds", "0.3", "--window", "0.1",
        "--idle-seconds", "0.05", "--warmup", "0.05", "--threads", "1", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    j = json.loads(res.stdout)
    for k in ("latency_ms", "throughput", "energy", "baseline", "ratio"):
        assert k in j
    assert {"p50", "p90", "p99"} <= set(j["latency_ms"]) and {"joules_per_inference", "method"} <= set(j["energy"])
    assert {"latency_ms", "throughput", "energy"} <= set(j["baseline"])


def test_cli_human_output(bert):
    res = CliRunner().invoke(main, ["bench", str(bert), "--seconds", "0.3", "--window", "0.1",
                                    "--idle-seconds", "0", "--warmup", "0.05", "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "latency p50" in res.stdout and ("estimated" in res.stdout or "measured" in res.stdout)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_is_a_clear_error(bert):
    res = CliRunner().invoke(main, ["bench", str(bert), "--provider", "cuda", "--json"])
    assert res.exit_code == 2
    assert "CUDAExecutionProvider is not available" in " ".join(res.output.split())
    assert res.stdout == ""
    with pytest.raises(n6onnx.BadArgumentError):
        n6onnx.bench(bert, provider="cuda")


def test_bad_input_is_a_clear_error(bert, tmp_path):
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 2 and "no such file" in " ".join(res.output.split())
    res = CliRunner().invoke(main, ["bench", str(bert), "--threads", "0"])
    assert res.exit_code == 2


def test_parse_profile_reports_cpu_fallback():
    def node(name, op, prov, ts, dur=10):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op, "provider": prov, "mem_in_use_peak": "2097152"}}

    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
          {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100}]
    for ts in (10, 210):
        ev += [node("mm", "MatMul", "CUDAExecutionProvider", ts), node("shape", "Shape", "CPUExecutionProvider", ts + 20),
               node("cp", "MemcpyToHost", "CUDAExecutionProvider", ts + 40)]
    p = session.parse_profile(ev, "cuda")
    pl = p["placement"]
    assert pl["nodes"] == 3 and pl["cpu_fallback"] and pl["cpu_nodes"] == {"Shape": 1}
    assert pl["by_provider"] == {"CPUExecutionProvider": 1, "CUDAExecutionProvider": 2} and pl["memcpy_nodes"] == 1
    assert p["op_time"]["runs"] == 1 and p["op_time"]["by_op_type_ms"]["MatMul"] == pytest.approx(0.01)
    assert p["ort_allocator_peak_mb"] == pytest.approx(2.0)
    assert session.parse_profile(ev, "cpu")["placement"]["cpu_fallback"] is False

