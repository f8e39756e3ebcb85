"""The training loop: train the best model a budget allows, never lose work, show where the budget goes.

One code path for one process and many: everything that differs between single-device and distributed training
(wrapping the model, the optimizer's sharding, gradient sync during accumulation, the data shard) sits behind
`Strategy`, which `train/distributed.py` subclasses. Checkpoints are sharded (`torch.distributed.checkpoint`) in
every case, so one process and many write and read the same format.

Per optimizer step the loop reads budget progress, sets the LR and the accumulation (batch ramp) from the
schedules, runs the micro-batches, clips, and steps. It reads values back from the device only at log steps;
a non-finite gradient is skipped by the fused optimizer on the device itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from cramlm.budget import cost as costs
from cramlm.budget import hardware
from cramlm.budget.flops import flops_per_token, optimizer_flops_per_step, param_counts
from cramlm.config import RunConfig
from cramlm.data.loader import BatchLoader
from cramlm.data.store import Dataset
from cramlm.errors import CramlmError
from cramlm.eval.heldout import heldout_loss
from cramlm.models.registry import build_model
from cramlm.train import autopilot
from cramlm.train import checkpoint as ckpt
from cramlm.train import cuda
from cramlm.train import muon_cost, preflight, sparsity
from cramlm.train.budget import Budget
from cramlm.train.logging import MetricsLog, ProgressLine
from cramlm.train.optim import build_optimizer, check_optimizer, clip_gradients, set_lr, skip_if_nonfinite
from cramlm.train.schedules import NoiseScale, accumulation_at, auto_accumulation, lr_factor, lr_scale
from cramlm.units import parse_interval

SPIKE_PATIENCE = 2  # consecutive log windows with a loss spike before rolling back
LOG_SECONDS = 20.0  # a progress record at least this often, however long the steps
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Strategy:
    """One process on one device. The hooks below are all the loop knows about parallelism."""

    name = "single"  # the resolved train.strategy (which optimizers can run)
    rank = 0
    world_size = 1  # data-parallel ranks
    devices = 1  # processes (devices) of the job, tensor-parallel ones included
    train_cfg: Any = None  # the train section with the autopilot's numbers, set by the trainer before `wrap`
    whole_gradients = True  # each rank holds whole gradients (not shards): the noise scale can be measured

    def __init__(self, device: torch.device):
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model the loop runs forward/backward on (DDP, FSDP, TP wrap it here)."""
        return model

    def build_optimizer(self, model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
        return build_optimizer(model, cfg)

    def no_sync(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Context for micro-batches whose gradients need no all-reduce yet."""
        return contextlib.nullcontext()

    def compile(self, model: nn.Module) -> nn.Module:
        return torch.compile(model, dynamic=False)  # the loader's batches have static shapes

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        return clip_gradients(model, max_norm)

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, loss: torch.Tensor,
             scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, step and zero the gradients; a step whose gradients or loss are not finite is skipped. Returns the
        gradient norm before clipping and the 0/1 skipped flag, as device tensors (no sync on the fused path)."""
        if scaler:
            scaler.unscale_(optimizer)
        grad_norm = self.clip(model, max_norm)
        found_inf = skip_if_nonfinite(optimizer, grad_norm, loss)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        elif optimizer.defaults.get("fused") or not bool(found_inf):  # fused: skipped on the device
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return grad_norm, found_inf

    def write_state(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Every rank writes its part of the model and optimizer state into the checkpoint dir `path`."""
        ckpt.write_state(path, model, optimizer)

    def read_state(self, path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        ckpt.read_state(path, model, optimizer)

    def consolidate(self, path: Path, run_dir: Path, cfg: RunConfig) -> None:
        """Rank 0 alone: `final/` (one safetensors file) from the checkpoint `path`."""
        with torch.device("meta"):  # the structure only: the weights are read from the checkpoint
            empty = build_model(cfg.model)
        ckpt.consolidate(path, run_dir, cfg, empty)

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (which checkpoint to load: rank 0 verifies, the others trust it)."""
        return obj

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Clock-driven decisions (stop, cut a step short, validate, checkpoint), made once for every rank."""
        return flags

    def average(self, values: torch.Tensor) -> torch.Tensor:
        """Mean over the data-parallel ranks (losses for the log, the noise-scale input)."""
        return values


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise CramlmError(f"train.device {name!r} is not a device (auto, cpu, cuda, cuda:1...)") from None


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on GPUs with native bf16 (fp16 + grad scaler on older ones), fp32 on CPU, where bf16 is slower."""
    return cuda.auto_precision(device) if precision == "auto" else precision


class Interval:
    """An event every N optimizer steps or every T seconds of budget time (`200steps`, `30m`)."""

    def __init__(self, text: str, what: str):
        q = parse_interval(text, what)
        self.by_steps, self.amount = q.kind == "steps", q.amount
        self.last = 0.0

    def due(self, step: int, seconds: float) -> bool:
        return (step if self.by_steps else seconds) - self.last >= self.amount

    def mark(self, step: int, seconds: float) -> None:
        self.last = float(step if self.by_steps else seconds)


@dataclass
class Guard:
    """Counters of the stability guards; part of every checkpoint."""

    skipped: int = 0  # non-finite steps since the last checkpoint or rollback
    skipped_total: int = 0
    spikes: int = 0  # consecutive log windows with a spike
    loss_ema: float | None = None
    rollbacks: int = 0
    lr_mult: float = 1.0


class Trainer:
    """Holds a run's model, optimizer, data, budget and logs; `fit()` trains until the budget is spent."""

    def __init__(self, cfg: RunConfig, data_dir: Path, run_dir: Path, strategy: Strategy | None = None,
                 progress: bool = True, choose_model: bool = False, resume: bool = False):
        self.data_dir, self.run_dir = Path(data_dir).resolve(), Path(run_dir)
        self.dataset = self.open_data(self.data_dir)
        cfg = self.shape(cfg)
        self.strategy = strategy or Strategy(resolve_device(cfg.train.device))
        self.device = self.strategy.device
        self.precision = resolve_precision(cfg.train.precision, self.device)
        if self.precision == "fp16" and self.device.type != "cuda":
            raise CramlmError("train.precision=fp16 needs a GPU; use fp32 or bf16 on CPU")
        self.dtype = DTYPES[self.precision]
        cuda.configure(self.device, cfg.train.deterministic)  # TF32 before a peak is measured, cuBLAS workspace
        self.hw = hardware.resolve(cfg.budget.hardware, cfg.budget.price_per_hour)
        # devices of this session: every process of a torchrun job (MFU, price), never fewer than budget.count
        self.devices = max(cfg.budget.count, self.strategy.devices)
        self.peak = self.hw.peak(self._peak_dtype()) * self.devices
        # the numbers left at `auto` (and the model, for --model auto), decided once and kept by checkpoints
        self.given = cfg  # what the user asked for: config.yaml keeps its `auto`s
        self.auto_batch, self.auto_lr = cfg.train.batch_size == "auto", cfg.train.lr == "auto"
        self.decision = self._decide(cfg, choose_model, resume)
        self.cfg = cfg = autopilot.apply(cfg, self.decision)
        t = self.strategy.train_cfg = cfg.train
        check_optimizer(t.optimizer, self.strategy.name, resumed=resume)  # a resumed run keeps its optimizer
        self.objective = "mlm" if cfg.model.arch == "encoder" else "causal"
        world = self.strategy.world_size
        if t.batch_size % (t.micro_batch_size * world):
            raise CramlmError(f"train.batch_size={t.batch_size} must be a multiple of train.micro_batch_size="
                              f"{t.micro_batch_size} x {world} process(es)")
        self.micro = t.micro_batch_size
        self.max_accum = t.batch_size // (t.micro_batch_size * world)
        self.seq_len = self.dataset.seq_len
        self.fpt = flops_per_token(cfg.model, self.seq_len, t.mask_rate if self.objective == "mlm" else None)

        torch.manual_seed(t.seed)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
        self.module = build_model(cfg.model).to(self.device)
        mask_rate = t.mask_rate if self.objective == "mlm" else None
        self.sparsity = sparsity.attach(self.module, cfg, self.seq_len, mask_rate, self.device, self.precision)
        self.n_params = sum(p.numel() for p in self.module.parameters())
        self.model = self.strategy.wrap(self.module)
        self.optimizer = self.strategy.build_optimizer(self.model, t)
        use_compile = self.device.type == "cuda" if t.compile == "auto" else bool(t.compile)
        self.forward = self.strategy.compile(self.model) if use_compile else self.model
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self.loader = self.make_loader()
        self.fps = optimizer_flops_per_step(cfg.model, t.optimizer)
        self.budget = Budget.from_config(cfg.budget, flops_per_token=self.fpt, flops_per_step=self.fps,
                                         usd_per_hour=self.hw.usd_per_hour, devices=self.devices)
        self.checkpoint_every = Interval(t.checkpoint_every, "train.checkpoint_every")
        self.val_every = Interval(t.val_every, "train.val_every")
        self.guard = Guard()
        self.noise = NoiseScale()
        # the noise scale drives the `auto` ramp, and caps an auto batch where gradients are not sharded
        self.measure_noise = t.batch_ramp == "auto" or (self.auto_batch and self.strategy.whole_gradients)
        self.noise_cap: int | None = None  # auto batch: the largest batch (sequences) the critical batch allows
        self.accum = min(2, self.max_accum) if t.batch_ramp == "auto" else 1
        self.logged_at: float | None = None
        self.step = 0
        self.stop_signal: int | None = None
        self.train_seconds = 0.0  # time in forward/backward/optimizer, for tokens/s and MFU
        self.eval_seconds: float | None = None
        self.save_seconds: float | None = None
        self.last_val: float | None = None
        self.last_loss: float | None = None
        self.log: MetricsLog | None = None
        self.view = ProgressLine(progress and self.strategy.is_main)
        self._reset_window()

    def _decide(self, cfg: RunConfig, choose_model: bool, resume: bool) -> autopilot.Decision:
        """The autopilot's decision: a resumed run keeps the one its checkpoint holds; rank 0 decides for all."""
        if resume:
            path = self._latest_checkpoint()
            saved = ckpt.load_checkpoint(path)["state"].get("autopilot") if path is not None else None
            if saved is not None:
                return autopilot.from_dict(saved)
        decision, error = None, None
        if self.strategy.is_main:
            def measure(model_cfg: Any, micro: int) -> float:
                return autopilot.measure_tokens_per_s(model_cfg, cfg, micro, self.device, self.dtype)

            def time_newton_schulz(model_cfg: Any) -> float:
                return muon_cost.newton_schulz_seconds(model_cfg, self.device)
            try:
                decision = autopilot.decide(
                    cfg, choose_model=choose_model, device=self.device, dtype=self.dtype, strategy=self.strategy.name,
                    peak_flops=self.peak / self.devices, usd_per_device_hour=self.hw.usd_per_hour,
                    devices=self.devices, world_size=self.strategy.world_size, measure=measure,
                    time_newton_schulz=time_newton_schulz, native_bf16=muon_cost.native_bf16(self.device),
                    memory_gb=self.hw.memory_gb)
            except CramlmError as e:
                error = str(e)
        decision, error = self.strategy.share((decision, error))
        if error is not None:
            raise CramlmError(error)
        return decision

    # ------------------------------------------------------------ data hooks (`finetune/run.py` overrides them)

    def open_data(self, data_dir: Path) -> Any:
        """What the run reads: a prepared dataset dir (`seq_len`, `vocab_size`, `tokenizer_path`, splits)."""
        return Dataset(data_dir)

    def shape(self, cfg: RunConfig) -> RunConfig:
        """`cfg` fitted to the data: pretraining takes the dataset's vocabulary and sequence length."""
        return with_dataset_shape(cfg, self.dataset)

    def make_loader(self) -> Any:
        """The training batches (`next_batch(n)`, `state_dict()`, `load_state_dict()`)."""
        t = self.cfg.train
        return BatchLoader(self.dataset, "train", self.objective, t.mask_rate, t.seed, self.strategy.rank,
                           self.strategy.world_size, t.whole_word_mask)

    def heldout(self) -> float:
        """The held-out loss the run reports and validates with."""
        t = self.cfg.train
        return heldout_loss(self.module, self.dataset, self.objective, t.mask_rate, t.val_batches, self.micro,
                            seed=t.seed, dtype=self.dtype)

    def saved_config(self) -> RunConfig:
        """The config for `config.yaml`: the model actually built, the other numbers as the user gave them."""
        cfg = self.given.model_copy(deep=True)
        cfg.model = self.cfg.model
        return cfg

    def _peak_dtype(self) -> str:
        if self.precision != "fp32":
            return self.precision
        return "tf32" if self.device.type == "cuda" and torch.cuda.get_device_capability(self.device)[0] >= 8 \
            else "fp32"

    # ------------------------------------------------------------ one optimizer step

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def _batches(self, n: int) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(n):
            batch = self.loader.next_batch(self.micro)
            yield cuda.to_device(batch, self.device)

    def _cut_short(self) -> bool:
        """Stop accumulating mid-step: a wall-clock budget ran out or a signal came in."""
        return self.strategy.agree(self.stop_signal is not None or (self.budget.timed and self.budget.exhausted))[0]

    def train_step(self) -> None:
        t, progress = self.cfg.train, self.budget.progress()
        if self.sparsity:  # SWAT's schedule runs on the budget's clock
            self.sparsity.update(progress, self.budget.tokens)
        world = self.strategy.world_size
        accum = self.accum
        if t.batch_ramp != "auto":  # the ramp counts global micro-batches, so it is the same on any world size
            accum = -(-accumulation_at(progress, t.batch_ramp, self.max_accum * world, t.ramp_end) // world)
        world_batch = self.micro * world
        if self.noise_cap is not None:
            accum = min(accum, max(1, self.noise_cap // world_batch))
        if self.auto_lr:  # the rule's LR for the batch this step uses
            peak = autopilot.choose_lr(accum * world_batch, autopilot.lr_width(self.cfg.model),
                                       self.decision.optimizer)
        else:
            peak = t.lr * lr_scale(accum * world_batch, t.batch_size, t.lr_scaling)
        lr = peak * self.guard.lr_mult * lr_factor(progress, t.schedule, warmup=t.warmup, lr_start=t.lr_start,
                                                   lr_end=t.lr_end, cooldown=t.cooldown)
        set_lr(self.optimizer, lr)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        small_sq = None
        done = 0
        for i, batch in enumerate(self._batches(accum)):
            # a budget that runs out mid-step makes this micro-batch the last: it synchronises the gradients
            last = i == accum - 1 or (i > 0 and self._cut_short())
            with (contextlib.nullcontext() if last else self.strategy.no_sync(self.model)), self._autocast():
                loss = self.forward(**batch).loss
                scaled = loss.float() / accum
                self.strategy.backward(self.scaler.scale(scaled) if self.scaler else scaled)
            loss_sum += loss.detach().float()
            done += 1
            if self.measure_noise and i == 0 and accum > 1:
                unscale = self.scaler.get_scale() ** 2 if self.scaler else 1.0
                small_sq = self.strategy.average(_grad_sq_norm(self.module)) * accum**2 / unscale
            if last:
                break
        if done < accum:  # the budget ran out mid-step: average over the micro-batches actually run
            for p in self.module.parameters():
                if p.grad is not None:
                    p.grad.mul_(accum / done)
        grad_norm, found_inf = self.strategy.step(self.model, self.optimizer, t.grad_clip, loss_sum, self.scaler)
        if small_sq is not None and done > 1:
            self.noise.update(small_sq, grad_norm.float() ** 2, self.micro, done * world_batch, ok=found_inf == 0)

        step_loss = loss_sum / done
        ok = found_inf == 0
        w = self.window
        w["loss"] += torch.where(ok, step_loss, 0.0)
        w["ok"] += ok.float()
        w["bad"] += found_inf
        w["grad_norm"] = grad_norm.detach().float()
        w["steps"] += 1
        w["tokens"] += done * world_batch * self.seq_len
        self.step += 1
        self.budget.add(steps=1, tokens=done * world_batch * self.seq_len)
        self.lr, self.batch_size = lr, done * world_batch
        self.train_seconds += time.perf_counter() - started
        self._update_reserve()

    def _reset_window(self) -> None:
        zero = lambda: torch.zeros((), device=self.device)  # noqa: E731
        self.window: dict[str, Any] = {"loss": zero(), "ok": zero(), "bad": zero(), "grad_norm": zero(),
                                       "steps": 0, "tokens": 0, "train_seconds": self.train_seconds}

    # ------------------------------------------------------------ logging and guards

    def write_log(self) -> dict[str, Any]:
        """Read the window's numbers back from the device (the one sync), apply the guards, log."""
        w = self.window
        loss_sum, ok, bad = self.strategy.average(torch.stack([w["loss"], w["ok"], w["bad"]])).tolist()
        bad = round(bad)
        loss = loss_sum / ok if ok else float("nan")
        seconds = self.train_seconds - w["train_seconds"]
        tokens_per_s = w["tokens"] / seconds if seconds > 0 else 0.0
        spent = self.budget.spent
        cost = self.cost()
        record = {
            "step": self.step, "progress": self.budget.progress(), "tokens": spent["tokens"],
            "flops": spent["flops"], "seconds": spent["seconds"], "loss": loss if ok else None, "lr": self.lr,
            "batch_size": self.batch_size, "grad_norm": float(w["grad_norm"]), "tokens_per_s": tokens_per_s,
            "mfu": self.mfu(w["tokens"], w["steps"], seconds), "skipped": bad,
            "eta": self.budget.eta(), "usd": cost["usd"], "co2_kg": cost["co2_kg"],
        }
        if self.measure_noise:
            record["noise_scale"] = self.noise.value()
        if self.cfg.train.batch_ramp == "auto":
            self.accum = auto_accumulation(record["noise_scale"], self.accum, self.micro * self.strategy.world_size,
                                           self.max_accum)
        if self.auto_batch:
            self._retarget(record.get("noise_scale"))
        self.logged_at = self.budget.seconds
        self.last_loss = record["loss"] if ok else self.last_loss
        self._reset_window()
        self._log(record)
        self.view.update(record)
        self._check_guards(loss if ok else None, bad)
        return record

    def _retarget(self, noise_scale: float | None) -> None:
        """Auto batch: the ramp's target from the tokens the rest of a time budget buys at the throughput measured
        so far, and the growth capped at the critical batch (the measured gradient noise scale)."""
        t, world_micro = self.cfg.train, self.micro * self.strategy.world_size
        eta = self.budget.eta() if self.budget.timed else None
        if eta is not None and self.train_seconds > 0:
            left = max(0.0, eta - self.budget.reserve)
            sequences = self.budget.tokens / self.seq_len * (1.0 + left / self.budget.seconds)
            target = autopilot.choose_batch(sequences, world_micro, max(world_micro, t.max_batch_size),
                                            t.batch_ramp, t.ramp_end)
            self.max_accum = target // world_micro
        if noise_scale is not None and self.noise.updates >= autopilot.NOISE_WARMUP:
            self.noise_cap = world_micro * max(2, math.ceil(noise_scale / world_micro))

    def _log(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(record)

    def _check_guards(self, loss: float | None, bad: int) -> None:
        g, t = self.guard, self.cfg.train
        g.skipped += bad
        g.skipped_total += bad
        if g.skipped > t.max_bad_steps:
            self.rollback(f"{g.skipped} non-finite steps")
            return
        if loss is None:
            return
        if g.loss_ema is not None and loss > t.spike_factor * g.loss_ema:
            g.spikes += 1
            if g.spikes >= SPIKE_PATIENCE:
                self.rollback(f"loss {loss:.3f} above {t.spike_factor:g}x its running mean {g.loss_ema:.3f}")
            return
        g.spikes = 0
        g.loss_ema = loss if g.loss_ema is None else 0.9 * g.loss_ema + 0.1 * loss

    def rollback(self, why: str) -> None:
        """Back to the last checkpoint's weights and optimizer state, with a lower LR; the data moves on."""
        g = self.guard
        g.lr_mult *= self.cfg.train.rollback_lr_factor
        g.rollbacks += 1
        g.skipped = g.spikes = 0
        path = self._latest_checkpoint()
        if path is not None:
            self.strategy.read_state(path, self.model, self.optimizer)
        event = {"event": "rollback", "step": self.step, "reason": why, "to": path.name if path else None,
                 "lr_mult": g.lr_mult}
        self._log(event)
        self.view.message(f"rollback at step {self.step}: {why}; LR x{g.lr_mult:g}"
                          + (f", weights from {path.name}" if path else ""))

    def _update_reserve(self) -> None:
        """Keep back, from a wall-clock budget, the time the final evaluation and checkpoint will take."""
        micro_steps = self.budget.tokens / (self.micro * self.strategy.world_size * self.seq_len)
        per_micro = self.train_seconds / max(1.0, micro_steps)
        eval_s = self.eval_seconds if self.eval_seconds is not None else 0.5 * self.cfg.train.val_batches * per_micro
        save_s = self.save_seconds if self.save_seconds is not None else 16 * self.n_params / 200e6
        self.budget.reserve = eval_s + 1.5 * save_s

    def cost(self) -> dict[str, float]:
        """Cost of the device-seconds spent so far (every session of the run, on however many devices)."""
        b = self.cfg.budget
        return costs.run_cost(self.budget.device_seconds, self.hw, 1, b.pue, b.region)

    # ------------------------------------------------------------ evaluation and checkpoints

    def validate(self) -> float:
        started = time.perf_counter()
        self.last_val = self.heldout()
        self.eval_seconds = time.perf_counter() - started
        self._log({"event": "val", "step": self.step, "val_loss": self.last_val, "progress": self.budget.progress(),
                   "seconds": self.budget.seconds})
        return self.last_val

    def save(self) -> Path | None:
        """Checkpoint (collective): every rank writes its shards, rank 0 adds the rest and commits the directory."""
        started = time.perf_counter()
        self.guard.skipped = 0  # the guard counts non-finite steps since the last checkpoint (this one)
        tmp = ckpt.begin(self.run_dir, self.step) if self.strategy.is_main else None
        tmp = self.strategy.share(tmp)  # also a barrier: the directory exists before anyone writes into it
        self.strategy.write_state(tmp, self.model, self.optimizer)
        path = None
        if self.strategy.is_main:
            rng = {"torch": torch.get_rng_state()}
            if self.device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(self.device)
            trainer_state = {"rng": rng, "window": {k: v for k, v in self.window.items()
                                                    if isinstance(v, torch.Tensor)},
                             "noise": self.noise.state_dict(),
                             "scaler": self.scaler.state_dict() if self.scaler else None}
            window_counts = {k: v for k, v in self.window.items() if not isinstance(v, torch.Tensor)}
            meta = {
                "budget": self.budget.state_dict(), "loader": self.loader.state_dict(), "guard": asdict(self.guard),
                "accum": self.accum, "batch_target": self.max_accum * self.micro * self.strategy.world_size,
                "noise_cap": self.noise_cap,
                "autopilot": self.decision.to_dict(), "window": window_counts, "train_seconds": self.train_seconds,
                "intervals": {"checkpoint": self.checkpoint_every.last, "val": self.val_every.last},
                "data_dir": str(self.data_dir), "last_val": self.last_val, "last_loss": self.last_loss,
                "sparsity": self.sparsity.state_dict() if self.sparsity else None,
            }
            path = ckpt.commit(tmp, self.step, trainer_state, meta, keep=self.cfg.train.keep_checkpoints)
        path = self.strategy.share(path)
        self.save_seconds = time.perf_counter() - started
        return path

    def _latest_checkpoint(self) -> Path | None:
        """The newest valid checkpoint, chosen by rank 0 (which verifies the checksums) for every rank."""
        return self.strategy.share(ckpt.latest_checkpoint(self.run_dir) if self.strategy.is_main else None)

    def restore(self) -> Path:
        """Continue from the newest valid checkpoint: weights, optimizer, RNG, data position, budget, guards."""
        path = self._latest_checkpoint()
        if path is None:
            raise CramlmError(f"{self.run_dir} has no valid checkpoint to resume from")
        self.strategy.read_state(path, self.model, self.optimizer)
        state = ckpt.load_checkpoint(path)
        meta, extra = state["state"], state["trainer"]
        if self.scaler and extra.get("scaler"):
            self.scaler.load_state_dict(extra["scaler"])
        torch.set_rng_state(extra["rng"]["torch"])
        if "cuda" in extra["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(extra["rng"]["cuda"], self.device)
        self.noise.load_state_dict(extra["noise"])
        self.window = {**meta["window"], **{k: v.to(self.device) for k, v in extra["window"].items()}}
        self.loader.load_state_dict(meta["loader"])  # a global position: any world size continues it
        self.budget.load_state_dict(meta["budget"])
        self.guard = Guard(**meta["guard"])
        self.accum = meta["accum"]
        if self.auto_batch:  # the re-estimated target and the cap, in sequences: any world size reads them
            self.max_accum = max(1, meta["batch_target"] // (self.micro * self.strategy.world_size))
            self.noise_cap = meta["noise_cap"]
        self.train_seconds = meta["train_seconds"]
        self.checkpoint_every.last = meta["intervals"]["checkpoint"]
        self.val_every.last = meta["intervals"]["val"]
        self.last_val, self.last_loss = meta["last_val"], meta["last_loss"]
        if self.sparsity and meta.get("sparsity"):
            self.sparsity.load_state_dict(meta["sparsity"])
        self.step = meta["step"]
        return path

    # ------------------------------------------------------------ the run

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT ask the loop to checkpoint and stop; a second SIGINT stops at once."""
        def ask_to_stop(signum: int, frame: Any) -> None:
            self.stop_signal = signum
            signal.signal(signal.SIGINT, signal.default_int_handler)

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, ask_to_stop)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def fit(self, resumed_from: Path | None = None) -> dict[str, Any]:
        """Train until the budget is spent (or a signal arrives); returns the content of `results/train.json`.
        `resumed_from`: the checkpoint `restore()` read, for a resumed run."""
        t = self.cfg.train
        if resumed_from is not None:
            self.view.message(f"resuming {self.run_dir} from {resumed_from.name} "
                              f"({100 * self.budget.progress():.1f}% of the budget spent)")
        else:
            self.budget.charge(self.decision.probe_seconds)  # measuring the device was part of the run
        self.view.message(self.decision.line())
        if self.strategy.is_main:
            self.log = MetricsLog(self.run_dir, t.tensorboard, t.wandb, self.cfg.model_dump(mode="json"))
            self._log({"event": "start" if resumed_from is None else "resume", "step": self.step,
                       "device": str(self.device), "precision": self.precision, "hardware": self.hw.name,
                       "flops_per_token": self.fpt, "autopilot": self.decision.to_dict()})
        self.module.train()
        self._update_reserve()
        self.budget.start()
        try:
            with self._signals():
                while True:
                    exhausted, signalled = self.strategy.agree(self.budget.exhausted, self.stop_signal is not None)
                    if signalled:
                        self.stop_signal = self.stop_signal or signal.SIGTERM  # rank 0 got it
                        return self._interrupted()
                    if exhausted:
                        break
                    self.train_step()
                    seconds = self.budget.seconds
                    if (self.step % t.log_every == 0 or self.logged_at is None
                            or seconds - self.logged_at >= LOG_SECONDS):
                        self.write_log()
                    running = not self.budget.exhausted
                    val, save = self.strategy.agree(running and self.val_every.due(self.step, seconds),
                                                    running and self.checkpoint_every.due(self.step, seconds))
                    if val:
                        self.val_every.mark(self.step, seconds)
                        self.validate()
                    if save:
                        self.checkpoint_every.mark(self.step, seconds)
                        self.save()
                return self._finish()
        finally:
            self.view.close()
            if self.log is not None:
                self.log.close()

    def _interrupted(self) -> dict[str, Any]:
        path = self.save()
        name = signal.Signals(self.stop_signal).name
        self._log({"event": "interrupted", "signal": name, "step": self.step,
                   "checkpoint": path.name if path else None})
        self.view.message(f"{name}: checkpoint {path} written; continue with `cramlm train --resume {self.run_dir}`")
        return {"status": "interrupted", "signal": name, "step": self.step, "checkpoint": str(path)}

    def _finish(self) -> dict[str, Any]:
        if self.window["steps"]:
            self.write_log()
        val_loss = self._final_validation()
        path = self.save()
        results = self.results(val_loss)
        if self.strategy.is_main:
            self.strategy.consolidate(path, self.run_dir, self.cfg)
            results = self.results(val_loss)  # seconds and cost now include writing final/
            _write_json(self.run_dir / "results" / "train.json", results)
            _write_json(self.run_dir / "results" / "cost.json", {**results["cost"], "hardware": self.hw.name,
                                                                 "count": self.devices,
                                                                 "seconds": results["seconds"]})
        return results

    def _final_validation(self) -> float | None:
        """The held-out loss at the end, or None when it fails: whatever goes wrong there, the weights are saved."""
        try:
            return self.validate()
        except Exception as e:  # whatever the cause: the weights matter more than the last number
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            self._log({"event": "val_failed", "step": self.step, "error": reason})
            self.view.message(f"final evaluation failed ({reason}); saving the weights without a val loss")
            return None

    def mfu(self, tokens: int, steps: int, seconds: float) -> float | None:
        """Model FLOPs (and the optimizer's matmuls) per second over the device's peak."""
        if not self.peak or seconds <= 0:
            return None
        return (self.fpt * tokens + self.fps * steps) / seconds / self.peak

    def results(self, val_loss: float | None) -> dict[str, Any]:
        spent = self.budget.spent
        tokens_per_s = spent["tokens"] / self.train_seconds if self.train_seconds else 0.0
        return {
            "status": "completed", "budget": self.cfg.budget.limit, "steps": spent["steps"],
            "tokens": spent["tokens"], "flops": spent["flops"], "seconds": spent["seconds"],
            "train_seconds": self.train_seconds, "train_loss": self.last_loss, "val_loss": val_loss,
            "tokens_per_second": tokens_per_s, "mfu": self.mfu(spent["tokens"], spent["steps"], self.train_seconds),
            "flops_per_token": self.fpt, "params": param_counts(self.cfg.model)["total"],
            "skipped_steps": self.guard.skipped_total, "rollbacks": self.guard.rollbacks,
            "device": str(self.device), "hardware": self.hw.name, "precision": self.precision,
            "cost": self.cost(), "data_dir": str(self.data_dir), "autopilot": self.decision.to_dict(),
            **({"sparsity": self.sparsity.summary(spent["tokens"])} if self.sparsity else {}),
        }


def _grad_sq_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.stack([g.float().pow(2).sum() for g in grads]).sum()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def with_dataset_shape(cfg: RunConfig, dataset: Dataset) -> RunConfig:
    """A copy of `cfg` whose vocabulary and sequence length are the dataset's (the model must match its data)."""
    cfg = cfg.model_copy(deep=True)
    cfg.model.vocab_size = cfg.data.vocab_size = dataset.vocab_size
    cfg.model.max_seq_len = cfg.data.seq_len = dataset.seq_len
    return cfg


def train(cfg: RunConfig, data_dir: Path, out_dir: Path, resume: bool = False, progress: bool = True,
          strategy: Strategy | None = None, choose_model: bool = False) -> dict[str, Any]:
    """Train under `cfg.budget` on the dataset in `data_dir`, writing the run dir `out_dir`.

    `choose_model`: the autopilot picks the model size for the budget (`--model auto`); its `arch` is kept.

    A fresh run refuses a dir that already holds a run; `resume=True` continues its newest valid checkpoint.
    Everything is checked (`preflight`) and a resumed run's checkpoint read before the first file is written.
    Returns the content of `results/train.json` (or a short `status: interrupted` record after a signal).
    """
    out_dir = Path(out_dir)
    preflight.check_run_dir(out_dir, data_dir, resume)
    dataset = Dataset(data_dir)
    preflight.check_val_split(dataset)
    if resume:
        preflight.check_resume(out_dir, dataset, with_dataset_shape(cfg, dataset))
    trainer = Trainer(cfg, data_dir, out_dir, strategy, progress, choose_model=choose_model and not resume,
                      resume=resume)
    resumed_from = trainer.restore() if resume else None
    if trainer.strategy.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        trainer.saved_config().save(out_dir / "config.yaml")  # on resume: with what changed (a larger budget)
        shutil.copyfile(trainer.dataset.tokenizer_path, out_dir / "tokenizer.json")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        return trainer.fit(resumed_from)


def data_dir_of(run_dir: Path) -> Path:
    """The dataset dir a run was trained on, from its newest checkpoint (for `--resume` without DATA_DIR)."""
    for path in reversed(ckpt.checkpoint_dirs(run_dir)):
        try:
            return Path(json.loads((path / ckpt.STATE).read_text())["data_dir"])
        except (OSError, ValueError, KeyError):
            continue
    raise CramlmError(f"{run_dir} has no checkpoint that names its dataset: pass DATA_DIR as well")
