"""Energy meters for ``n6onnx bench``.

A :class:`Meter` turns some counter into cumulative joules since the meter was opened; callers
difference two :meth:`Meter.read` calls around a window. Counters that wrap (RAPL's ``energy_uj``
wraps at ``max_energy_range_uj``; NVML's 64-bit millijoule counter in principle) are unwrapped by
:class:`CounterMeter`, which must therefore be read at least once per wrap period (RAPL: tens of
minutes at full package power; bench reads at every window boundary).

- :class:`NvmlMeter`: NVIDIA GPUs, ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver
  loaded; updated about every 100 ms, hence windows of at least 5 s) via ``nvidia-ml-py``. Scope:
  the whole GPU, every process on it. ``measured``.
- :class:`RaplMeter`: Linux powercap (``/sys/class/powercap/intel-rapl:N/energy_uj``), the sum of
  the package domains (AMD's RAPL shows up under the same name). Scope: whole CPU packages, every
  process. ``measured``. Often readable only by root.
- :class:`CpuEstimate`: this process's CPU-seconds (all threads) x an assumed power per busy core,
  with a low/high band. ``estimated``: never mixed with measured figures. It leaves out idle,
  uncore and DRAM power, so its "dynamic" figure is close to its total.

``discover()`` returns the meters usable for a provider, with notes saying why others are not.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Callable, Iterable, Sequence

POWERCAP = pathlib.Path("/sys/class/powercap")

#: Default assumption for the CPU estimate: watts per busy core, and the relative half-width of
#: the band (0.5 -> 5..15 W). A modern server core under a vectorised load draws roughly 5-15 W
#: including its share of the package; the band says how little that assumption is worth.
CPU_WATTS_PER_CORE = 10.0
CPU_WATTS_UNCERTAINTY = 0.5


class MeterError(RuntimeError):
    """A meter cannot be opened or read."""


class Meter:
    """Cumulative energy in joules since the meter was opened (``read()``)."""

    name: str = "meter"
    #: "measured" (a hardware counter) or "estimated" (a model with an uncertainty band).
    method: str = "measured"
    #: What the figure covers (whole GPU, CPU packages, this process's CPU time, ...).
    scope: str = ""
    #: How it is obtained, in words.
    source: str = ""
    #: (low, high) multipliers of an estimate's central value; (1, 1) for measured meters.
    band: tuple[float, float] = (1.0, 1.0)

    def read(self) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        d = {"meter": self.name, "method": self.method, "scope": self.scope, "source": self.source}
        if self.method == "estimated":
            d["band_factors"] = list(self.band)
        return d


class CounterMeter(Meter):
    """Unwraps a raw, monotonically increasing counter into cumulative joules.

    ``raw()`` returns the counter in its own units, ``joules_per_unit`` converts them, and
    ``modulus`` is the value at which the counter wraps back to 0 (None: it never wraps, and a
    decrease is an error, e.g. a driver reload).
    """

    def __init__(self, raw: Callable[[], int | float], joules_per_unit: float, modulus: int | None = None,
                 *, name: str = "counter", scope: str = "", source: str = "") -> None:
        self._raw = raw
        self._scale = joules_per_unit
        self._modulus = modulus
        self.name, self.scope, self.source = name, scope, source
        self._last = raw()
        self._units = 0  # cumulative, in counter units (exact for integer counters)

    def read(self) -> float:
        v = self._raw()
        d = v - self._last
        if d < 0:
            if self._modulus is None:
                raise MeterError(f"{self.name}: the counter went backwards ({self._last} -> {v}); was it reset?")
            d += self._modulus
        self._last = v
        self._units += d
        return self._units * self._scale


class SumMeter(Meter):
    """The sum of several meters (e.g. one per RAPL package)."""

    def __init__(self, parts: Sequence[Meter], *, name: str, scope: str, source: str) -> None:
        if not parts:
            raise MeterError(f"{name}: nothing to sum")
        self.parts = list(parts)
        self.name, self.scope, self.source = name, scope, source

    def read(self) -> float:
        return sum(p.read() for p in self.parts)

    def close(self) -> None:
        for p in self.parts:
            p.close()


# --------------------------------------------------------------------------------------------------
# NVML


def _nvml_module():
    try:
        import pynvml  # nvidia-ml-py
    except ImportError:
        raise MeterError("nvidia-ml-py is not installed (pip install nvidia-ml-py)") from None
    return pynvml


def nvml_index(device_id: int = 0, env: dict | None = None) -> int | str:
    """The NVML device for CUDA device ``device_id``: NVML ignores CUDA_VISIBLE_DEVICES, so map
    through it (an integer index, or a GPU UUID string to look up by UUID)."""
    env = os.environ if env is None else env
    vis = env.get("CUDA_VISIBLE_DEVICES")
    if not vis:
        return device_id
    entries = [e.strip() for e in vis.split(",") if e.strip()]
    if device_id >= len(entries):
        raise MeterError(f"CUDA device {device_id} is not in CUDA_VISIBLE_DEVICES={vis!r}")
    e = entries[device_id]
    return int(e) if e.isdigit() else e


class NvmlMeter(CounterMeter):
    """NVML's total-energy counter of one GPU (mJ, 64-bit; updates about every 100 ms)."""

    method = "measured"

    def __init__(self, device_id: int = 0, *, nvml=None) -> None:
        self._nvml = nvml or _nvml_module()
        nv = self._nvml
        try:
            nv.nvmlInit()
        except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise MeterError(f"NVML unavailable: {e}") from None
        try:
            idx = nvml_index(device_id)
            self.handle = (nv.nvmlDeviceGetHandleByUUID(idx) if isinstance(idx, str)
                           else nv.nvmlDeviceGetHandleByIndex(idx))
            self.gpu_name = _s(nv.nvmlDeviceGetName(self.handle))
            try:
                self.driver = _s(nv.nvmlSystemGetDriverVersion())
            except Exception:
                self.driver = ""
            super().__init__(
                lambda: nv.nvmlDeviceGetTotalEnergyConsumption(self.handle), 1e-3, 2**64,
                name="nvml", scope=f"GPU {idx} ({self.gpu_name}), whole device, all processes",
                source="NVML nvmlDeviceGetTotalEnergyConsumption (mJ counter, ~100 ms updates), nvidia-ml-py",
            )
        except MeterError:
            self.close()
            raise
        except Exception as e:  # NVMLError_NotSupported (pre-Volta), InvalidArgument, ...
            self.close()
            raise MeterError(f"NVML energy counter unavailable on GPU {device_id}: {e}") from None

    def process_memory_mb(self, pid: int | None = None) -> float | None:
        """GPU memory used by ``pid`` (default: this process) on this GPU, when NVML says."""
        pid = os.getpid() if pid is None else pid
        try:
            procs = self._nvml.nvmlDeviceGetComputeRunningProcesses(self.handle)
        except Exception:
            return None
        for p in procs:
            if getattr(p, "pid", None) == pid and getattr(p, "usedGpuMemory", None) is not None:
                return p.usedGpuMemory / 2**20
        return None

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _s(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# --------------------------------------------------------------------------------------------------
# RAPL (Linux powercap)


class RaplMeter(SumMeter):
    """Sum of the RAPL package domains under ``root`` (default /sys/class/powercap), each unwrapped
    at its ``max_energy_range_uj`` (the counter runs 0..max, so the modulus is max + 1)."""

    method = "measured"

    def __init__(self, root: str | os.PathLike = POWERCAP) -> None:
        root = pathlib.Path(root)
        if not root.is_dir():
            raise MeterError(f"RAPL unavailable: {root} does not exist")
        parts, names = [], []
        for d in sorted(root.glob("intel-rapl:*")):
            if d.name.count(":") != 1:  # sub-domains (core, uncore, dram) of a package
                continue
            try:
                dom = (d / "name").read_text().strip()
            except OSError:
                continue
            if not dom.startswith("package"):  # psys would double-count the packages
                continue
            energy = d / "energy_uj"
            try:
                modulus = int((d / "max_energy_range_uj").read_text()) + 1
                energy.read_text()
            except PermissionError:
                raise MeterError(f"RAPL unavailable: {energy} is not readable (root only on this kernel)") from None
            except (OSError, ValueError) as e:
                raise MeterError(f"RAPL unavailable: {d}: {e}") from None
            parts.append(CounterMeter(lambda f=energy: int(f.read_text()), 1e-6, modulus,
                                      name=f"rapl:{d.name}", scope=dom))
            names.append(f"{d.name} ({dom})")
        if not parts:
            raise MeterError(f"RAPL unavailable: no readable package domain under {root}")
        super().__init__(parts, name="rapl", scope="CPU packages " + ", ".join(names) + "; whole sockets, all processes",
                         source="Linux powercap RAPL energy_uj (uJ counters, wrap at max_energy_range_uj)")


# --------------------------------------------------------------------------------------------------
# CPU estimate


def process_cpu_seconds() -> float:
    """User + system CPU time of this process, all threads."""
    t = os.times()
    return t.user + t.system


class CpuEstimate(Meter):
    """Estimated energy: this process's CPU-seconds x ``watts_per_core`` (band +-``uncertainty``)."""

    method = "estimated"
    name = "cpu-estimate"

    def __init__(self, watts_per_core: float = CPU_WATTS_PER_CORE, uncertainty: float = CPU_WATTS_UNCERTAINTY,
                 *, cpu_seconds: Callable[[], float] = process_cpu_seconds) -> None:
        if watts_per_core <= 0:
            raise MeterError(f"per-core power must be positive, got {watts_per_core}")
        if not 0 <= uncertainty < 1:
            raise MeterError(f"the per-core power uncertainty must be in [0, 1), got {uncertainty}")
        self.watts_per_core, self.uncertainty = watts_per_core, uncertainty
        self._cpu = cpu_seconds
        self._t0 = cpu_seconds()
        self.band = (1.0 - uncertainty, 1.0 + uncertainty)
        lo, hi = watts_per_core * self.band[0], watts_per_core * self.band[1]
        self.scope = "this process's CPU time (all threads); leaves out idle, uncore and DRAM power"
        self.source = (f"CPU-seconds (user+system) x {watts_per_core:g} W per busy core, "
                       f"band {lo:g}-{hi:g} W (+-{uncertainty:.0%}): an assumption, not a measurement")

    def read(self) -> float:
        return (self._cpu() - self._t0) * self.watts_per_core

    def describe(self) -> dict:
        return {**super().describe(), "watts_per_core": self.watts_per_core, "uncertainty": self.uncertainty}


# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Discovery:
    meters: list[Meter]
    notes: list[str]


def discover(provider: str = "cpu", device_id: int = 0, *, cpu_watts: float = CPU_WATTS_PER_CORE,
             cpu_watts_uncertainty: float = CPU_WATTS_UNCERTAINTY, rapl_root: str | os.PathLike = POWERCAP,
             nvml=None) -> Discovery:
    """The meters usable for ``provider``, primary first: NVML (cuda), RAPL, then the CPU estimate
    (always present; on CUDA it estimates the host side only)."""
    meters: list[Meter] = []
    notes: list[str] = []
    if provider == "cuda":
        try:
            meters.append(NvmlMeter(device_id, nvml=nvml))
        except MeterError as e:
            notes.append(str(e))
    try:
        meters.append(RaplMeter(rapl_root))
    except MeterError as e:
        notes.append(str(e))
    meters.append(CpuEstimate(cpu_watts, cpu_watts_uncertainty))
    return Discovery(meters, notes)


def close_all(meters: Iterable[Meter]) -> None:
    for m in meters:
        m.close()


def idle_watts(meters: Sequence[Meter], seconds: float, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], float]:
    """Average power of each meter over ``seconds`` of doing nothing; returns (watts, duration)."""
    e0 = [m.read() for m in meters]
    t0 = clock()
    sleep(seconds)
    dt = clock() - t0
    e1 = [m.read() for m in meters]
    return [(b - a) / dt if dt > 0 else 0.0 for a, b in zip(e0, e1)], dt
