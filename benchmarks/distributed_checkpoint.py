"""Sharded checkpoints (what the trainer writes) against gathering the full state on rank 0 and saving it there
(what it wrote before), for each strategy, measured in one torchrun job.

    torchrun --standalone --nproc-per-node 2 benchmarks/distributed_checkpoint.py [--model tiny] [--repeats 3]

Per strategy: seconds to save (best of the repeats), the bytes the busiest rank writes, and the seconds for every
rank to load the sharded checkpoint back into its own shards. The model and Adam state come from one optimizer step.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from cramlm.config import ModelConfig, TrainConfig, load_preset
from cramlm.models.registry import build_model
from cramlm.train import checkpoint as ckpt
from cramlm.train.distributed import Distributed

RUNS = {"ddp": ("ddp", True), "zero1": ("zero1", True), "zero3": ("fsdp", True), "tp": ("tp", True)}


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mcfg = ModelConfig(**load_preset("model", args.model)["model"])
    root = None
    rows = []
    for name, (strategy, reshard) in RUNS.items():
        cfg = TrainConfig(device="cpu", strategy=strategy, tp_size=2 if strategy == "tp" else 1, optimizer="adamw",
                          fsdp={"reshard_after_forward": reshard, "mixed_precision": False})
        d = Distributed.from_env(cfg)
        if root is None:
            root = Path(d.share(tempfile.mkdtemp(prefix="ckpt-bench-") if d.is_main else None))
        torch.manual_seed(0)
        model = d.wrap(build_model(mcfg))
        opt = d.optimizer(model, cfg)
        ids = torch.randint(5, mcfg.vocab_size, (2, mcfg.max_seq_len))
        pos = torch.arange(0, mcfg.max_seq_len, 7).expand(2, -1)
        labels = torch.full_like(ids, -100).scatter(1, pos, ids.gather(1, pos))
        model(input_ids=ids, labels=labels, mask_positions=pos).loss.backward()
        opt.step()
        sharded = root / f"{name}-sharded"

        def save_sharded() -> None:
            if d.is_main:
                shutil.rmtree(sharded, ignore_errors=True)
            dist.barrier()
            ckpt.write_state(sharded, model, opt)

        def save_gathered() -> None:
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            module = getattr(model, "module", model)
            if strategy == "zero1":
                opt.consolidate_state_dict(to=0)
                state = {"model": get_model_state_dict(module, options=options),
                         "optim": opt.state_dict() if d.is_main else {}}
            else:
                state = {"model": get_model_state_dict(module, options=options),
                         "optim": get_optimizer_state_dict(module, opt, options=options)}
            if d.is_main:
                torch.save(state, root / f"{name}-gathered.pt")

        t_sharded = best(save_sharded, args.repeats)
        t_gathered = best(save_gathered, args.repeats)
        t_load = best(lambda: ckpt.read_state(sharded, model, opt), args.repeats)
        files = [p.stat().st_size for p in sharded.glob("*.distcp")]
        if d.is_main:
            rows.append((name, t_sharded, max(files) / 1e6, t_gathered, (root / f"{name}-gathered.pt").stat().st_size
                         / 1e6, t_load))
    if d.is_main:
        n = sum(p.numel() for p in build_model(mcfg).parameters())
        print(f"{args.model}: {n / 1e6:.2f}M parameters, {d.world_size} ranks, fp32 weights + Adam")
        print(f"{'strategy':9} {'sharded s':>9} {'MB/rank':>8} {'gathered s':>10} {'MB rank0':>9} {'ratio s':>7} "
              f"{'load s':>7}")
        for name, ts, mb, tg, mbg, tl in rows:
            print(f"{name:9} {ts:9.3f} {mb:8.1f} {tg:10.3f} {mbg:9.1f} {tg / ts:7.2f} {tl:7.3f}")
        shutil.rmtree(root, ignore_errors=True)
    d.close()


if __name__ == "__main__":
    main()
