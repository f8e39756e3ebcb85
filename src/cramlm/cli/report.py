"""`cramlm report`: one page about one or more runs, their curves, costs and scaling law."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cramlm.errors import CramlmError


def command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run dirs written by `cramlm train`, or "
                                          "sweep dirs (a sweep.json beside its trials' run dirs)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write. Default: report.html for html; "
                                       "markdown goes to stdout."),
    fmt: str = typer.Option("html", "--format", "-f", help="html (self-contained page with plots) or md "
                            "(markdown table for a terminal). Default: html."),
) -> None:
    """Plots (loss vs time/tokens/FLOPs, schedules, throughput, cost, sweeps), a table of runs, power-law fits."""
    from cramlm.report.html import load, render

    if fmt not in ("html", "md"):
        raise CramlmError(f"--format must be html or md (got {fmt!r})")
    runs, sweeps = load(run_dirs)
    text = render(runs, sweeps, fmt)
    if out is None and fmt == "md":
        typer.echo(text, nl=False)
        return
    out = out or Path("report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    swept = f", {len(sweeps)} sweep{'s' if len(sweeps) != 1 else ''}" if sweeps else ""
    typer.echo(f"wrote {out} ({len(runs)} run{'s' if len(runs) != 1 else ''}{swept}, {len(text) / 1e3:.0f} kB)")
