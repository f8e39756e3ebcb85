"""Two gloo processes on the CPU must train exactly like one process (ddp, zero1, fsdp ZeRO-2/3, tp), their
sharded checkpoints must resume at another world size, and a wall-clock budget must stop both ranks at the same
step; the real trainer must run, checkpoint (sharded) and resume on two ranks, and count its budget the same.

One torchrun launch does every check (each launch costs seconds of imports); this file is also the worker script
that launch runs.
"""

from __future__ import annotations

import contextlib
import json
import time
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cramlm.config import ModelConfig, TrainConfig
from cramlm.models.registry import build_model
from cramlm.train import checkpoint as ckpt
from cramlm.train.logging import read_metrics
from cramlm.train.budget import Budget
from cramlm.train.distributed import Distributed, clip_gradients, resolve_strategy
from cramlm.units import parse_quantity

STEPS = 5
GLOBAL_BATCH = 4  # sequences per optimizer step, split over the ranks
MICRO = 1  # sequences per forward: two micro-batches per rank exercise accumulation without sync
SEQ, MASKED, VOCAB = 16, 4, 64
# name -> (strategy, fsdp.reshard_after_forward)
RUNS = {"ddp": ("ddp", True), "zero1": ("zero1", True), "zero3": ("fsdp", True), "zero2": ("fsdp", False),
        "tp": ("tp", True), "fsdp+tp": ("fsdp+tp", True)}  # fsdp+tp: a 1 x 2 mesh on two processes


def model_config() -> ModelConfig:
    return ModelConfig(n_layers=2, d_model=32, n_heads=4, d_ff=48, vocab_size=VOCAB, max_seq_len=SEQ, ffn="geglu")


def train_config(strategy: str = "single", reshard: bool = True) -> TrainConfig:
    return TrainConfig(lr=1e-2, eps=1e-8, weight_decay=0.01, grad_clip=0.5, device="cpu", strategy=strategy,
                       tp_size=2 if "tp" in strategy else 1, optimizer="adamw",  # the same optimizer everywhere
                       fsdp={"reshard_after_forward": reshard, "mixed_precision": False})


def batches(n_steps: int, first: int = 0) -> list[dict[str, torch.Tensor]]:
    """MLM global batches of optimizer steps first..first+n_steps-1, the same in every process."""
    out = []
    for step in range(first, first + n_steps):
        g = torch.Generator().manual_seed(1000 + step)
        ids = torch.randint(5, VOCAB, (GLOBAL_BATCH, SEQ), generator=g)
        pos = torch.stack([torch.randperm(SEQ, generator=g)[:MASKED].sort().values for _ in range(GLOBAL_BATCH)])
        labels = torch.full_like(ids, -100)
        labels.scatter_(1, pos, ids.gather(1, pos))
        out.append({"input_ids": ids.scatter(1, pos, 4), "labels": labels, "mask_positions": pos})
    return out


def fresh(d: Distributed, cfg: TrainConfig) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = d.wrap(build_model(model_config()))
    return model, d.optimizer(model, cfg)


def train(d: Distributed, model, opt, steps: list[dict[str, torch.Tensor]]) -> None:
    """The trainer's inner loop: this rank's share of each global batch in micro-batches, one optimizer step."""
    per_rank = GLOBAL_BATCH // d.dp_size
    for batch in steps:
        mine = {k: v[d.dp_rank * per_rank:(d.dp_rank + 1) * per_rank] for k, v in batch.items()}
        n = per_rank // MICRO
        for i in range(n):
            micro = {k: v[i * MICRO:(i + 1) * MICRO] for k, v in mine.items()}
            with d.no_sync(model) if i < n - 1 else contextlib.nullcontext():
                (model(**micro).loss / n).backward()
        clip_gradients(model, 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------- the worker (runs under torchrun)


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    for name, (strategy, reshard) in RUNS.items():
        cfg = train_config(strategy, reshard)
        d = Distributed.from_env(cfg)
        assert d.world_size == 2 and d.strategy == strategy
        model, opt = fresh(d, cfg)
        train(d, model, opt, batches(STEPS))
        ckpt.write_state(out / f"ckpt-{name}", model, opt)
        # resume what one process saved after STEPS steps and take the next two steps here
        model, opt = fresh(d, cfg)
        ckpt.read_state(out / "ckpt-single", model, opt)
        train(d, model, opt, batches(2, first=STEPS))
        ckpt.write_state(out / f"resumed-{name}", model)
    # budget: rank 1's clock runs an hour ahead, so alone it would stop at once; rank 0 decides for both
    cfg = train_config("ddp")
    d = Distributed.from_env(cfg)
    model, opt = fresh(d, cfg)
    offset = 3600.0 if rank == 1 else 0.0
    budget = Budget(parse_quantity("0.3s"), clock=lambda: time.monotonic() + offset)
    budget.start()
    steps = 0
    while True:
        train(d, model, opt, batches(1, first=steps))
        steps += 1
        budget.add(steps=1)
        local = budget.exhausted
        (stop,) = d.agree(local)
        if stop:
            break
    (out / f"budget-{rank}.json").write_text(json.dumps({"steps": steps, "local_exhausted_at_stop": local}))
    trainer_worker(out, rank)
    d.close()


def trainer_worker(out: Path, rank: int) -> None:
    """The real trainer on two ranks: resume a one-process run under ZeRO-3, a fresh ZeRO-1 run, a timed run.
    Every checkpoint is sharded: each rank writes its own file."""
    from cramlm.train.distributed import DistributedStrategy
    from cramlm.train.trainer import train as run

    def go(run_dir: Path, *overrides: str, resume: bool = False) -> dict:
        cfg = tiny_run_config(*overrides)
        return run(cfg, out / "data", run_dir, resume=resume, progress=False,
                   strategy=DistributedStrategy.from_env(cfg.train))

    results = {
        "resumed": go(out / "run-single", "budget.limit=6steps", "train.strategy=fsdp", resume=True),
        "zero1": go(out / "run-zero1", "budget.limit=4steps", "train.strategy=zero1", "train.batch_ramp=none"),
        "timed": go(out / "run-timed", "budget.limit=2s", "train.strategy=ddp", "train.batch_ramp=none"),
        "muon": go(out / "run-muon-ddp", *MUP_MUON, "train.strategy=ddp"),
        "mup-fsdp": go(out / "run-mup-fsdp", *MUP_MUON[:-1], "train.strategy=fsdp"),
    }
    (out / f"trainer-{rank}.json").write_text(json.dumps(results, default=str))


# ---------------------------------------------------------------------- the test (runs in pytest)


TINY_RUN = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=16",
            "train.micro_batch_size=4", "budget.hardware=cpu", "train.log_every=1", "train.val_batches=2",
            "train.checkpoint_every=2steps", "train.device=cpu",
            "train.optimizer=adamw"]  # what auto is under ZeRO/FSDP: one-process references train the same


MUP_MUON = ("budget.limit=3steps", "train.batch_ramp=none", "model.parametrization=mup", "model.base_width=16",
            "train.optimizer=muon")


def tiny_run_config(*overrides: str):
    from cramlm.config import resolve_config

    return resolve_config(model="tiny", recipe="demo", overrides=TINY_RUN + list(overrides))


def prepare_data(root: Path) -> Path:
    import random

    from cramlm.config import DataConfig
    from cramlm.data.prepare import prepare

    words = "the cat sat on a mat while dogs ran in parks and birds sang songs of rivers trees stones".split()
    rng = random.Random(0)
    docs = (" ".join(rng.choice(words) for _ in range(rng.randint(20, 80))) for _ in range(400))
    (root / "corpus.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(seq_len=32, vocab_size=128, val_fraction=0.1, min_chars=0, max_tokens_per_char_z=None)
    prepare([str(root / "corpus.txt")], root / "data", cfg, progress=False)
    return root / "data"


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.dist
def test_two_ranks_train_like_one_resume_across_world_sizes_and_share_the_budget(tmp_path):
    single = Distributed()
    cfg = train_config()
    model, opt = fresh(single, cfg)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train(single, model, opt, batches(STEPS))
    ckpt.write_state(tmp_path / "ckpt-single", model, opt)
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    train(single, model, opt, batches(2, first=STEPS))
    reference_resumed = model.state_dict()
    assert max_diff(init, reference) > 1e-2  # training moved the weights: equality below is not trivial

    from cramlm.train.trainer import train as run

    data = prepare_data(tmp_path)
    assert run(tiny_run_config("budget.limit=4steps"), data, tmp_path / "run-single", progress=False)["steps"] == 4

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           __file__, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    for name in RUNS:
        assert len(list((tmp_path / f"ckpt-{name}").glob("*.distcp"))) == 2, name  # one file per rank
        model, _ = fresh(single, cfg)
        ckpt.read_state(tmp_path / f"resumed-{name}", model)
        assert max_diff(model.state_dict(), reference_resumed) < 5e-5, f"1 rank -> 2 ranks, {name}"
        # and back: the 2-rank checkpoint continues in one process
        model, opt = fresh(single, cfg)
        ckpt.read_state(tmp_path / f"ckpt-{name}", model, opt)
        assert max_diff(model.state_dict(), reference) < 5e-5, name
        train(single, model, opt, batches(2, first=STEPS))
        assert max_diff(model.state_dict(), reference_resumed) < 5e-5, f"2 ranks -> 1 rank, {name}"

    budget = [json.loads((tmp_path / f"budget-{r}.json").read_text()) for r in (0, 1)]
    assert budget[0]["steps"] == budget[1]["steps"] > 1
    assert budget[0]["local_exhausted_at_stop"]

    # the trainer: both ranks report the same run; the 1-process run went on to step 6 on two ranks
    ranks = [json.loads((tmp_path / f"trainer-{r}.json").read_text()) for r in (0, 1)]
    for name in ("resumed", "zero1", "timed", "muon", "mup-fsdp"):
        assert ranks[0][name]["steps"] == ranks[1][name]["steps"], name
        assert ranks[0][name]["status"] == "completed"
    # muP (with Muon under DDP, with AdamW under FSDP): the replicas agree, and two ranks train as far as one
    # process (same batches and masks; Muon's bf16 orthogonalisation amplifies the float reduction noise, so the
    # losses are close, not equal; 3 steps move the loss by ~0.02)
    for name, key, overrides in (("mup-fsdp", "mup-fsdp", MUP_MUON[:-1]), ("muon-ddp", "muon", MUP_MUON)):
        assert ranks[0][key]["val_loss"] == ranks[1][key]["val_loss"], name
        one = run(tiny_run_config(*overrides), data, tmp_path / f"one-{name}", progress=False)
        assert abs(one["val_loss"] - ranks[0][key]["val_loss"]) < 3e-3, name
    assert ranks[0]["resumed"]["steps"] == 6 and ranks[0]["zero1"]["steps"] == 4
    assert ranks[0]["timed"]["steps"] >= 1 and ranks[0]["timed"]["seconds"] < 6
    latest = ckpt.latest_checkpoint(tmp_path / "run-zero1")
    assert latest.name == "step-4" and len(list(latest.glob("*.distcp"))) == 2  # sharded, committed
    # the final weights are the last checkpoint's, consolidated into one file that one process loads
    model, run_cfg = ckpt.load_model(tmp_path / "run-zero1")
    sharded = build_model(run_cfg.model)
    ckpt.read_state(latest, sharded)
    assert max_diff(model.state_dict(), sharded.state_dict()) == 0
    # and the 2-rank ZeRO-1 run continues in one process. The budget counts global steps and tokens (6 steps are
    # 6 steps of the same global batch whatever the world size) and device-seconds (two devices, then one).
    before = json.loads((latest / ckpt.STATE).read_text())["budget"]
    more = ("budget.limit=6steps", "train.batch_ramp=none")
    res = run(tiny_run_config(*more), data, tmp_path / "run-zero1", resume=True, progress=False)
    assert res["steps"] == 6 and res["tokens"] == 6 * 16 * 32  # 6 global batches of 16 sequences of 32 tokens
    # with the batch ramp: a one-process run resumed on two ranks counts the global batches it ran
    resumed = [r for r in read_metrics(tmp_path / "run-single") if "loss" in r]
    assert ranks[0]["resumed"]["tokens"] == sum(r["batch_size"] for r in resumed) * 32
    after = json.loads((ckpt.latest_checkpoint(tmp_path / "run-zero1") / ckpt.STATE).read_text())["budget"]
    assert before["device_seconds"] == pytest.approx(2 * before["seconds"], rel=1e-3)
    assert after["device_seconds"] - before["device_seconds"] == pytest.approx(after["seconds"] - before["seconds"],
                                                                               rel=1e-3)
    assert json.loads((tmp_path / "run-zero1" / "results" / "cost.json").read_text())["count"] == 1


def test_strategy_resolution():
    assert resolve_strategy("fsdp", 1, 1) == "single"
    assert resolve_strategy("auto", 4, 1) == "ddp"
    assert resolve_strategy("auto", 4, 2) == "fsdp+tp"
    assert resolve_strategy("auto", 2, 2) == "tp"
    from cramlm.errors import CramlmError

    with pytest.raises(CramlmError, match="tp_size"):
        resolve_strategy("fsdp+tp", 4, 3)
    assert resolve_strategy("deepspeed", 2, 1) == "deepspeed"
    assert resolve_strategy("deepspeed", 1, 1) == "single"
    with pytest.raises(CramlmError, match="tp_size=1"):
        resolve_strategy("deepspeed", 4, 2)


def test_deepspeed_config_follows_the_train_config():
    from cramlm.errors import CramlmError
    from cramlm.train.deepspeed_strategy import DeepSpeedStrategy, deepspeed_config

    with pytest.raises(CramlmError, match="fp32 or bf16"):  # DeepSpeed's loss scaling is not our GradScaler's
        DeepSpeedStrategy(Distributed(world_size=2, strategy="deepspeed"), TrainConfig(precision="fp16"))

    cfg = TrainConfig(grad_clip=0.7, deepspeed={"stage": 3, "offload": True})
    ds = deepspeed_config(cfg, 8)
    assert ds["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu"},
                                       "offload_param": {"device": "cpu"}}
    assert ds["gradient_clipping"] == 0.7 and ds["train_micro_batch_size_per_gpu"] == 8
    assert ds["gradient_accumulation_steps"] == 1 and ds["managed_gradient_accumulation"] is False
    assert "offload_param" not in deepspeed_config(TrainConfig(deepspeed={"stage": 2, "offload": True}), 8)[
        "zero_optimization"]


def test_batch_ramp_auto_needs_whole_gradients_on_each_rank():
    from cramlm.errors import CramlmError
    from cramlm.train.distributed import DistributedStrategy

    with pytest.raises(CramlmError, match="batch_ramp=auto"):
        DistributedStrategy(Distributed(world_size=2, strategy="fsdp"), TrainConfig(batch_ramp="auto"))
    assert DistributedStrategy(Distributed(world_size=2, strategy="ddp"), TrainConfig(batch_ramp="auto")).is_main


def test_single_process_without_torchrun(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    d = Distributed.from_env(train_config("fsdp"))
    assert (d.world_size, d.strategy, d.is_main, d.dp_size) == (1, "single", True, 1)
    assert d.agree(True, False) == (True, False)


if __name__ == "__main__":

    worker(Path(sys.argv[1]))
