"""What a run costs: device-hours, dollars, energy and emissions from wall-clock time and the hardware entry.

Energy assumes the devices draw their TDP for the whole run, times the data centre's PUE (the method of Lacoste
et al. 2019, "Quantifying the Carbon Emissions of Machine Learning"; Strubell et al. 2019 use the same PUE
idea). It is an upper-bound style estimate: real draw is often 60-90% of TDP.
"""

from __future__ import annotations

import re

from cramlm.budget.hardware import Hardware
from cramlm.errors import CramlmError

# Grid carbon intensity, kg CO2e per kWh (annual averages, 2023).
GRID_KG_PER_KWH: dict[str, float] = {
    "world": 0.480,  # Ember, Global Electricity Review 2024: 480 gCO2/kWh world average in 2023
    "us": 0.367,  # US EIA, "How much CO2 is produced per kWh" (2023): 0.81 lb/kWh
    "eu": 0.244,  # Ember, European Electricity Review 2024: EU-27 in 2023
    "uk": 0.162,  # Ember, UK country profile 2023
    "de": 0.381,  # Ember, Germany country profile 2023
    "fr": 0.056,  # Ember, France country profile 2023 (nuclear + hydro)
    "se": 0.041,  # Ember, Sweden country profile 2023
    "no": 0.030,  # Ember, Norway country profile 2023 (hydro)
    "ca": 0.170,  # Ember, Canada country profile 2023
    "cn": 0.582,  # Ember, China country profile 2023
    "in": 0.713,  # Ember, India country profile 2023
    "jp": 0.485,  # Ember, Japan country profile 2023
    "au": 0.549,  # Ember, Australia country profile 2023
}


def grid_intensity(region: str) -> float:
    """kg CO2e per kWh for a region name, or a number given directly: `0.25` (kg/kWh) or `250g` (g/kWh)."""
    key = region.strip().lower()
    if key in GRID_KG_PER_KWH:
        return GRID_KG_PER_KWH[key]
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)(g|kg)?", key)
    if match:
        value = float(match.group(1))
        return value / 1000 if match.group(2) == "g" else value
    raise CramlmError(f"unknown region {region!r}: use one of {', '.join(GRID_KG_PER_KWH)}, "
                      "or an intensity such as 0.3 (kg CO2e/kWh) or 300g")


def run_cost(seconds: float, hardware: Hardware, count: int = 1, pue: float = 1.1,
             region: str = "world") -> dict[str, float]:
    """Cost of `count` devices for `seconds` of wall-clock: gpu_hours, usd, kwh and co2_kg (kg CO2e)."""
    if seconds < 0 or count < 1 or pue < 1:
        raise CramlmError(f"run cost needs seconds >= 0, count >= 1, pue >= 1 (got {seconds}, {count}, {pue})")
    gpu_hours = seconds / 3600 * count
    kwh = gpu_hours * hardware.tdp_watts / 1000 * pue
    return {
        "gpu_hours": gpu_hours,
        "usd": gpu_hours * hardware.usd_per_hour,
        "kwh": kwh,
        "co2_kg": kwh * grid_intensity(region),
    }
