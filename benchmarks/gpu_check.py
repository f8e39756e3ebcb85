"""Everything only a GPU can show, in one command: throughput and MFU against transformers, the SDPA kernel our
shapes get, peak memory against the planner, bf16 and torch.compile numerics, and a short crammed run through the
real CLI (prepare, train, eval mlm, eval glue). Each section has a time budget and its own try/except: a failure
is an error row, the other sections still run. Writes `gpu_check.json` and `gpu_check.md` to `--out`.

    python benchmarks/gpu_check.py --device cuda --out runs/gpu-check \\
        --data enwiki_2015_00.txt.gz --glue-dir glue          # ~8 minutes on one H100/H200
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu-check --data corpus.txt --glue-dir glue

`--tiny` runs the same code with tiny shapes (and torch.compile's eager backend: dynamo without code generation), so
the CPU test keeps the script from rotting between GPU loans. No network: transformers models are built from
configs; a missing optional extra skips its rows with the reason. docs/gpu_check.md says what to carry.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from cramlm.budget import hardware, memory, planner
from cramlm.budget.flops import flops_per_token, param_counts
from cramlm.config import FSDPConfig, ModelConfig, TrainConfig, resolve_config
from cramlm.models.registry import build_model
from cramlm.train import cuda as cuda_settings
from cramlm.train.autopilot import random_batch
from cramlm.train.optim import fused_available

# Seconds per section on a GPU (about 8 minutes in all), and with --tiny on a CPU (under 2 minutes). A section
# stops timing at its budget; compilation and the CLI's own steps can run a little past it.
BUDGETS = {"env": 10, "encoder": 75, "decoder": 55, "sdpa": 20, "memory": 30, "numerics": 40, "crammed_run": 260}
TINY_BUDGETS = {"env": 5, "encoder": 12, "decoder": 12, "sdpa": 6, "memory": 8, "numerics": 8, "crammed_run": 70}
TRAIN_BUDGET = {"gpu": "2m", "tiny": "20steps"}
PREPARE_MB = 10  # text taken from the pretrain shard for the crammed run (~2.5M tokens)
MFU_TARGET, SPEEDUP_TARGET = 0.55, 2.0
TINY_MODEL = {"n_layers": 2, "d_model": 64, "n_heads": 2, "d_ff": 128, "vocab_size": 512}


class Skip(Exception):
    """A section (or row) that cannot run here, with the reason."""


def optional(module: str) -> Any:
    """An optional extra, or Skip with the reason."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise Skip(f"{module} is not installed (pip install 'cramlm[hf]')") from None


@dataclass
class Check:
    device: torch.device
    tiny: bool
    out: Path
    data: Path | None
    glue_dir: Path | None
    dtype: torch.dtype | None = None
    peak: float = 0.0  # FLOP/s of the training dtype
    hw_name: str = ""
    backend: str = "inductor"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def model_cfg(self, name: str) -> tuple[ModelConfig, int]:
        """A preset's model section (tiny shapes with --tiny) and the sequence length the check uses."""
        cfg = resolve_config(model=name).model
        seq = cfg.max_seq_len if cfg.arch == "decoder" else 128
        if self.tiny:
            seq = 64 if cfg.arch == "decoder" else 32
            cfg = cfg.model_copy(update=TINY_MODEL)
        return cfg.model_copy(update={"max_seq_len": seq}), seq

    def micro(self, name: str, seq_len: int) -> int:
        """The micro-batch `cramlm plan` picks for the preset on this device (at seq 128), in sequences of
        `seq_len` holding the same tokens."""
        hw = "cpu" if self.device.type == "cpu" else "auto"  # auto: this GPU, in the catalogue or measured
        picked = planner.plan(hw, hours=1.0, model=name)["autopilot"]["micro_batch_size"]
        micro = max(1, picked * 128 // seq_len)
        return min(micro, 8) if self.tiny else micro


# ---------------------------------------------------------------------------------------------- timing


def time_training(check: Check, model: torch.nn.Module, forward: Callable, batch: dict[str, torch.Tensor],
                  deadline: float) -> dict[str, float]:
    """Optimizer steps (the same AdamW for every model, fused where available) on one batch: tokens/s over the
    timed steps, after untimed warm-up ones (compilation happens there); stops at `deadline` after 2 timed."""
    warmup, max_steps = (1, 3) if check.tiny else (3, 50)
    fused = fused_available(check.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused or None, foreach=None if fused else True)
    tokens = batch["input_ids"].numel()

    def step() -> None:
        with check.autocast():
            loss = forward(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    check.sync()
    warm_s = time.perf_counter() - started
    t0, steps = time.perf_counter(), 0
    while steps < max_steps and (steps < 2 or time.perf_counter() < deadline):
        step()
        steps += 1
        if steps % 5 == 0:
            check.sync()
    check.sync()
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens * steps / seconds, "steps": steps, "step_ms": 1000 * seconds / steps,
            "warmup_s": warm_s}


def hf_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' call: the same tokens and labels, no mask positions (its head scores every position)."""
    return {"input_ids": batch["input_ids"], "labels": batch["labels"]}


def throughput(check: Check, name: str, deadline: float) -> dict[str, Any]:
    """cramlm's preset (eager and compiled) against transformers' model of the same shape, tokens/s and MFU."""
    cfg, seq = check.model_cfg(name)
    micro = check.micro(name, seq)
    mask_rate = 0.25 if cfg.arch == "encoder" else None
    batch = random_batch(cfg, seq, 0.25, micro, check.device)
    rows: list[dict[str, Any]] = []
    fpt = flops_per_token(cfg, seq, mask_rate)
    share = (deadline - time.perf_counter()) / 4

    def row(label: str, mode: str, fpt_: float, run: Callable[[float], dict[str, float]]) -> None:
        try:
            r = run(time.perf_counter() + share)
            mfu = fpt_ * r["tokens_per_s"] / check.peak if check.peak else None
            rows.append({"model": label, "mode": mode, "micro_batch": micro, "seq_len": seq, **r, "mfu": mfu})
        except Skip as e:
            rows.append({"model": label, "mode": mode, "skipped": str(e)})
        except Exception as e:  # one failing mode must not hide the others
            rows.append({"model": label, "mode": mode, "error": one_line(e)})

    def ours(compiled: bool) -> Callable[[float], dict[str, float]]:
        def run(until: float) -> dict[str, float]:
            torch.manual_seed(0)
            model = build_model(cfg).to(check.device).train()
            forward = torch.compile(model, dynamic=False, backend=check.backend) if compiled else model
            return time_training(check, model, forward, batch, until)
        return run

    def theirs(until: float) -> dict[str, float]:
        torch.manual_seed(0)
        model = hf_model(cfg).to(check.device).train()
        return time_training(check, model, model, hf_batch(batch), until)

    row(f"cramlm {name}", "eager", fpt, ours(False))
    row(f"cramlm {name}", f"compiled ({check.backend})", fpt, ours(True))
    hf_name = "BertForMaskedLM" if cfg.arch == "encoder" else "LlamaForCausalLM"
    row(f"transformers {hf_name} (sdpa)", "eager", flops_per_token(hf_equivalent(cfg), seq, None), theirs)
    hf = rows[2].get("tokens_per_s")
    summary = {"params": param_counts(cfg)["total"], "flops_per_token": fpt, "peak_flops": check.peak}
    compiled = rows[1]
    if compiled.get("tokens_per_s") and hf:
        summary["compiled_vs_transformers"] = compiled["tokens_per_s"] / hf
    if name == "bert-crammed" and compiled.get("mfu") is not None:
        summary["targets"] = {"mfu>=0.55": compiled["mfu"] >= MFU_TARGET,
                              "speedup>=2": summary.get("compiled_vs_transformers", 0.0) >= SPEEDUP_TARGET}
    return {"rows": rows, "summary": summary}


def hf_equivalent(cfg: ModelConfig) -> ModelConfig:
    """The cramlm config whose FLOPs match transformers' model: BERT has a GELU FFN of width d_ff and a dense head."""
    if cfg.arch == "encoder":
        return cfg.model_copy(update={"ffn": "gelu", "sparse_head": False})
    return cfg


def hf_model(cfg: ModelConfig) -> torch.nn.Module:
    """transformers' BertForMaskedLM / LlamaForCausalLM of `cfg`'s shape, from a config (no download), sdpa."""
    tf = optional("transformers")
    if cfg.arch == "encoder":
        conf = tf.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                             num_attention_heads=cfg.n_heads, intermediate_size=cfg.d_ff,
                             max_position_embeddings=cfg.max_seq_len, attn_implementation="sdpa")
        return tf.BertForMaskedLM(conf)
    conf = tf.LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                          num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
                          intermediate_size=cfg.d_ff // 2, max_position_embeddings=cfg.max_seq_len,
                          rms_norm_eps=cfg.norm_eps, tie_word_embeddings=cfg.tie_embeddings,
                          attn_implementation="sdpa")
    return tf.LlamaForCausalLM(conf)


# ---------------------------------------------------------------------------------------------- sections


def env_section(check: Check, deadline: float) -> dict[str, Any]:
    d = check.device
    row: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                           "device": str(d), "hardware": check.hw_name, "peak_flops": check.peak,
                           "dtype": str(check.dtype).removeprefix("torch.") if check.dtype else "fp32"}
    if d.type == "cuda":
        props = torch.cuda.get_device_properties(d)
        row.update(name=props.name, capability=".".join(map(str, torch.cuda.get_device_capability(d))),
                   memory_gb=props.total_memory / 1e9, tf32=torch.backends.cuda.matmul.allow_tf32)
        row["measured_bf16_matmul_flops"] = hardware.measure_peak("cuda", torch.bfloat16, n=8192, seconds=1.0)
    for extra in ("transformers", "datasets"):
        try:
            row[extra] = importlib.import_module(extra).__version__
        except ImportError:
            row[extra] = None
    return {"rows": [row]}


def classify(ops: list[str]) -> str:
    """The SDPA backend that ran, from the aten ops a profile recorded."""
    for key, label in (("flash_attention", "flash"), ("efficient_attention", "memory-efficient"),
                       ("cudnn_attention", "cudnn"), ("attention_math", "math"), ("overrideable", "overrideable")):
        if any(key in op for op in ops):
            return label
    return "math" if any("softmax" in op for op in ops) else "none"


def profiled(check: Check, fn: Callable[[], Any]) -> tuple[str, list[str]]:
    """(backend, attention kernel names) of one call of `fn`. The aten ops (recorded on the CPU side) name the
    backend; the GPU kernels, where the profiler can trace them, confirm it."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    check.sync()
    gpu = [ProfilerActivity.CUDA] if check.device.type == "cuda" else []
    try:
        with profile(activities=[ProfilerActivity.CPU, *gpu]) as prof:
            fn()
            check.sync()
    except Exception:  # no CUPTI here: the aten ops alone
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
            check.sync()
    names = sorted({e.name for e in prof.events()})
    kernels = [n for n in names if any(k in n.lower() for k in ("flash", "fmha", "attention", "cudnn"))
               and not n.startswith("aten::")]
    return classify(names), kernels[:4]


def sdpa_section(check: Check, deadline: float) -> dict[str, Any]:
    """Which SDPA backends run our shapes (each forced in turn), which one PyTorch picks, and which one the
    models hit with packed sequences (no mask: the pretraining batches) and with a padding mask."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    enc, enc_seq = check.model_cfg("bert-crammed")
    dec, dec_seq = check.model_cfg("gpt-small")
    micro = check.micro("bert-crammed", enc_seq)
    dt = check.dtype or torch.float32
    rows: list[dict[str, Any]] = []

    def qkv(cfg: ModelConfig, seq: int, n: int) -> list[torch.Tensor]:
        shape = (n, cfg.n_heads, seq, cfg.d_model // cfg.n_heads)
        return [torch.randn(shape, device=check.device, dtype=dt, requires_grad=True) for _ in range(3)]

    pad = torch.ones(micro, 1, 1, enc_seq, dtype=torch.bool, device=check.device)
    pad[:, :, :, enc_seq * 3 // 4:] = False
    cases = {"encoder packed (no mask)": (enc, enc_seq, micro, {}),
             "encoder padded (bool mask)": (enc, enc_seq, micro, {"attn_mask": pad}),
             "decoder causal": (dec, dec_seq, max(1, micro * enc_seq // dec_seq), {"is_causal": True})}
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                SDPBackend.MATH]
    for case, (cfg, seq, n, kwargs) in cases.items():
        q, k, v = qkv(cfg, seq, n)

        def call() -> None:
            F.scaled_dot_product_attention(q, k, v, **kwargs).sum().backward()

        row: dict[str, Any] = {"case": case, "shape": f"{n}x{cfg.n_heads}x{seq}x{cfg.d_model // cfg.n_heads}"}
        for backend in backends:
            name = backend.name.lower().removesuffix("_attention")
            try:
                with sdpa_kernel([backend]):
                    call()
                    check.sync()
                    t0 = time.perf_counter()
                    call()
                    check.sync()
                row[name] = f"ok {1000 * (time.perf_counter() - t0):.2f} ms"
            except Exception as e:  # this backend does not take the shape (or this device lacks it)
                row[name] = "no: " + one_line(e)[:80]
        row["default"], row["kernels"] = profiled(check, call)
        rows.append(row)
    for label, cfg, seq, masked in (("bert-crammed forward+backward, packed", enc, enc_seq, False),
                                    ("bert-crammed forward+backward, padded", enc, enc_seq, True),
                                    ("gpt-small forward+backward", dec, dec_seq, False)):
        if time.perf_counter() > deadline:
            rows.append({"case": label, "skipped": "section time budget spent"})
            continue
        model = build_model(cfg).to(check.device)
        n = micro if cfg.arch == "encoder" else max(1, micro * enc_seq // dec_seq)
        batch = random_batch(cfg, seq, 0.25, n, check.device)
        if masked:
            batch["attention_mask"] = pad[:n, 0, 0, :seq]

        def model_call() -> None:
            with check.autocast():
                model(**batch).loss.backward()

        backend, kernels = profiled(check, model_call)
        rows.append({"case": label, "default": backend, "kernels": kernels})
        del model
    fast = {r["case"]: r["default"] for r in rows if "default" in r}
    return {"rows": rows, "summary": {"packed_keeps_fast_path":
                                      fast.get("bert-crammed forward+backward, packed") in ("flash", "cudnn")}}


def memory_section(check: Check, deadline: float) -> dict[str, Any]:
    """Peak memory of three training steps per strategy that fits one device (plain, DDP and FSDP in one
    process), against `cramlm plan`'s estimate; model-state bytes counted from the tensors themselves. Bounded
    work (no early stop): every strategy is measured."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from cramlm.train.distributed import Distributed

    cfg, seq = check.model_cfg("bert-crammed")
    micro = check.micro("bert-crammed", seq)
    params = param_counts(cfg)["total"]
    mixed = check.dtype is not None
    act = memory.activation_bytes(cfg, micro, seq, 0.25, mixed)
    estimates = {"plain": memory.model_state_bytes(params, "ddp", 1, mixed),
                 "ddp (1 process)": memory.model_state_bytes(params, "ddp", 1, mixed)
                 + memory.DDP_BUCKET_BYTES * params,
                 "fsdp (1 process)": memory.model_state_bytes(params, "zero3", 1, mixed)}
    backend = "nccl" if check.device.type == "cuda" else "gloo"
    started_group = not dist.is_initialized()
    if started_group:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    rows = []
    try:
        mesh = init_device_mesh(check.device.type, (1,), mesh_dim_names=("dp",))
        for label, strategy in (("plain", "single"), ("ddp (1 process)", "ddp"), ("fsdp (1 process)", "fsdp")):
            if check.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(check.device)
            base = torch.cuda.memory_allocated(check.device) if check.device.type == "cuda" else 0
            torch.manual_seed(0)
            d = Distributed(rank=0, world_size=1, device=check.device, strategy=strategy, mesh=mesh,
                            fsdp=FSDPConfig(), precision="bf16" if check.dtype == torch.bfloat16 else "fp32")
            model = d.wrap(build_model(cfg))
            optimizer = d.optimizer(model, TrainConfig(lr=1e-4, optimizer="adamw"))  # the planner counts Adam
            batch = random_batch(cfg, seq, 0.25, micro, check.device)
            held = 0
            for _ in range(3):
                with check.autocast():
                    loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                held = state_bytes(model, optimizer)
                optimizer.zero_grad(set_to_none=True)
            check.sync()
            peak = (torch.cuda.max_memory_allocated(check.device) - base) if check.device.type == "cuda" else None
            est = estimates[label]
            rows.append({"strategy": label, "micro_batch": micro, "seq_len": seq, "params": params,
                         "state_gb": held / 1e9, "state_estimate_gb": est / 1e9,
                         "peak_gb": None if peak is None else peak / 1e9, "estimate_gb": (est + act) / 1e9,
                         "peak_over_estimate": None if peak is None else peak / (est + act)})
            del model, optimizer, loss
    finally:
        if started_group:
            dist.destroy_process_group()
    return {"rows": rows, "summary": {"activation_estimate_gb": act / 1e9,
                                      "plan_gb": memory.memory_per_device(params, 1, act, mixed)}}


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of this process's weights, gradients and optimizer states (local shards of sharded tensors)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    tensors = [local(p) for p in model.parameters()] + [local(p.grad) for p in model.parameters()
                                                         if p.grad is not None]
    tensors += [local(v) for s in optimizer.state.values() for k, v in s.items() if torch.is_tensor(v) and k != "step"]
    return sum(t.numel() * t.element_size() for t in tensors)


def numerics_section(check: Check, deadline: float) -> dict[str, Any]:
    """bf16 autocast logits against fp32 (TF32 off) on one batch, and torch.compile's loss and gradient norm
    against eager, for both presets."""
    rows = []
    for name in ("bert-crammed", "gpt-small"):  # bounded work (no early stop): one batch each
        cfg, seq = check.model_cfg(name)
        n = check.micro(name, seq)  # the throughput section's shapes: its compiled graphs are in inductor's cache
        torch.manual_seed(0)
        model = build_model(cfg).to(check.device)
        batch = random_batch(cfg, seq, 0.25, n, check.device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.no_grad():
                ref = model(**batch)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        with torch.no_grad(), check.autocast():
            low = model(**batch)
        diff = (low.logits.float() - ref.logits.float()).abs()
        scale = ref.logits.float().abs().max().item()
        row = {"model": name, "dtype": str(check.dtype).removeprefix("torch.") if check.dtype else "fp32",
               "logits_max_abs_diff": diff.max().item(), "logits_mean_abs_diff": diff.mean().item(),
               "logits_max_rel_diff": diff.max().item() / max(scale, 1e-12),
               "loss_fp32": ref.loss.item(), "loss_diff": abs(low.loss.item() - ref.loss.item())}
        row["within_tolerance"] = row["logits_max_rel_diff"] < 0.05 and row["loss_diff"] < 0.02

        def loss_and_grad(forward: Callable) -> tuple[float, float]:
            model.zero_grad(set_to_none=True)
            with check.autocast():
                loss = forward(**batch).loss
            loss.backward()
            norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()
                                                         if p.grad is not None]))
            return loss.item(), norm.item()

        eager = loss_and_grad(model)
        compiled = loss_and_grad(torch.compile(model, dynamic=False, backend=check.backend))
        row.update(compile_backend=check.backend, compile_loss_diff=abs(compiled[0] - eager[0]),
                   compile_grad_norm_rel_diff=abs(compiled[1] - eager[1]) / max(eager[1], 1e-12))
        row["compile_same_loss"] = row["compile_loss_diff"] < 1e-2 and row["compile_grad_norm_rel_diff"] < 2e-2
        rows.append(row)
        del model
    return {"rows": rows}


def crammed_section(check: Check, deadline: float) -> dict[str, Any]:
    """prepare -> train (a short wall-clock budget) -> eval mlm -> eval glue sst2,rte, each through the CLI."""
    if check.data is None:
        raise Skip("no --data (a pretrain shard, a text file or a prepared dataset dir)")
    work = check.out / "crammed"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    device = str(check.device)

    def cli(step: str, *args: str) -> subprocess.CompletedProcess:
        left = deadline - time.perf_counter()
        if left < 5:
            raise Skip(f"{step}: section time budget spent")
        t0 = time.perf_counter()
        log = work / f"{step}.log"
        # the same cramlm as this script imported, installed or not (a checkout on a machine without network)
        src = str(Path(importlib.import_module("cramlm").__file__).resolve().parents[1])
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
        with log.open("w") as f:
            proc = subprocess.run([sys.executable, "-m", "cramlm", *args], stdout=subprocess.PIPE, stderr=f,
                                  text=True, timeout=left, env=env)
        with log.open("a") as f:  # the command's own output after its messages
            f.write(proc.stdout)
        row = {"step": step, "rc": proc.returncode, "seconds": time.perf_counter() - t0, "log": str(log)}
        rows.append(row)
        if proc.returncode:
            tail = [line for line in log.read_text().splitlines() if line.startswith("error")][-1:] \
                or log.read_text().strip().splitlines()[-1:] or ["(no output)"]
            raise RuntimeError(f"cramlm {step} exited {proc.returncode}: {tail[0][:200]}")
        return proc

    data = check.data
    if not (data / "manifest.json").exists():  # raw text: the first documents of it, prepared here
        text = work / "pretrain.txt"
        text.write_text(head_documents(data, (1 if check.tiny else PREPARE_MB) * 1_000_000))
        vocab = "512" if check.tiny else "32768"
        data = work / "data"
        cli("prepare", "prepare", str(text), "--out", str(data), "--vocab-size", vocab, "--seq-len",
            "32" if check.tiny else "128", "--quiet", "--force")
        train_split = json.loads((data / "manifest.json").read_text())["splits"]["train"]
        rows[-1]["dataset"] = {k: train_split.get(k) for k in ("documents", "tokens", "sequences")}
    run = work / "run"
    model_args = ["--model", "tiny", *[f"model.{k}={v}" for k, v in TINY_MODEL.items() if k != "vocab_size"],
                  "train.micro_batch_size=8", "train.val_batches=2"] if check.tiny else ["--model", "bert-crammed"]
    budget = TRAIN_BUDGET["tiny" if check.tiny else "gpu"]
    cli("train", "train", str(data), *model_args, "--budget", budget, "--out", str(run), f"train.device={device}",
        "budget.hardware=" + ("cpu" if check.device.type == "cpu" else "auto"))
    res = json.loads((run / "results" / "train.json").read_text())
    rows[-1].update({k: res.get(k) for k in ("steps", "tokens", "tokens_per_second", "mfu", "val_loss",
                                             "precision", "hardware")})
    proc = cli("eval_mlm", "eval", "mlm", str(run), "--data", str(data), "--json")
    rows[-1]["heldout_mlm_loss"] = json.loads(proc.stdout)["metrics"].get("loss")
    if check.glue_dir is None:
        rows.append({"step": "eval_glue", "skipped": "no --glue-dir"})
    else:
        n = "64" if check.tiny else "2000"
        proc = cli("eval_glue", "eval", "glue", str(run), "--glue-dir", str(check.glue_dir), "--tasks", "sst2,rte",
                   "--max-train-examples", n, "--epochs", "1", "--no-progress", "--json")
        rows[-1]["metrics"] = json.loads(proc.stdout)["metrics"]
    return {"rows": rows}


def head_documents(path: Path, max_chars: int) -> str:
    """The first documents of a text file (gzip too) up to `max_chars`, cut at a blank line."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        text = f.read(max_chars)
    cut = text.rfind("\n\n")
    return text[:cut] if cut > 0 else text


# ---------------------------------------------------------------------------------------------- driver

SECTIONS: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "env": env_section,
    "encoder": lambda c, d: throughput(c, "bert-crammed", d),
    "decoder": lambda c, d: throughput(c, "gpt-small", d),
    "sdpa": sdpa_section,
    "memory": memory_section,
    "numerics": numerics_section,
    "crammed_run": crammed_section,
}


def one_line(e: BaseException) -> str:
    return (f"{type(e).__name__}: {e}".strip().splitlines() or [type(e).__name__])[0]


def run_section(check: Check, name: str) -> dict[str, Any]:
    """One section under its time budget; an exception becomes an error record, a Skip a skipped one."""
    budget = (TINY_BUDGETS if check.tiny else BUDGETS)[name]
    t0 = time.perf_counter()
    record: dict[str, Any] = {"budget_s": budget}
    try:
        record.update(SECTIONS[name](check, t0 + budget))
        record["status"] = "ok"
    except Skip as e:
        record.update(status="skipped", reason=str(e))
    except Exception as e:  # recorded, and the next section runs
        record.update(status="error", error=one_line(e), traceback=traceback.format_exc()[-3000:])
    finally:
        torch._dynamo.reset()
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    record["seconds"] = time.perf_counter() - t0
    return record


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU check: {report['env'].get('hardware', '')} ({report['device']})", "",
             f"torch {report['torch']}, cuda {report['cuda']}, {'tiny shapes, ' if report['tiny'] else ''}"
             f"{report['seconds']:.0f} s in all", ""]
    for name, sec in report["sections"].items():
        lines.append(f"## {name}: {sec['status']} ({sec['seconds']:.0f} s of {sec['budget_s']:.0f})")
        lines.append("")
        if sec["status"] != "ok":
            lines += [f"{sec.get('reason') or sec.get('error')}", ""]
            continue
        rows = sec.get("rows", [])
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("log", "traceback")]
        if rows:
            lines.append("| " + " | ".join(keys) + " |")
            lines.append("|" + "---|" * len(keys))
            lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
        if sec.get("summary"):
            lines += ["", "summary: " + ", ".join(f"{k} {fmt(v)}" for k, v in sec["summary"].items())]
        lines.append("")
    return "\n".join(lines)


def fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "; ".join(map(fmt, v))
    return str(v).replace("|", "/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1 or cpu")
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and the run")
    ap.add_argument("--data", type=Path, help="pretrain text (.txt or .txt.gz) or a prepared dataset dir")
    ap.add_argument("--glue-dir", type=Path, help="GLUE data: DIR/SST-2 and DIR/RTE with train.tsv, dev.tsv")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: the same code on a CPU in under 2 minutes")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    for path, what in ((args.data, "--data"), (args.glue_dir, "--glue-dir")):
        if path is not None and not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    if unknown:
        print(f"error: unknown section {sorted(unknown)[0]!r} (known: {', '.join(SECTIONS)})", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # DDP and the CLI want an index
    args.out.mkdir(parents=True, exist_ok=True)
    cuda_settings.configure(device)  # TF32 as training sets it, before any peak is measured
    check = Check(device, args.tiny, args.out.resolve(), args.data.resolve() if args.data else None,
                  args.glue_dir.resolve() if args.glue_dir else None)
    check.dtype = cuda_settings.amp_dtype(device) if device.type == "cuda" else (torch.bfloat16 if args.tiny
                                                                                  else None)
    check.backend = "eager" if args.tiny and device.type == "cpu" else "inductor"  # tiny: dynamo, no codegen
    hw = hardware.detect() if device.type == "cuda" else hardware.get("cpu")
    check.hw_name = hw.name
    check.peak = hw.peak("fp32" if check.dtype is None or device.type == "cpu" else
                         {torch.bfloat16: "bf16", torch.float16: "fp16"}[check.dtype])
    started = time.perf_counter()
    report: dict[str, Any] = {"version": 1, "device": str(device), "tiny": args.tiny, "torch": torch.__version__,
                              "cuda": torch.version.cuda, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime()),
                              "sections": {}}
    for name in args.sections.split(","):
        print(f"== {name} (budget {(TINY_BUDGETS if args.tiny else BUDGETS)[name]:.0f} s)", flush=True)
        sec = report["sections"][name] = run_section(check, name)
        print(f"   {sec['status']} in {sec['seconds']:.1f} s" + (f": {sec.get('reason') or sec.get('error')}"
                                                                 if sec["status"] != "ok" else ""), flush=True)
        report["seconds"] = time.perf_counter() - started
        report["env"] = (report["sections"].get("env", {}).get("rows") or [{"hardware": check.hw_name}])[0]
        write(report, args.out)  # after every section: a killed run keeps what it measured
    print(markdown(report))
    return 0


def write(report: dict[str, Any], out: Path) -> None:
    tmp = out / "gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str, allow_nan=True) + "\n")
    tmp.replace(out / "gpu_check.json")
    (out / "gpu_check.md").write_text(markdown(report) + "\n")


if __name__ == "__main__":
    sys.exit(main())
