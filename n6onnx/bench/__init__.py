"""``n6onnx bench``: latency, throughput, energy and memory against ORT's best original.

- :mod:`.baseline`: ORT's best version of a model (transformer fusions, whichever fuses more);
- :mod:`.layernorm`: SkipLayerNormalization or its parts, whichever ORT runs faster here;
- :mod:`.latency`: warm-up, interleaved ABBA blocks, percentiles, ratios with spread;
- :mod:`.session`: measuring one model: its session, a profiled run, memory, the hardware;
- :mod:`.energy`: meters (NVML, RAPL, a labelled CPU estimate), idle power;
- :mod:`.figures`: energy per inference and ratios from the meters' block readings;
- :mod:`.carbon`: Wh and CO2e per 1,000 inferences (Green Algorithms' method, CodeCarbon's data);
- :mod:`.run`: the orchestration and the report (``BenchReport.to_json()``).
"""

from .run import BenchReport, bench
from ..errors import ProviderUnavailableError

__all__ = ["BenchReport", "ProviderUnavailableError", "bench"]
