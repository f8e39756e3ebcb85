"""`train.strategy=deepspeed`: the same trainer driven by DeepSpeed's engine, for clusters that already run it.

The engine takes over what DeepSpeed does best: ZeRO partitioning (`train.deepspeed.stage` 1 = optimizer state,
2 = + gradients, 3 = + parameters), optional CPU offload, the gradient reduction and the clipped optimizer step.
The trainer keeps the rest: the budget, the LR schedule (written into the optimizer's groups before each step, as
for every strategy), the batch ramp, logging and checkpoint commits. Because the ramp changes the accumulation
from step to step, the engine runs in unmanaged accumulation: `backward` only accumulates, and each `step` is a
boundary, with the loss already divided by the trainer's accumulation.

Checkpoints hold DeepSpeed's own files (`deepspeed/` in `step-N/`: model states plus one optimizer partition per
rank) under the trainer's atomic commit and checksums; they resume on the same number of processes (DeepSpeed's
partitioning is tied to it). `final/` is consolidated from them by DeepSpeed's `zero_to_fp32` on rank 0.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cramlm.config import RunConfig
from cramlm.errors import CramlmError
from cramlm.models.registry import build_model
from cramlm.train import checkpoint as ckpt
from cramlm.train.distributed import Distributed, DistributedStrategy
from cramlm.models import mup
from cramlm.train.optim import param_groups
from cramlm.train.sparsity import apply_final_masks
from cramlm.train.trainer import resolve_precision

TAG = "deepspeed"  # the sub-directory of a checkpoint that holds DeepSpeed's files


def import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError:
        raise CramlmError("train.strategy=deepspeed needs DeepSpeed: pip install 'cramlm[deepspeed]'") from None
    return deepspeed


def deepspeed_config(cfg: Any, micro_batch_size: int) -> dict[str, Any]:
    """DeepSpeed's JSON config from a TrainConfig: ZeRO stage and offload, clipping; accumulation stays ours."""
    stage = cfg.deepspeed.stage
    zero: dict[str, Any] = {"stage": stage}
    if cfg.deepspeed.offload:
        zero["offload_optimizer"] = {"device": "cpu"}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,  # the trainer divides the loss by its own (ramped) accumulation
        "managed_gradient_accumulation": False,  # every engine.step() ends an optimizer step
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,  # our AdamW (decay groups, LR set by the schedule) also when offloaded
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


class DeepSpeedStrategy(DistributedStrategy):
    """`trainer.Strategy` whose model is a DeepSpeed engine around the module and our AdamW."""

    def __init__(self, d: Distributed, cfg: Any):
        if resolve_precision(cfg.precision, d.device) == "fp16":  # its loss scaling is not our GradScaler's
            raise CramlmError("train.strategy=deepspeed runs fp32 or bf16 (autocast): set train.precision=bf16 "
                              "or fp32")
        super().__init__(d, cfg)
        self.deepspeed = import_deepspeed()
        self.engine: Any = None

    def wrap(self, model: nn.Module) -> nn.Module:
        """The engine: it needs the optimizer at once, so it is built here and handed out by `build_optimizer`."""
        model.to(self.device)
        # DeepSpeed broadcasts each parameter viewed as bytes, which a 0-dim tensor cannot be: hold those (the
        # position scale) as 1-element vectors, which broadcast alike. `consolidate` restores the shapes.
        for p in model.parameters():
            if p.ndim == 0:
                p.data = p.data.reshape(1)
        t = self.train_cfg  # the trainer's resolved numbers (the config may say auto)
        groups = param_groups(model, t.weight_decay, t.decay_norms_and_biases, mup.lr_multipliers(model, model.cfg))
        optimizer = torch.optim.AdamW(groups, lr=t.lr,
                                      betas=tuple(t.betas), eps=t.eps, foreach=True)
        self.engine, *_ = self.deepspeed.initialize(model=model, optimizer=optimizer,
                                                    config=deepspeed_config(t, t.micro_batch_size))
        return self.engine

    def build_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        return self.engine.optimizer  # its param_groups are our AdamW's: the schedule sets the LR there

    def compile(self, model: nn.Module) -> nn.Module:
        self.engine.compile()
        return self.engine

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # unmanaged accumulation: the engine reduces at `step` (or per backward)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, loss: torch.Tensor,
             scaler: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine reduces, clips (`gradient_clipping`), steps and zeroes. A non-finite loss or gradient norm is
        counted as a bad step for the guards (which roll back), but DeepSpeed in fp32/bf16 does not skip it."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        grad_norm = torch.as_tensor(float("nan") if norm is None else norm, dtype=torch.float32).to(self.device)
        bad = ~(torch.isfinite(grad_norm) & torch.isfinite(loss.float()))
        return grad_norm, bad.float()

    def write_state(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.engine.save_checkpoint(str(path), tag=TAG, save_latest=False)
        self.dist.barrier()  # every rank's partition is on disk before rank 0 commits

    def read_state(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not (Path(path) / TAG).is_dir():
            raise CramlmError(f"{path} was not written by train.strategy=deepspeed: resume it with the strategy "
                              f"that wrote it")
        parts = len(list((Path(path) / TAG).glob("*optim_states.pt")))  # one ZeRO partition per rank
        if parts != self.dist.world_size:
            raise CramlmError(f"{path} holds DeepSpeed's optimizer state partitioned over {parts} processes: "
                              f"resume it on {parts} (this job has {self.dist.world_size})")
        loaded, _ = self.engine.load_checkpoint(str(path), tag=TAG, load_optimizer_states=True,
                                                load_lr_scheduler_states=False)
        if loaded is None:
            raise CramlmError(f"DeepSpeed could not load {path / TAG}")

    def consolidate(self, path: Path, run_dir: Path, cfg: RunConfig) -> None:
        """fp32 weights rebuilt from every rank's ZeRO partition, in the model's own shapes."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=TAG)
        with torch.device("meta"):
            module = build_model(cfg.model)
        module.to_empty(device="cpu")
        shapes = {k: v.shape for k, v in module.state_dict().items()}
        module.load_state_dict({k: v.reshape(shapes[k]) for k, v in state.items()})
        apply_final_masks(module, cfg)  # a sparse run's final/ holds the masked weights it asked for
        ckpt.save_final(run_dir, module.state_dict(), cfg)
