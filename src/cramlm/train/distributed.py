"""Scale out on PyTorch's own engine: one process per device, started by `torchrun`.

`Distributed.from_env(cfg)` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...) and joins
the process group (nccl on GPU, gloo on CPU); without those variables it is a plain single process and every
method below is a no-op, so the trainer has one code path. `wrap` applies `train.strategy`:

- `ddp`: DistributedDataParallel; gradient accumulation skips the all-reduce of all but the last micro-batch.
- `zero1`: DDP plus `ZeroRedundancyOptimizer`: each rank keeps the Adam moments of 1/N of the parameters.
- `fsdp`: FSDP2 `fully_shard` on every block, then the root. `reshard_after_forward` true frees the gathered
  parameters after each block's forward (ZeRO-3), false keeps them until backward (ZeRO-2, less communication).
  Mixed precision keeps fp32 master weights and reduces in fp32; `cpu_offload` keeps shards and Adam on the host.
- `tp`: Megatron-style tensor parallelism: QKV and the feed-forward input are split by columns, the attention and
  feed-forward outputs by rows, so each block needs one all-reduce forward and one backward.
- `fsdp+tp`: the two on a 2-D mesh (dp x tp): TP inside a node, FSDP across.
- `deepspeed`: DeepSpeed's engine and ZeRO instead (`train/deepspeed_strategy.py`, optional extra).

Every rank builds the same model from the same seed; the global batch is split over the data-parallel ranks, so
the optimizer sees the same batch whatever the world size. Decisions that depend on a clock (stop, checkpoint,
validate) are made by rank 0 and broadcast (`agree`), so that no rank runs past the budget or waits forever in a
collective the others skipped. `DistributedStrategy` plugs all this into the trainer. Checkpoints are sharded
(`checkpoint.write_state`: each rank writes its own shards), so any world size and strategy resumes them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.distributed.tensor.placement_types import _StridedShard

from cramlm.errors import CramlmError
from cramlm.models import mup
from cramlm.train.optim import build_optimizer, check_optimizer, model_config, param_groups
from cramlm.train.sparsity import check_strategy
from cramlm.train.trainer import Strategy

STRATEGIES = ("single", "ddp", "zero1", "fsdp", "tp", "fsdp+tp", "deepspeed")


def torchrun_env() -> bool:
    """True inside a process started by torchrun (or any launcher that sets the same variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def process_group_backend(device: torch.device, cfg: Any) -> str:
    """nccl on GPUs, gloo on CPUs; FSDP with CPU offload keeps gradient shards on the host, whose collectives
    (the gradient norm) need gloo next to nccl. `cfg` is a TrainConfig."""
    if device.type != "cuda":
        return "gloo"
    offload = cfg.strategy in ("fsdp", "fsdp+tp") and cfg.fsdp.cpu_offload
    return "cuda:nccl,cpu:gloo" if offload else "nccl"


def pick_device(name: str, local_rank: int) -> torch.device:
    """`auto` is this process's GPU (by LOCAL_RANK) when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_strategy(strategy: str, world_size: int, tp_size: int) -> str:
    """`auto` is DDP on several processes (TP when `tp_size` > 1); one process is always `single`."""
    if world_size == 1:
        return "single"
    if strategy == "auto":
        strategy = "ddp" if tp_size == 1 else ("tp" if tp_size == world_size else "fsdp+tp")
    if strategy == "deepspeed" and tp_size > 1:
        raise CramlmError("train.strategy=deepspeed is data parallel (ZeRO): set train.tp_size=1")
    if strategy in ("tp", "fsdp+tp"):
        tp = world_size if strategy == "tp" else tp_size
        if tp < 2 or world_size % tp:
            raise CramlmError(f"train.strategy={strategy} needs train.tp_size >= 2 dividing the {world_size} "
                              f"processes (got tp_size={tp_size})")
    return strategy


@dataclass
class Distributed:
    """This process's place in the job: ranks, device, mesh and strategy."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    strategy: str = "single"
    tp_size: int = 1
    mesh: DeviceMesh | None = None  # 1-D ("dp",) or 2-D ("dp", "tp")
    fsdp: Any = None  # FSDPConfig
    precision: str = "fp32"
    _sync: bool = True  # False inside no_sync: gradients accumulate without being reduced

    # ------------------------------------------------------------------ setup

    @classmethod
    def from_env(cls, cfg: Any) -> "Distributed":
        """Join the torchrun job described by the environment, or stay a single process. `cfg` is a TrainConfig."""
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = pick_device(cfg.device, local_rank)
        if not torchrun_env():
            return cls(device=device, fsdp=cfg.fsdp, precision=cfg.precision)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(process_group_backend(device, cfg), timeout=datetime.timedelta(minutes=10),
                                    device_id=device if device.type == "cuda" else None)
        world = dist.get_world_size()
        strategy = resolve_strategy(cfg.strategy, world, cfg.tp_size)
        tp = {"tp": world, "fsdp+tp": cfg.tp_size}.get(strategy, 1)
        mesh = None
        if world > 1:
            dims, names = ((world // tp, tp), ("dp", "tp")) if tp > 1 else ((world,), ("dp",))
            mesh = init_device_mesh(device.type, dims, mesh_dim_names=names)
        return cls(rank=dist.get_rank(), world_size=world, local_rank=local_rank, device=device,
                   strategy=strategy, tp_size=tp, mesh=mesh, fsdp=cfg.fsdp, precision=cfg.precision)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_size(self) -> int:
        """Data-parallel ranks: the ones that read different data (TP ranks of one group read the same)."""
        return self.world_size // self.tp_size

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp_size

    # ------------------------------------------------------------------ model and optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device and apply the strategy; returns the module to train."""
        model.to(self.device)
        s = self.strategy
        if s == "single":
            return model
        if s in ("ddp", "zero1"):
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        if s in ("tp", "fsdp+tp"):
            apply_tensor_parallel(model, self.mesh["tp"])
        if s in ("fsdp", "fsdp+tp"):
            for p in apply_fsdp(model, self.mesh["dp"], self.fsdp, self.device, self.precision):
                p.register_post_accumulate_grad_hook(self._average_replicated_grad)
        return model

    def _average_replicated_grad(self, param: nn.Parameter) -> None:
        """FSDP leaves scalar parameters alone: average their gradient over the data-parallel ranks ourselves,
        once per optimizer step (on the micro-batch that synchronises)."""
        if self._sync:
            dist.all_reduce(param.grad, group=self.mesh["dp"].get_group())
            param.grad.div_(self.dp_size)

    def optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        """`cfg.optimizer` (Muon + AdamW or AdamW) where ranks hold whole matrices, else AdamW (sharded by ZeRO-1
        under `zero1`); `cfg` is a TrainConfig whose optimizer the autopilot resolved."""
        if self.strategy in ("single", "ddp"):
            return build_optimizer(model, cfg)
        groups = param_groups(model, cfg.weight_decay, cfg.decay_norms_and_biases,
                              mup.lr_multipliers(model, model_config(model)))
        hyper = {"lr": cfg.lr, "betas": tuple(cfg.betas), "eps": cfg.eps}
        if self.strategy == "zero1":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            zero = ZeroRedundancyOptimizer(groups[0]["params"], optimizer_class=torch.optim.AdamW, foreach=True,
                                           weight_decay=groups[0]["weight_decay"], **hyper)
            zero.param_groups[0].update(lr_mult=groups[0]["lr_mult"], muon=groups[0]["muon"])  # synced below
            for group in groups[1:]:
                zero.add_param_group(group)
            return zero
        # Multi-tensor kernels cannot mix sharded (DTensor) and plain tensors: give each kind its own group.
        split = [{**g, "params": [p for p in g["params"] if isinstance(p, DTensor) == sharded]}
                 for g in groups for sharded in (True, False)]
        fused = self.device.type == "cuda"
        return torch.optim.AdamW([g for g in split if g["params"]], fused=fused or None,
                                 foreach=None if fused else True, **hyper)

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module) -> Iterator[None]:
        """Context for a micro-batch whose gradients are only accumulated; the next one outside it synchronises.

        DDP (and ZeRO-1) skip the all-reduce; FSDP2 ZeRO-2 keeps unsharded gradients until the last micro-batch.
        ZeRO-3 reduce-scatters every micro-batch: holding unsharded gradients would undo its memory saving.
        """
        zero2 = self.strategy in ("fsdp", "fsdp+tp") and not self.fsdp.reshard_after_forward
        self._sync = False
        if zero2:
            model.set_requires_gradient_sync(False)
        try:
            with model.no_sync() if hasattr(model, "no_sync") else contextlib.nullcontext():
                yield
        finally:
            self._sync = True
            if zero2:
                model.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------ collectives

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Rank 0's flags on every rank: one small broadcast, so clock-based decisions cannot diverge."""
        if self.world_size == 1:
            return tuple(bool(f) for f in flags)
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.uint8, device=self.device)
        dist.broadcast(t, src=0)
        return tuple(bool(v) for v in t.tolist())

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """Average a tensor of logged values over all ranks (tensor-parallel ranks hold equal values, so this is
        the data-parallel mean); every rank gets the result."""
        if self.world_size == 1:
            return values
        values = values.detach().to(self.device, torch.float32).clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def share(self, obj: Any) -> Any:
        """Rank 0's Python object on every rank (a run name, anything decided once)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

# ---------------------------------------------------------------------- strategies


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, cfg: Any, device: torch.device,
               precision: str) -> list[nn.Parameter]:
    """FSDP2: shard each block, then the root (embeddings, head), which gathers the rest once per step.

    Returns the scalar parameters, which FSDP cannot shard and leaves replicated (their gradients are the
    caller's to average)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    scalars = [p for p in model.parameters() if p.ndim == 0]
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": cfg.reshard_after_forward,
                              "ignored_params": set(scalars)}
    from cramlm.train.cuda import has_native_bf16

    native = precision == "bf16" or (precision == "auto" and has_native_bf16(device))  # not emulated bf16
    if cfg.mixed_precision and device.type == "cuda" and native:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    for block in model.blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return scalars


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Megatron column/row split of every dense block; each rank computes n_heads / tp heads.

    Fused projections (QKV, the gated feed-forward's value and gate) are split per part, so that each rank holds
    matching slices of q, k and v (of value and gate) and the model's `chunk` sees its own parts.
    """
    from cramlm.models.layers import FeedForward

    tp = mesh.size()
    for block in model.blocks:
        attn = block.attn
        if attn.n_heads % tp:
            raise CramlmError(f"tensor parallel over {tp} ranks needs n_heads divisible by {tp} "
                              f"(got {attn.n_heads})")
        plan: dict[str, Any] = {"attn.qkv": FusedColwise(3), "attn.out": RowwiseParallel()}
        if isinstance(block.ffn, FeedForward):  # MoE experts stay replicated
            plan["ffn.inp"] = FusedColwise(2 if block.ffn.gated else 1)
            plan["ffn.out"] = RowwiseParallel()
        parallelize_module(block, mesh, plan)
        attn.n_heads //= tp


class FusedColwise(ColwiseParallel):
    """Column parallel for a Linear whose output concatenates `parts` equal parts (q|k|v, value|gate): each rank
    keeps its slice of every part (a strided shard), so the global tensor, and every checkpoint of it, keeps the
    model's layout."""

    def __init__(self, parts: int):
        super().__init__()
        self.parts = parts

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        placement = Shard(0) if self.parts == 1 else _StridedShard(0, split_factor=self.parts)
        for pname, param in list(module.named_parameters(recurse=False)):
            sharded = nn.Parameter(distribute_tensor(param, device_mesh, [placement]),
                                   requires_grad=param.requires_grad)
            module.register_parameter(pname, sharded)

    @staticmethod
    def _prepare_output_fn(output_layouts: Any, use_local_output: bool, mod: nn.Module, outputs: DTensor,
                           device_mesh: DeviceMesh) -> Any:
        """Keep the strided layout the matmul produced (each rank's own parts); the default would redistribute
        it to a contiguous split, which mixes q with k."""
        return outputs.to_local() if use_local_output else outputs


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """Global L2 norm of the gradients, whatever mix of sharded (DTensor) and plain gradients the strategy left.

    Each rank sums the squares of its local pieces; the partial sums of the gradients sharded alike (same mesh,
    same sharded mesh dims) are summed over those dims in one all-reduce, not one per parameter. Replicated
    gradients (plain tensors, replicated mesh dims) are counted once."""
    from torch.distributed.tensor import Partial, Replicate

    plain: list[torch.Tensor] = []
    sharded: dict[tuple[Any, tuple[bool, ...]], list[torch.Tensor]] = {}
    for p in model.parameters():
        if p.grad is None:
            continue
        if isinstance(p.grad, DTensor):
            key = (p.grad.device_mesh, tuple(pl.is_shard() for pl in p.grad.placements))
            sharded.setdefault(key, []).append(p.grad.to_local().float().pow(2).sum())
        else:
            plain.append(p.grad.float().pow(2).sum())
    device = next((t.device for t in plain), None)
    total = [torch.stack(plain).sum()] if plain else []
    for (mesh, is_shard), parts in sharded.items():
        local = torch.stack([t.to(parts[0].device) for t in parts]).sum()
        placements = [Partial() if s else Replicate() for s in is_shard]
        summed = DTensor.from_local(local, mesh, placements, run_check=False).full_tensor()
        device = device or summed.device
        total.append(summed)
    return torch.stack([t.to(device) for t in total]).sum().sqrt()


def clip_gradients(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale gradients to a global norm of at most `max_norm` (0 = off); returns the norm before clipping."""
    total = gradient_norm(model)
    if max_norm > 0:
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in model.parameters():
            if p.grad is not None:
                g = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
                g.mul_(coef.to(g.device))
    return total


# ---------------------------------------------------------------------- the trainer's hooks


class DistributedStrategy(Strategy):
    """`trainer.Strategy` for a torchrun job. `rank` and `world_size` are the data-parallel ones (what the loader
    and the batch arithmetic need: tensor-parallel ranks of one group read the same data); `is_main` is global
    rank 0."""

    def __init__(self, d: Distributed, cfg: Any):
        if cfg.batch_ramp == "auto" and d.strategy not in ("single", "ddp", "zero1"):
            raise CramlmError(f"train.batch_ramp=auto reads one rank's whole micro-batch gradient, which "
                              f"{d.strategy} shards: use ddp or zero1, or batch_ramp=linear")
        check_optimizer(cfg.optimizer, d.strategy)  # `auto` resolves to what the strategy runs
        check_strategy(d.strategy, cfg)
        super().__init__(d.device)
        self.dist = d
        self.name = d.strategy
        self.rank, self.world_size = d.dp_rank, d.dp_size
        self.devices = d.world_size
        self.whole_gradients = d.strategy in ("single", "ddp", "zero1")

    @classmethod
    def from_env(cls, cfg: Any) -> "DistributedStrategy":
        """From a TrainConfig, inside torchrun (DeepSpeed's engine for train.strategy=deepspeed)."""
        d = Distributed.from_env(cfg)
        if d.strategy == "deepspeed":
            from cramlm.train.deepspeed_strategy import DeepSpeedStrategy

            return DeepSpeedStrategy(d, cfg)
        return cls(d, cfg)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.dist.wrap(model)

    def build_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        return self.dist.optimizer(model, cfg)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        return self.dist.no_sync(model)

    def clip(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return clip_gradients(model, max_norm)

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        return self.dist.agree(*flags)

    def average(self, values: torch.Tensor) -> torch.Tensor:
        return self.dist.mean(values)

    def share(self, obj: Any) -> Any:
        return self.dist.share(obj)


def torchrun_command(nproc: int, args: list[str]) -> list[str]:
    """The torchrun line that runs `cramlm train ARGS` as `nproc` processes on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "cramlm.train", *args]
