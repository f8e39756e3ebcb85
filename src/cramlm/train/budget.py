"""The budget is a clock: every schedule reads `progress()`, training stops when it reaches 1.

A budget is one of wall-clock seconds, FLOPs, tokens, optimizer steps or dollars. Time budgets (seconds, dollars)
run on a monotonic clock that keeps ticking through evaluation and checkpointing, so that time is counted, not
hidden; the other kinds count work done, which makes a run deterministic and exactly resumable. Steps and tokens
are global (all ranks together), and money is counted in device-seconds, so a run resumed on another number of
devices keeps what it spent.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from cramlm.errors import CramlmError
from cramlm.units import BudgetKind, Quantity, parse_quantity

TIME_KINDS = ("seconds", "usd")


class Budget:
    """Tracks what a run has spent and how far it is through its limit."""

    def __init__(
        self,
        limit: Quantity,
        *,
        flops_per_token: float = 0.0,
        flops_per_step: float = 0.0,
        usd_per_hour: float = 0.0,
        devices: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`usd_per_hour` is the price of one device; `devices` the number this session runs on;
        `flops_per_step` what the optimizer adds to each step (Muon's matmuls)."""
        if limit.kind == "flops" and flops_per_token <= 0:
            raise CramlmError("a FLOP budget needs the model's FLOPs per token")
        if limit.kind == "usd" and usd_per_hour <= 0:
            raise CramlmError(
                f"a dollar budget ({limit}) needs a price: set budget.price_per_hour or a budget.hardware with a price"
            )
        self.limit = limit
        self.flops_per_token = float(flops_per_token)
        self.flops_per_step = float(flops_per_step)
        self.usd_per_hour = float(usd_per_hour)
        self.devices = int(devices)
        self.clock = clock
        self.steps = 0
        self.tokens = 0
        self.reserve = 0.0  # seconds kept back for the final evaluation and checkpoint
        self._seconds_before = 0.0  # spent in earlier sessions of a resumed run
        self._device_seconds_before = 0.0  # the same, times the devices each session ran on
        self._t0: float | None = None

    @classmethod
    def from_config(
        cls,
        cfg: Any,
        *,
        flops_per_token: float = 0.0,
        flops_per_step: float = 0.0,
        usd_per_hour: float = 0.0,
        devices: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> "Budget":
        """From a `BudgetConfig`; the caller resolves the price (per device-hour) from the hardware."""
        return cls(parse_quantity(cfg.limit), flops_per_token=flops_per_token, flops_per_step=flops_per_step,
                   usd_per_hour=usd_per_hour, devices=devices, clock=clock)

    @property
    def kind(self) -> BudgetKind:
        return self.limit.kind

    @property
    def timed(self) -> bool:
        """True when the limit is wall-clock time (or money, which is time times price)."""
        return self.kind in TIME_KINDS

    def start(self) -> None:
        """Start (or restart, after a resume) the clock."""
        self._t0 = self.clock()

    @property
    def _running(self) -> float:
        return 0.0 if self._t0 is None else self.clock() - self._t0

    @property
    def seconds(self) -> float:
        return self._seconds_before + self._running

    @property
    def device_seconds(self) -> float:
        """Seconds times devices, summed over the sessions of the run: what the run is billed for."""
        return self._device_seconds_before + self._running * self.devices

    @property
    def flops(self) -> float:
        return self.tokens * self.flops_per_token + self.steps * self.flops_per_step

    @property
    def usd(self) -> float:
        return self.device_seconds * self.usd_per_hour / 3600.0

    def add(self, steps: int = 0, tokens: int = 0) -> None:
        """Record work done: optimizer steps and tokens processed (FLOPs follow from the tokens)."""
        self.steps += int(steps)
        self.tokens += int(tokens)

    def _used(self, ahead: float = 0.0) -> float:
        """Amount of the limit's kind spent so far; `ahead` seconds are added to time-like kinds."""
        kind = self.kind
        if kind == "seconds":
            return self.seconds + ahead
        if kind == "usd":
            return self.usd + ahead * self.devices * self.usd_per_hour / 3600.0
        if kind == "flops":
            return self.flops
        if kind == "tokens":
            return float(self.tokens)
        return float(self.steps)

    def progress(self) -> float:
        """Fraction of the budget spent, in [0, 1]."""
        return min(1.0, max(0.0, self._used() / self.limit.amount))

    @property
    def exhausted(self) -> bool:
        """True once the budget, less the time reserved for the final evaluation and checkpoint, is spent."""
        return self._used(ahead=self.reserve if self.timed else 0.0) >= self.limit.amount

    def eta(self) -> float | None:
        """Estimated seconds left; None before any progress is measurable."""
        if self.kind == "seconds":
            return max(0.0, self.limit.amount - self.seconds)
        if self.kind == "usd":
            return max(0.0, (self.limit.amount - self.usd) * 3600.0 / (self.usd_per_hour * self.devices))
        p = self.progress()
        return None if p <= 0 else self.seconds * (1.0 - p) / p

    @property
    def spent(self) -> dict[str, float]:
        return {"seconds": self.seconds, "steps": self.steps, "tokens": self.tokens, "flops": self.flops,
                "usd": self.usd}

    def state_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "device_seconds": self.device_seconds, "steps": self.steps,
                "tokens": self.tokens}

    def charge(self, seconds: float) -> None:
        """Count time spent before the clock started (measuring the device) as spent."""
        self._seconds_before += seconds
        self._device_seconds_before += seconds * self.devices

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from a checkpoint: what was spent before stays spent."""
        self._seconds_before = float(state["seconds"])
        self._device_seconds_before = float(state["device_seconds"])
        self.steps = int(state["steps"])
        self.tokens = int(state["tokens"])
        self._t0 = None
