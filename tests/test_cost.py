import pytest

from cramlm.budget.cost import grid_intensity, run_cost
from cramlm.budget.hardware import get
from cramlm.errors import CramlmError


def test_one_gpu_day_on_a_2080ti():
    # 24 h x 0.20 $/h; 24 h x 250 W x 1.1 PUE = 6.6 kWh; x 0.480 kg/kWh = 3.168 kg
    c = run_cost(24 * 3600, get("rtx2080ti"))
    assert c == pytest.approx({"gpu_hours": 24.0, "usd": 4.8, "kwh": 6.6, "co2_kg": 3.168})


def test_eight_v100s_for_two_hours_in_france():
    # 16 GPU-hours x 1.00 $/h; 16 h x 300 W x 1.2 = 5.76 kWh; x 0.056 = 0.32256 kg
    c = run_cost(7200, get("v100"), count=8, pue=1.2, region="fr")
    assert c == pytest.approx({"gpu_hours": 16.0, "usd": 16.0, "kwh": 5.76, "co2_kg": 0.32256})


def test_grid_intensity_by_name_or_number():
    assert grid_intensity("World") == 0.480
    assert grid_intensity("0.3") == 0.3
    assert grid_intensity("250g") == 0.25
    with pytest.raises(CramlmError, match="unknown region 'mars'"):
        grid_intensity("mars")


def test_bad_inputs_are_errors():
    with pytest.raises(CramlmError):
        run_cost(-1, get("t4"))
    with pytest.raises(CramlmError):
        run_cost(10, get("t4"), pue=0.9)
