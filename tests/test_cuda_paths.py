"""The CUDA code paths, checked on the CPU: precision by compute capability, TF32 and cuBLAS settings before the
first measurement, pinned copies, static-shape compile, the FSDP offload process group, the sharded gradient norm
in one reduction, the guards and noise scale around non-finite steps, the planner's bytes per parameter, the
hardware names and the bounded tokenizer sample."""

from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from cramlm.config import DataConfig, TrainConfig, resolve_config
from cramlm.train import cuda

CUDA = torch.device("cuda", 0)
TINY = ["model.n_layers=2", "model.d_model=32", "model.n_heads=2", "model.d_ff=64", "train.batch_size=8",
        "train.micro_batch_size=4", "budget.hardware=cpu", "train.val_batches=2", "budget.limit=4steps"]


def gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """Pretend device 0 is a GPU of this compute capability that says it supports bf16 (as every CUDA GPU does)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


@pytest.mark.parametrize("capability, precision", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                                   ((9, 0), "bf16")])
def test_auto_precision_follows_the_compute_capability(monkeypatch, capability, precision):
    from cramlm.eval import glue
    from cramlm.train.trainer import resolve_precision

    gpu(monkeypatch, capability)
    assert resolve_precision("auto", CUDA) == precision
    assert resolve_precision("fp32", CUDA) == "fp32" and resolve_precision("auto", torch.device("cpu")) == "fp32"
    # GLUE fine-tuning and prediction autocast to the same dtype (no bf16 emulation on a T4 or a V100)
    assert cuda.amp_dtype(CUDA) == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    with warnings.catch_warnings():  # "CUDA is not available": the context is built, not entered
        warnings.simplefilter("ignore")
        assert glue._autocast(CUDA).fast_dtype == cuda.amp_dtype(CUDA)
    assert cuda.amp_dtype(torch.device("cpu")) is None


def test_tf32_and_cublas_workspace_are_set_before_the_peak_is_measured(monkeypatch, tiny_dataset, tmp_path):
    from cramlm.budget import hardware
    from cramlm.train.trainer import Trainer

    gpu(monkeypatch, (9, 0))
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    seen = {}

    def resolve(*args, **kwargs):  # where the trainer looks up (or measures) the device's peak
        seen.update(tf32=torch.backends.cuda.matmul.allow_tf32, cublas=os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(hardware, "resolve", resolve)
    cfg = resolve_config(model="tiny", recipe="demo", overrides=TINY + ["train.device=cuda",
                                                                         "train.deterministic=true"])
    try:
        with pytest.raises(RuntimeError, match="stop here"):
            Trainer(cfg, tiny_dataset, tmp_path / "run", progress=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen == {"tf32": True, "cublas": cuda.CUBLAS_WORKSPACE}


def test_batches_are_pinned_and_copied_without_blocking(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", a, k)) or self)
    batch = {"input_ids": torch.zeros(2, 4, dtype=torch.long), "labels": torch.zeros(2, 4, dtype=torch.long)}
    cuda.to_device(batch, CUDA)
    assert calls == ["pin", ("to", (CUDA,), {"non_blocking": True})] * 2
    calls.clear()
    cuda.to_device(batch, torch.device("cpu"))
    assert "pin" not in calls


def test_compile_asks_for_static_shapes(monkeypatch):
    from cramlm.train.trainer import Strategy

    seen = {}
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.update(kwargs) or model)
    Strategy(torch.device("cpu")).compile(torch.nn.Linear(2, 2))
    assert seen.get("dynamic") is False


def test_fsdp_cpu_offload_gets_a_gloo_backend_for_host_tensors():
    from cramlm.train.distributed import process_group_backend

    offload = TrainConfig(strategy="fsdp", fsdp={"cpu_offload": True})
    assert process_group_backend(CUDA, offload) == "cuda:nccl,cpu:gloo"
    assert process_group_backend(CUDA, TrainConfig(strategy="fsdp")) == "nccl"
    assert process_group_backend(CUDA, TrainConfig(strategy="ddp")) == "nccl"
    assert process_group_backend(torch.device("cpu"), offload) == "gloo"


def _grad_norm_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.debug import CommDebugMode

    from cramlm.config import FSDPConfig, ModelConfig
    from cramlm.models.registry import build_model
    from cramlm.train.distributed import apply_fsdp, gradient_norm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=16))
        apply_fsdp(model, init_device_mesh("cpu", (world,)), FSDPConfig(), torch.device("cpu"), "fp32")
        ids = torch.randint(5, 64, (2, 16), generator=torch.Generator().manual_seed(rank))
        model(ids, labels=ids).loss.backward()
        # the reference: every gradient gathered whole, one collective per parameter
        squares = [(p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).float().pow(2).sum()
                   for p in model.parameters() if p.grad is not None]
        expected = torch.stack(squares).sum().sqrt()
        with CommDebugMode() as comm:
            norm = gradient_norm(model)
        if rank == 0:
            n_sharded = sum(isinstance(p.grad, DTensor) for p in model.parameters())
            Path(out).write_text(f"{float(norm)} {float(expected)} {comm.get_total_counts()} {n_sharded}")
    finally:
        dist.destroy_process_group()


def test_sharded_gradient_norm_is_one_reduction(tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out.txt"
    mp.spawn(_grad_norm_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    norm, expected, collectives, n_sharded = out.read_text().split()
    assert float(norm) == pytest.approx(float(expected), rel=1e-5)
    assert int(n_sharded) > 4 and int(collectives) == 1


def _trainer(tiny_dataset: Path, run_dir: Path, *overrides: str):
    from cramlm.train.trainer import Trainer

    return Trainer(resolve_config(model="tiny", recipe="demo", overrides=TINY + list(overrides)), tiny_dataset,
                   run_dir, progress=False)


def test_non_finite_steps_are_counted_since_the_last_checkpoint(tiny_dataset, tmp_path):
    trainer = _trainer(tiny_dataset, tmp_path / "run", "train.max_bad_steps=6")
    trainer._check_guards(None, 4)  # routine fp16 overflows
    trainer.save()
    assert trainer.guard.skipped == 0 and trainer.guard.skipped_total == 4
    trainer._check_guards(None, 4)  # 8 in all, but only 4 since the checkpoint: no rollback
    assert trainer.guard.rollbacks == 0 and trainer.guard.lr_mult == 1.0
    trainer._check_guards(None, 3)  # 7 since the checkpoint
    assert trainer.guard.rollbacks == 1


def test_a_non_finite_step_leaves_the_noise_scale_averages_alone():
    from cramlm.train.schedules import NoiseScale

    def feed(noise, steps):
        for small, big, ok in steps:
            noise.update(torch.tensor(small), torch.tensor(big), 4, 16, ok=torch.tensor(ok))

    clean, hit = NoiseScale(), NoiseScale()
    feed(clean, [(4.0, 2.0, True), (5.0, 2.5, True)])
    feed(hit, [(float("nan"), 2.0, True), (4.0, 2.0, True), (4.0, float("inf"), False), (3.0, 1.0, False),
               (5.0, 2.5, True)])
    assert hit.value() is not None and hit.value() == pytest.approx(clean.value())
    assert hit.state_dict()["g2"] == pytest.approx(clean.state_dict()["g2"])


def test_tokenizer_sample_of_a_stream_of_unknown_size_is_bounded(tmp_path):
    from cramlm.data.filters import TextFilters
    from cramlm.data.prepare import _sample

    rng = random.Random(0)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(10, 40))) for _ in range(500)]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    cfg = DataConfig(min_chars=0, tokenizer_sample_mb=0.002)  # 2,000 characters
    sample, corpus = _sample([str(tmp_path / "c.txt")], cfg, None, TextFilters(cfg, dedup=False), Counter())
    assert corpus is None and 0 < sum(map(len, sample)) <= 2000
    assert set(sample) <= set(docs) and len(sample) < 50
    again, _ = _sample([str(tmp_path / "c.txt")], cfg, None, TextFilters(cfg, dedup=False), Counter())
    assert again == sample  # deterministic: the smallest hashes, in input order
    big = DataConfig(min_chars=0, tokenizer_sample_mb=10)  # a corpus that fits is kept whole, in order
    sample, corpus = _sample([str(tmp_path / "c.txt")], big, None, TextFilters(big, dedup=False), Counter())
    assert sample == corpus == docs


def test_planner_bytes_per_parameter_match_what_training_allocates():
    from cramlm.budget.memory import DDP_BUCKET_BYTES, model_state_bytes, replicated_bytes_per_param
    from cramlm.config import ModelConfig
    from cramlm.models.registry import build_model
    from cramlm.train.optim import build_optimizer

    model = build_model(ModelConfig(n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_seq_len=16))
    optimizer = build_optimizer(model, TrainConfig(lr=1e-3, optimizer="adamw"))  # the planner counts Adam
    ids = torch.randint(5, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    n = sum(p.numel() for p in model.parameters())
    held = {"weight": sum(p.numel() * p.element_size() for p in model.parameters()),
            "grad": sum(p.grad.numel() * p.grad.element_size() for p in model.parameters()),
            "optimizer": sum(v.numel() * v.element_size() for s in optimizer.state.values() for k, v in s.items()
                             if k != "step")}
    weight, grad, opt = replicated_bytes_per_param(True)
    # fp32 weights, gradients and moments under autocast (not the 16-bit (2, 2, 12) of ZeRO's accounting)
    assert (held["weight"] / n, held["grad"] / n, held["optimizer"] / n) == (weight, grad, opt) == (4, 4, 8)
    assert model_state_bytes(n, "ddp", 1) == n * (weight + grad + opt)
    assert model_state_bytes(n, "ddp", 2) == n * (weight + grad + opt + DDP_BUCKET_BYTES)
    assert model_state_bytes(n, "zero1", 4) == n * (weight + grad + DDP_BUCKET_BYTES + opt / 4)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 NVL", "h100-nvl"), ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA GH200 480GB", "gh200"), ("NVIDIA GH200 144G HBM3e", "gh200-144gb"), ("NVIDIA H200", "h200"),
    ("NVIDIA GeForce RTX 3090 Ti", "rtx3090ti"), ("NVIDIA GeForce RTX 3090", "rtx3090"),
])
def test_device_names_find_their_own_catalogue_entry(name, key):
    from cramlm.budget.hardware import get, match_cuda_name

    assert match_cuda_name(name) == key
    assert get(key).memory_gb > 0
