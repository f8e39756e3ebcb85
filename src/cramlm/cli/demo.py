"""`cramlm demo`: the offline end-to-end tour (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import typer

from cramlm.errors import CramlmError


def command(
    budget: str = typer.Option("4m", "--budget", "-b",
                               help="Training budget: wall-clock (4m), or e.g. 200steps. Default: 4m."),
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o",
                             help="Folder for the dataset and the run dir. Default: runs/demo."),
    overrides: list[str] = typer.Argument(None, metavar="[SECTION.KEY=VALUE]...",
                                          help="Config overrides on top of the demo recipe, e.g. train.lr=2e-3."),
) -> None:
    """Prepare the python-docs corpus, cram a small encoder for BUDGET, beat the baselines, show fill-mask."""
    from cramlm.demo import run_demo

    result = run_demo(out, budget=budget, overrides=overrides or ())
    if result.trained_loss >= result.unigram_loss:
        raise CramlmError(
            f"the trained model ({result.trained_loss:.3f}) did not beat the unigram baseline "
            f"({result.unigram_loss:.3f}): give it a larger --budget"
        )
