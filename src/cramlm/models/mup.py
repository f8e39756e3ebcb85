"""The maximal-update parametrization (muP, Yang et al. 2022, "Tensor Programs V"), so that what is tuned on a
narrow model still holds on a wide one.

Under the standard parametrization an Adam-type update moves every coordinate of a hidden layer's output by an
amount that grows with the width, so the best learning rate drifts down as the model widens. muP rescales three
things by the width ratio r = d_model / base_width (r = 1 at the base width):

- hidden matrices (every `nn.Linear` inside the trunk and the head transform, and the expert tensors of a mixture
  of experts): init std / sqrt(r) and learning rate / r; embeddings, norm gains, biases and the readout keep theirs;
- the attention logits: 1/d_head instead of 1/sqrt(d_head);
- the output logits: times 1/r (the readout sees a hidden state whose update grows with the width).

`cramlm export` folds the two multipliers into the weights (`fold_for_export`), so plain `transformers` gives the
same logits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cramlm.config import ModelConfig


def enabled(cfg: ModelConfig) -> bool:
    return cfg.parametrization == "mup"


def width_ratio(cfg: ModelConfig) -> float:
    """d_model / base_width under muP (base_width defaults to d_model), 1 under the standard parametrization."""
    return cfg.d_model / (cfg.base_width or cfg.d_model) if enabled(cfg) else 1.0


def attention_scale(cfg: ModelConfig) -> float | None:
    """The scale SDPA applies to q.k: None (its 1/sqrt(d_head)) unless muP asks for 1/d_head."""
    return 1.0 / (cfg.d_model // cfg.n_heads) if enabled(cfg) else None


def logit_multiplier(cfg: ModelConfig) -> float:
    return 1.0 / width_ratio(cfg)


def hidden_init_std(cfg: ModelConfig) -> float:
    return cfg.init_std / math.sqrt(width_ratio(cfg))


def is_readout(module: nn.Module) -> bool:
    """The layers that map hidden states to logits (LM head, classifier): marked where they are built."""
    return bool(getattr(module, "is_readout", False))


def hidden_matrices(model: nn.Module) -> list[Tensor]:
    """The width-by-width weights: every Linear weight but the readouts, and the expert tensors of MoE layers.
    Found by module type, so the list is the same on a wrapped (DDP, FSDP, compiled) model."""
    from cramlm.models.moe import MoE

    found: dict[int, Tensor] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and not is_readout(module):
            found[id(module.weight)] = module.weight
        elif isinstance(module, MoE):
            found[id(module.w_in)], found[id(module.w_out)] = module.w_in, module.w_out
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [p for key, p in found.items() if key not in embeddings]


def lr_multipliers(model: nn.Module, cfg: ModelConfig) -> dict[int, float]:
    """id(parameter) -> learning-rate multiplier: 1/r for hidden matrices under muP; absent means 1."""
    r = width_ratio(cfg)
    return {id(p): 1.0 / r for p in hidden_matrices(model)} if r != 1.0 else {}


@torch.no_grad()
def fold_for_export(state: dict[str, Tensor], cfg: ModelConfig, prefix: str = "") -> None:
    """Rewrite a muP state dict (in place) into standard-parametrization weights with the same logits: the query
    projection absorbs the attention scale (HF models use 1/sqrt(d_head); rotary commutes with a scalar), and the
    norm right before the readout absorbs the logit multiplier (so a tied embedding stays tied)."""
    if not enabled(cfg):
        return
    d_head = cfg.d_model // cfg.n_heads
    for i in range(cfg.n_layers):
        for name in (f"{prefix}blocks.{i}.attn.qkv.weight", f"{prefix}blocks.{i}.attn.qkv.bias"):
            if name in state:
                state[name] = state[name].clone()
                state[name][: cfg.d_model] *= math.sqrt(d_head) * attention_scale(cfg)
    if prefix:  # a classifier: its own head is standard, only the trunk was muP
        return
    # the export accepts only models with this norm (transformers' BERT and Llama both have it)
    norm = "transform.norm" if cfg.arch == "encoder" else "final_norm"
    m = logit_multiplier(cfg)
    for name in (f"{norm}.weight", f"{norm}.bias", "decoder.bias"):
        if name in state:
            state[name] = state[name] * m
