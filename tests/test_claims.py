"""benchmarks/claims.py: docs/CLAIMS.md from whatever result files exist, numbers copied, missing
files -> "not measured yet"."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("n6_claims", ROOT / "benchmarks" / "claims.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is created
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(spec.name, None)


def put(folder: pathlib.Path, name: str, obj) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj))


def verdicts(text: str) -> dict[str, str]:
    """Claim column -> verdict column of the summary table."""
    out = {}
    table = text.split("## Verdicts", 1)[1].split("\n\n", 2)[1]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        out[cells[0]] = cells
    return out


def row(v: dict[str, str], prefix: str) -> list[str]:
    hits = [cells for k, cells in v.items() if k.startswith(prefix)]
    assert len(hits) == 1, (prefix, list(v))
    return hits[0]


HW = {"cpu": "Fake CPU 9000", "logical_cpus": 2, "onnxruntime": "1.32.0"}


def t(median_s):
    return {"median": median_s, "q1": median_s * 0.98, "q3": median_s * 1.02, "min": median_s, "max": median_s,
            "n": 10}


def activation_cpu_json():
    return {"generated": "2026-01-02T03:04:05+00:00", "hardware": HW, "benchmark": "activation_cpu",
            "method": "fake single-node method", "threads": 2, "rows": [
                {"dtype": "float32", "elements": 9216, "shape": [9, 1024],
                 "results": {"ort_gelu": t(0.00125), "phi6": t(0.0005)},
                 "ratio_phi6_vs_gelu": 2.34, "ratio_biasphi6_vs_biasgelu": 3.21, "ratio_fallback_vs_gelu": 0.5},
                {"dtype": "float16", "elements": 9216, "shape": [9, 1024],
                 "results": {"ort_gelu": t(0.0095), "phi6": t(0.001)},
                 "ratio_phi6_vs_gelu": 9.5, "ratio_biasphi6_vs_biasgelu": 4.5, "ratio_fallback_vs_gelu": 1.5}]}


def cuda_mode(ms, tb, sp=None):
    d = {"median_ms": ms, "q1_ms": ms * 0.99, "q3_ms": ms * 1.01, "blocks": 5, "tb_per_s": tb}
    if sp is not None:
        d["speedup_vs_ort_gelu"] = sp
    return d


def activation_cuda_json():
    summ = lambda m: {"median": m, "q1": m, "q3": m, "min": m, "max": m, "n": 3}  # noqa: E731
    return {"generated": "2026-01-02T00:00:00+00:00", "hardware": {"onnxruntime": "1.31.1"},
            "benchmark": "activation_cuda", "method": "fake", "gpu": {"name": "Fake GPU H1", "driver": "1.2"},
            "rounds": 5, "block_s": 0.04, "chain_length": 16,
            "rows": [{"shape_name": "8192x4096", "shape": [8192, 4096], "dtype": "float32", "elements": 33554432,
                      "results": {"ort_gelu": {"single": cuda_mode(0.125, 2.15), "chain": cuda_mode(0.111, 2.42)},
                                  "phi6": {"single": cuda_mode(0.109, 2.46, 1.15), "chain": cuda_mode(0.094, 2.86, 1.18)}}}],
            "energy": {"window_s_min": 5.0, "idle_watts": 123.0, "shape": [8192, 4096], "results": [
                {"variant": "ort_gelu", "dtype": "float32", "mode": "single", "mj_per_node_run": summ(85.1),
                 "watts": 683.0, "ms_per_node_run": 0.125},
                {"variant": "phi6", "dtype": "float32", "mode": "single", "mj_per_node_run": summ(49.9),
                 "watts": 463.0, "ms_per_node_run": 0.108, "energy_ratio_vs_ort_gelu": 0.586}]}}


def bench_json(provider="cpu", method="estimated", meter="cpu-estimate"):
    def v(p50, j):
        e = {"meter": meter, "method": method, "joules_per_inference": j}
        if method == "estimated":
            e["band"] = {"low": j / 2, "high": j * 1.5}
        return {"latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.2}, "throughput": 1000 / p50, "energy": e}

    b = {"model": "build/e2e/m-phi6.onnx", **v(41.5, 0.83),
         "baseline": {"model": "build/m.onnx", "fusion": {"chosen": "onnxscript"}, **v(40.5, 0.81)},
         "ratio": {"latency_p50": {"median": 0.976, "q1": 0.97, "q3": 0.982, "n": 6},
                   "throughput": {"median": 0.975, "q1": 0.97, "q3": 0.98, "n": 6},
                   "energy": {"meter": meter, "method": method, "total": {"median": 0.962, "q1": 0.95, "q3": 0.97, "n": 6}}},
         "settings": {"provider": provider, "threads": 2 if provider == "cpu" else None, "blocks_per_variant": 6,
                      "block_seconds": 5.0, "order": "ABBA"},
         "hardware": {**HW, **({"gpu": "Fake GPU H1"} if provider == "cuda" else {})}, "warnings": []}
    return {"generated": "2026-01-03T00:00:00+00:00", "benchmark": "e2e", "batch": 8, "seq": 128,
            "original": "build/m.onnx", "candidate": "build/e2e/m-phi6.onnx", "passes": ["gelu=phi6"],
            "rewritten": {"gelu": 6}, "bench": b}


def fidelity_json():
    return {"passed": True, "failed": [], "cosine_mean": -0.0161, "cosine_source": "last_hidden_state: embedding",
            "max_abs_err": 6.9, "original": "build/m.onnx", "candidate": "build/e2e/m-phi6.onnx",
            "inputs": {"kind": "text", "source": "heldout.txt", "samples": 256},
            "outputs": {"last_hidden_state": {"embedding": {"cosine_mean": -0.0161, "nn_agreement": 0.207}}}}


def test_no_results_everything_not_measured(claims, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    out = tmp_path / "docs" / "CLAIMS.md"
    text = claims.generate(res, out)
    assert out.read_text() == text
    v = verdicts(text)
    for name, _ in claims.CLAIMS.values():
        assert any(k.startswith(name) for k in v), name
    for cells in v.values():
        assert cells[2].startswith("not measured yet:"), cells
        assert cells[4] == "-"
    assert "## Details" not in text
    assert "Fair baseline" in text and "ORT_ENABLE_ALL" in text
    assert "not measured yet: no e2e_minilm_cpu.json" in text
    assert "not measured yet: no calibration_minilm.json" in text
    assert "not measured yet: no bottleneck_minilm.json" in text


def test_op_level_rows_copy_the_numbers(claims, tmp_path):
    res = tmp_path / "results"
    put(res, "activation_cpu.json", activation_cpu_json())
    put(res, "activation_cuda.json", activation_cuda_json())
    text = claims.generate(res, None)
    v = verdicts(text)
    cpu = row(v, "Phi6 vs GELU speed: op level, CPU")
    assert "fp32 2.34x" in cpu[2] and "fp16 9.5x" in cpu[2] and "BiasPhi6 vs BiasGelu 3.21x" in cpu[2]
    assert "1 of 2 size/dtype points reach the claimed 8.1x (fp16 9x1024)" in cpu[2]
    assert "Fake CPU 9000" in cpu[3] and "2 threads" in cpu[3] and "10 interleaved blocks" in cpu[3]
    assert "2026-01-02T03:04:05+00:00" in cpu[3]
    assert cpu[4].endswith("activation_cpu.json`")
    # details: per-size times in ms with their IQR, and the file's ratios
    assert "| fp32 | 9x1024 | 1.25 [1.225, 1.275] | 0.5 [0.49, 0.51] | 2.34x |" in text
    gpu = row(v, "Phi6 vs GELU speed: op level, Fake GPU H1")
    assert "single 1.15x (2.46 vs 2.15 TB/s)" in gpu[2] and "chain 1.18x (2.86 vs 2.42 TB/s)" in gpu[2]
    assert "measured (nvml)" in gpu[2] and "49.9 vs 85.1 mJ per run (0.586x of Gelu's energy)" in gpu[2]
    assert "Fake GPU H1" in gpu[3] and "5 interleaved rounds" in gpu[3] and "3 windows" in gpu[3]


def test_e2e_and_fidelity(claims, tmp_path):
    res = tmp_path / "results"
    put(res, "e2e_minilm_cpu.json", bench_json())
    put(res, "fidelity_minilm.json", fidelity_json())
    text = claims.generate(res, None)
    v = verdicts(text)
    cpu = row(v, "Phi6 vs GELU speed: end to end, all-MiniLM-L6-v2 gelu=phi6, CPU")
    assert "latency p50 40.5 ms -> 41.5 ms, ratio 0.976x [0.97, 0.982]" in cpu[2] and "slower" in cpu[2]
    assert "energy, estimated (CPU-seconds x assumed W/core: an estimate, not a measurement): 0.81 -> 0.83 " \
           "J/inference, ratio 0.962x [0.95, 0.97]" in cpu[2]
    assert "cosine_mean -0.0161" in cpu[2] and "nearest-neighbour agreement 20.7%" in cpu[2]
    assert "6 gelu sites rewritten" in cpu[2]
    assert "2 threads" in cpu[3] and "6 interleaved ABBA blocks x 5 s" in cpu[3] and "onnxscript" in cpu[3]
    assert "e2e_minilm_cpu.json" in cpu[4] and "fidelity_minilm.json" in cpu[4]
    gpu = row(v, "Phi6 vs GELU speed: end to end, all-MiniLM-L6-v2 gelu=phi6, GPU")
    assert gpu[2].startswith("not measured yet: no e2e_minilm_cuda.json")
    q = row(v, "Phi6 quality: pretrained")
    assert "cosine_mean -0.0161" in q[2] and "tiny MLP" in q[2]
    # measured GPU energy is labelled measured, never estimated
    put(res, "e2e_minilm_cuda.json", bench_json("cuda", "measured", "nvml"))
    gpu = row(verdicts(claims.generate(res, None)), "Phi6 vs GELU speed: end to end, all-MiniLM-L6-v2 gelu=phi6, GPU")
    assert "energy, measured (nvml): 0.81 -> 0.83" in gpu[2] and "estimated" not in gpu[2]
    assert "Fake GPU H1" in gpu[3]


def test_calibration_and_bottleneck_generic_rows(claims, tmp_path):
    res = tmp_path / "results"
    put(res, "calibration_minilm.json", {
        "generated": "2026-01-04T00:00:00+00:00", "hardware": HW, "method": "fake calibration method",
        "goals": {"cosine_mean": 0.995},
        "rows": [{"variant": "gelu=phi6 uncalibrated", "samples": 0, "cosine_mean": -0.0161, "nn_agreement": 0.207},
                 {"variant": "gelu=phi6 calibrated, 256 samples, refit", "samples": 256, "refit": True,
                  "cosine_mean": 0.9849020291720798, "nn_agreement": 0.85546875, "seconds": 104.5,
                  "layers": [{"block": "x"}], "mystery": 7}]})
    put(res, "bottleneck_minilm.json", {
        "generated": "2026-01-05T00:00:00+00:00", "method": "fake bottleneck method",
        "rows": [{"variant": "phi-bottleneck:4/3", "ratio": "4/3", "hidden": [512], "cosine_mean": 0.89,
                  "latency_ratio": {"median": 1.31, "q1": 1.3, "q3": 1.32, "n": 3},
                  "energy_ratio": {"meter": "cpu-estimate", "method": "estimated",
                                   "total": {"median": 1.25, "q1": 1.2, "q3": 1.3, "n": 3}}},
                 {"variant": "phi-bottleneck:2", "ratio": "2", "cosine_mean": 0.95}]})
    text = claims.generate(res, None)
    v = verdicts(text)
    cal = row(v, "Phi6 quality: calibrated swap")
    assert "gelu=phi6 uncalibrated: cosine -0.0161, NN agreement 20.7%" in cal[2]
    assert "Best: gelu=phi6 calibrated, 256 samples, refit (cosine 0.9849)" in cal[2]
    assert "cosine_mean 0.995" in cal[2]
    assert "fake calibration method" in cal[3] and "Fake CPU 9000" in cal[3]
    # details: every scalar column, ints as ints, unknown keys kept, nested lists named
    assert "| gelu=phi6 calibrated, 256 samples, refit | 256 | yes | 0.9849 | 0.8555 | 104.5 | 7 |" in text
    assert "not shown): layers" in text
    bot = row(v, "Phi-bottleneck")
    assert "At the claimed width (4D/3, hidden 512): cosine 0.89" in bot[2]
    assert "latency ratio 1.31x [1.3, 1.32]" in bot[2] and "energy ratio 1.25x [1.2, 1.3] (estimated)" in bot[2]
    assert "phi-bottleneck:2: cosine 0.95" in bot[2]


def test_calibration_curve_row(claims, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    assert "Calibration data" not in claims.generate(res, None)  # optional: no file, no row
    put(res, "calibration_curve_minilm.json", {
        "generated": "2026-01-06T00:00:00+00:00", "method": "fake curve method",
        "goals": {"gelu=phi6 cosine_mean": 0.995},
        "rows": [{"variant": "b", "pass": "gelu=phi6", "samples": 1000, "in_sample": False, "seconds": 59.6,
                  "cosine_mean": 0.99181},
                 {"variant": "a", "pass": "gelu=phi6", "samples": 256, "in_sample": False, "seconds": 27.5,
                  "cosine_mean": 0.98931},
                 {"variant": "c", "pass": "gelu=phi6", "samples": 256, "in_sample": True, "seconds": 30.0,
                  "cosine_mean": 0.99641},
                 {"variant": "d", "pass": "ffn=phi-bottleneck", "samples": 256, "in_sample": False, "seconds": 22.0,
                  "cosine_mean": 0.9086}]})
    v = verdicts(claims.generate(res, None))
    cur = row(v, "Calibration data: how far more of it goes")
    # sorted by size within a pass, the in-sample row named as a bound, passes kept apart
    assert ("gelu=phi6: 256 samples cosine 0.9893 (27.5 s), 1000 samples cosine 0.9918 (59.6 s); calibrated on the "
            "held-out sentences themselves (an optimistic bound, not a result) cosine 0.9964") in cur[2]
    assert "ffn=phi-bottleneck: 256 samples cosine 0.9086 (22 s)." in cur[2]
    assert "gelu=phi6 cosine_mean 0.995" in cur[2] and "fake curve method" in cur[3]
    assert "past the corpus" not in claims.generate(res, None)
    put(res, "calibration_extended_minilm.json", {
        "generated": "2026-01-06T00:00:00+00:00", "method": "fake extended method",
        "rows": [{"variant": "e", "pass": "gelu=phi6", "samples": 7930, "seconds": 447.4, "cosine_mean": 0.99361},
                 {"variant": "f", "pass": "gelu=phi6", "samples": 4000, "seconds": 241.1, "cosine_mean": 0.99302}]})
    ext = row(verdicts(claims.generate(res, None)), "Calibration data past the corpus")
    assert "gelu=phi6: 4000 samples cosine 0.993 (241 s), 7930 samples cosine 0.9936 (447 s)." in ext[2]
    assert "fake extended method" in ext[3]


def test_future_claims_and_combined(claims, tmp_path):
    res = tmp_path / "results"
    put(res, "phi_moe.json", {"generated": "g", "method": "fake moe", "rows": [{"variant": "24x(4D/3)", "cosine_mean": 0.5}]})
    e2e = bench_json()
    e2e["passes"] = ["gelu=phi6", "ffn=phi-bottleneck"]
    put(res, "e2e_minilm_combined_cpu.json", e2e)
    text = claims.generate(res, None)
    v = verdicts(text)
    moe = row(v, "Phi MoE")
    assert moe[2] == "24x(4D/3): cosine 0.5." and moe[4].endswith("phi_moe.json`")
    comb = row(v, "Combined")
    assert "gelu=phi6, ffn=phi-bottleneck: energy (estimated) ratio 0.962x [0.95, 0.97]" in comb[2]
    fft = row(v, "FFT-Mix")
    assert fft[2].startswith("not measured yet:") and "attention=fftmix" in fft[2]


def test_written_atomically_and_deterministic(claims, tmp_path):
    res = tmp_path / "results"
    put(res, "activation_cpu.json", activation_cpu_json())
    out = tmp_path / "docs" / "CLAIMS.md"
    claims.main(["--results", str(res), "--output", str(out)])
    first = out.read_bytes()
    claims.main(["--results", str(res), "--output", str(out)])
    assert out.read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["CLAIMS.md"]  # no temporary files left


def test_bad_result_file_is_a_clear_error(claims, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    (res / "activation_cpu.json").write_text("{oops")
    out = tmp_path / "CLAIMS.md"
    with pytest.raises(SystemExit, match="activation_cpu.json: cannot read JSON"):
        claims.generate(res, out)
    assert not out.exists()


def test_moe_rows_from_moe_quality(claims, tmp_path):
    res = tmp_path / "results"
    base = {"option": None, "variant": "original (top-2)", "eval_loss": 2.0, "eval_accuracy": 0.5,
            "eval_loss_change_pct": 0.0, "eval_accuracy_change_pct": 0.0, "active_fraction_vs_top2": 1.0}
    rows = [base,
            {**base, "option": "egyptian", "variant": "moe=egyptian", "eval_accuracy": 0.45, "eval_loss_change_pct": 5.0,
             "eval_accuracy_change_pct": -10.0, "active_fraction_vs_top2": 1.5,
             "latency_ratio": {"median": 1.5, "q1": 1.4, "q3": 1.6, "n": 4}},
            {**base, "option": "equal3", "variant": "equal3", "eval_accuracy": 0.40},
            {**base, "option": "phi:2", "variant": "moe=phi:2", "active_fraction_vs_top2": 0.6667,
             "eval_loss_change_pct": 4.62}]
    summary = {"routing": {"inference_swap_on_top2_model": {"egyptian_accuracy": 0.45, "equal3_accuracy": 0.40,
                                                            "egyptian_vs_equal3_accuracy_change_pct": 12.5},
                           "trained_with_each_routing": {"seeds": [0, 1], "egyptian_accuracy": 0.51,
                                                         "equal3_accuracy": 0.50,
                                                         "egyptian_vs_equal3_accuracy_change_pct": 2.0,
                                                         "per_seed_change_pct": [1.0, 3.0]}},
               "phi_moe": {"trained_24x4D/3_top2_vs_8x4D_top2": {"seeds": [0, 1], "active_fraction": 0.335,
                                                                 "eval_loss_change_pct": 0.8,
                                                                 "eval_accuracy_change_pct": -0.2,
                                                                 "per_seed_loss_change_pct": [0.7, 0.9]}}}
    put(res, "moe_quality.json", {"generated": "g", "method": "fake moe method", "model": {"d": 48}, "rows": rows,
                                  "summary": summary, "trained_routing": []})
    v = verdicts(claims.generate(res, None))
    moe = row(v, "Phi MoE")
    assert "phi:2: 66.7% of top-2's active expert parameters" in moe[2] and "(+4.62%)" in moe[2]
    assert "33.5% of the active expert parameters): loss +0.80% (per seed: +0.70%, +0.90%)" in moe[2]
    assert moe[4].endswith("moe_quality.json`")
    rt = row(v, "Egyptian routing")
    assert "mean of 2 seed(s)): Egyptian accuracy 51.0% vs equal 1/3 50.0%: +2.00% relative (per seed: +1.00%, +3.00%" in rt[2]
    assert "45.0% vs 40.0%, +12.50% relative" in rt[2] and "latency ratio 1.5x [1.4, 1.6]" in rt[2]
    assert "ORT's own" not in moe[2]  # no moe_int8.json: no anchor sentence
    # benchmarks/moe_int8.py's side-by-side run with ORT's int8: the Phi MoE row quotes it and cites the file
    sp = {"median": 1.0, "q1": 1.0, "q3": 1.0}
    put(res, "moe_int8.json", {"generated": "g", "anchor": "int8_first", "table": {
        "fp32": {"eval_loss": 2.0, "eval_loss_change_pct": 0.0, "top1_agreement_with_original": 1.0, "speedup_vs_fp32": sp},
        "int8_first": {"eval_loss": 2.1, "eval_loss_change_pct": 5.0, "top1_agreement_with_original": 0.9,
                       "speedup_vs_fp32": {"median": 1.1, "q1": 1.0, "q3": 1.2}},
        "moe=phi:2": {"eval_loss": 2.08, "eval_loss_change_pct": 4.0, "top1_agreement_with_original": 0.88,
                      "speedup_vs_fp32": {"median": 1.8, "q1": 1.7, "q3": 1.9},
                      "speedup_vs_int8_first": {"median": 1.6, "q1": 1.5, "q3": 1.7}}}})
    moe = row(verdicts(claims.generate(res, None)), "Phi MoE")
    assert ("int8 loss 2.1 (+5.00%), top-1 agreement with the original 90.0%, 1.1x [1, 1.2] fp32's speed; moe=phi:2 "
            "loss 2.08 (+4.00%), top-1 agreement with the original 88.0%, 1.8x [1.7, 1.9] fp32's and 1.6x [1.5, 1.7] "
            "int8's speed.") in moe[2]
    assert "moe_int8.json" in moe[4]


def _combined(claims, tmp_path, conditions: str, variants: dict, verdict: dict) -> list:
    """The Combined row of a combined_cpu.json with these side-by-side variants and verdict."""
    res = tmp_path / "results"
    put(res, "combined_cpu.json", {
        "generated": "g", "hardware": {"cpu": "Fake CPU", "logical_cpus": 2}, "conditions": conditions,
        "side_by_side": {"method": {"provider": "cpu", "timing": "fake timing"}, "variants": variants},
        "verdict": {"quantize": "int8", "meter": "cpu-estimate", "method": "estimated", **verdict}})
    return row(verdicts(claims.generate(res, None)), "Combined")


def test_combined_run_from_benchmarks_combined(claims, tmp_path):
    comb = _combined(claims, tmp_path, "busy", {
        "combined": {"speedup_vs_fp32": {"median": 2.5, "q1": 2.4, "q3": 2.6},
                     "speedup_vs_int8": {"median": 1.25, "q1": 1.2, "q3": 1.3}}},
        {"variant": "combined", "passes": ["block=drop:1", "ffn=phi-bottleneck:3"], "energy_saving_vs_fp32": 0.55,
         "energy_saving_vs_int8": 0.2, "claim_met": False, "fidelity": {"cosine": 0.91234, "nn": 0.6}})
    assert comb[2].startswith("block=drop:1, ffn=phi-bottleneck:3 + int8 (cpu, energy estimated, meter cpu-estimate): "
                              "energy per inference 55.0% lower than the ORT-best fp32 original; 20.0% lower than int8")
    assert "held-out cosine 0.9123, NN agreement 60.0%" in comb[2] and "falls short of the claimed 60%" in comb[2]
    assert "GPU: not measured yet" in comb[2]
    assert "Fake CPU" in comb[3] and comb[4].endswith("combined_cpu.json`")


def test_combined_run_quotes_the_ratio_against_its_int8_reference(claims, tmp_path):
    comb = _combined(claims, tmp_path, "quiet", {
        "combined_first": {"speedup_vs_fp32": {"median": 2.5, "q1": 2.4, "q3": 2.6},
                           "speedup_vs_int8": {"median": 1.6, "q1": 1.5, "q3": 1.7},
                           "speedup_vs_int8_first": {"median": 1.3, "q1": 1.2, "q3": 1.4}}},
        {"variant": "combined_first", "int8_reference": "int8_first", "passes": ["ffn=phi-bottleneck:3"],
         "energy_saving_vs_fp32": 0.6, "energy_saving_vs_int8": 0.25, "claim_met": True,
         "fidelity": {"cosine": 0.9, "nn": 0.6}})
    assert "vs int8 1.3x" in comb[2] and "1.6x" not in comb[2]
