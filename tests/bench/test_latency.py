"""Timing machinery: percentiles, ABBA order, blocks with meters, ratios with spread."""

from __future__ import annotations

import pytest

from n6onnx.bench import latency


def test_percentiles_are_ordered_and_in_ms():
    p = latency.percentiles_ms([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert p["p50"] == pytest.approx(50.5)
    assert p["p50"] <= p["p90"] <= p["p99"] <= p["max"] == pytest.approx(100)
    assert p["runs"] == 100


def test_summary_and_ratio_summary():
    s = latency.summary([3.0, 1.0, 2.0, 4.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 4.0 and s["n"] == 4
    assert s["q1"] <= s["median"] <= s["q3"]
    assert latency.summary([])["n"] == 0
    r = latency.ratio_summary([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    assert r["median"] == 2.0 and r["q1"] == 2.0 and r["q3"] == 2.0 and r["n"] == 3
    assert latency.ratio_summary([1.0, -1.0], [1.0, 1.0])["n"] == 1  # non-positive pairs dropped


def test_abba_order():
    assert latency.abba_order(["a", "b"], 3) == ["a", "b", "b", "a", "a", "b"]
    assert latency.abba_order(["a"], 2) == ["a", "a"]


def test_blocks_interleave_and_read_meters(fake_counter):
    from n6onnx.bench.energy import CounterMeter

    calls = []
    meter = CounterMeter(lambda: len(calls), 1.0)  # one "joule" per run
    runners = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    seen = []
    res = latency.run_blocks(runners, 2, 0.01, [meter], on_block=lambda b: seen.append(b.variant))
    assert seen == ["a", "b", "b", "a"]
    for blocks in res.values():
        assert len(blocks) == 2
        for b in blocks:
            assert b.runs >= 3 and b.seconds > 0
            assert b.energy == [b.runs]
            assert all(x >= 0 for x in b.latencies)
    assert latency.throughput(res["a"]) > 0


def test_warm_up_runs_at_least_min_runs():
    n = []
    assert latency.warm_up(lambda: n.append(1), seconds=0.0, min_runs=4) == 4 == len(n)
