"""``n6onnx bench``: latency, throughput, energy and memory against ORT's best original.

- :mod:`.baseline`: ORT's best version of a model (transformer fusions, whichever fuses more);
- :mod:`.latency`: warm-up, interleaved ABBA blocks, percentiles, ratios with spread;
- :mod:`.energy`: meters (NVML, RAPL, a labelled CPU estimate), idle power;
- :mod:`.run`: the orchestration and the report (``BenchReport.to_json()``).
"""

from .run import BenchReport, ProviderUnavailableError, bench

__all__ = ["BenchReport", "ProviderUnavailableError", "bench"]
