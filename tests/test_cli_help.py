"""`--help` of every command follows one set of conventions (src/cramlm/cli/help.py), and the top-level options."""

import re

import pytest
import typer

from cramlm import __version__
from cramlm.cli import app


def _commands(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    if hasattr(cmd, "commands"):
        yield path, cmd
        for name, sub in cmd.commands.items():
            yield from _commands(sub, path + (name,))
    else:
        yield path, cmd


COMMANDS = list(_commands())


@pytest.fixture
def wide(monkeypatch):
    """One help row per option, whatever terminal runs the tests."""
    monkeypatch.setenv("COLUMNS", "250")


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) or "cramlm" for p, _ in COMMANDS])
def test_help_shows_no_flag_type_no_typer_default_and_arguments_by_name(cli, wide, path, cmd):
    code, out, _ = cli(*path, "--help")
    assert code == 0
    assert "<bool>" not in out and "BOOLEAN" not in out  # flags take no value
    assert "[default:" not in out  # defaults are said once, in the option's help
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage
    for param in cmd.params:
        if param.param_type_name == "argument":
            name = param.metavar.strip("[]. ").split("]")[0]
            assert name.isupper() or "=" in name, name
            assert name in usage
            assert param.name not in usage.split()


def test_every_option_says_its_default_once_the_same_way():
    for path, cmd in COMMANDS:
        for p in cmd.params:
            if p.param_type_name != "option" or p.required:
                continue
            text = p.help or ""
            where = f"cramlm {' '.join(path)} {p.opts[0]}"
            assert not re.search(r"\(default|default\)|Default [^:]", text), f"{where}: say 'Default: X.' ({text})"
            if p.default not in (None, False, ()):
                assert "Default: " in text, f"{where} (default {p.default!r}) does not say its default"


def test_required_options_and_arguments_are_marked(cli, wide):
    _, out, _ = cli("export", "--help")
    to = next(line for line in out.splitlines() if "--to" in line)
    assert "*" in to and "required" in to
    run_dir = next(line for line in out.splitlines() if "RUN_DIR" in line and "Usage" not in line)
    assert "*" in run_dir and "required" in run_dir
    force = next(line for line in out.splitlines() if "--force" in line)
    assert "required" not in force


def test_version_prints_and_exits_0(cli):
    code, out, err = cli("--version")
    assert (code, out, err) == (0, f"cramlm {__version__}\n", "")


def test_debug_is_listed_in_the_top_level_help(cli, wide):
    _, out, _ = cli("--help")
    assert re.search(r"--debug\s+Show the full traceback", out)


def test_a_missing_argument_is_named_as_in_the_usage_line(cli):
    code, _, err = cli("eval", "ppl")
    assert code == 2 and "Missing argument 'RUN_DIR'" in err


@pytest.mark.parametrize("args,listed", [
    (["plan", "--hardware", "gtx480", "--hours", "1"], ["h100-sxm", "cpu", "h100 (= h100-sxm)", "4090 (= rtx4090)"]),
    (["plan", "--model", "bert-huge", "--hours", "1"], ["bert-crammed", "gpt-small", "bert-base (= bert-original)"]),
    (["train", "nowhere", "--recipe", "fast"], ["crammed", "original-bert", "demo"]),
])
def test_an_unknown_name_lists_the_names_and_aliases(cli, args, listed):
    code, out, err = cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for name in listed:
        assert name in err
