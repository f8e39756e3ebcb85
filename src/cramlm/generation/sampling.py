"""How the next token is chosen from the logits: greedy, or sampled after repetition penalty, temperature, top-k and
top-p (in that order, as transformers applies them).

Each prompt draws from its own random generator, seeded by (seed, prompt index): a prompt's sample depends on the
seed alone, not on which prompts share its batch or on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cramlm.errors import CramlmError


@dataclass(frozen=True)
class SamplingConfig:
    """What `generate` does at each step; temperature 0 is greedy (top-k, top-p and seed are then unused)."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the output (CTRL's rule)
    seed: int = 0
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        checks = [
            (self.max_new_tokens >= 1, f"max_new_tokens must be at least 1 (got {self.max_new_tokens})"),
            (self.temperature >= 0, f"temperature must be >= 0, 0 meaning greedy (got {self.temperature})"),
            (self.top_k >= 0, f"top_k must be >= 0, 0 meaning no cut (got {self.top_k})"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1] (got {self.top_p})"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, 1 meaning none "
                                          f"(got {self.repetition_penalty})"),
            (0 <= self.seed < 2**31, f"seed must be in [0, 2^31) (got {self.seed})"),
            (all(self.stop_strings), "a stop string must not be empty"),
        ]
        for ok, message in checks:
            if not ok:
                raise CramlmError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def row_generators(cfg: SamplingConfig, indices: list[int]) -> list[torch.Generator] | None:
    """One CPU generator per prompt (None when greedy), its 32-bit seed (all torch's CPU generator reads) mixed
    from (seed, prompt index) by numpy's SeedSequence, so nearby seeds and indices give unrelated streams."""
    if cfg.greedy:
        return None
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, i]).generate_state(1)[0]))
            for i in indices]


def penalise(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """Divide positive logits and multiply negative ones of the tokens already `seen` (B, V) by `penalty`."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def choose(logits: Tensor, cfg: SamplingConfig, generators: list[torch.Generator] | None) -> Tensor:
    """The next token of each row (B,) from float logits (B, V), repetition penalty already applied."""
    if generators is None:
        return logits.argmax(-1)
    logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if cfg.top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
        sorted_probs = sorted_probs.masked_fill(before >= cfg.top_p, 0.0)  # the first token is always kept
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    cdf = probs.cumsum(-1)
    u = torch.cat([torch.rand(1, generator=g, dtype=cdf.dtype) for g in generators]).to(cdf.device)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp(max=logits.shape[-1] - 1)
