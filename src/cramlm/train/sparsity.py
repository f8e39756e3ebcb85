"""SWAT in a run: which matrices go sparse, when (a dense warm-up, then the target sparsity), and the training
FLOPs a sparse accelerator would execute next to the dense FLOPs the hardware runs.

Masks are recomputed from the weights, so a checkpoint needs only the schedule's clock (the budget's progress,
restored with the budget) and the counted FLOPs so far: a resumed run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cramlm.budget.flops import forward_flops_per_token
from cramlm.config import ModelConfig, RunConfig, SparsityConfig
from cramlm.errors import CramlmError
from cramlm.models.sparse import SwatLinear, keep_count, mask_2_4, topk_mask

SHARDED = ("fsdp", "tp", "fsdp+tp")  # strategies that split weight matrices across ranks


def check_strategy(strategy: str, train_cfg: Any) -> None:
    """SWAT's top-K ranks a whole matrix: refuse the strategies that hold only a shard of it on each rank."""
    if train_cfg.sparsity.method == "none":
        return
    if strategy in SHARDED or (strategy == "deepspeed" and train_cfg.deepspeed.stage == 3):
        raise CramlmError(f"train.sparsity.method=swat ranks whole weight matrices, which train.strategy={strategy}"
                          " shards across ranks: use ddp, zero1 or deepspeed stage 1-2")


def targets(model: nn.Module, layers: list[str]) -> list[tuple[str, nn.Linear]]:
    """The blocks' linear layers named by `layers` (attn.qkv, ...); MoE experts are not nn.Linear and stay dense."""
    found = []
    for i, block in enumerate(getattr(model, "blocks", [])):
        for name in layers:
            part, leaf = name.split(".")
            layer = getattr(getattr(block, part, None), leaf, None)
            if isinstance(layer, nn.Linear):
                found.append((f"blocks.{i}.{name}", layer))
    return found


def weight_density(layer: nn.Linear, sp: SparsityConfig) -> float:
    """Share of a weight matrix the sparse forward keeps (exact k, as `topk_mask` keeps it)."""
    if sp.semi_structured_2_4:
        return 0.5
    out, inp = layer.weight.shape
    if sp.granularity == "row":
        return keep_count(inp, sp.weights) / inp
    return keep_count(out * inp, sp.weights) / (out * inp)


def _check_two_four(modules: list[tuple[str, nn.Linear]], device: torch.device, precision: str) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 8:
        raise CramlmError("train.sparsity.semi_structured_2_4 needs an Ampere-or-newer CUDA GPU (sparse tensor "
                          f"cores); this run is on {device}")
    if precision not in ("bf16", "fp16"):
        raise CramlmError("train.sparsity.semi_structured_2_4 runs in half precision: set train.precision=bf16")
    for name, layer in modules:
        if any(d % 64 for d in layer.weight.shape):
            raise CramlmError(f"train.sparsity.semi_structured_2_4: {name} is {tuple(layer.weight.shape)}; 2:4 "
                              "tensors need both sides divisible by 64")


class Swat:
    """The run's SWAT state: the sparsified layers, the schedule, and the counted FLOPs."""

    def __init__(self, modules: list[tuple[str, SwatLinear]], sp: SparsityConfig, model_cfg: ModelConfig,
                 seq_len: int, mask_rate: float | None):
        self.modules, self.sp = modules, sp
        self.active = False
        forward = forward_flops_per_token(model_cfg, seq_len, mask_rate)
        linear = sum(2.0 * m.weight.numel() for _, m in modules)
        kept_w = sum(2.0 * m.weight.numel() * weight_density(m, sp) for _, m in modules)
        kept_a = sum(2.0 * m.weight.numel() * self._activation_density(m) for _, m in modules)
        self.dense_per_token = (forward, 2.0 * forward)
        # forward with sparse weights; backward: input gradient with sparse weights, weight gradient with sparse
        # activations; everything else (attention scores, norms' matmul-free work, embeddings, heads) stays dense
        self.sparse_per_token = (forward - linear + kept_w, 2.0 * (forward - linear) + kept_w + kept_a)
        self.counted = [0.0, 0.0]  # forward, backward
        self.tokens = 0  # tokens counted so far

    def _activation_density(self, layer: nn.Linear) -> float:
        inp = layer.weight.shape[1]
        return keep_count(inp, self.sp.activations) / inp if self.sp.granularity == "row" \
            else 1.0 - self.sp.activations

    def _count(self, tokens: int) -> None:
        """Count the tokens trained since the last call at the phase they ran in."""
        per_token = self.sparse_per_token if self.active else self.dense_per_token
        for i in (0, 1):
            self.counted[i] += (tokens - self.tokens) * per_token[i]
        self.tokens = tokens

    def _set_active(self, active: bool) -> None:
        self.active = active
        for _, m in self.modules:
            m.active = active
            m._cache_key = None  # recompute the weight masks: the weights may have changed

    def update(self, progress: float, tokens: int) -> None:
        """At the start of a step (`tokens` trained so far): count the last step, then set the phase for
        `progress` (dense before `warmup`, the target sparsity from then on)."""
        self._count(tokens)
        self._set_active(progress >= self.sp.warmup)

    def state_dict(self) -> dict[str, Any]:
        return {"counted": list(self.counted), "tokens": self.tokens, "active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counted, self.tokens = list(state["counted"]), int(state["tokens"])
        self._set_active(bool(state["active"]))

    def summary(self, tokens: int) -> dict[str, Any]:
        """What `results/train.json` records: the counted (sparse-accelerator) and dense model FLOPs."""
        self._count(tokens)
        dense = [tokens * f for f in self.dense_per_token]
        sp = self.sp
        return {
            "method": sp.method, "weights": 0.5 if sp.semi_structured_2_4 else sp.weights,
            "activations": sp.activations, "granularity": "2:4" if sp.semi_structured_2_4 else sp.granularity,
            "warmup": sp.warmup, "layers": len(self.modules), "export": sp.export,
            "dense_forward_flops": dense[0], "dense_backward_flops": dense[1], "dense_flops": sum(dense),
            "sparse_forward_flops": self.counted[0], "sparse_backward_flops": self.counted[1],
            "sparse_flops": sum(self.counted),
            "flops_saved": 1.0 - sum(self.counted) / sum(dense) if tokens else 0.0,
        }


def attach(model: nn.Module, cfg: RunConfig, seq_len: int, mask_rate: float | None,
           device: torch.device, precision: str) -> Swat | None:
    """Turn the chosen layers of a built model into SWAT layers; None (the model untouched) for method=none."""
    sp = cfg.train.sparsity
    if sp.method == "none":
        return None
    found = targets(model, sp.layers)
    if not found:
        raise CramlmError(f"train.sparsity.layers={sp.layers} names no linear layer of this model (mixture-of-"
                          "experts feed-forwards are already sparse and stay as they are)")
    if sp.semi_structured_2_4:
        _check_two_four(found, device, precision)
    modules = [(name, SwatLinear.sparsify(layer, sp.weights, sp.activations, sp.granularity,
                                          sp.semi_structured_2_4)) for name, layer in found]
    return Swat(modules, sp, cfg.model, seq_len, mask_rate)


@torch.no_grad()
def apply_final_masks(model: nn.Module, cfg: RunConfig) -> int:
    """Zero, in place, what the final sparse forward leaves out (a run with export=masked); returns the number of
    matrices masked. The weights of a dense run, or of export=dense, are left as they are."""
    sp = cfg.train.sparsity
    if sp.method == "none" or sp.export != "masked":
        return 0
    found = targets(model, sp.layers)
    for _, layer in found:
        w = layer.weight
        w.mul_(mask_2_4(w) if sp.semi_structured_2_4 else topk_mask(w, sp.weights, sp.granularity))
    return len(found)
