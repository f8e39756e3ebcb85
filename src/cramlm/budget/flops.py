"""Exact training FLOPs per token and parameter counts for any `ModelConfig`.

One function feeds the trainer's MFU and the planner, so it counts what the kernels execute: every matmul (2 FLOPs
per multiply-add), attention scores and values over the full sequence (also for causal models, as FlopCounterMode
and the PaLM MFU convention count them), the MLM head only on the masked positions when the head is sparse, and
for a mixture of experts the router plus the expert capacity actually run (capacity_factor x top_k expert FFNs
per token, not all experts). Norms, activations and softmax are left out, as FlopCounterMode leaves them out.
Backward costs twice the forward.
"""

from __future__ import annotations

import torch

from cramlm.config import ModelConfig


def _ffn_flops(cfg: ModelConfig) -> float:
    from cramlm.models.layers import ffn_hidden

    return 2.0 * cfg.d_model * cfg.d_ff + 2.0 * ffn_hidden(cfg) * cfg.d_model


def head_fraction(cfg: ModelConfig, seq_len: int, mask_rate: float | None) -> float:
    """Share of positions that go through the LM head: round(mask_rate * L) / L for a sparse MLM head."""
    if cfg.arch == "encoder" and cfg.sparse_head and mask_rate is not None:
        return max(1, round(mask_rate * seq_len)) / seq_len
    return 1.0


def forward_flops_per_token(cfg: ModelConfig, seq_len: int, mask_rate: float | None = None) -> float:
    from cramlm.models.moe import uses_moe

    d = cfg.d_model
    total = 0.0
    for i in range(cfg.n_layers):
        total += 8.0 * d * d + 4.0 * seq_len * d  # QKV + output projections; scores + weighted values
        if uses_moe(cfg, i):
            m = cfg.moe
            total += 2.0 * d * m.n_experts + m.capacity_factor * m.top_k * _ffn_flops(cfg)
        else:
            total += _ffn_flops(cfg)
    head = 2.0 * d * cfg.vocab_size
    if cfg.arch == "encoder" and cfg.head_transform:
        head += 2.0 * d * d
    return total + head_fraction(cfg, seq_len, mask_rate) * head


def flops_per_token(cfg: ModelConfig, seq_len: int, mask_rate: float | None = None) -> float:
    """Forward + backward training FLOPs per token at `seq_len`. `mask_rate` (encoder with a sparse head): the
    share of positions projected to the vocabulary; None means every position (dense head, evaluation)."""
    return 3.0 * forward_flops_per_token(cfg, seq_len, mask_rate)


def optimizer_flops_per_step(cfg: ModelConfig, optimizer: str, ns_steps: int = 5) -> float:
    """Matmul FLOPs the optimizer adds to each step: none for AdamW (elementwise); for Muon, `ns_steps`
    Newton-Schulz iterations on every hidden matrix. Counted once per optimizer step, whatever the batch."""
    if optimizer != "muon":
        return 0.0
    return sum(newton_schulz_flops(shape, ns_steps) for shape in muon_matrix_shapes(cfg))


def newton_schulz_flops(shape: tuple[int, ...], ns_steps: int = 5) -> float:
    """`ns_steps` iterations on an m x n matrix (m <= n): X X^T (2 m^2 n), the polynomial in it (2 m^3) and its
    product with X (2 m^2 n)."""
    m, n = sorted(shape)
    return ns_steps * (4.0 * m * m * n + 2.0 * m**3)


def muon_matrix_shapes(cfg: ModelConfig) -> list[tuple[int, ...]]:
    """The shapes of the matrices Muon updates in a model of `cfg` (built on the meta device: no memory)."""
    from cramlm.models.registry import build_model
    from cramlm.train.optim import muon_ids

    with torch.device("meta"):
        model = build_model(cfg)
    ids = muon_ids(model)
    return [tuple(p.shape) for p in model.parameters() if id(p) in ids]


def param_counts(cfg: ModelConfig) -> dict[str, int]:
    """`total` (tied weights once), `active` (per token: top_k of n_experts), `embedding` (token and position
    tables, plus an untied output projection) and `non_embedding` = total - embedding."""
    from cramlm.models.moe import MoE
    from cramlm.models.registry import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.tok.weight.numel()
    if model.embed.pos is not None:
        embedding += sum(p.numel() for p in model.embed.pos.parameters())
    out = model.decoder if cfg.arch == "encoder" else model.head
    if out.weight is not model.embed.tok.weight:
        embedding += out.weight.numel()
    inactive = 0
    for mod in model.modules():
        if isinstance(mod, MoE):
            per_expert = (mod.w_in.numel() + mod.w_out.numel()) // cfg.moe.n_experts
            inactive += (cfg.moe.n_experts - cfg.moe.top_k) * per_expert
    return {"total": total, "active": total - inactive, "embedding": embedding, "non_embedding": total - embedding}
