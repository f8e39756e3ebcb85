"""cramlm's help conventions on top of typer's, in one place for every command.

- A flag (`--json`, `--force/--no-force`) takes no value: no type is shown beside it.
- Each default is said once, in the option's own help ("Default: X."), so typer's `[default: X]` is off.
- Arguments read as users write them (`RUN_DIR`): in the usage line, the arguments panel and error messages.
- A command's docstring is prose: its line breaks are not kept (typer's rich mode would print them).
"""

from __future__ import annotations

import inspect
from typing import Any

import click
from typer.core import TyperCommand, TyperGroup


def polish(param: Any) -> None:
    """Apply the conventions to one parameter (idempotent)."""
    param.show_default = False
    if param.param_type_name == "argument":
        if param.metavar is None:
            param.metavar = param.name.upper()
    elif getattr(param, "is_flag", False) and not getattr(param, "count", False):
        param.metavar = ""


def unwrap(text: str) -> str:
    """Join the lines of each paragraph (paragraphs are separated by a blank line)."""
    return "\n\n".join(" ".join(line.strip() for line in para.splitlines())
                       for para in inspect.cleandoc(text).split("\n\n"))


def usage_piece(param: Any) -> str:
    """`RUN_DIR` when required, `[RUN_DIR]` when not, `...` when it repeats; a metavar with brackets as written."""
    name = param.metavar
    if "[" not in name:
        name = name if param.required else f"[{name}]"
    if param.nargs != 1 and not name.endswith("..."):
        name += "..."
    return name


class _Polished:
    """Polishes the parameters of a command or group, the lazily made `--help` included."""

    params: list[Any]
    help: str | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.help:
            self.help = unwrap(self.help)
        for param in self.params:
            polish(param)

    def get_help_option(self, ctx: click.Context) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            polish(option)
        return option


class Command(_Polished, TyperCommand):
    """A cramlm command: polished parameters and a usage line that names arguments by their metavar."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [usage_piece(p) for p in self.get_params(ctx) if p.param_type_name == "argument"]


class Group(_Polished, TyperGroup):
    """A cramlm command group (`cramlm`, `cramlm eval`, `cramlm cascade`) with polished parameters."""
