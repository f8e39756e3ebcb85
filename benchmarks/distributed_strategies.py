"""Bytes of model state each rank holds, and step time, for every distributed strategy, next to the planner's
ZeRO accounting (`cramlm.budget.memory`), measured in one torchrun job.

    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_strategies.py [--model tiny] [--steps 3]

On a CPU this runs gloo in fp32, where the planner's accounting is 4 + 4 + 8 bytes per parameter (weight,
gradient, Adam moments). State is that of the fullest rank, counted after an optimizer step, before the gradients are freed: FSDP2 reshards
after the backward, so its ZeRO-2 and ZeRO-3 hold the same state at that moment (they differ between forward and
backward).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from cramlm.budget.memory import model_state_bytes
from cramlm.config import ModelConfig, TrainConfig, load_preset
from cramlm.models.registry import build_model
from cramlm.train.distributed import Distributed, clip_gradients

RUNS = {"ddp": ("ddp", True), "zero1": ("zero1", True), "zero2": ("fsdp", False), "zero3": ("fsdp", True),
        "tp": ("tp", True)}


def local_bytes(t: torch.Tensor | None) -> int:
    if t is None:
        return 0
    t = t.to_local() if isinstance(t, DTensor) else t
    return t.numel() * t.element_size()


def state_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer) -> int:
    """Weights + gradients + optimizer state held by this rank (ZeRO-1 keeps its shard in `.optim`)."""
    params = list(model.parameters())
    total = sum(local_bytes(p) + local_bytes(p.grad) for p in params)
    state = getattr(opt, "optim", opt).state
    return total + sum(local_bytes(v) for s in state.values() for v in s.values() if isinstance(v, torch.Tensor)
                       and v.ndim > 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--micro", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mcfg = ModelConfig(**load_preset("model", args.model)["model"])
    seq = mcfg.max_seq_len
    rows = []
    for name, (strategy, reshard) in RUNS.items():
        cfg = TrainConfig(device="cpu", strategy=strategy, fsdp={"reshard_after_forward": reshard},
                          optimizer="adamw")  # Adam's state under every strategy
        d = Distributed.from_env(cfg)
        torch.manual_seed(0)
        model = d.wrap(build_model(mcfg))
        opt = d.optimizer(model, cfg)
        n_params = sum(p.numel() for p in build_model(mcfg).parameters())
        g = torch.Generator().manual_seed(d.dp_rank)
        ids = torch.randint(5, mcfg.vocab_size, (args.micro, seq), generator=g)
        batch = {"input_ids": ids, "labels": ids.clone()}
        times = []
        for _ in range(args.steps + 1):  # the first step warms up
            d.barrier()
            t0 = time.perf_counter()
            model(**batch).loss.backward()
            clip_gradients(model, 1.0)
            opt.step()
            held = state_bytes(model, opt)
            opt.zero_grad(set_to_none=True)
            d.barrier()
            times.append(time.perf_counter() - t0)
        plan = "zero1" if name == "zero1" else ("ddp" if name == "tp" else name)
        planned = model_state_bytes(n_params, plan, d.world_size, mixed_precision=False)
        most = torch.tensor(held, dtype=torch.float64)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)  # memory per device is the fullest rank's
        rows.append((name, int(most), planned, sorted(times[1:])[len(times[1:]) // 2]))
        del model, opt
    if d.is_main:
        print(f"{args.model}: {n_params / 1e6:.2f}M parameters, {d.world_size} ranks, micro-batch {args.micro}x{seq}")
        print(f"{'strategy':8} {'state MB/rank':>14} {'planner MB':>11} {'ratio':>6} {'vs ddp':>7} {'step s':>7}")
        ddp = rows[0][1]
        for name, held, planned, step in rows:
            print(f"{name:8} {held / 1e6:14.1f} {planned / 1e6:11.1f} {held / planned:6.2f} {held / ddp:7.2f} "
                  f"{step:7.3f}")
        print("(tp: the planner has no TP line; its column is the DDP figure)")
    d.close()


if __name__ == "__main__":
    main()
