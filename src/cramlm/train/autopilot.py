"""The budget decides: model size, micro-batch, batch-size target and peak LR from what a budget buys here.

`decide()` turns a budget (wall-clock, dollars, FLOPs, tokens or steps) and a device into the numbers a recipe
leaves at `auto`, by rules written out in docs/train.md ("The budget decides"):

- **tokens the budget buys**: time and dollar budgets times the tokens/s measured by a few real training steps on
  this device (charged to the budget); a FLOP budget over the model's FLOPs per token; a token budget as given.
- **model** (`--model auto`): Chinchilla's compute-optimal size for the compute those tokens cost (Hoffmann et al.
  2022: N = sqrt(C / 120)), counted in non-embedding parameters (the embedding costs no FLOPs per token, and at
  small scale it would otherwise be most of the model), the nearest member of `models.family` in log scale.
- **micro-batch**: the largest power of two up to `MICRO_MAX` (per device type) whose forward/backward takes at
  most `STEP_SHARE` of a time budget, so that a short budget still gets many steps and is kept to the second.
- **batch target**: the largest batch (a power-of-two multiple of the micro-batch) for which the ramp still gives
  `MIN_STEPS` optimizer steps over the tokens the budget buys, at most `train.max_batch_size` (the recipe's
  maximum, 8192 for Cramming). During the run the trainer re-estimates it from the measured throughput and caps it
  by the critical batch measured from the gradient noise scale (`schedules.NoiseScale`).
- **optimizer** (`train.optimizer: auto`): Muon where PyTorch's Muon can run (one device, DDP: whole matrices on
  every rank) and pays here (`muon_cost.py`: its bf16 Newton-Schulz matmuls, timed on this device, take at most
  `muon_cost.MAX_SHARE` of a time budget; for budgets that count work, the device has native bf16), else AdamW.
- **peak LR**: square-root scaling with the batch (Malladi et al. 2022) up to a stability ceiling that falls as
  1/width (the Adam rule of muP, Yang et al. 2022): lr = LR_CEILING x (D_REF / d_model) x sqrt(B / (B + B_SAT)),
  times MUON_LR_FACTOR for Muon. At Cramming's 16x768 and batch 8192 this is its published 1e-3 (AdamW).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from cramlm.budget.flops import flops_per_token, param_counts
from cramlm.config import ModelConfig, RunConfig
from cramlm.errors import CramlmError
from cramlm.models.family import Shape, family
from cramlm.train import muon_cost
from cramlm.train.optim import resolve_optimizer
from cramlm.units import Quantity, format_count, format_seconds, parse_quantity

MICRO_MAX = {"cpu": 32, "cuda": 128}  # sequences; on a CPU larger micro-batches gain no speed
STEP_SHARE = 0.01  # a micro-batch takes at most this share of a time budget
MIN_STEPS = 1500  # optimizer steps a budget should buy before the batch grows past the micro-batch
LR_CEILING, D_REF, B_SAT = 1.0e-3, 768, 16  # lr = LR_CEILING * D_REF / d * sqrt(B / (B + B_SAT))
# Muon's best peak LR over AdamW's, same model, data and budget: measured ~2x (BENCHMARKS.md "Muon vs AdamW");
# Muon's update is scaled to AdamW's RMS, but its orthogonalised steps tolerate a larger one.
MUON_LR_FACTOR = 2.0
ASSUMED_MFU = 0.4  # before a measurement (and for devices that are not here)
EVAL_SHARE = 0.03  # the final evaluation takes at most this share of a time budget
MAX_PROBES = 3  # models measured on this device while choosing one
NOISE_WARMUP = 20  # noise-scale measurements before it caps the batch (the estimate is noisy)


@dataclass
class Decision:
    """What the budget decided, recorded in `results/train.json` and checkpoints; `line()` prints it."""

    budget: str
    model: str  # a family member, or the model given
    params: int
    tokens_per_s: float  # measured here (or assumed from the peak, `measured` False)
    measured: bool
    tokens: float  # tokens the budget buys (time budgets: an estimate)
    micro_batch_size: int
    batch_size: int  # the ramp's target (global sequences)
    lr: float
    steps: int  # optimizer steps expected over the ramp
    val_batches: int
    probe_seconds: float = 0.0  # spent measuring, charged to the budget
    world_size: int = 1  # data-parallel ranks
    model_config: dict[str, Any] | None = None  # the chosen model's `model` section (None: the model was given)
    optimizer: str = "adamw"  # the optimizer `lr` is for (decisions written before the field trained AdamW)
    optimizer_note: str = ""  # why `auto` chose it where the reason is not the strategy (Muon's cost here)

    def line(self) -> str:
        """`budget 5m ~ 1.9M tokens at 6.3k tok/s -> encoder-4x256 (4.8M params), batch ramps 32 -> 128 sequences
        (micro-batch 32), Muon, peak LR 2.4e-03, ~420 optimizer steps`"""
        rate = f" at {format_count(self.tokens_per_s)} tok/s" + ("" if self.measured else " (assumed)")
        return (f"budget {self.budget} ~ {format_count(self.tokens)} tokens{rate} -> {self.model} "
                f"({format_count(self.params)} params), {self.schedule()}")

    def schedule(self) -> str:
        """The batch ramp (from one micro-batch per device), optimizer, peak LR and steps."""
        start = self.micro_batch_size * self.world_size
        batch = (f"batch ramps {start} -> {self.batch_size} sequences" if self.batch_size > start
                 else f"batch {self.batch_size} sequences")
        name = {"adamw": "AdamW", "muon": "Muon"}.get(self.optimizer, self.optimizer)
        if self.optimizer_note:
            name += f" ({self.optimizer_note})"
        return (f"{batch} (micro-batch {self.micro_batch_size}), {name}, peak LR {self.lr:.2e}, "
                f"~{self.steps:,} optimizer steps")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "line": self.line(), "schedule": self.schedule()}


# ---------------------------------------------------------------- the rules, as pure functions


def non_embedding_params(cfg: ModelConfig) -> int:
    return param_counts(cfg)["non_embedding"]


def choose_shape(compute: float, members: list[tuple[Shape, ModelConfig]]) -> tuple[Shape, ModelConfig]:
    """The member whose non-embedding size is nearest (log scale) to Chinchilla's optimum for `compute` FLOPs."""
    from cramlm.budget.scaling import compute_optimal

    target = compute_optimal(max(compute, 1.0))[0]
    return min(members, key=lambda m: abs(math.log(non_embedding_params(m[1]) / target)))


def ramp_steps(sequences: float, micro: int, target: int, ramp: str, ramp_end: float) -> int:
    """Optimizer steps that `sequences` make when the batch ramps from `micro` to `target` (schedules.py)."""
    from cramlm.train.schedules import accumulation_at

    if sequences <= 0:
        return 0
    slices = 200
    steps = 0.0
    for i in range(slices):
        accum = accumulation_at((i + 0.5) / slices, ramp, target // micro, ramp_end)
        steps += sequences / slices / (accum * micro)
    return max(1, round(steps))


def choose_batch(sequences: float, micro: int, max_batch: int, ramp: str, ramp_end: float,
                 min_steps: int = MIN_STEPS) -> int:
    """The largest power-of-two multiple of `micro` up to `max_batch` that still buys `min_steps` steps."""
    batch = micro
    while batch * 2 <= max_batch and ramp_steps(sequences, micro, batch * 2, ramp, ramp_end) >= min_steps:
        batch *= 2
    return batch


def choose_lr(batch: int, width: int, optimizer: str) -> float:
    """Square-root scaling with the batch up to a ceiling that falls as 1/width (see the module docstring); Muon
    takes MUON_LR_FACTOR times AdamW's. `optimizer` is resolved (adamw or muon)."""
    factor = MUON_LR_FACTOR if optimizer == "muon" else 1.0
    return factor * LR_CEILING * D_REF / width * math.sqrt(batch / (batch + B_SAT))


def lr_width(model_cfg: ModelConfig) -> int:
    """The width `choose_lr` scales by: under muP the per-group multipliers already follow the width, so the
    rule sees the base width the LR is defined at."""
    if model_cfg.parametrization == "mup":
        return model_cfg.base_width or model_cfg.d_model
    return model_cfg.d_model


def choose_micro(seconds_per_sequence: float | None, budget_seconds: float | None, device_type: str,
                 batch_cap: int | None = None) -> int:
    """The largest power of two up to MICRO_MAX whose step takes at most STEP_SHARE of a time budget."""
    micro = MICRO_MAX.get(device_type, MICRO_MAX["cuda"])
    if batch_cap is not None:
        micro = min(micro, 1 << max(0, batch_cap.bit_length() - 1))
    if seconds_per_sequence and budget_seconds:
        while micro > 1 and micro * seconds_per_sequence > STEP_SHARE * budget_seconds:
            micro //= 2
    return micro


def fit_micro(model_cfg: ModelConfig, micro: int, seq_len: int, mask_rate: float | None, memory_gb: float | None,
              devices: int, mixed: bool) -> int:
    """Halve `micro` until the model states and activations fit in 90% of the device memory (the most frugal
    on-device strategy: ZeRO-3 over `devices`); a model that does not fit at one sequence is a CramlmError."""
    from cramlm.budget import memory

    if not memory_gb:
        return micro
    params = param_counts(model_cfg)["total"]
    while True:
        act = memory.activation_bytes(model_cfg, micro, seq_len, mask_rate, mixed)
        gb = memory.memory_per_device(params, devices, act, mixed)
        if memory.first_fit(gb, memory_gb, memory.STRATEGIES[:-1]) is not None:
            return micro
        if micro == 1:
            raise CramlmError(f"the model ({format_count(params)} params) does not fit one sequence of {seq_len} "
                              f"tokens in {memory_gb:.0f} GB ({min(gb.values()):.1f} GB needed even with ZeRO-3): "
                              "choose a smaller --model or more devices")
        micro //= 2


def eval_batches(requested: int, seconds_per_micro: float, budget_seconds: float | None) -> int:
    """Final-evaluation batches that fit in EVAL_SHARE of a time budget (forward only: ~1/3 of a training step)."""
    if not budget_seconds:
        return requested
    return max(2, min(requested, int(EVAL_SHARE * budget_seconds / (seconds_per_micro / 3))))


# ---------------------------------------------------------------- measuring this device


def measure_tokens_per_s(model_cfg: ModelConfig, cfg: RunConfig, micro: int, device: torch.device,
                         dtype: torch.dtype | None, steps: int = 2) -> float:
    """Training tokens/s of `model_cfg` here: AdamW steps on random tokens after one untimed warm-up step.

    AdamW whatever `train.optimizer` is: each probe step is one micro-batch, but a run's optimizer step serves a
    whole batch, so Muon's Newton-Schulz matmuls (a fixed cost per step, minutes for a 120M model on a CPU without
    native bf16) would be charged to a few sequences; `decide` times them per optimizer step instead
    (`muon_cost.py`), and the run's own throughput includes them."""
    from cramlm.models.registry import build_model
    from cramlm.train.optim import build_optimizer

    rng = torch.get_rng_state()
    try:
        model = build_model(model_cfg).to(device).train()
        optimizer = build_optimizer(model, cfg.train.model_copy(update={"lr": 1e-4, "optimizer": "adamw"}))
        batch = random_batch(model_cfg, cfg.data.seq_len, cfg.train.mask_rate, micro, device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        best = math.inf
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if i:
                best = min(best, time.perf_counter() - t0)
        return micro * cfg.data.seq_len / best
    finally:
        torch.set_rng_state(rng)  # measuring must not change the run's initialisation


def random_batch(model_cfg: ModelConfig, seq_len: int, mask_rate: float, n: int,
                 device: torch.device, ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Random tokens (or the given `ids`) shaped like the loader's batches (MLM: k masked positions per row,
    static shapes)."""
    from cramlm.data.tokenizer import MASK_ID

    if ids is None:
        ids = torch.randint(5, model_cfg.vocab_size, (n, seq_len), device=device)
    if model_cfg.arch == "decoder":
        return {"input_ids": ids, "labels": ids}
    k = max(1, round(mask_rate * seq_len))
    positions = torch.rand(n, seq_len, device=device).argsort(dim=1)[:, :k].sort(dim=1).values
    labels = torch.full_like(ids, -100).scatter(1, positions, ids.gather(1, positions))
    return {"input_ids": ids.scatter(1, positions, MASK_ID), "labels": labels, "mask_positions": positions}


# ---------------------------------------------------------------- the decision


def budget_tokens(limit: Quantity, tokens_per_s: float, fpt: float, usd_per_device_hour: float,
                  devices: int, micro_world: int, seq_len: int) -> float:
    """Tokens a budget buys: time x throughput, FLOPs / FLOPs per token, tokens, or steps x one micro-batch each."""
    if limit.kind == "seconds":
        return limit.amount * tokens_per_s
    if limit.kind == "usd":
        return limit.amount / (usd_per_device_hour * devices) * 3600 * tokens_per_s
    if limit.kind == "flops":
        return limit.amount / fpt
    if limit.kind == "tokens":
        return limit.amount
    return limit.amount * micro_world * seq_len


def budget_seconds(limit: Quantity, usd_per_device_hour: float, devices: int) -> float | None:
    """Wall-clock seconds of a time or dollar budget; None for the kinds that count work."""
    if limit.kind == "seconds":
        return limit.amount
    if limit.kind == "usd" and usd_per_device_hour > 0:
        return limit.amount / (usd_per_device_hour * devices) * 3600
    return None


def decide(cfg: RunConfig, *, choose_model: bool, device: torch.device, dtype: torch.dtype | None,
           peak_flops: float, usd_per_device_hour: float = 0.0, devices: int = 1, world_size: int = 1,
           strategy: str = "single", native_bf16: bool = True,
           measure: Callable[[ModelConfig, int], float] | None = None,
           time_newton_schulz: Callable[[ModelConfig], float] | None = None, mfu: float = ASSUMED_MFU,
           memory_gb: float | None = None, check: bool = True,
           clock: Callable[[], float] = time.perf_counter) -> Decision:
    """The numbers `cfg` leaves at `auto` (and the model when `choose_model`); `apply()` puts them in a config.

    `peak_flops` is one device's peak. `measure(model_cfg, micro) -> tokens/s` times real steps on this device;
    it is used for time and dollar budgets only (the other kinds count work, and their decisions must not depend
    on a timing, so that such a run is reproducible). Without it `mfu` of the peak is assumed (the planner's
    figure for a device that is not this one). Values the user set are kept. `check`: refuse a time budget too
    small to train (a plan only reports). `memory_gb`: one device's memory, which the micro-batch must fit.
    `strategy`: the resolved `train.strategy`, which decides what `train.optimizer: auto` can be; `native_bf16`
    and `time_newton_schulz(model_cfg) -> seconds per Muon step` (timed here, with `measure`) whether Muon pays.
    """
    started = clock()
    t, seq = cfg.train, cfg.data.seq_len
    optimizer = resolve_optimizer(t.optimizer, strategy)
    limit = parse_quantity(cfg.budget.limit)
    seconds = budget_seconds(limit, usd_per_device_hour, devices)
    if seconds is None:
        measure = None
    mask = t.mask_rate if cfg.model.arch == "encoder" else None
    micro_guess = t.micro_batch_size if t.micro_batch_size != "auto" else MICRO_MAX.get(device.type, 128)
    probe_micro = min(micro_guess, 8)
    mfus: dict[int, float] = {}  # measured MFU by parameter count

    def fpt(m: ModelConfig) -> float:
        return flops_per_token(m, seq, mask)

    def tokens_per_s(m: ModelConfig) -> float:
        """One device's tokens/s: at the MFU measured on the nearest measured model (by size), else assumed."""
        if not mfus:
            return mfu * peak_flops / fpt(m)
        n = param_counts(m)["total"]
        nearest = min(mfus, key=lambda k: abs(math.log(k / n)))
        return mfus[nearest] * peak_flops / fpt(m)

    def probe(m: ModelConfig) -> None:
        if measure is not None and param_counts(m)["total"] not in mfus:
            mfus[param_counts(m)["total"]] = measure(m, probe_micro) * fpt(m) / peak_flops

    def tokens(m: ModelConfig) -> float:
        return budget_tokens(limit, tokens_per_s(m) * world_size, fpt(m), usd_per_device_hour, devices,
                             micro_guess * world_size, seq)

    def shaped(m: ModelConfig) -> ModelConfig:
        return m.model_copy(update={"vocab_size": cfg.data.vocab_size, "max_seq_len": seq})

    if choose_model:
        members = [(s, shaped(ModelConfig(**s.model_section()))) for s in family(cfg.model.arch)]
        chosen = members[0]
        for _ in range(MAX_PROBES):  # choose, measure the choice, choose again with what was measured
            chosen = _fixed_point(members, lambda m: tokens(m[1]) * fpt(m[1]))
            if measure is None or param_counts(chosen[1])["total"] in mfus:
                break
            probe(chosen[1])
        name, model_cfg = chosen[0].name, chosen[1]
    else:
        name, model_cfg = None, shaped(cfg.model)
        probe(model_cfg)
    tps = tokens_per_s(model_cfg)
    sequences = tokens(model_cfg) / seq

    per_sequence = seq / tps  # seconds per sequence on one device
    if t.micro_batch_size != "auto":
        micro = t.micro_batch_size
    else:
        cap = max(1, (t.max_batch_size if t.batch_size == "auto" else t.batch_size) // world_size)
        micro = choose_micro(per_sequence, seconds, device.type, cap)
        micro = fit_micro(model_cfg, micro, seq, mask, memory_gb, devices, dtype is not None)
        while t.batch_size != "auto" and cap % micro:  # a given batch must be a whole number of micro-batches
            micro -= 1
    micro_world = micro * world_size
    if t.batch_size != "auto":
        batch = t.batch_size
    else:
        batch = choose_batch(sequences, micro_world, max(micro_world, t.max_batch_size), t.batch_ramp, t.ramp_end)
    steps = ramp_steps(sequences, micro_world, batch, t.batch_ramp, t.ramp_end)
    note = ""
    if optimizer == "muon" and t.optimizer == "auto":
        if measure is not None and time_newton_schulz is not None:
            share = time_newton_schulz(model_cfg) * steps / seconds
            optimizer = "muon" if share <= muon_cost.MAX_SHARE else "adamw"
            note = f"Muon's Newton-Schulz: {share:.0%} of the budget here"
        elif not native_bf16:
            optimizer, note = "adamw", "no native bf16 for Muon's Newton-Schulz"
    decision = Decision(
        budget=str(limit), model=name or "the given model", params=param_counts(model_cfg)["total"],
        tokens_per_s=tps * world_size, measured=bool(mfus), tokens=sequences * seq, micro_batch_size=micro,
        batch_size=batch, lr=choose_lr(batch, lr_width(model_cfg), optimizer) if t.lr == "auto" else t.lr,
        steps=steps,
        val_batches=eval_batches(t.val_batches, micro * per_sequence, seconds),
        probe_seconds=clock() - started if mfus else 0.0, world_size=world_size,
        model_config=model_cfg.model_dump(mode="json") if choose_model else None, optimizer=optimizer,
        optimizer_note=note,
    )
    if check and seconds is not None:
        _check_budget_is_enough(decision, seconds, micro * per_sequence)
    return decision


def apply(cfg: RunConfig, decision: Decision) -> RunConfig:
    """A copy of `cfg` with the decided numbers in place of its `auto`s (and the chosen model and optimizer)."""
    out = cfg.model_copy(deep=True)
    if decision.model_config is not None:
        out.model = ModelConfig(**decision.model_config)
    t = out.train
    t.micro_batch_size, t.batch_size, t.lr = decision.micro_batch_size, decision.batch_size, decision.lr
    t.val_batches = decision.val_batches
    if t.optimizer == "auto":
        t.optimizer = decision.optimizer
    return out


def from_dict(data: dict[str, Any]) -> Decision:
    """A decision as `to_dict()` wrote it (checkpoints, results)."""
    return Decision(**{k: v for k, v in data.items() if k not in ("line", "schedule")})


def _fixed_point(members: list[tuple[Shape, ModelConfig]],
                 compute: Callable[[tuple[Shape, ModelConfig]], float]) -> tuple[Shape, ModelConfig]:
    """The member that is compute-optimal for the compute the budget buys *when training that member*."""
    chosen = members[0]
    for _ in range(len(members)):
        nxt = choose_shape(compute(chosen), members)
        if nxt[0] == chosen[0]:
            break
        chosen = nxt
    return chosen


def _check_budget_is_enough(d: Decision, seconds: float, seconds_per_micro: float) -> None:
    """A time budget must leave room for a few optimizer steps after the measurement and the final evaluation."""
    overhead = d.probe_seconds + d.val_batches * seconds_per_micro / 3
    needed = overhead + 10 * seconds_per_micro
    if seconds < needed:
        raise CramlmError(
            f"budget {d.budget} is too small to train: it buys ~{format_count(d.tokens)} tokens of {d.model}, "
            f"{seconds_per_micro:.2f}s per micro-batch of {d.micro_batch_size}, and measuring and the final "
            f"evaluation take ~{overhead:.0f}s; give at least {format_seconds(math.ceil(needed))}")
