"""AdamW with decoupled weight decay on matrices only, and global-norm gradient clipping.

Norm gains, biases and embeddings are not decayed by default: decaying them pulls scales and rare-token vectors
toward zero for no regularisation benefit. The fused kernel (one launch for all tensors) is used where the device
has it; it also lets a non-finite step be skipped on the device, without waiting for the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, decay_norms_and_biases: bool = False) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group (weight matrices) and an undecayed one."""
    no_decay: set[int] = set()
    if not decay_norms_and_biases:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                no_decay.add(id(module.weight))
        for p in model.parameters():
            if p.ndim < 2:  # norm gains and biases
                no_decay.add(id(p))
    decay, keep = [], []
    for p in model.parameters():  # parameters() yields a tied tensor once
        if p.requires_grad:
            (keep if id(p) in no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def fused_available(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu", "xpu", "mps")


def build_optimizer(model: nn.Module, cfg: Any, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `model` from a `TrainConfig` (lr, betas, eps, weight_decay, decay_norms_and_biases)."""
    device = next(model.parameters()).device
    if fused is None:
        fused = fused_available(device)
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay, cfg.decay_norms_and_biases),
        lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None, foreach=None if fused else True,
    )


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip to `max_norm` (0 = off) and return the global gradient norm as a device tensor (no sync)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params]))


def skip_if_nonfinite(optimizer: torch.optim.Optimizer, *values: torch.Tensor) -> torch.Tensor:
    """Arm the fused optimizer to skip its next step on the device if any of `values` (loss, gradient norm) is
    not finite.

    Returns the 0/1 "found inf" flag; a non-fused optimizer is left alone and the caller checks the flag on the
    host instead.
    """
    found_inf = (~torch.stack([torch.isfinite(v.float()).all() for v in values]).all()).float()
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = found_inf  # read by the fused AdamW kernel, which then leaves params and state alone
        optimizer.grad_scale = None
    return found_inf
