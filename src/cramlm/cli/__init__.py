"""The `cramlm` command: a thin typer shell over the library; one module per command."""

from __future__ import annotations

import os
import sys

import click
import typer

from cramlm.errors import CramlmError

app = typer.Typer(
    name="cramlm",
    help="Budgeted language-model pretraining: plan a budget, prepare data, cram a model, evaluate, export, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from cramlm.cli import cascade, demo, eval as eval_, export, generate, plan, prepare, report, sweep, train

    app.command("plan")(plan.command)
    app.command("prepare")(prepare.command)
    app.command(
        "train", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(train.command)
    app.command(
        "sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(sweep.command)
    from cramlm.cli import finetune

    app.command(
        "finetune", context_settings={"allow_extra_args": True, "ignore_unknown_options": False}
    )(finetune.command)
    app.add_typer(eval_.app, name="eval")
    app.command("export")(export.command)
    app.command("generate")(generate.command)
    app.command("report")(report.command)
    app.command("demo")(demo.command)
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
