"""benchmarks/calib_samples.py: the rewrite command of each cell, and the wall time and peak memory of a process."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cs(load_script):
    return load_script("calib_samples.py")


def test_each_row_calibrates_on_n_and_the_fit_row_fits_on_all_of_them(cs):
    args = cs.rewrite_args("phi6+int8, fit on all N", 1000, "m.onnx", "c.txt", "o.onnx")
    assert args[:4] == ["rewrite", "m.onnx", "-o", "o.onnx"]
    assert args[args.index("--calib-samples") + 1] == "1000" and args[args.index("--quantize-fit-samples") + 1] == "1000"
    default = cs.rewrite_args("phi6+int8", 1000, "m.onnx", "c.txt", "o.onnx")
    assert "--quantize-fit-samples" not in default and default[default.index("--quantize") + 1] == "int8"
    assert all(args.count(d) == 1 for d in ("batch=8", "seq=64"))


def test_timed_measures_the_process_and_stops_on_a_failure(cs, tmp_path):
    r = cs.timed(["--help"])
    assert r["seconds"] > 0 and 0.01 < r["peak_rss_gb"] < 4  # a python process importing n6onnx
    with pytest.raises(SystemExit, match="no such file|does not exist"):
        cs.timed(["validate", str(tmp_path / "missing.onnx"), str(tmp_path / "missing.onnx"), "--random", "1"])
