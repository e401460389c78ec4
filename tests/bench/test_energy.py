"""Meters: counter unwrapping (wrap-around included), RAPL on a fake sysfs, NVML through a fake
module, the CPU estimate and idle power. NVML on a real GPU: test_nvml_real (skipped without one)."""

from __future__ import annotations

import pathlib
import time

import pytest

from n6onnx.bench import energy

from ..conftest import EXPECT_GPU, missing


def test_counter_meter_accumulates_and_scales(fake_counter):
    m = energy.CounterMeter(fake_counter(100, [0, 50, 25, 0]), 1e-3)
    assert m.read() == pytest.approx(0.0)
    assert m.read() == pytest.approx(0.050)
    assert m.read() == pytest.approx(0.075)
    assert m.read() == pytest.approx(0.075)


def test_counter_meter_wraps_around(fake_counter):
    # modulus 1000: 900 -> +200 -> 100 (wrapped) -> +950 -> 50 (wrapped again)
    raw = fake_counter(900, [0, 200, 950, 10], modulus=1000)
    m = energy.CounterMeter(raw, 1.0, 1000)
    assert m.read() == 0
    assert m.read() == 200
    assert m.read() == 1150
    assert m.read() == 1160


def test_counter_meter_without_modulus_refuses_to_go_backwards():
    vals = iter([500, 500, 10])
    m = energy.CounterMeter(lambda: next(vals), 1.0, None, name="x")
    m.read()
    with pytest.raises(energy.MeterError, match="backwards"):
        m.read()


def _rapl_domain(root: pathlib.Path, name: str, dom: str, energy_uj: int, max_uj: int) -> pathlib.Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(dom + "\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def test_rapl_sums_packages_and_unwraps(tmp_path):
    p0 = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 999_000, 999_999)
    p1 = _rapl_domain(tmp_path, "intel-rapl:1", "package-1", 5_000, 999_999)
    _rapl_domain(tmp_path, "intel-rapl:0:0", "core", 1, 999_999)   # sub-domain: not summed
    _rapl_domain(tmp_path, "intel-rapl:2", "psys", 1, 999_999)      # platform: would double count
    m = energy.RaplMeter(tmp_path)
    assert m.method == "measured" and "package-0" in m.scope and "psys" not in m.scope
    assert len(m.parts) == 2
    assert m.read() == 0
    (p0 / "energy_uj").write_text("1000\n")      # wrapped: 999_999 + 1 - 999_000 + 1000 = 2000 uJ
    (p1 / "energy_uj").write_text("8000\n")      # +3000 uJ
    assert m.read() == pytest.approx(5000e-6)


def test_rapl_missing_or_unreadable(tmp_path, monkeypatch):
    with pytest.raises(energy.MeterError, match="does not exist"):
        energy.RaplMeter(tmp_path / "nope")
    with pytest.raises(energy.MeterError, match="no readable package"):
        energy.RaplMeter(tmp_path)
    d = _rapl_domain(tmp_path, "intel-rapl:0", "package-0", 1, 10)
    real = pathlib.Path.read_text

    def deny(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real(self, *a, **k)

    monkeypatch.setattr(pathlib.Path, "read_text", deny)
    with pytest.raises(energy.MeterError, match="not readable"):
        energy.RaplMeter(tmp_path)
    assert d.exists()


class FakeNvml:
    """Just enough of pynvml: a millijoule counter that can wrap at 2**64."""

    def __init__(self, values, fail_init=False):
        self.values = list(values)
        self.fail_init = fail_init
        self.shutdown = 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shutdown += 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetHandleByUUID(self, u):
        return ("gpu", u)

    def nvmlDeviceGetName(self, h):
        return b"Fake H100"

    def nvmlSystemGetDriverVersion(self):
        return "580.00"

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.values.pop(0) if len(self.values) > 1 else self.values[0]

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        import os
        import types

        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * 2**20)]


def test_nvml_meter_millijoules_and_wrap(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = FakeNvml([2**64 - 1000, 2**64 - 500, 1500, 4000])
    m = energy.NvmlMeter(0, nvml=nv)
    assert m.gpu_name == "Fake H100" and m.method == "measured" and "GPU 0" in m.scope
    assert m.read() == pytest.approx(0.5)     # +500 mJ
    assert m.read() == pytest.approx(2.5)     # wrapped: +2000 mJ
    assert m.read() == pytest.approx(5.0)
    assert m.process_memory_mb() == pytest.approx(512)
    m.close()
    assert nv.shutdown == 1


def test_nvml_unavailable_is_a_meter_error():
    with pytest.raises(energy.MeterError, match="NVML unavailable"):
        energy.NvmlMeter(0, nvml=FakeNvml([0], fail_init=True))


def test_nvml_index_follows_cuda_visible_devices():
    assert energy.nvml_index(0, {}) == 0
    assert energy.nvml_index(1, {"CUDA_VISIBLE_DEVICES": "3,5"}) == 5
    assert energy.nvml_index(0, {"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == "GPU-abc"
    with pytest.raises(energy.MeterError):
        energy.nvml_index(2, {"CUDA_VISIBLE_DEVICES": "0"})


def test_cpu_estimate_is_labelled_with_a_band():
    t = iter([10.0, 10.0, 12.5])
    m = energy.CpuEstimate(8.0, 0.25, cpu_seconds=lambda: next(t))
    assert m.method == "estimated" and m.band == (0.75, 1.25)
    assert m.read() == 0.0
    assert m.read() == pytest.approx(20.0)   # 2.5 CPU-s x 8 W
    d = m.describe()
    assert d["method"] == "estimated" and d["watts_per_core"] == 8.0 and "assumption" in d["source"]
    with pytest.raises(energy.MeterError):
        energy.CpuEstimate(0)
    with pytest.raises(energy.MeterError):
        energy.CpuEstimate(10, 1.5)


def test_discover_here_has_the_estimate_last(tmp_path):
    d = energy.discover("cpu", rapl_root=tmp_path / "none")
    assert d.meters[-1].method == "estimated"
    assert all(m.method == "measured" for m in d.meters[:-1])
    assert any("RAPL" in n for n in d.notes)
    d = energy.discover("cuda", nvml=FakeNvml([0], fail_init=True), rapl_root=tmp_path / "none")
    assert [m.name for m in d.meters] == ["cpu-estimate"] and any("NVML" in n for n in d.notes)
    nv = FakeNvml([0, 1000])
    d = energy.discover("cuda", nvml=nv, rapl_root=tmp_path / "none")
    assert [m.name for m in d.meters] == ["nvml", "cpu-estimate"]


def test_idle_watts_with_fake_clock(fake_counter):
    m = energy.CounterMeter(fake_counter(0, [0, 30]), 1.0)
    clock = iter([0.0, 10.0])
    w, dt = energy.idle_watts([m], 10.0, sleep=lambda s: None, clock=lambda: next(clock))
    assert dt == 10.0 and w == [pytest.approx(3.0)]


def test_nvml_real():
    """Exercised on the GPU machine: the real counter advances and gives a plausible power."""
    try:
        m = energy.NvmlMeter(0)
    except energy.MeterError as e:
        missing(str(e), expected=EXPECT_GPU)
    try:
        e0, t0 = m.read(), time.perf_counter()
        time.sleep(1.0)
        e1, t1 = m.read(), time.perf_counter()
        watts = (e1 - e0) / (t1 - t0)
        assert e1 >= e0
        assert 1.0 < watts < 2000.0, watts  # an idle or busy GPU, not garbage
    finally:
        m.close()
