"""Parsing of the human units used on the command line: budgets (`10m`, `3e18flops`), intervals, sizes."""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from cramlm.errors import CramlmError

BudgetKind = Literal["seconds", "flops", "tokens", "steps", "usd"]

_TIME = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_KINDS = {"flops": "flops", "tokens": "tokens", "tok": "tokens", "steps": "steps", "usd": "usd", "$": "usd"}
_NUMBER = r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)"


class Quantity(NamedTuple):
    """An amount of one budget kind, e.g. Quantity("seconds", 600.0) for `10m`."""

    kind: BudgetKind
    amount: float

    def __str__(self) -> str:
        if self.kind == "seconds":
            return format_seconds(self.amount)
        return f"{self.amount:g}{self.kind}"


def parse_quantity(text: str, what: str = "budget") -> Quantity:
    """Parse `24h`, `90m`, `300s`, `3e18flops`, `2e9tokens`, `500steps` or `50usd`."""
    s = str(text).strip().lower().replace("_", "").replace(" ", "")
    match = re.fullmatch(_NUMBER + r"([a-z$]+)", s)
    if not match:
        raise CramlmError(
            f"{what} {text!r} is not understood: use e.g. 10m, 24h, 300s, 3e18flops, 2e9tokens, 500steps or 50usd"
        )
    value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise CramlmError(f"{what} {text!r} must be positive")
    if unit in _TIME:
        return Quantity("seconds", value * _TIME[unit])
    if unit in _KINDS:
        return Quantity(_KINDS[unit], value)  # type: ignore[arg-type]
    raise CramlmError(f"{what} {text!r}: unknown unit {unit!r} (s, m, h, d, flops, tokens, steps, usd)")


def parse_interval(text: str, what: str = "interval") -> Quantity:
    """An interval between events: wall-clock (`30m`) or optimizer steps (`200steps`)."""
    q = parse_quantity(text, what)
    if q.kind not in ("seconds", "steps"):
        raise CramlmError(f"{what} {text!r} must be a time (30m) or a number of steps (200steps)")
    return q


def format_seconds(seconds: float) -> str:
    """Compact wall-clock text: 45s, 12m30s, 3h05m."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_count(n: float) -> str:
    """1234567 -> 1.23M: counts of tokens, parameters and FLOPs in one style."""
    for factor, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.3g}"
