"""Energy per 1,000 inferences and its carbon footprint, after the Green Algorithms method.

Green Algorithms (Lannelongue, Grealey and Inouye, "Green Algorithms: Quantifying the Carbon
Footprint of Computation", Advanced Science 8, 2100707, 2021) writes a computation's footprint as

    carbon footprint = energy needed x PUE x carbon intensity of the grid

Here the energy needed is bench's energy per inference (a meter's total, measured or estimated)
x 1,000; PUE (power usage effectiveness) scales the hardware's energy up to the data centre's; the
grid's carbon intensity, in gCO2e/kWh, turns kWh into CO2-equivalent.

Defaults and where they come from:

- Grid intensity: CodeCarbon's data (the ``carbon`` extra, ``pip install n6onnx[carbon]``):
  its world average (``carbon_intensity_per_source.json``: ``world_average``, from the IEA), or a
  country's figure from its global energy mix (``global_energy_mix.json``) when an ISO 3166-1
  alpha-3 code such as ``FRA`` is given. A number (gCO2e/kWh) needs no library.
- PUE: the Green Algorithms calculator's default for an unknown data centre, 1.56 (its
  ``defaults_PUE.csv``, from the Uptime Institute's 2024 global data-centre survey; the 2021
  paper used that survey's 2019 figure, 1.67). ``--pue 1`` means "the hardware's energy only".

Estimated energy stays labelled estimated here, and its band is carried through.
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import BadArgumentError

try:  # the ``carbon`` extra: CodeCarbon's grid-intensity data
    from codecarbon import __version__ as _codecarbon_version
    from codecarbon.input import DataSource as _CodeCarbonData
except ImportError:  # pragma: no cover - depends on the installation
    _CodeCarbonData = None
    _codecarbon_version = None

#: Green Algorithms' default PUE for an unknown data centre (calculator data defaults_PUE.csv, "Unknown").
GREEN_ALGORITHMS_PUE = 1.56
PUE_SOURCE = ("Green Algorithms calculator default for an unknown data centre (defaults_PUE.csv: Uptime "
              "Institute 2024 global data-centre survey)")
METHODOLOGY = ("Green Algorithms (Lannelongue et al., Adv. Sci. 2021): CO2e = energy x PUE x grid carbon "
               "intensity; energy per 1k inferences = 1000 x the meter's total joules per inference")
JOULES_PER_WH = 3600.0


@dataclasses.dataclass(frozen=True)
class Grid:
    """A grid's carbon intensity (gCO2e per kWh) and where the figure comes from."""

    g_per_kwh: float
    source: str


@dataclasses.dataclass(frozen=True)
class CarbonSettings:
    grid: Grid | None  # None: no intensity known (CodeCarbon not installed and none given)
    pue: float
    pue_source: str
    note: str | None = None

    def to_json(self) -> dict:
        return {"methodology": METHODOLOGY, "grid_intensity_g_per_kwh": self.grid.g_per_kwh if self.grid else None,
                "grid_intensity_source": self.grid.source if self.grid else None, "pue": self.pue,
                "pue_source": self.pue_source, "note": self.note}


def codecarbon_available() -> bool:
    return _CodeCarbonData is not None


def grid(spec: str | float | None) -> Grid | None:
    """The grid intensity for ``spec``: None (CodeCarbon's world average, or None without
    CodeCarbon), a number in gCO2e/kWh, or an ISO 3166-1 alpha-3 country code (CodeCarbon's data)."""
    if spec is None:
        if _CodeCarbonData is None:
            return None
        per_source = _CodeCarbonData().get_carbon_intensity_per_source_data()
        where = per_source.get("world_average_source", "")
        return Grid(float(per_source["world_average"]),
                    f"CodeCarbon {_codecarbon_version} world average" + (f" ({where})" if where else ""))
    text = str(spec).strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value) or value < 0:
            raise BadArgumentError(f"--grid-intensity must be a non-negative number of gCO2e/kWh or a country code, "
                                   f"got {text!r}")
        return Grid(value, "given (--grid-intensity)")
    code = text.upper()
    if len(code) != 3 or not code.isalpha():
        raise BadArgumentError(f"--grid-intensity must be gCO2e/kWh (a number) or an ISO 3166-1 alpha-3 country "
                               f"code such as FRA, got {text!r}")
    if _CodeCarbonData is None:
        raise BadArgumentError(f"--grid-intensity {code}: country figures come from CodeCarbon, which is not "
                               "installed (pip install 'n6onnx[carbon]'), or give a number in gCO2e/kWh")
    mix = _CodeCarbonData().get_global_energy_mix_data().get(code)
    if mix is None or mix.get("carbon_intensity") is None:
        raise BadArgumentError(f"--grid-intensity {code}: CodeCarbon {_codecarbon_version} has no carbon intensity "
                               "for that country code; give a number in gCO2e/kWh")
    name = mix.get("country_name", code)
    year = f", {mix['year']}" if mix.get("year") else ""
    return Grid(float(mix["carbon_intensity"]), f"CodeCarbon {_codecarbon_version} energy mix of {name} ({code}{year})")


def settings(grid_intensity: str | float | None = None, pue: float | None = None) -> CarbonSettings:
    """Validated carbon settings (``pue`` >= 1; default Green Algorithms')."""
    if pue is None:
        pue_v, pue_src = GREEN_ALGORITHMS_PUE, PUE_SOURCE
    else:
        try:
            pue_v = float(pue)
        except (TypeError, ValueError):
            raise BadArgumentError(f"--pue must be a number >= 1, got {pue!r}") from None
        if not math.isfinite(pue_v) or pue_v < 1:
            raise BadArgumentError(f"--pue must be a number >= 1 (facility energy / IT energy), got {pue!r}")
        pue_src = "given (--pue)"
    g = grid(grid_intensity)
    note = None
    if g is None:
        note = ("no CO2e: no grid carbon intensity (install the carbon extra for CodeCarbon's world average, "
                "or pass --grid-intensity gCO2e/kWh)")
    return CarbonSettings(g, pue_v, pue_src, note)


def _fig(joules: float | None, cs: CarbonSettings) -> tuple[float | None, float | None]:
    if joules is None or not math.isfinite(joules):
        return None, None
    wh = joules * 1000.0 / JOULES_PER_WH
    co2 = wh * cs.pue / 1000.0 * cs.grid.g_per_kwh if cs.grid is not None else None
    return wh, co2


def per_1k(energy: dict | None, cs: CarbonSettings) -> dict | None:
    """Energy (Wh) and CO2e (g) per 1,000 inferences from an energy figure (``joules_per_inference``,
    ``method``, ``meter``, optional ``band``). The energy is the hardware's (before PUE); the CO2e
    includes PUE. None when the figure has no energy."""
    if not isinstance(energy, dict) or energy.get("joules_per_inference") is None:
        return None
    wh, co2 = _fig(energy["joules_per_inference"], cs)
    if wh is None:
        return None
    method = energy.get("method") or "unknown"
    out = {"label": method, "meter": energy.get("meter"), "wh_per_1k": wh, "facility_wh_per_1k": wh * cs.pue,
           "co2e_g_per_1k": co2, "grid_intensity_g_per_kwh": cs.grid.g_per_kwh if cs.grid else None,
           "pue": cs.pue}
    band = energy.get("band")
    if isinstance(band, dict) and band.get("low") is not None and band.get("high") is not None:
        lo, hi = _fig(band["low"], cs), _fig(band["high"], cs)
        out["band"] = {"wh_per_1k": [lo[0], hi[0]], "co2e_g_per_1k": [lo[1], hi[1]] if co2 is not None else None}
    return out


def describe(fig: dict | None) -> str:
    """One line: "0.123 Wh / 1k inferences (estimated), 0.0913 gCO2e at 475 gCO2e/kWh, PUE 1.56"."""
    if fig is None:
        return "n/a"
    s = f"{fig['wh_per_1k']:.4g} Wh / 1k inferences ({fig['label']})"
    if fig.get("co2e_g_per_1k") is not None:
        s += f", {fig['co2e_g_per_1k']:.4g} gCO2e at {fig['grid_intensity_g_per_kwh']:g} gCO2e/kWh, PUE {fig['pue']:g}"
    return s
