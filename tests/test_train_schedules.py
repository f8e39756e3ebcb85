"""Schedules are pure functions of budget progress: bounds, endpoints, monotone ramps, the noise-scale estimate."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cramlm.train.schedules import NoiseScale, accumulation_at, auto_accumulation, lr_factor, lr_scale

SCHEDULES = ["one-cycle", "cosine", "wsd", "constant", "linear"]
fraction = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SCHEDULES), fraction, fraction, fraction, fraction, fraction)
def test_lr_stays_between_its_bounds(schedule, p, warmup, lr_start, lr_end, cooldown):
    f = lr_factor(p, schedule, warmup=warmup, lr_start=lr_start, lr_end=lr_end, cooldown=cooldown)
    assert min(lr_start, lr_end) - 1e-9 <= f <= 1.0 + 1e-9


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(SCHEDULES), st.floats(0.01, 0.9), fraction, fraction, fraction, fraction)
def test_warmup_rises_then_never_rises_again(schedule, warmup, lr_start, lr_end, a, b):
    kw = dict(warmup=warmup, lr_start=lr_start, lr_end=lr_end, cooldown=0.3)
    lo, hi = sorted((a, b))
    f_lo, f_hi = lr_factor(lo, schedule, **kw), lr_factor(hi, schedule, **kw)
    if hi <= warmup:
        assert f_lo <= f_hi + 1e-12
    elif lo >= warmup:
        assert f_hi <= f_lo + 1e-12
    assert lr_factor(0.0, schedule, **kw) == pytest.approx(lr_start)
    assert lr_factor(warmup, schedule, **kw) == pytest.approx(1.0)


def test_cramming_one_cycle_points():
    kw = dict(warmup=0.75, lr_start=0.25, lr_end=0.0)
    assert lr_factor(0.0, "one-cycle", **kw) == pytest.approx(0.25)
    assert lr_factor(0.375, "one-cycle", **kw) == pytest.approx(0.625)
    assert lr_factor(0.75, "one-cycle", **kw) == pytest.approx(1.0)
    assert lr_factor(0.875, "one-cycle", **kw) == pytest.approx(0.5)
    assert lr_factor(1.0, "one-cycle", **kw) == pytest.approx(0.0)
    assert lr_factor(1.0, "cosine", warmup=0.1, lr_end=0.1) == pytest.approx(0.1)
    assert lr_factor(0.55, "cosine", warmup=0.1, lr_end=0.0) == pytest.approx(0.5)
    assert lr_factor(0.7, "wsd", warmup=0.1, cooldown=0.2) == 1.0
    assert lr_factor(0.9, "wsd", warmup=0.1, cooldown=0.2, lr_end=0.0) == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["linear", "step", "none", "auto"]), st.integers(1, 200), st.floats(0.0, 1.0), fraction, fraction)
def test_batch_ramp_is_monotone_and_reaches_the_target(ramp, max_accum, ramp_end, a, b):
    lo, hi = sorted((a, b))
    acc_lo, acc_hi = (accumulation_at(p, ramp, max_accum, ramp_end) for p in (lo, hi))
    assert 1 <= acc_lo <= acc_hi <= max_accum
    assert accumulation_at(ramp_end, ramp, max_accum, ramp_end) == max_accum
    assert accumulation_at(1.0, ramp, max_accum, ramp_end) == max_accum
    if ramp in ("linear", "step") and ramp_end > 0:
        assert accumulation_at(0.0, ramp, max_accum, ramp_end) == 1


def test_step_ramp_doubles():
    seen = sorted({accumulation_at(p / 100, "step", 8, 0.6) for p in range(101)})
    assert seen == [1, 2, 4, 8]


def test_lr_scaling_rules():
    assert lr_scale(256, 1024, "linear") == 0.25
    assert lr_scale(256, 1024, "sqrt") == 0.5
    assert lr_scale(256, 1024, "none") == 1.0


@settings(max_examples=100, deadline=None)
@given(st.floats(1.0, 1e5) | st.none() | st.just(math.nan), st.integers(1, 64), st.integers(1, 64), st.integers(1, 64))
def test_auto_ramp_grows_only_up_to_the_target(b_noise, current, micro, max_accum):
    current = min(current, max_accum)
    out = auto_accumulation(b_noise, current, micro, max_accum)
    assert current <= out <= max(current, max_accum)


def test_noise_scale_recovers_a_known_value():
    """Gradients drawn as G + noise with per-sample variance s2 per coordinate: B_noise = d*s2/|G|^2."""
    g = torch.Generator().manual_seed(0)
    d, s2, b_small, accum = 1000, 4.0, 8, 8
    true_g = torch.full((d,), 0.5)
    est = NoiseScale(decay=0.9)
    for _ in range(300):
        samples = true_g + math.sqrt(s2) * torch.randn(b_small * accum, d, generator=g)
        small = samples[:b_small].mean(0)
        big = samples.mean(0)
        est.update(small.pow(2).sum(), big.pow(2).sum(), b_small, b_small * accum)
    expected = d * s2 / true_g.pow(2).sum().item()
    assert est.value() == pytest.approx(expected, rel=0.15)
    state = est.state_dict()
    again = NoiseScale()
    again.load_state_dict(state)
    assert again.value() == pytest.approx(est.value(), rel=1e-6)
