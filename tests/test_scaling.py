import numpy as np
import pytest

from cramlm.budget.scaling import (CHINCHILLA_TABLE, compute_optimal, fit_power_law, fitted_loss, fitted_optimum,
                                   training_flops)
from cramlm.errors import CramlmError


def test_six_n_d():
    assert training_flops(1e9, 20e9) == pytest.approx(1.2e20)


@pytest.mark.parametrize("params, flops, tokens", CHINCHILLA_TABLE)
def test_default_optimum_within_10_percent_of_the_published_table(params, flops, tokens):
    n, d = compute_optimal(flops)
    assert n == pytest.approx(params, rel=0.10)
    assert d == pytest.approx(tokens, rel=0.10)


def test_fitted_optimum_is_the_minimum_on_the_iso_flop_curve():
    c = 1e21
    n_opt, d_opt = fitted_optimum(c)
    assert training_flops(n_opt, d_opt) == pytest.approx(c)
    best = fitted_loss(n_opt, d_opt)
    for factor in (0.5, 0.8, 1.25, 2.0):
        n = n_opt * factor
        assert fitted_loss(n, c / (6 * n)) > best
    # Chinchilla itself: 70B parameters, 1.4T tokens -> the fit predicts about 1.94 nats
    assert fitted_loss(70e9, 1.4e12) == pytest.approx(1.94, abs=0.01)


def test_power_law_recovers_known_parameters():
    c = np.logspace(15, 19, 6)
    a, b, e = 30.0, 0.05, 1.8
    fit = fit_power_law(c, a * c**-b + e)
    assert fit.a == pytest.approx(a, rel=0.02)
    assert fit.b == pytest.approx(b, rel=0.02)
    assert fit.e == pytest.approx(e, abs=0.01)
    assert fit.r2 > 0.9999
    assert fit(1e20) == pytest.approx(a * 1e20**-b + e, rel=1e-3)


def test_power_law_with_noise_still_close():
    rng = np.random.default_rng(0)
    c = np.logspace(14, 18, 12)
    loss = 200.0 * c**-0.12 + 2.0
    fit = fit_power_law(c, loss * (1 + rng.normal(0, 0.002, c.size)))
    assert fit.b == pytest.approx(0.12, rel=0.25)
    assert fit(1e19) == pytest.approx(200.0 * 1e19**-0.12 + 2.0, rel=0.02)


def test_power_law_needs_three_budgets():
    with pytest.raises(CramlmError, match="3 or more"):
        fit_power_law([1e15, 1e15, 1e16], [3.0, 2.9, 2.5])
    with pytest.raises(CramlmError):
        compute_optimal(0)
