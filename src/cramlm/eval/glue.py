"""GLUE under the Cramming protocol: fine-tune the pretrained encoder on each task with one global set of
hyper-parameters (`cfg.eval`), score the dev sets with the official metrics, average as Cramming reports it.

Data layouts read: the GLUE TSVs of `download_glue_data.py` (`DIR/<TASK>/train.tsv`, `dev.tsv`, MNLI
`dev_matched.tsv`/`dev_mismatched.tsv`; CoLA has no header) and the HF parquet files (`DIR/<task>/<split>*.parquet`
with split train, validation, validation_matched, validation_mismatched).
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cramlm.errors import CramlmError


@dataclass(frozen=True)
class Task:
    name: str
    tsv_text: tuple[str | int, ...]  # TSV columns with the one or two texts (names, or indices without header)
    tsv_label: str | int
    hf_text: tuple[str, ...]
    label_names: tuple[str, ...]  # empty = regression
    metrics: tuple[str, ...]
    main: str  # the metric that enters the GLUE average
    dev: tuple[tuple[str, str, str], ...] = (("", "dev", "validation"),)  # (suffix, TSV stem, HF split)
    header: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.label_names) or 1


_NLI = ("entailment", "not_entailment")
_MNLI_DEV = (("m", "dev_matched", "validation_matched"), ("mm", "dev_mismatched", "validation_mismatched"))
TASKS: dict[str, Task] = {t.name: t for t in [
    Task("cola", (3,), 1, ("sentence",), ("unacceptable", "acceptable"), ("mcc",), "mcc", header=False),
    Task("sst2", ("sentence",), "label", ("sentence",), ("negative", "positive"), ("accuracy",), "accuracy"),
    Task("mrpc", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
         ("not_equivalent", "equivalent"), ("f1", "accuracy"), "f1"),
    Task("stsb", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), (),
         ("pearson", "spearman"), "spearman"),
    Task("qqp", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
         ("not_duplicate", "duplicate"), ("f1", "accuracy"), "f1"),
    Task("mnli", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
         ("entailment", "neutral", "contradiction"), ("accuracy",), "accuracy", dev=_MNLI_DEV),
    Task("qnli", ("question", "sentence"), "label", ("question", "sentence"), _NLI, ("accuracy",), "accuracy"),
    Task("rte", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), _NLI, ("accuracy",), "accuracy"),
    Task("wnli", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
         ("accuracy",), "accuracy"),
]}
# Cramming (after BERT) averages the main metric of every dev set but WNLI's: MNLI-m and MNLI-mm count separately.
AVERAGE_EXCLUDES = ("wnli",)


@dataclass
class Split:
    """Examples of one task split: one or two texts each, int labels (classes) or float labels (regression)."""

    texts: list[tuple[str, ...]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int | None) -> "Split":
        return self if n is None else Split(self.texts[:n], self.labels[:n])


def parse_tasks(text: str | list[str] | None) -> list[Task]:
    """`rte,mrpc` or a list of names (also `SST-2`, `all`) -> tasks in the given order."""
    names = text.split(",") if isinstance(text, str) else list(text or [])
    out = []
    for raw in names:
        key = _norm(raw)
        if key == "all":
            out += [t for t in TASKS.values() if t not in out]
            continue
        if key not in TASKS:
            raise CramlmError(f"unknown GLUE task {raw!r} (known: {', '.join(TASKS)}, all)")
        if TASKS[key] not in out:
            out.append(TASKS[key])
    if not out:
        raise CramlmError("no GLUE task given (e.g. --tasks rte,mrpc)")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def task_dir(glue_dir: Path, task: Task) -> Path:
    """The folder of a task: `CoLA`, `SST-2`, `sst2`... matched case- and punctuation-insensitively."""
    glue_dir = Path(glue_dir)
    if not glue_dir.is_dir():
        raise CramlmError(f"GLUE dir {glue_dir} does not exist")
    for entry in sorted(glue_dir.iterdir()):
        if entry.is_dir() and _norm(entry.name) == task.name:
            return entry
    raise CramlmError(f"GLUE dir {glue_dir} has no folder for {task.name} (e.g. {glue_dir}/{task.name.upper()}/)")


def read_split(glue_dir: str | Path, task: Task, split: str) -> Split:
    """Read `train` or a dev set (`dev`, `dev_matched`...) from the TSV or the HF parquet layout."""
    folder = task_dir(Path(glue_dir), task)
    tsv = folder / f"{split}.tsv"
    if tsv.is_file():
        return _read_tsv(tsv, task)
    hf_split = "train" if split == "train" else next(h for _, stem, h in task.dev if stem == split)
    parquet = sorted(folder.glob(f"{hf_split}.parquet")) + sorted(folder.glob(f"{hf_split}-*.parquet"))
    if parquet:
        return _read_parquet(parquet, task)
    raise CramlmError(f"{folder} has neither {split}.tsv nor {hf_split}*.parquet")


def _label(value: str, task: Task, where: str) -> float | int:
    value = value.strip()
    try:
        if not task.label_names:
            return float(value)
        if value in task.label_names:
            return task.label_names.index(value)
        label = int(value)
        if 0 <= label < task.num_labels:
            return label
    except ValueError:
        pass
    raise CramlmError(f"{where}: bad {task.name} label {value!r} (expected {task.label_names or 'a number'})")


def _read_tsv(path: Path, task: Task) -> Split:
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: MRPC starts with a byte-order mark
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = list(task.tsv_text) + [task.tsv_label]
        if task.header:
            header = [h.strip() for h in next(rows, [])]
            missing = [c for c in columns if c not in header]
            if missing:
                raise CramlmError(f"{path}: no column {missing[0]!r} in the header ({', '.join(header)})")
            columns = [header.index(c) for c in columns]
        need = max(columns) + 1
        texts, labels = [], []
        for line, row in enumerate(rows, start=2 if task.header else 1):
            if len(row) < need:  # a few malformed QQP/MNLI rows in the official files: skipped, as GLUE's scripts do
                continue
            texts.append(tuple(row[c] for c in columns[:-1]))
            labels.append(_label(row[columns[-1]], task, f"{path}:{line}"))
    if not labels:
        raise CramlmError(f"{path} holds no {task.name} examples")
    return Split(texts, np.asarray(labels, dtype=np.float32 if not task.label_names else np.int64))


def _read_parquet(paths: list[Path], task: Task) -> Split:
    import pyarrow.parquet as pq

    table = pq.read_table(paths[0]) if len(paths) == 1 else _concat([pq.read_table(p) for p in paths])
    missing = [c for c in (*task.hf_text, "label") if c not in table.column_names]
    if missing:
        raise CramlmError(f"{paths[0]}: no column {missing[0]!r} ({', '.join(table.column_names)})")
    labels = np.asarray(table.column("label").to_pylist())
    keep = labels >= 0  # the HF test splits carry label -1
    columns = [table.column(c).to_pylist() for c in task.hf_text]
    texts = [t for t, k in zip(zip(*columns), keep) if k]
    labels = labels[keep].astype(np.float32 if not task.label_names else np.int64)
    if not len(labels):
        raise CramlmError(f"{paths[0]} holds no labelled {task.name} examples")
    return Split(texts, labels)


def _concat(tables: list):
    import pyarrow as pa

    return pa.concat_tables(tables)
