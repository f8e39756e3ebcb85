"""`cramlm prepare`: raw text to a dataset dir of packed token shards (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cramlm.config import resolve_config
from cramlm.errors import CramlmError


def command(
    args: list[str] = typer.Argument(
        None, metavar="SOURCE... [data.KEY=VALUE]...",
        help="Files, folders, globs, .jsonl/.parquet (optionally .gz/.zst/.bz2), a saved HF dataset, hf:NAME/CONFIG, "
        "python-docs or python-docs+site-packages; then config overrides such as data.min_chars=64.",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset dir to write (created if missing)."),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Tokenizer to train: wordpiece (default), bpe (byte-level) or unigram."
    ),
    tokenizer_file: Optional[Path] = typer.Option(
        None, "--tokenizer-file", help="Reuse this tokenizer.json instead of training one."
    ),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size in tokens. Default 32768."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per packed sequence. Default 128."),
    workers: int = typer.Option(0, "--workers", "-w", help="Tokenizer processes; 0 = in-process (HF threads)."),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Fraction of documents held out for validation. Default 0.01."
    ),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="JSONL/parquet field with the text. Default text."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with a data: section."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Take the data section of this recipe preset."),
    prune: Optional[str] = typer.Option(
        None, "--prune", help="Prune documents by difficulty: cluster (distance to the nearest k-means centroid), "
        "proxy (masked-LM loss of a tiny model trained briefly on a sample) or none (default).",
    ),
    prune_keep: Optional[float] = typer.Option(
        None, "--prune-keep", help="Fraction of documents pruning keeps (the hardest ones). Default 0.7."
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: tokenize only part I of N (0-based) for `--merge` later; needs --tokenizer-file."
    ),
    merge: bool = typer.Option(False, "--merge", help="Join the SOURCE dirs written with --shard into --out."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Print the tables of an existing dataset dir and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Filter, tokenize, split and pack text into a dataset dir that `cramlm train` streams from."""
    from cramlm.data.stats import stats_tables

    console = Console()
    if stats is not None:
        for table in stats_tables(stats):
            console.print(table)
        return
    sources = [a for a in (args or []) if "=" not in a]
    overrides = [a for a in (args or []) if "=" in a]
    flags = {"tokenizer": tokenizer, "tokenizer_file": tokenizer_file, "vocab_size": vocab_size,
             "seq_len": seq_len, "val_fraction": val_fraction, "text_field": text_field,
             "prune.method": prune, "prune.keep": prune_keep}
    overrides += [f"data.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = resolve_config(recipe=recipe, config_file=config, overrides=overrides).data
    if out is None:
        raise CramlmError("prepare needs --out DIR (the dataset dir to write)")
    if workers < 0:
        raise CramlmError(f"--workers must be 0 or more, got {workers}")
    from cramlm.data import prepare as pipeline

    if merge:
        pipeline.merge(sources, out)
    else:
        pipeline.prepare(sources, out, cfg, workers=workers, progress=not quiet, shard=_parse_shard(shard))
    for table in stats_tables(out):
        console.print(table)


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(count) >= 1):
        raise CramlmError(f"--shard must look like I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)
