"""Config -> model: the one entry point the trainer, evaluation and export use."""

from __future__ import annotations

from torch import nn

from cramlm.config import ModelConfig
from cramlm.errors import CramlmError
from cramlm.models.decoder import Decoder
from cramlm.models.encoder import Encoder


def build_model(cfg: ModelConfig) -> nn.Module:
    """A freshly initialised `Encoder` (arch encoder) or `Decoder` (arch decoder)."""
    if cfg.ffn != "gelu" and cfg.d_ff % 2:
        raise CramlmError(f"model.d_ff={cfg.d_ff} must be even for a gated FFN ({cfg.ffn} splits it in two halves)")
    if cfg.moe.n_experts and cfg.moe.top_k > cfg.moe.n_experts:
        raise CramlmError(f"model.moe.top_k={cfg.moe.top_k} exceeds model.moe.n_experts={cfg.moe.n_experts}")
    return Encoder(cfg) if cfg.arch == "encoder" else Decoder(cfg)
