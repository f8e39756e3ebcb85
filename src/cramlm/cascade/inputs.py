"""Inputs for `cramlm cascade predict`: TSV with a header, JSONL, or plain lines (a file or stdin), in batches.

Plain lines hold one text, or two separated by a tab for pair tasks. A TSV header names the text columns as the
GLUE files do (or `text`); JSONL objects use the GLUE field names or `text`. An optional `label` column/field lets
predict report accuracy. Empty inputs are skipped and over-long ones truncated; both are counted, not fatal.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

from cramlm.errors import CramlmError


@dataclass
class Record:
    line: int  # 1-based line number in the input
    text: str | tuple[str, ...]
    label: int | None = None


@dataclass
class InputStats:
    read: int = 0
    empty: int = 0
    truncated: int = 0
    empty_lines: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Fields:
    """Where the texts and the label are, for one task."""

    text_names: tuple[tuple[str, ...], ...]  # accepted names for the text field(s), e.g. (("sentence",), ("text",))
    labels: tuple[str, ...]
    n_texts: int = 1
    label_names: tuple[str, ...] = ("label",)


def read_inputs(source: str, fields: Fields, batch_size: int = 256, max_chars: int = 10_000,
                stats: InputStats | None = None) -> Iterator[list[Record]]:
    """Yield batches of records from a path or `-` (stdin)."""
    stats = stats if stats is not None else InputStats()
    if source == "-":
        yield from _batches(_records(sys.stdin, "", fields, max_chars, stats, "<stdin>"), batch_size)
        return
    path = Path(source)
    if not path.is_file():
        raise CramlmError(f"input file {source} does not exist")
    with open(path, encoding="utf-8-sig", newline="") as f:
        yield from _batches(_records(f, path.suffix.lower(), fields, max_chars, stats, str(path)), batch_size)


def _batches(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    batch: list[Record] = []
    for r in records:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _records(f: IO[str], suffix: str, fields: Fields, max_chars: int, stats: InputStats,
             where: str) -> Iterator[Record]:
    lines = enumerate(f, start=1)
    first = next(lines, None)
    if first is None:
        return
    n, head = first
    kind = ("jsonl" if suffix in (".jsonl", ".json", ".ndjson") or head.lstrip().startswith("{")
            else "tsv" if suffix == ".tsv" else "plain")
    columns = None
    if kind == "tsv":
        columns = _tsv_columns(head, fields)
        if columns is None:  # no recognised header: the first line is data
            kind = "plain"
    if kind != "tsv":
        lines = _chain([(n, head)], lines)
    for n, line in lines:
        line = line.rstrip("\r\n")
        if kind == "jsonl":
            texts, label = _from_json(line, fields, f"{where}:{n}")
        elif kind == "tsv":
            cells = line.split("\t")
            texts = [cells[c] if c < len(cells) else "" for c in columns[0]]
            label = cells[columns[1]] if columns[1] is not None and columns[1] < len(cells) else None
        else:
            cells = line.split("\t")
            if fields.n_texts == 2 and len(cells) < 2 and line.strip():
                raise CramlmError(f"{where}:{n}: this task needs two texts per line, separated by a tab")
            texts, label = cells[: fields.n_texts], None
        stats.read += 1
        if texts is None or not all(t.strip() for t in texts):
            stats.empty += 1
            stats.empty_lines.append(n)
            continue
        if any(len(t) > max_chars for t in texts):
            stats.truncated += 1
            texts = [t[:max_chars] for t in texts]
        text = texts[0] if fields.n_texts == 1 else tuple(texts)
        yield Record(n, text, _label(label, fields, f"{where}:{n}"))


def _chain(*parts):
    for p in parts:
        yield from p


def _tsv_columns(header: str, fields: Fields) -> tuple[list[int], int | None] | None:
    names = [h.strip() for h in header.rstrip("\r\n").split("\t")]
    for option in fields.text_names:
        if all(c in names for c in option) and len(option) == fields.n_texts:
            label = next((names.index(c) for c in fields.label_names if c in names), None)
            return [names.index(c) for c in option], label
    return None


def _from_json(line: str, fields: Fields, where: str) -> tuple[list[str] | None, str | None]:
    if not line.strip():
        return None, None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise CramlmError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise CramlmError(f"{where}: each JSONL line must be an object")
    for option in fields.text_names:
        if len(option) == fields.n_texts and all(k in obj for k in option):
            label = next((obj[k] for k in fields.label_names if k in obj), None)
            return [str(obj[k] or "") for k in option], None if label is None else str(label)
    wanted = " or ".join("+".join(o) for o in fields.text_names if len(o) == fields.n_texts)
    raise CramlmError(f"{where}: no text field ({wanted})")


def _label(value: str | None, fields: Fields, where: str) -> int | None:
    """Gold labels may be names or indices; anything else means the input is for another task."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value in fields.labels:
        return fields.labels.index(value)
    if value.isdigit() and int(value) < len(fields.labels):
        return int(value)
    raise CramlmError(f"{where}: label {value!r} is not a label of this cascade ({', '.join(fields.labels)}): "
                      "is the input for another task?")


def task_fields(task_name: str | None, labels: Sequence[str]) -> Fields:
    """The accepted text fields of a GLUE task (TSV and HF names), falling back to `text`/`text_a`+`text_b`."""
    from cramlm.eval.glue import TASKS

    task = TASKS.get(task_name or "")
    options: list[tuple[str, ...]] = []
    label_names = ["label"]
    if task is not None:
        options += [tuple(c for c in task.tsv_text if isinstance(c, str)), task.hf_text]
        if isinstance(task.tsv_label, str):
            label_names.append(task.tsv_label)
    n = len(task.hf_text) if task is not None else 1
    options += [("text",)] if n == 1 else [("text_a", "text_b"), ("text", "text_pair")]
    return Fields(tuple(o for o in dict.fromkeys(options) if len(o) == n), tuple(labels), n, tuple(label_names))
