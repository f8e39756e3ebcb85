"""AdamW (or Muon for the hidden matrices) with decoupled weight decay on matrices only, muP's per-group learning
rates, and global-norm gradient clipping.

Norm gains, biases and embeddings are not decayed by default: decaying them pulls scales and rare-token vectors
toward zero for no regularisation benefit. The fused kernel (one launch for all tensors) is used where the device
has it; it also lets a non-finite step be skipped on the device, without waiting for the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cramlm.errors import CramlmError
from cramlm.models import mup


def param_groups(
    model: nn.Module,
    weight_decay: float,
    decay_norms_and_biases: bool = False,
    lr_mults: dict[int, float] | None = None,
    muon: set[int] | None = None,
) -> list[dict[str, Any]]:
    """Split trainable parameters by weight decay (matrices decayed; norm gains, biases and embeddings not), by
    learning-rate multiplier (`lr_mults`: id -> multiplier, muP's hidden matrices) and by optimizer (`muon`: the
    ids Muon updates). Each group carries `lr_mult`, which the schedule multiplies into its LR, and `muon`."""
    no_decay: set[int] = set()
    if not decay_norms_and_biases:
        for module in model.modules():
            if isinstance(module, nn.Embedding):
                no_decay.add(id(module.weight))
        for p in model.parameters():
            if p.ndim < 2:  # norm gains and biases
                no_decay.add(id(p))
    lr_mults, muon = lr_mults or {}, muon or set()
    groups: dict[tuple[bool, float, bool], list[nn.Parameter]] = {}
    for p in model.parameters():  # parameters() yields a tied tensor once
        if p.requires_grad:
            key = (id(p) in muon, lr_mults.get(id(p), 1.0), id(p) not in no_decay)
            groups.setdefault(key, []).append(p)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0, "lr_mult": mult, "muon": is_muon}
            for (is_muon, mult, decayed), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][2]))]


# Strategies that keep whole matrices on every rank: the only ones PyTorch's Muon (plain tensors) can run under.
MUON_STRATEGIES = ("single", "ddp")


def resolve_optimizer(requested: str, strategy: str) -> str:
    """`train.optimizer` for a run under `strategy`: `auto` is Muon where it can run (it beat AdamW at equal
    wall-clock, BENCHMARKS.md "Muon vs AdamW"; the autopilot then checks that it pays on the device,
    `muon_cost.py`), AdamW where the strategy shards matrices; a choice is kept."""
    if requested != "auto":
        return requested
    return "muon" if strategy in MUON_STRATEGIES else "adamw"


def check_optimizer(optimizer: str, strategy: str, resumed: bool = False) -> None:
    """Muon under a strategy that shards matrices is a one-line error (`resumed`: the run recorded Muon)."""
    if optimizer == "muon" and strategy not in MUON_STRATEGIES:
        fix = ("resume it as one process or under train.strategy=ddp (a run keeps the optimizer it started with)"
               if resumed else "use train.strategy=ddp, or train.optimizer=adamw")
        raise CramlmError(f"train.optimizer=muon orthogonalises whole matrices, which {strategy} shards across "
                          f"ranks (PyTorch's Muon takes plain tensors): {fix}")


def fused_available(device: torch.device) -> bool:
    return device.type in ("cuda", "cpu", "xpu", "mps")


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon (orthogonalised momentum) on the hidden matrices and AdamW on everything else, as one optimizer: the
    schedule, the checkpoint (DCP) and the trainer see one `param_groups` list and one `state`, shared with the two
    torch optimizers that do the work. Muon's step is scaled to AdamW's update size (`match_rms_adamw`), so the
    same peak LR and weight decay fit both."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float], eps: float,
                 momentum: float = 0.95, ns_steps: int = 5):
        muon = [g for g in groups if g["muon"]]
        self.n_muon = len(muon)
        self.muon = torch.optim.Muon(muon, lr=lr, momentum=momentum, nesterov=True, ns_steps=ns_steps,
                                     adjust_lr_fn="match_rms_adamw") if muon else None
        self.adamw = torch.optim.AdamW([g for g in groups if not g["muon"]], lr=lr, betas=betas, eps=eps,
                                       foreach=True)
        inner = (self.muon.param_groups if self.muon else []) + self.adamw.param_groups
        super().__init__(inner, {"lr": lr})
        self._link()

    def _link(self) -> None:
        """Point the inner optimizers at this optimizer's groups and state (after a load replaced them)."""
        if self.muon is not None:
            self.muon.param_groups, self.muon.state = self.param_groups[: self.n_muon], self.state
        self.adamw.param_groups, self.adamw.state = self.param_groups[self.n_muon:], self.state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._link()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("MuonWithAdamW.step takes no closure")
        if self.muon is not None:
            self.muon.step()
        self.adamw.step()


def muon_ids(model: nn.Module) -> set[int]:
    """The parameters Muon updates: the 2-D hidden matrices (MoE expert tensors are 3-D and stay with AdamW)."""
    return {id(p) for p in mup.hidden_matrices(model) if p.ndim == 2}


def model_config(model: nn.Module) -> Any:
    """The `ModelConfig` of a model, through DDP / compile wrappers."""
    for module in model.modules():
        if hasattr(module, "cfg"):
            return module.cfg
    raise CramlmError("internal: model without a config")


def build_optimizer(model: nn.Module, cfg: Any, fused: bool | None = None) -> torch.optim.Optimizer:
    """AdamW (or Muon + AdamW, `cfg.optimizer`) over `model` from a `TrainConfig` (lr, betas, eps, weight_decay,
    decay_norms_and_biases), with muP's learning-rate multipliers where the model uses muP. The model holds whole
    matrices (one device or DDP), so `auto` is Muon."""
    mcfg = model_config(model)
    muon = muon_ids(model) if resolve_optimizer(cfg.optimizer, "single") == "muon" else None
    groups = param_groups(model, cfg.weight_decay, cfg.decay_norms_and_biases, mup.lr_multipliers(model, mcfg), muon)
    if muon:
        return MuonWithAdamW(groups, cfg.lr, tuple(cfg.betas), cfg.eps)
    device = next(model.parameters()).device
    if fused is None:
        fused = fused_available(device)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused or None,
                             foreach=None if fused else True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's LR into every group, times the group's multiplier (muP)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


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
