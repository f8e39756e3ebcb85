"""`cramlm finetune`: train a pretrained decoder further on prompt/response pairs, under a budget."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from cramlm.errors import CramlmError


def command(
    args: list[str] = typer.Argument(
        None, metavar="[RUN] [SECTION.KEY=VALUE]...",
        help="The decoder to fine-tune (a run dir from `cramlm train --objective causal` or its HF export), then "
        "config overrides such as train.lr=1e-4."),
    data: Optional[Path] = typer.Option(
        None, "--data", "-d", help="JSONL file, one {\"prompt\": ..., \"response\": ...} object per line."),
    budget: Optional[str] = typer.Option(
        None, "--budget", "-b", help="Budget: wall-clock (5m), tokens, steps (300steps), flops or usd. Default: 5m."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run dir to write. Default: runs/ft-<time>."),
    resume: Optional[Path] = typer.Option(
        None, "--resume", help="Continue this fine-tuned run dir (its source and data; a larger --budget and "
        "train.* overrides apply on top)."),
    prompt_field: str = typer.Option("prompt", "--prompt-field", help="JSON field of the prompt. Default: prompt."),
    response_field: str = typer.Option("response", "--response-field", help="JSON field of the response. "
                                       "Default: response."),
    val_fraction: float = typer.Option(0.05, "--val-fraction", help="Fraction of the pairs held out for the "
                                       "validation loss (at least one). Default: 0.05."),
) -> None:
    """Fine-tune a decoder on prompt/response pairs: loss on the response tokens only, laid out as
    `[SEP] prompt [SEP] response [SEP]`. The run dir is one that generate, eval and export accept."""
    from cramlm.cli.train import stop_code
    from cramlm.finetune.run import finetune

    positional = [a for a in (args or []) if "=" not in a]
    overrides = [a for a in (args or []) if "=" in a]
    if budget:
        overrides.append(f"budget.limit={budget}")
    if resume is not None:
        given = [flag for flag, value in (("RUN", positional), ("--data", data), ("--out", out)) if value]
        if given:
            raise CramlmError(f"--resume continues the run with its own source and data: drop {', '.join(given)}")
        source, run_dir = None, resume
    else:
        if len(positional) != 1:
            raise CramlmError(f"finetune takes one RUN (the decoder to fine-tune), got {len(positional)}"
                              + (f": {' '.join(positional)}" if positional else ""))
        if data is None:
            raise CramlmError("finetune needs --data PAIRS.jsonl (one {\"prompt\": ..., \"response\": ...} per line)")
        source, run_dir = Path(positional[0]), out or Path("runs") / time.strftime("ft-%Y%m%d-%H%M%S")
    results = finetune(source, data, run_dir, overrides=overrides, prompt_field=prompt_field,
                       response_field=response_field, val_fraction=val_fraction, resume=resume is not None)
    if results["status"] != "completed":
        raise typer.Exit(stop_code(results["signal"]))
    val = "" if results["val_loss"] is None else f", held-out response loss {results['val_loss']:.4f}"
    typer.echo(f"{run_dir}: {results['steps']} steps, {results['tokens']:,} tokens (padded) in "
               f"{results['seconds']:.0f}s{val}; weights in {run_dir / 'final'}")
