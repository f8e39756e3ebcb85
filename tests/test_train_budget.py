"""The budget clock: kinds, progress, reserve, resume of what was spent."""

import pytest

from cramlm.config import BudgetConfig
from cramlm.errors import CramlmError
from cramlm.train.budget import Budget
from cramlm.units import Quantity


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_wall_clock_budget_counts_everything_and_reserves_the_end():
    clock = FakeClock()
    b = Budget.from_config(BudgetConfig(limit="10m"), clock=clock)
    b.start()
    clock.t += 300
    assert b.progress() == pytest.approx(0.5)
    assert b.eta() == pytest.approx(300)
    b.reserve = 20
    clock.t += 279
    assert not b.exhausted
    clock.t += 2
    assert b.exhausted and b.progress() < 1.0
    clock.t += 100
    assert b.progress() == 1.0


def test_work_budgets_are_counted_not_timed():
    b = Budget(Quantity("tokens", 1000))
    b.start()
    b.add(steps=1, tokens=600)
    assert b.progress() == pytest.approx(0.6) and not b.exhausted
    b.add(steps=1, tokens=600)
    assert b.exhausted and b.progress() == 1.0
    s = Budget(Quantity("steps", 4))
    s.add(steps=3)
    assert s.progress() == 0.75
    f = Budget(Quantity("flops", 1e6), flops_per_token=1e3)
    f.add(tokens=500)
    assert f.spent["flops"] == 5e5 and f.progress() == 0.5


def test_dollars_need_a_price_and_follow_the_clock():
    with pytest.raises(CramlmError, match="price"):
        Budget(Quantity("usd", 5))
    with pytest.raises(CramlmError, match="FLOPs per token"):
        Budget(Quantity("flops", 5))
    clock = FakeClock()
    b = Budget(Quantity("usd", 2.0), usd_per_hour=4.0, clock=clock)
    b.start()
    clock.t += 900
    assert b.spent["usd"] == pytest.approx(1.0) and b.progress() == pytest.approx(0.5)
    assert b.eta() == pytest.approx(900)


def test_resume_keeps_what_was_spent():
    clock = FakeClock()
    b = Budget(Quantity("seconds", 100), clock=clock)
    b.start()
    b.add(steps=5, tokens=50)
    clock.t += 40
    state = b.state_dict()
    c = Budget(Quantity("seconds", 100), clock=clock)
    c.load_state_dict(state)
    clock.t += 1000  # time while the run was down is not charged
    c.start()
    clock.t += 10
    assert c.spent["seconds"] == pytest.approx(50) and c.steps == 5 and c.tokens == 50
