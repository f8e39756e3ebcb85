"""Scaling laws: Chinchilla's compute-optimal model size and the power law of a family of runs.

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"): training compute C = 6 N D for N
parameters and D tokens. Their headline table (Table 3) puts the optimum at about 20 tokens per parameter at
every budget; their parametric fit (approach 3) L(N, D) = E + A / N^alpha + B / D^beta predicts the loss (nats per
token on their MassiveText data, so a guide rather than a promise for other data and for MLM) and implies a
slightly different optimum, shown beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cramlm.errors import CramlmError

TOKENS_PER_PARAM = 20.0
# Hoffmann et al. 2022, equation 10 (approach 3 fit).
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28

# Hoffmann et al. 2022, Table 3: (parameters, training FLOPs, tokens) of compute-optimal models.
CHINCHILLA_TABLE = [
    (400e6, 1.92e19, 8.0e9), (1e9, 1.21e20, 20.2e9), (10e9, 1.23e22, 205.1e9), (67e9, 5.76e23, 1.5e12),
    (175e9, 3.85e24, 3.7e12), (280e9, 9.90e24, 5.9e12), (520e9, 3.43e25, 11.0e12), (1e12, 1.27e26, 21.2e12),
    (10e12, 1.30e28, 216.2e12),
]


def training_flops(params: float, tokens: float) -> float:
    """C = 6 N D: forward (2 N) and backward (4 N) FLOPs per token."""
    return 6.0 * params * tokens


def compute_optimal(flops: float, tokens_per_param: float = TOKENS_PER_PARAM) -> tuple[float, float]:
    """(params, tokens) spending `flops` at a fixed tokens-per-parameter ratio: N = sqrt(C / (6 r))."""
    if flops <= 0:
        raise CramlmError(f"compute budget must be positive (got {flops:g} FLOPs)")
    params = math.sqrt(flops / (6.0 * tokens_per_param))
    return params, tokens_per_param * params


def fitted_loss(params: float, tokens: float) -> float:
    """Chinchilla's parametric loss L(N, D) = E + A / N^alpha + B / D^beta (nats per token)."""
    return E + A / params**ALPHA + B / tokens**BETA


def fitted_optimum(flops: float) -> tuple[float, float]:
    """(params, tokens) minimising L(N, D) subject to 6 N D = C (Hoffmann et al. 2022, equation 4)."""
    if flops <= 0:
        raise CramlmError(f"compute budget must be positive (got {flops:g} FLOPs)")
    g = (ALPHA * A / (BETA * B)) ** (1.0 / (ALPHA + BETA))
    params = g * (flops / 6.0) ** (BETA / (ALPHA + BETA))
    return params, flops / (6.0 * params)


@dataclass(frozen=True)
class PowerLaw:
    """L(C) = a * C^(-b) + e, fitted to (compute, final loss) pairs; r2 is the fit's coefficient of determination."""

    a: float
    b: float
    e: float
    r2: float

    def __call__(self, flops: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(flops, -self.b) + self.e


def _loglinear(logc: np.ndarray, loss: np.ndarray, e: float) -> tuple[float, float, float]:
    """For a fixed floor e, least squares of log(L - e) = log a - b log C; returns (a, b, squared error in L)."""
    slope, intercept = np.polyfit(logc, np.log(loss - e), 1)
    a, b = math.exp(intercept), -slope
    return a, b, float(np.sum((a * np.exp(-b * logc) + e - loss) ** 2))


def fit_power_law(flops: list[float] | np.ndarray, losses: list[float] | np.ndarray) -> PowerLaw:
    """Fit L(C) = a C^-b + e with e in [0, min L): a golden-section search over e, a and b by log-linear fit."""
    logc = np.log(np.asarray(flops, dtype=float))
    loss = np.asarray(losses, dtype=float)
    if len(loss) < 3 or len(np.unique(logc)) < 3:
        raise CramlmError(f"a power-law fit needs 3 or more runs with different compute (got {len(np.unique(logc))})")
    if not np.all(np.isfinite(loss)) or np.any(loss <= 0):
        raise CramlmError("a power-law fit needs finite, positive losses")
    lo, top = 0.0, float(loss.min()) * (1 - 1e-9)
    inv_phi = (math.sqrt(5) - 1) / 2
    x1, x2 = top - inv_phi * (top - lo), lo + inv_phi * (top - lo)
    f1, f2 = _loglinear(logc, loss, x1)[2], _loglinear(logc, loss, x2)[2]
    for _ in range(100):
        if f1 < f2:
            top, x2, f2 = x2, x1, f1
            x1 = top - inv_phi * (top - lo)
            f1 = _loglinear(logc, loss, x1)[2]
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + inv_phi * (top - lo)
            f2 = _loglinear(logc, loss, x2)[2]
    candidates = [(lo + top) / 2, 0.0]
    e = min(candidates, key=lambda c: _loglinear(logc, loss, c)[2])
    a, b, sse = _loglinear(logc, loss, e)
    total = float(np.sum((loss - loss.mean()) ** 2))
    return PowerLaw(a, b, e, 1.0 - sse / total if total > 0 else 1.0)
