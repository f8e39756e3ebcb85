"""Mixture-of-experts feed-forward: top-k routing with a capacity limit, dispatched without a loop over tokens.

Each token's k expert assignments are sorted by expert; an assignment's rank inside its expert decides its slot in
a fixed (n_experts, capacity) buffer, so all experts run as one batched matmul with static shapes. Assignments past
an expert's capacity go to a spare slot whose output is discarded (the token keeps its residual path). The router
is trained with the Switch-Transformer load-balancing loss and the ST-MoE router z-loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cramlm.config import ModelConfig
from cramlm.models.layers import ffn_hidden


def uses_moe(cfg: ModelConfig, index: int) -> bool:
    """Block `index` gets a mixture of experts when experts are on and it is every `moe.every`-th block."""
    return cfg.moe.n_experts > 0 and (index + 1) % cfg.moe.every == 0


def capacity(n_tokens: int, cfg: ModelConfig) -> int:
    """Slots per expert: capacity_factor x the balanced share of the n_tokens x top_k assignments."""
    m = cfg.moe
    return max(1, math.ceil(m.capacity_factor * n_tokens * m.top_k / m.n_experts))


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        m = cfg.moe
        self.cfg = cfg
        self.gated = cfg.ffn != "gelu"
        self.act = F.silu if cfg.ffn == "swiglu" else F.gelu
        self.router = nn.Linear(cfg.d_model, m.n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(m.n_experts, cfg.d_model, cfg.d_ff))
        self.w_out = nn.Parameter(torch.empty(m.n_experts, ffn_hidden(cfg), cfg.d_model))
        self.drop = nn.Dropout(cfg.dropout)

    def experts(self, x: Tensor) -> Tensor:
        """x: (E, C, d) -> (E, C, d), expert e applied to row e."""
        h = torch.bmm(x, self.w_in)
        if self.gated:
            h, gate = h.chunk(2, dim=-1)
            h = self.act(h) * gate
        else:
            h = self.act(h)
        return torch.bmm(self.drop(h), self.w_out)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: (T, d) -> (top-k weights (T, k), expert ids (T, k), aux loss, assignments per expert (E,))."""
        m = self.cfg.moe
        logits = self.router(x).float()
        probs = logits.softmax(-1)
        weights, experts = probs.topk(m.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        flat = experts.reshape(-1)  # counted with index_add, not bincount: static shapes for torch.compile
        counts = torch.zeros(m.n_experts, dtype=torch.long, device=x.device).index_add_(0, flat, torch.ones_like(flat))
        balance = m.n_experts * (counts / flat.numel() * probs.mean(0)).sum()
        z = torch.logsumexp(logits, dim=-1).square().mean()
        return weights, experts, m.aux_loss_weight * balance + m.z_loss_weight * z, counts

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x: (..., d) -> (output like x, weighted aux loss, share of assignments per expert (E,))."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        T, E, k = x.shape[0], self.cfg.moe.n_experts, self.cfg.moe.top_k
        C = capacity(T, self.cfg)
        weights, experts, aux, counts = self.route(x)

        flat_expert = experts.reshape(-1)  # assignment a = token * k + j
        order = torch.argsort(flat_expert, stable=True)  # earlier tokens win a full expert's slots
        sorted_expert = flat_expert[order]
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(T * k, device=x.device) - starts[sorted_expert]
        kept = rank < C
        slot = torch.where(kept, sorted_expert * C + rank, E * C)  # E * C is the spare slot
        token = order // k

        buffer = x.new_zeros(E * C + 1, shape[-1]).index_copy(0, slot, x[token])
        out = self.experts(buffer[:-1].view(E, C, -1)).reshape(E * C, -1)
        out = torch.cat([out, out.new_zeros(1, out.shape[-1])])
        gate = (weights.reshape(-1)[order] * kept).to(x.dtype)
        y = x.new_zeros(x.shape).index_add(0, token, out[slot] * gate[:, None])
        return y.view(shape), aux, counts / (T * k)
