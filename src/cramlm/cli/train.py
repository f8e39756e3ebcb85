"""`cramlm train`: pretrain a model on a prepared dataset dir under a budget."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Optional

import typer

from cramlm.config import load_yaml, resolve_config
from cramlm.errors import CramlmError

OBJECTIVES = {"mlm": "encoder", "causal": "decoder"}


def model_choice(model: str, objective: str | None, config: Path | None,
                 overrides: list[str]) -> tuple[str | None, bool]:
    """(model preset to resolve, whether the autopilot chooses the size). `auto` builds on the family's base
    preset; a config file with a model section or `model.*` overrides fix the model instead."""
    from cramlm.models.family import BASE_PRESET

    if objective is not None and objective not in OBJECTIVES:
        raise CramlmError(f"--objective must be mlm or causal (got {objective!r})")
    if model != "auto":
        return model, False
    arch = OBJECTIVES[objective or "mlm"]
    file_model = config is not None and "model" in (load_yaml(config) or {})
    if file_model:
        return None, False  # the file's model, as written
    fixed = any(o.startswith("model.") for o in overrides)
    return BASE_PRESET[arch], not fixed


def stop_code(signal_name: str) -> int:
    """The exit status of a run stopped by a signal: 128 + its number (130 SIGINT, 143 SIGTERM), as a shell reports
    a process killed by it, so `cramlm train ... && cramlm eval ...` does not go on with an unfinished model."""
    return 128 + signal.Signals[signal_name].value


def command(
    args: list[str] = typer.Argument(
        None, metavar="[DATA_DIR] [SECTION.KEY=VALUE]...",
        help="The dataset dir written by `cramlm prepare`, then config overrides such as train.lr=1e-3.",
    ),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="auto: the model size the budget buys on this device (a member of the family "
        "encoder-2x128 ... encoder-32x2048, decoder-... for --objective causal); a family member; or a preset "
        "(bert-crammed, gpt-small, tiny...). A --config with a model section or model.* overrides fix the model. "
        "Default: auto."),
    objective: Optional[str] = typer.Option(
        None, "--objective", help="mlm (encoder) or causal (decoder), for --model auto. Default: mlm, or the "
        "model's own."),
    recipe: Optional[str] = typer.Option(
        None, "--recipe", "-r", help="Recipe preset: crammed, original-bert, demo. Default: crammed."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with config sections."),
    budget: Optional[str] = typer.Option(
        None, "--budget", "-b", help="Budget: wall-clock (10m, 24h), 3e18flops, 2e9tokens, 500steps or 50usd. "
        "Default: the recipe's budget.limit (10m)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run dir to write. Default: runs/<time>."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue the run in this run dir, with its own model, recipe and config (a larger "
        "--budget and train.*/budget.* overrides apply on top)."),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Processes (one per GPU) on this machine; above 1 the command re-runs itself "
        "under torchrun with train.strategy (auto = DDP). Default: 1. Several machines: see docs/distributed.md.",
    ),
) -> None:
    """Pretrain under a budget; the run dir gets config.yaml, metrics.jsonl, checkpoints and final/. Stopped by
    Ctrl-C or SIGTERM, it writes a checkpoint and exits 130 or 143."""
    positional = [a for a in (args or []) if "=" not in a]
    overrides = [a for a in (args or []) if "=" in a]
    if budget:
        overrides.append(f"budget.limit={budget}")
    choose_model = False
    if resume is not None:  # the run's own config; options given now (a larger --budget) apply on top
        given = [flag for flag, value in (("--model", model), ("--objective", objective), ("--recipe", recipe),
                                          ("--config", config)) if value is not None]
        if given:
            raise CramlmError(f"--resume continues the run with its own model, recipe and config: drop "
                              f"{', '.join(given)} (or start a new run with --out)")
        if not (resume / "config.yaml").is_file():
            raise CramlmError(f"{resume} is not a run dir (no config.yaml) to resume")
        cfg = resolve_config(config_file=resume / "config.yaml", overrides=overrides)
    else:
        preset, choose_model = model_choice(model or "auto", objective, config, overrides)
        cfg = resolve_config(model=preset, recipe=recipe or "crammed", config_file=config, overrides=overrides)
        if objective is not None and cfg.model.arch != OBJECTIVES[objective]:
            raise CramlmError(f"--objective {objective} trains a {OBJECTIVES[objective]}, but the model is an "
                              f"{cfg.model.arch}")
    if resume is None and not positional:
        raise CramlmError("train needs a DATA_DIR (from `cramlm prepare`) or --resume RUN_DIR")
    if len(positional) > 1:
        raise CramlmError(f"train takes one DATA_DIR, got {len(positional)}: {' '.join(positional)}")
    from cramlm.train.distributed import DistributedStrategy, torchrun_command, torchrun_env
    from cramlm.train.trainer import data_dir_of, train

    run_dir = resume or out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if nproc > 1 and not torchrun_env():
        forwarded = list(args or [])
        for flag, value in (("--model", model), ("--objective", objective), ("--recipe", recipe),
                            ("--config", config), ("--budget", budget), ("--resume" if resume else "--out", run_dir)):
            if value is not None:
                forwarded += [flag, str(value)]
        command_line = torchrun_command(nproc, forwarded)
        os.execvp(command_line[0], command_line)
    strategy = DistributedStrategy.from_env(cfg.train) if torchrun_env() else None
    if strategy is not None:
        run_dir = strategy.dist.share(run_dir)  # the default name from rank 0's clock
    data_dir = Path(positional[0]) if positional else data_dir_of(run_dir)
    results = train(cfg, data_dir, run_dir, resume=resume is not None, strategy=strategy,
                    choose_model=choose_model)
    if strategy is not None:
        strategy.dist.close()
    if results["status"] != "completed":  # the trainer said where the checkpoint is and how to resume
        raise typer.Exit(stop_code(results["signal"]))
    if strategy is not None and not strategy.is_main:
        return
    val = "" if results["val_loss"] is None else f", val loss {results['val_loss']:.4f}"
    typer.echo(f"{run_dir}: {results['steps']} steps, {results['tokens']:,} tokens in {results['seconds']:.0f}s "
               f"({results['tokens_per_second']:,.0f} tokens/s){val}, ${results['cost']['usd']:.4f}; "
               f"weights in {run_dir / 'final'}")
