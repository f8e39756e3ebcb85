"""Learning-rate and batch-size schedules as pure functions of budget progress in [0, 1].

Because they read progress rather than a step count, the same recipe fits a 10-minute CPU run and a 24-hour GPU run.
The batch grows by gradient accumulation (Smith et al. 2017, "Don't decay the learning rate, increase the batch
size"); `NoiseScale` estimates the gradient noise scale B_noise (McCandlish et al. 2018) from the micro-batch and
accumulated gradient norms that accumulation gives for free, for the automatic ramp.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def lr_factor(
    progress: float,
    schedule: str,
    *,
    warmup: float = 0.0,
    lr_start: float = 0.0,
    lr_end: float = 0.0,
    cooldown: float = 0.2,
) -> float:
    """The learning rate as a fraction of its peak at `progress`.

    All schedules warm up linearly from `lr_start` to 1 over the first `warmup` of the budget, then:
    one-cycle and linear decay linearly to `lr_end` (one-cycle is Cramming's triangle, warmup ~0.75; linear is
    BERT's, warmup ~0.01); cosine decays along a half cosine; wsd stays at 1 and decays linearly to `lr_end`
    over the last `cooldown`; constant stays at 1.
    """
    p = min(1.0, max(0.0, float(progress)))
    if p < warmup:
        return lr_start + (1.0 - lr_start) * p / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "wsd":
        decay_from = max(warmup, 1.0 - cooldown)
        if p < decay_from or decay_from >= 1.0:
            return 1.0
        return 1.0 + (lr_end - 1.0) * (p - decay_from) / (1.0 - decay_from)
    if warmup >= 1.0:
        return 1.0
    t = (p - warmup) / (1.0 - warmup)
    if schedule in ("one-cycle", "linear"):
        return 1.0 + (lr_end - 1.0) * t
    if schedule == "cosine":
        return lr_end + (1.0 - lr_end) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {schedule!r}")


def lr_scale(batch_size: int, target_batch_size: int, rule: str) -> float:
    """Scale the peak LR (defined at the target batch) to the current batch: linear or square-root rule."""
    ratio = batch_size / target_batch_size
    if rule == "linear":
        return ratio
    if rule == "sqrt":
        return math.sqrt(ratio)
    return 1.0


def accumulation_at(progress: float, ramp: str, max_accum: int, ramp_end: float) -> int:
    """Micro-batches per optimizer step at `progress`: grows from 1 to `max_accum`, reached at `ramp_end`.

    `linear` grows the batch linearly; `step` doubles it in equal slices of the ramp (1, 2, 4, ... then the
    target); `none` (and `auto`, whose growth `auto_accumulation` decides) start at the target.
    """
    if ramp not in ("linear", "step") or max_accum <= 1 or progress >= ramp_end:
        return max_accum
    t = max(0.0, progress) / ramp_end
    if ramp == "linear":
        return max(1, min(max_accum, 1 + int(t * (max_accum - 1) + 1e-9)))
    n_stages = math.ceil(math.log2(max_accum)) + 1
    return min(max_accum, 2 ** int(t * n_stages))


def auto_accumulation(noise_scale: float | None, current: int, micro_batch: int, max_accum: int) -> int:
    """Grow the batch toward the measured noise scale B_noise (never shrink it; at most the target)."""
    if noise_scale is None or not math.isfinite(noise_scale):
        return current
    wanted = math.ceil(noise_scale / micro_batch)
    return max(current, min(max_accum, wanted))


class NoiseScale:
    """The simple gradient noise scale B_noise = tr(Sigma) / |G|^2, estimated from two batch sizes.

    With |g_s|^2 from a micro-batch of B_s sequences and |g_b|^2 from the accumulated batch of B_b, unbiased
    estimates are |G|^2 = (B_b |g_b|^2 - B_s |g_s|^2) / (B_b - B_s) and tr(Sigma) = (|g_s|^2 - |g_b|^2) /
    (1/B_s - 1/B_b) (McCandlish et al. 2018, appendix A). Both are noisy, so each is smoothed by an exponential
    moving average before the ratio is taken. Values are kept as tensors so the hot loop never waits on the device.
    """

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self.g2: torch.Tensor | None = None
        self.trace: torch.Tensor | None = None
        self.updates = 0

    def update(self, small_sq: torch.Tensor, big_sq: torch.Tensor, b_small: int, b_big: int,
               ok: torch.Tensor | bool = True) -> None:
        """Feed one optimizer step: squared norms of a micro-batch gradient and of the accumulated gradient.

        A step that is not `ok` (skipped as non-finite) or whose estimates are not finite leaves the averages as
        they were: one overflow must not turn them into NaN for the rest of the run. Decided on the device, so
        the loop never waits."""
        if b_big <= b_small:
            return
        self.updates += 1
        g2 = ((b_big * big_sq - b_small * small_sq) / (b_big - b_small)).detach().float()
        trace = ((small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)).detach().float()
        keep = torch.isfinite(g2) & torch.isfinite(trace) & torch.as_tensor(ok, device=g2.device)
        self.g2 = self._blend(self.g2, g2, keep)
        self.trace = self._blend(self.trace, trace, keep)

    def _blend(self, mean: torch.Tensor | None, new: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The moving average with `new` where `keep`, else unchanged (NaN stands for "nothing measured yet")."""
        if mean is None:
            return torch.where(keep, new, torch.nan)
        mean = mean.to(new.device)
        mixed = torch.where(torch.isnan(mean), new, self.decay * mean + (1 - self.decay) * new)
        return torch.where(keep, mixed, mean)

    def value(self) -> float | None:
        """B_noise in sequences (synchronises with the device); None until measured or while not positive."""
        if self.g2 is None or self.trace is None:
            return None
        g2, trace = float(self.g2), float(self.trace)
        if not (g2 > 0 and trace > 0):
            return None
        return trace / g2

    def state_dict(self) -> dict[str, Any]:
        return {"g2": None if self.g2 is None else float(self.g2),
                "trace": None if self.trace is None else float(self.trace), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.g2 = None if state.get("g2") is None else torch.tensor(state["g2"])
        self.trace = None if state.get("trace") is None else torch.tensor(state["trace"])
        self.updates = int(state.get("updates", 0))
