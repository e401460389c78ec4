"""The FFT-Mix and Egyptian-attention rows of docs/CLAIMS.md come from attention_minilm.json (and the
op-level attention_ops_{cpu,cuda}.json and the GPU end-to-end e2e_egyptian_long_*_cuda.json when
present), numbers copied, never invented."""

from __future__ import annotations

from .test_claims import claims, put, row, verdicts  # noqa: F401 - the fixture


def test_attention_rows(claims, tmp_path):  # noqa: F811
    res = tmp_path / "results"
    put(res, "attention_minilm.json", {"generated": "g", "method": "fake attention method", "rows": [
        {"variant": "egyptian (locality)", "cosine_mean": 0.93361, "nn_agreement": 0.76,
         "attention_core_work_ratio_L128": 0.6504},
        {"variant": "fftmix:1", "cosine_mean": 0.98251, "nn_agreement": 0.83},
        {"variant": "fftmix:2", "cosine_mean": 0.9612, "nn_agreement": 0.7}]})
    v = verdicts(claims.generate(res, None))
    fft = row(v, "FFT-Mix")
    assert "fftmix:1: cosine 0.9825, NN agreement 83.0%" in fft[2] and "fftmix:2: cosine 0.9612" in fft[2]
    assert "egyptian" not in fft[2].split("calibration text.")[1]
    egy = row(v, "Egyptian attention")
    assert "egyptian (locality): cosine 0.9336" in egy[2] and "fftmix" not in egy[2]
    assert fft[4].endswith("attention_minilm.json`")
    put(res, "attention_ops_cpu.json", {"generated": "g", "method": "fake ops", "provider": "CPUExecutionProvider",
                                        "results": {"float32/L512": {"ratios": {
                                            "mha_over_fftmix": 9.87, "mha_block_over_fftmix_linear": 2.15,
                                            "egyptian_saving_vs_egyptian_full": 0.1836, "egyptian_saving_vs_mha": -0.21},
                                            "analytic_flop_saving_632": 0.4584}}})
    v = verdicts(claims.generate(res, None))
    f2 = row(v, "FFT-Mix")
    assert "float32/L512: MultiHeadAttention / FFTMix 9.87x, attention sub-layer / (FFTMix + Linear) 2.15x" in f2[2]
    e2 = row(v, "Egyptian attention")[2]
    assert "time saved vs all heads full 18.4%" in e2 and "analytic FLOP saving 45.8%" in e2
    put(res, "attention_ops_cuda.json", {"generated": "g", "method": "fake ops", "provider": "CUDAExecutionProvider",
                                         "hardware": {"cpu": "x", "gpu": "NVIDIA H200, 580"},
                                         "results": {"float16/L8192": {"ratios": {
                                             "egyptian_saving_vs_egyptian_full": 0.395, "egyptian_saving_vs_mha": -0.54,
                                             "egyptian_mha_saving_vs_mha": 0.2061}, "analytic_flop_saving_632": 0.497}}})
    put(res, "e2e_egyptian_long_L4096_mha_cuda.json", {"generated": "g", "bench": {
        "ratio": {"latency_p50": {"median": 1.9589, "q1": 1.9516, "q3": 1.9592},
                  "energy": {"total": {"median": 2.0584}}},
        "energy": {"method": "measured", "meter": "nvml"}, "hardware": {"cpu": "x", "gpu": "NVIDIA H200, 580"}}})
    put(res, "e2e_egyptian_long_L4096_nomask_fp16_fused_cuda.json", {"generated": "g", "bench": {
        "ratio": {"latency_p50": {"median": 1.25, "q1": 1.2, "q3": 1.3}, "energy": {"total": {"median": 1.5}}},
        "energy": {"method": "measured", "meter": "nvml"}, "hardware": {"cpu": "x", "gpu": "NVIDIA H200, 580"}}})
    e3 = row(verdicts(claims.generate(res, None)), "Egyptian attention")
    assert "L4096 float16 no mask, fused core: latency ratio 1.25x [1.2x, 1.3x], energy ratio 1.5x" in e3[2]
    assert "with the mha core (full heads through MultiHeadAttention) vs MultiHeadAttention 20.6%" in e3[2]
    assert "L4096 float32 [B, L] mask, mha core: latency ratio 1.96x [1.95x, 1.96x], energy ratio 2.06x (measured, nvml)" in e3[2]
    assert "NVIDIA H200" in e3[3] and e3[4].count("e2e_egyptian_long_L4096_mha_cuda.json") == 1
