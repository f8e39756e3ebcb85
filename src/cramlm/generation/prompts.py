"""Where `cramlm generate` finds its prompts: arguments, a file or stdin, one per line or one JSON object per line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from cramlm.errors import CramlmError
from cramlm.eval.lm import read_utf8


def parse_prompts(text: str, field: str | None, where: str) -> list[str]:
    """Non-blank lines of `text`; with `field`, each line is a JSON object and its `field` the prompt."""
    prompts = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if field is None:
            prompts.append(line)
            continue
        try:
            value = json.loads(line)[field]
        except (ValueError, KeyError, TypeError):
            raise CramlmError(f"{where}:{n}: expected a JSON object with a {field!r} field") from None
        if not isinstance(value, str):
            raise CramlmError(f"{where}:{n}: field {field!r} is {type(value).__name__}, not text")
        prompts.append(value)
    return prompts


def read_prompts(arguments: list[str], file: Path | None, field: str | None, stdin: TextIO) -> list[str]:
    """The prompts in order: arguments (`-` reads stdin), then the file's. A `.jsonl` file or stdin read with
    `field` holds JSON objects (default field: prompt); any other file holds one prompt per line."""
    prompts: list[str] = []
    for arg in arguments:
        prompts += parse_prompts(stdin.read(), field, "stdin") if arg == "-" else [arg]
    if file is not None:
        jsonl = field is not None or file.suffix in (".jsonl", ".json")
        prompts += parse_prompts(read_utf8(file, "prompt file"), (field or "prompt") if jsonl else None, str(file))
    if not prompts:
        raise CramlmError("no prompts: give them as arguments, with --file, or '-' to read stdin")
    return prompts
