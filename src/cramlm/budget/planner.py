"""What a budget buys, before it is spent: compute, a compute-optimal model, time, money, energy and memory.

`plan()` turns hardware x count x budget (hours, dollars, FLOPs, or a model and a token count) into one dict:
the FLOPs the budget delivers at an MFU, Chinchilla's optimum for them, what the chosen (or recommended) cramlm
model does with them, the run's cost and emissions, the cost of a hyper-parameter search, and the memory per
device of every data-parallel strategy. `calibrate()` measures the MFU by running real training steps here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cramlm.budget import memory, scaling
from cramlm.budget.cost import grid_intensity, run_cost
from cramlm.budget.flops import flops_per_token, param_counts
from cramlm.budget.hardware import Hardware, detect, resolve
from cramlm.config import RunConfig, resolve_config
from cramlm.errors import CramlmError
from cramlm.models.family import BASE_PRESET, family
from cramlm.train import autopilot, muon_cost

DEFAULT_MFU = 0.4  # well-tuned transformer training reaches 35-50% of the dense peak (e.g. PaLM reports 46%)
DEFAULT_HOURS = 24.0  # Cramming's budget: one GPU-day
RECIPE = "crammed"
OBJECTIVES = {"mlm": "encoder", "causal": "decoder"}


def run_config(model: str, objective: str | None = None) -> RunConfig:
    """The config `cramlm train --model MODEL` would use (crammed recipe), with data.vocab_size = the model's."""
    cfg = resolve_config(model=model, recipe=RECIPE)
    if objective and OBJECTIVES[objective] != cfg.model.arch:
        raise CramlmError(f"model {model!r} is an {cfg.model.arch}: it does not train the {objective} objective")
    cfg.data.vocab_size = cfg.model.vocab_size
    return cfg


def _mask_rate(cfg: RunConfig) -> float | None:
    return cfg.train.mask_rate if cfg.model.arch == "encoder" else None


def model_cost(cfg: RunConfig) -> tuple[int, float]:
    """(total parameters, training FLOPs per token) of a run config, counted by `flops.py`."""
    return param_counts(cfg.model)["total"], flops_per_token(cfg.model, cfg.data.seq_len, _mask_rate(cfg))


def memory_plan(cfg: RunConfig | None, params: float, hw: Hardware, count: int, mixed: bool) -> dict[str, Any]:
    """GB per device for every strategy at the recipe's micro-batch, and the simplest strategy that fits.

    When no on-device strategy fits, halve the micro-batch (gradient accumulation keeps the global batch) before
    falling back to CPU offload, which is the slowest."""
    def per_device(micro: int) -> dict[str, float]:
        act = 0.0
        if cfg is not None:
            act = memory.activation_bytes(cfg.model, micro, cfg.data.seq_len, _mask_rate(cfg), mixed)
        return memory.memory_per_device(params, count, act, mixed)

    micro = cfg.train.micro_batch_size if cfg is not None else 1
    if micro == "auto":  # the autopilot's largest on a GPU
        micro = autopilot.MICRO_MAX["cuda"]
    gb = per_device(micro)
    halvings = [micro >> i for i in range(micro.bit_length())]
    fit, fit_micro = None, None
    for strategies in (memory.STRATEGIES[:-1], memory.STRATEGIES[-1:]):
        for m in halvings:
            fit = memory.first_fit(per_device(m), hw.memory_gb, strategies)
            if fit is not None:
                fit_micro = m
                break
        if fit is not None:
            break
    return {
        "gb": gb, "micro_batch_size": micro, "device_gb": hw.memory_gb,
        "fits": {"strategy": fit, "micro_batch_size": fit_micro},
        "activations": cfg is not None,
    }


def calibrate(cfg: RunConfig, steps: int = 2, step_seconds: float = 1.0, min_micro: int = 8) -> dict[str, Any]:
    """Measure MFU on this machine: a few real AdamW steps of `cfg.model` on random tokens.

    The micro-batch is the recipe's (128 when it is `auto`), cut down so one step takes about `step_seconds` at
    this device's peak (a CPU cannot run a 120M-parameter model at 128 x 128 tokens per step in a few seconds),
    but not below `min_micro` sequences: tiny matmuls would understate the MFU of a real run."""
    from cramlm.train.autopilot import measure_tokens_per_s

    local = detect()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "fp32" if device.type == "cpu" else local.best_dtype
    _, per_token = model_cost(cfg)
    seq = cfg.data.seq_len
    fitting = int(local.peak(dtype) * step_seconds / (per_token * seq))
    recipe_micro = 128 if cfg.train.micro_batch_size == "auto" else cfg.train.micro_batch_size
    micro = min(recipe_micro, max(min_micro, fitting))
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype)
    tokens_per_s = measure_tokens_per_s(cfg.model, cfg, micro, device, amp, steps)
    achieved = per_token * tokens_per_s
    return {"mfu": achieved / local.peak(dtype), "device": local.name, "dtype": dtype, "micro_batch_size": micro,
            "tokens_per_s": tokens_per_s, "flops_per_s": achieved, "steps": steps}


def plan(
    hardware: str = "auto", count: int = 1, *, hours: float | None = None, usd: float | None = None,
    flops: float | None = None, params: float | None = None, tokens: float | None = None, model: str | None = None,
    objective: str | None = None, mfu: float | None = None, calibrate_steps: int = 0, runs: int = 10,
    region: str = "world", pue: float = 1.1,
) -> dict[str, Any]:
    """The whole plan as a JSON-ready dict (see docs/plan.md for every key)."""
    if count < 1 or runs < 1:
        raise CramlmError(f"--count and --runs must be at least 1 (got {count}, {runs})")
    if sum(x is not None for x in (hours, usd, flops)) > 1:
        raise CramlmError("give one budget: --hours, --usd or --flops")
    if tokens is not None and any(x is not None for x in (hours, usd, flops)):
        raise CramlmError("--tokens fixes the run's length: give it without --hours, --usd or --flops")
    if tokens is not None and model is None and params is None:
        raise CramlmError("--tokens needs --model or --params to know the FLOPs per token")
    if model is not None and params is not None:
        raise CramlmError("give --model or --params, not both")
    for name, value in (("hours", hours), ("usd", usd), ("flops", flops), ("params", params), ("tokens", tokens)):
        if value is not None and not value > 0:
            raise CramlmError(f"--{name} must be positive (got {value})")
    if mfu is not None and not 0 < mfu <= 1:
        raise CramlmError(f"--mfu is a fraction of the peak in (0, 1] (got {mfu})")
    if objective is not None and objective not in OBJECTIVES:
        raise CramlmError(f"--objective must be mlm or causal (got {objective!r})")

    grid_intensity(region)  # a bad region fails now, not after a calibration
    if usd is not None and hardware == "auto" and detect().name == "cpu":
        raise CramlmError("--usd prices the device you rent: name it with --hardware (h100, a100-80gb, ...); this "
                          "machine has no GPU")
    hw = resolve(hardware)
    if calibrate_steps and hardware != "auto" and hw.name != detect().name:
        raise CramlmError(f"--calibrate measures this machine ({detect().name}), not {hw.name}: drop it (MFU "
                          f"{DEFAULT_MFU:.0%} is assumed) or give --mfu")
    dtype = "fp32" if hw.name == "cpu" else hw.best_dtype
    model = None if model == "auto" else model
    cfg = run_config(model, objective) if model else None
    objective = objective or ("causal" if cfg is not None and cfg.model.arch == "decoder" else "mlm")
    arch = OBJECTIVES[objective]
    source = "given" if cfg is not None else ("params" if params is not None else "auto")
    if params is not None:  # the family member of that size gives the shape (activation memory, batch, LR)
        def size(shape: Any) -> float:
            return param_counts(run_config(shape.name).model)["total"]
        shaped = min(family(arch), key=lambda s: abs(math.log(size(s) / params)))
        cfg = run_config(shaped.name)

    if source == "given":
        run_params, per_token = model_cost(cfg)
    elif params is not None:
        run_params, per_token = params, 6.0 * params
    else:
        run_params = per_token = None

    def spend(rate: float) -> tuple[float, str]:
        """(seconds, budget text for the config) of the budget at `rate` FLOP/s."""
        if tokens is not None:
            return tokens * per_token / rate, f"{tokens:g}tokens"
        if flops is not None:
            return flops / rate, f"{flops:g}flops"
        if usd is not None:
            if hw.usd_per_hour <= 0:
                raise CramlmError(f"hardware {hw.name!r} has no price per hour: give --hours or --flops")
            return usd / (hw.usd_per_hour * count) * 3600, f"{usd:g}usd"
        h = DEFAULT_HOURS if hours is None else hours
        return h * 3600, f"{h:g}h"

    def autopilot_for(base: RunConfig, budget_text: str, at_mfu: float, choose: bool,
                      strategy: str = "single" if count == 1 else "ddp") -> autopilot.Decision:
        base = base.model_copy(deep=True)
        base.budget.limit = budget_text
        device = torch.device("cpu" if hw.name == "cpu" else "cuda")
        bf16 = muon_cost.native_bf16(device) if hw.name == "cpu" else bool(hw.peak_flops.get("bf16"))
        return autopilot.decide(base, choose_model=choose, device=device, dtype=None, peak_flops=hw.peak(dtype),
                                usd_per_device_hour=hw.usd_per_hour, devices=count, world_size=count, mfu=at_mfu,
                                strategy=strategy, native_bf16=bf16, check=False)

    default_base = run_config(BASE_PRESET[arch])
    peak = hw.peak(dtype) * count
    calibration = None
    if calibrate_steps:
        if mfu is not None:
            raise CramlmError("give --mfu or --calibrate, not both")
        if params is not None:
            raise CramlmError("--calibrate runs a real model: give --model instead of --params")
        target = cfg
        if target is None:  # calibrate the model the autopilot chooses at the assumed MFU
            guess = autopilot_for(default_base, spend(peak * DEFAULT_MFU)[1], DEFAULT_MFU, True)
            target = run_config(guess.model)
        calibration = calibrate(target, calibrate_steps)
        mfu = calibration["mfu"]
    mfu_source = "calibrated" if calibration else ("given" if mfu is not None else "assumed")
    mfu = mfu if mfu is not None else DEFAULT_MFU
    seconds, budget = spend(peak * mfu)
    flops = peak * mfu * seconds

    opt_params, opt_tokens = scaling.compute_optimal(flops)
    alt_params, alt_tokens = scaling.fitted_optimum(flops)
    base = cfg or default_base
    decision = autopilot_for(base, budget, mfu, source == "auto")
    recommended = decision if source == "auto" else autopilot_for(default_base, budget, mfu, True)
    cfg = autopilot.apply(base, decision)
    if source == "auto":
        model = decision.model
        run_params, per_token = model_cost(cfg)
    elif source == "params":
        model = shaped.name
    run_tokens = flops / per_token
    # Chinchilla's N and D are in 6ND terms: the model's own FLOPs per token may differ (sparse MLM head).
    equivalent_tokens = flops / (6.0 * run_params)

    cost = run_cost(seconds, hw, count, pue, region)
    mem = memory_plan(cfg, run_params, hw, count, mixed=dtype != "fp32")
    sharded = _TRAIN_STRATEGY.get(mem["fits"]["strategy"])
    if sharded is not None:  # the same model under ZeRO/FSDP: the optimizer (and its LR) that strategy runs
        decision = autopilot_for(base, budget, mfu, source == "auto", sharded)
    return {
        "hardware": {"name": hw.name, "description": hw.description, "measured": hw.measured, "count": count,
                     "dtype": dtype, "peak_flops_per_s": hw.peak(dtype), "memory_gb": hw.memory_gb,
                     "usd_per_hour": hw.usd_per_hour, "tdp_watts": hw.tdp_watts},
        "budget": budget,
        "mfu": mfu,
        "mfu_source": mfu_source,
        "calibration": calibration,
        "objective": objective,
        "flops": flops,
        "model": model,
        "model_source": source,
        "params": run_params,
        "flops_per_token": per_token,
        "tokens": run_tokens,
        "tokens_per_param": run_tokens / run_params,
        "predicted_loss": scaling.fitted_loss(run_params, equivalent_tokens),
        "chinchilla": {"params": opt_params, "tokens": opt_tokens, "tokens_per_param": scaling.TOKENS_PER_PARAM,
                       "loss": scaling.fitted_loss(opt_params, opt_tokens),
                       "fitted": {"params": alt_params, "tokens": alt_tokens,
                                  "loss": scaling.fitted_loss(alt_params, alt_tokens)}},
        "autopilot": {k: v for k, v in decision.to_dict().items() if k != "model_config"},
        "recommended_model": recommended.model,
        "recommended_params": recommended.params,
        "hours": seconds / 3600,
        "gpu_hours": cost["gpu_hours"],
        "cost_usd": cost["usd"],
        "energy_kwh": cost["kwh"],
        "co2_kg": cost["co2_kg"],
        "region": region,
        "pue": pue,
        "hp_search": {"runs": runs, "cost_usd": runs * cost["usd"], "gpu_hours": runs * cost["gpu_hours"],
                      "energy_kwh": runs * cost["kwh"], "co2_kg": runs * cost["co2_kg"]},
        "memory_gb_per_device": mem["gb"],
        "memory": {k: v for k, v in mem.items() if k != "gb"},
    }


_TRAIN_STRATEGY = {"zero1": "zero1", "zero2": "fsdp", "zero3": "fsdp", "zero3_offload": "fsdp"}  # memory -> train
_STRATEGY_KEYS = {
    "zero1": ["train.strategy=zero1"],
    "zero2": ["train.strategy=fsdp", "train.fsdp.reshard_after_forward=false"],
    "zero3": ["train.strategy=fsdp", "train.fsdp.reshard_after_forward=true"],
    "zero3_offload": ["train.strategy=fsdp", "train.fsdp.reshard_after_forward=true", "train.fsdp.cpu_offload=true"],
}


def plan_config(p: dict[str, Any]) -> RunConfig:
    """A run config that `cramlm train --config` accepts: the plan's model, budget, hardware and strategy, and the
    autopilot's batch, micro-batch, optimizer and LR written out (edit them, or set them back to auto)."""
    hw = p["hardware"]
    name = "auto" if hw["measured"] and hw["name"] != "cpu" else hw["name"]  # an uncatalogued GPU: detect again
    overrides = [f"budget.limit={p['budget']}", f"budget.hardware={name}", f"budget.count={hw['count']}",
                 f"budget.region={p['region']}", f"budget.pue={p['pue']}"]
    a, fits = p["autopilot"], p["memory"]["fits"]
    overrides += [f"train.batch_size={a['batch_size']}", f"train.lr={a['lr']:.3g}",
                  f"train.optimizer={a['optimizer']}", f"train.micro_batch_size={a['micro_batch_size']}",
                  f"train.val_batches={a['val_batches']}"]
    if fits["strategy"] is not None:
        overrides.append(f"train.micro_batch_size={fits['micro_batch_size']}")
        overrides += _STRATEGY_KEYS.get(fits["strategy"], [])
    if hw["name"] != "cpu":
        overrides.append(f"train.precision={hw['dtype'] if hw['dtype'] in ('bf16', 'fp16') else 'auto'}")
    cfg = run_config(p["model"])
    return resolve_config(base=cfg.model_dump(mode="json"), overrides=overrides)


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 1 else f"${x:.3g}"


def _amount(x: float) -> str:
    return f"{x:,.1f}" if x >= 100 else f"{x:.3g}"


def format_plan(p: dict[str, Any]) -> str:
    """The plan as aligned text lines for the terminal."""
    from cramlm.units import format_count as n, format_seconds

    hw, ch, mem = p["hardware"], p["chinchilla"], p["memory"]
    mfu_note = p["mfu_source"]
    if p["calibration"]:
        c = p["calibration"]
        mfu_note += f" on {c['device']} ({c['dtype']}, {n(c['tokens_per_s'])} tokens/s)"
        if c["device"] != hw["name"]:
            mfu_note += f"; measured here, not on {hw['name']}"
    fits = mem["fits"]
    fit_text = (f"{fits['strategy']} at micro-batch {fits['micro_batch_size']}" if fits["strategy"]
                else "nothing, even at micro-batch 1")
    gb = "  ".join(f"{k} {v:.1f}" for k, v in p["memory_gb_per_device"].items())
    hs, a = p["hp_search"], p["autopilot"]
    model_text = {"auto": f"{p['model']} (auto, {p['objective']})", "given": f"{p['model']} ({p['objective']})",
                  "params": f"--params, shaped as {p['model']} ({p['objective']})"}[p["model_source"]]
    rows = [
        ("hardware", f"{hw['count']} x {hw['name']} ({hw['description']}), {n(hw['peak_flops_per_s'])}FLOP/s "
                     f"{hw['dtype']} peak each, {hw['memory_gb']:.0f} GB, ${hw['usd_per_hour']:.2f}/h"),
        ("budget", f"{p['budget']} at MFU {p['mfu']:.1%} ({mfu_note})"),
        ("compute", f"{p['flops']:.3g} FLOPs"),
        ("chinchilla", f"{n(ch['params'])} params x {n(ch['tokens'])} tokens ({ch['tokens_per_param']:.0f} "
                       f"tokens/param), fitted loss {ch['loss']:.3f}"),
        ("  fitted optimum", f"{n(ch['fitted']['params'])} params x {n(ch['fitted']['tokens'])} tokens, "
                             f"loss {ch['fitted']['loss']:.3f}"),
        ("model", f"{model_text}: {n(p['params'])} params, {n(p['flops_per_token'])}FLOPs/token "
                  f"-> {n(p['tokens'])} tokens ({p['tokens_per_param']:.3g} tokens/param), fitted loss "
                  f"{p['predicted_loss']:.3f}"),
        ("autopilot", a["schedule"]),
        ("time", f"{format_seconds(p['hours'] * 3600)} wall-clock, {p['gpu_hours']:.1f} device-hours"),
        ("cost", f"{_usd(p['cost_usd'])}, {_amount(p['energy_kwh'])} kWh, {_amount(p['co2_kg'])} kg CO2e "
                 f"(region {p['region']}, PUE {p['pue']})"),
        ("hp search", f"{hs['runs']} runs: {_usd(hs['cost_usd'])}, {_amount(hs['energy_kwh'])} kWh, "
                      f"{_amount(hs['co2_kg'])} kg CO2e"),
        ("memory GB/device", gb + ("" if mem["activations"] else " (model states only)")),
        ("fits", f"{fit_text} on {hw['memory_gb']:.0f} GB"),
    ]
    if p["model_source"] != "auto" and p["recommended_model"] != p["model"]:
        rows.insert(7, ("recommended", f"--model auto would train {p['recommended_model']} "
                                       f"({n(p['recommended_params'])} params) on this budget"))
    ratio = ch["params"] / p["params"]
    if not 0.5 <= ratio <= 2:
        side = "fewer" if ratio > 1 else "more"
        rows.insert(7, ("note", f"{p['model']} has {max(ratio, 1 / ratio):.1f}x {side} parameters than the optimum: "
                                f"the budget buys {'more' if ratio > 1 else 'fewer'} tokens per parameter than "
                                "compute-optimal"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def hardware_table() -> list[dict[str, Any]]:
    """The catalogue as rows for `cramlm plan --list-hardware`."""
    from cramlm.budget.hardware import DTYPES, catalogue

    return [{"name": hw.name, "description": hw.description,
             **{f"{d}_tflops": hw.peak_flops[d] / 1e12 if d in hw.peak_flops else None for d in DTYPES},
             "memory_gb": hw.memory_gb, "bandwidth_gbs": hw.bandwidth_gbs, "tdp_watts": hw.tdp_watts,
             "usd_per_hour": hw.usd_per_hour} for hw in catalogue().values()]


def format_hardware_table(rows: list[dict[str, Any]]) -> str:
    header = ["name", "fp32", "tf32", "bf16", "fp16", "fp8", "GB", "GB/s", "W", "$/h"]
    lines = [header]
    for r in rows:
        peaks = [f"{r[f'{d}_tflops']:g}" if r[f"{d}_tflops"] else "-" for d in ("fp32", "tf32", "bf16", "fp16", "fp8")]
        bw = f"{r['bandwidth_gbs']:g}" if r["bandwidth_gbs"] else "-"
        lines.append([r["name"], *peaks, f"{r['memory_gb']:g}", bw, f"{r['tdp_watts']:g}", f"{r['usd_per_hour']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    note = "(peak dense TFLOP/s per dtype; cpu: measured on this host; edit with CRAMLM_HARDWARE=file.yaml)"
    return "\n".join(text + [note])
