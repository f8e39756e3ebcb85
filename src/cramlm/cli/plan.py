"""`cramlm plan`: what a budget buys (or what a run costs) before it is spent."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from cramlm.errors import CramlmError

_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12, "p": 1e15}


def _count(text: Optional[str], option: str) -> Optional[float]:
    """`120M`, `1.5B`, `3.3e10`, `2T` -> float."""
    if text is None:
        return None
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)([kmgbtp]?)", text.strip().lower())
    if not match:
        raise CramlmError(f"{option} {text!r} is not a number (e.g. 3e18, 120M, 1.5B, 2T)")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def command(
    hardware: str = typer.Option("auto", "--hardware", "-H", help="Catalogue name (h100, rtx2080ti, a100-80gb, "
                                 "cpu...; see --list-hardware). Default: auto = this machine."),
    count: int = typer.Option(1, "--count", "-n", help="Number of devices. Default: 1."),
    hours: Optional[float] = typer.Option(None, "--hours", help="Budget in wall-clock hours. Default: 24 when no "
                                          "other budget is given."),
    usd: Optional[float] = typer.Option(None, "--usd", help="Budget in US dollars at the catalogue price."),
    flops: Optional[str] = typer.Option(None, "--flops", help="Budget in training FLOPs, e.g. 3e18."),
    params: Optional[str] = typer.Option(None, "--params", help="Cost a model of this many parameters (120M, "
                                         "1.5B) at 6 FLOPs per parameter and token."),
    tokens: Optional[str] = typer.Option(None, "--tokens", help="Cost a run of this many training tokens (3.3e10) "
                                         "instead of a budget; needs --model or --params."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model preset to plan for (bert-crammed, "
                                        "bert-base, gpt-small, tiny...). Default: the preset nearest the optimum."),
    objective: Optional[str] = typer.Option(None, "--objective", help="mlm or causal. Default: from --model, "
                                            "else mlm."),
    mfu: Optional[float] = typer.Option(None, "--mfu", help="Model FLOPs utilisation, a fraction of the peak. "
                                        "Default: 0.4."),
    calibrate: bool = typer.Option(False, "--calibrate", help="Measure the MFU by timing 2 real training steps "
                                   "(after a warm-up) of the model on this machine; 10-30 s on a CPU."),
    runs: int = typer.Option(10, "--runs", help="Runs in a hyper-parameter search, for its cost line. Default: 10."),
    region: str = typer.Option("world", "--region", help="Grid carbon intensity: world, us, eu, uk, de, fr, se, "
                               "no, ca, cn, in, jp, au, or kg CO2e/kWh (0.3) or g/kWh (300g). Default: world."),
    pue: float = typer.Option(1.1, "--pue", help="Data-centre power usage effectiveness. Default: 1.1."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole plan as JSON."),
    write_config: Optional[Path] = typer.Option(None, "--write-config", help="Write the plan as a YAML run "
                                                "config for `cramlm train --config`."),
    list_hardware: bool = typer.Option(False, "--list-hardware", help="List the hardware catalogue and exit."),
) -> None:
    """Plan a budget: compute, Chinchilla-optimal size and tokens, time, dollars, energy, CO2, memory per device."""
    from cramlm.budget import planner

    if list_hardware:
        rows = planner.hardware_table()
        typer.echo(json.dumps(rows, indent=2) if as_json else planner.format_hardware_table(rows))
        return
    p = planner.plan(
        hardware, count, hours=hours, usd=usd, flops=_count(flops, "--flops"), params=_count(params, "--params"),
        tokens=_count(tokens, "--tokens"), model=model, objective=objective, mfu=mfu,
        calibrate_steps=2 if calibrate else 0, runs=runs, region=region, pue=pue,
    )
    if write_config is not None:
        planner.plan_config(p).save(write_config)
        p["config"] = str(write_config)
    typer.echo(json.dumps(p, indent=2) if as_json else planner.format_plan(p))
    if write_config is not None and not as_json:
        typer.echo(f"wrote {write_config}: cramlm train DATA_DIR --config {write_config}")
