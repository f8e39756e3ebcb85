"""The `cramlm` command: a thin typer shell over the library; one module per command."""

from __future__ import annotations

import os
import sys

import click
import typer

from cramlm import __version__
from cramlm.cli.help import Command, Group
from cramlm.errors import CramlmError

app = typer.Typer(
    name="cramlm",
    help="Budgeted language-model pretraining: plan a budget, prepare data, cram a model, evaluate, export, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cramlm {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error (anywhere on the "
                               "command line, or CRAMLM_DEBUG=1)."),
) -> None:
    """Options of every command; `main` acts on --debug before typer parses."""


def _register() -> None:
    from cramlm.cli import (cascade, demo, eval as eval_, export, finetune, generate, plan, prepare, report, sweep,
                            train)

    overrides = {"allow_extra_args": True, "ignore_unknown_options": False}  # SECTION.KEY=VALUE arguments
    app.command("plan", cls=Command)(plan.command)
    app.command("prepare", cls=Command)(prepare.command)
    app.command("train", cls=Command, context_settings=overrides)(train.command)
    app.command("sweep", cls=Command, context_settings=overrides)(sweep.command)
    app.command("finetune", cls=Command, context_settings=overrides)(finetune.command)
    app.add_typer(eval_.app, name="eval")
    app.command("export", cls=Command)(export.command)
    app.command("generate", cls=Command)(generate.command)
    app.command("report", cls=Command)(report.command)
    app.command("demo", cls=Command)(demo.command)
    app.add_typer(cascade.app, name="cascade")


_register()


def fail(message: str) -> None:
    """Print a one-line error and exit 2 (for CLI-level checks outside the library)."""
    raise CramlmError(message)


# Recent typer ships its own copy of click: catch the exceptions of both.
EXIT = (click.exceptions.Exit, typer.Exit)
ABORT = (click.exceptions.Abort, typer.Abort, KeyboardInterrupt)
USAGE_ERRORS = (click.ClickException,
                next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors are one line and exit 2; `--debug` (anywhere) shows tracebacks."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("CRAMLM_DEBUG"))
    args = [a for a in args if a != "--debug"]
    try:
        code = app(args=args, prog_name="cramlm", standalone_mode=False)
    except CramlmError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except EXIT as e:
        sys.exit(e.exit_code)
    except USAGE_ERRORS as e:
        e.show()
        sys.exit(e.exit_code)
    except ABORT:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug, not the user's fault: still one line unless --debug
        if debug:
            raise
        print(f"error: internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)",
              file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
