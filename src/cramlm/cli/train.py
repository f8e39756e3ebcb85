"""`cramlm train`: pretrain a model on a prepared dataset dir under a budget."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import typer

from cramlm.config import resolve_config
from cramlm.errors import CramlmError


def command(
    args: list[str] = typer.Argument(
        None, metavar="[DATA_DIR] [SECTION.KEY=VALUE]...",
        help="The dataset dir written by `cramlm prepare`, then config overrides such as train.lr=1e-3.",
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model preset (bert-crammed, tiny, gpt-small...)."),
    recipe: str = typer.Option("crammed", "--recipe", "-r", help="Recipe preset: crammed, original-bert, demo."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with config sections."),
    budget: Optional[str] = typer.Option(
        None, "--budget", "-b", help="Budget: wall-clock (10m, 24h), 3e18flops, 2e9tokens, 500steps or 50usd."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run dir to write. Default: runs/<time>."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this run dir."),
    nproc: int = typer.Option(
        1, "--nproc", min=1, help="Processes (one per GPU) on this machine; above 1 the command re-runs itself "
        "under torchrun with train.strategy (auto = DDP). Default 1. Several machines: see docs/distributed.md.",
    ),
) -> None:
    """Pretrain under a budget; the run dir gets config.yaml, metrics.jsonl, checkpoints and final/."""
    positional = [a for a in (args or []) if "=" not in a]
    overrides = [a for a in (args or []) if "=" in a]
    if budget:
        overrides.append(f"budget.limit={budget}")
    if resume is not None:  # the run's own config; options given now (a larger --budget) apply on top
        if not (resume / "config.yaml").is_file():
            raise CramlmError(f"{resume} is not a run dir (no config.yaml) to resume")
        cfg = resolve_config(config_file=resume / "config.yaml", overrides=overrides)
    else:
        cfg = resolve_config(model=model, recipe=recipe, config_file=config, overrides=overrides)
    if resume is None and not positional:
        raise CramlmError("train needs a DATA_DIR (from `cramlm prepare`) or --resume RUN_DIR")
    if len(positional) > 1:
        raise CramlmError(f"train takes one DATA_DIR, got {len(positional)}: {' '.join(positional)}")
    from cramlm.train.distributed import DistributedStrategy, torchrun_command, torchrun_env
    from cramlm.train.trainer import data_dir_of, train

    run_dir = resume or out or Path("runs") / time.strftime("%Y%m%d-%H%M%S")
    if nproc > 1 and not torchrun_env():
        forwarded = list(args or [])
        for flag, value in (("--model", model), ("--recipe", recipe), ("--config", config), ("--budget", budget),
                            ("--resume" if resume else "--out", run_dir)):
            if value is not None:
                forwarded += [flag, str(value)]
        command_line = torchrun_command(nproc, forwarded)
        os.execvp(command_line[0], command_line)
    strategy = DistributedStrategy.from_env(cfg.train) if torchrun_env() else None
    if strategy is not None:
        run_dir = strategy.dist.share(run_dir)  # the default name from rank 0's clock
    data_dir = Path(positional[0]) if positional else data_dir_of(run_dir)
    results = train(cfg, data_dir, run_dir, resume=resume is not None, strategy=strategy)
    if strategy is not None:
        strategy.dist.close()
        if not strategy.is_main:
            return
    if results["status"] != "completed":
        typer.echo(f"stopped by {results['signal']} at step {results['step']}; "
                   f"continue with: cramlm train --resume {run_dir}")
        return
    val = "" if results["val_loss"] is None else f", val loss {results['val_loss']:.4f}"
    typer.echo(f"{run_dir}: {results['steps']} steps, {results['tokens']:,} tokens in {results['seconds']:.0f}s "
               f"({results['tokens_per_second']:,.0f} tokens/s){val}, ${results['cost']['usd']:.4f}; "
               f"weights in {run_dir / 'final'}")
