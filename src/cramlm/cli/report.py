"""`cramlm report`: one page about one or more runs, their curves, costs and scaling law."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cramlm.errors import CramlmError


def command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR...", help="Run dirs written by `cramlm train`."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="File to write. Default: report.html for html; "
                                       "markdown goes to stdout."),
    fmt: str = typer.Option("html", "--format", "-f", help="html (self-contained page with plots) or md "
                            "(markdown table for a terminal). Default: html."),
) -> None:
    """Plots (loss vs time/tokens/FLOPs, schedules, throughput, cost), a table of runs and a power-law fit."""
    from cramlm.report.html import report

    if fmt not in ("html", "md"):
        raise CramlmError(f"--format must be html or md (got {fmt!r})")
    text = report(run_dirs, fmt)
    if out is None and fmt == "md":
        typer.echo(text, nl=False)
        return
    out = out or Path("report.html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {out} ({len(run_dirs)} run{'s' if len(run_dirs) != 1 else ''}, {len(text) / 1e3:.0f} kB)")
