"""`cramlm train`: pretrain a model on a prepared dataset dir under a budget."""

from __future__ import annotations

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
) -> None:
    """Pretrain under a budget; the run dir gets config.yaml, metrics.jsonl, checkpoints and final/."""
    positional = [a for a in (args or []) if "=" not in a]
    overrides = [a for a in (args or []) if "=" in a]
    if budget:
        overrides.append(f"budget.limit={budget}")
    cfg = resolve_config(model=model, recipe=recipe, config_file=config, overrides=overrides)
    if resume is None and not positional:
        raise CramlmError("train needs a DATA_DIR (from `cramlm prepare`) or --resume RUN_DIR")
    if len(positional) > 1:
        raise CramlmError(f"train takes one DATA_DIR, got {len(positional)}: {' '.join(positional)}")
    raise CramlmError("cramlm train is not available yet")
