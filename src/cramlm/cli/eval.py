"""`cramlm eval`: downstream and language-modelling evaluations of a run dir or an exported HF dir."""

import typer

from cramlm.errors import CramlmError

app = typer.Typer(help="Evaluate a trained model: GLUE, perplexity, LAMBADA, MLM loss.", no_args_is_help=True)


@app.command("glue")
def glue() -> None:
    """Not available yet."""
    raise CramlmError("cramlm eval glue is not available yet")
