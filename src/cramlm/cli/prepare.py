"""`cramlm prepare`: raw text to a dataset dir of packed token shards (see docs/formats.md)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cramlm.config import DataConfig, RunConfig, resolve_config
from cramlm.errors import CramlmError


def command(
    args: list[str] = typer.Argument(
        None, metavar="SOURCE... [data.KEY=VALUE]...",
        help="Files, folders, globs, .jsonl/.parquet (optionally .gz/.zst/.bz2), a saved HF dataset, hf:NAME/CONFIG, "
        "python-docs or python-docs+site-packages; then config overrides such as data.min_chars=64.",
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Dataset dir to write (created if missing)."),
    force: bool = typer.Option(
        False, "--force", help="Replace a dataset in --out made from other inputs or config, or write into a "
        "folder that is not empty. Default: refuse (the same prepare again resumes).",
    ),
    documents: Optional[str] = typer.Option(
        None, "--documents", help="How plain text becomes documents: paragraphs (blank-line separated), lines, "
        "file (one per file) or auto (lines for a file without blank lines, else paragraphs). Default: auto.",
    ),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", help="Tokenizer to train: wordpiece, bpe (byte-level) or unigram. Default: wordpiece."
    ),
    tokenizer_file: Optional[Path] = typer.Option(
        None, "--tokenizer-file", help="Reuse this tokenizer.json instead of training one."
    ),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size in tokens. Default: 32768."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per packed sequence. Default: 128."),
    workers: int = typer.Option(0, "--workers", "-w",
                                help="Tokenizer processes; 0 = in-process (HF threads). Default: 0."),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Fraction of documents held out for validation. Default: 0.01."
    ),
    text_field: Optional[str] = typer.Option(
        None, "--text-field", help="JSON/JSONL/parquet field with the text. Default: text."
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML file with a data: section."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Take the data section of this recipe preset."),
    prune: Optional[str] = typer.Option(
        None, "--prune", help="Prune documents by difficulty: cluster (distance to the nearest k-means centroid), "
        "proxy (masked-LM loss of a tiny model trained briefly on a sample) or none. Default: none.",
    ),
    prune_keep: Optional[float] = typer.Option(
        None, "--prune-keep", help="Fraction of documents pruning keeps (the hardest ones). Default: 0.7."
    ),
    shard: Optional[str] = typer.Option(
        None, "--shard", help="I/N: tokenize only part I of N (0-based) for `--merge` later; needs --tokenizer-file."
    ),
    merge: bool = typer.Option(False, "--merge", help="Join the SOURCE dirs written with --shard into --out."),
    stats: Optional[Path] = typer.Option(None, "--stats", help="Print the tables of an existing dataset dir and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Filter, tokenize, split and pack text into a dataset dir that `cramlm train` streams from."""
    if stats is not None:
        _show(stats)
        return
    overrides = [a for a in (args or []) if "=" in a and not Path(a).exists()]
    sources = [a for a in (args or []) if a not in overrides]
    _check_overrides(overrides)
    flags = {"tokenizer": tokenizer, "tokenizer_file": tokenizer_file, "vocab_size": vocab_size,
             "seq_len": seq_len, "val_fraction": val_fraction, "text_field": text_field, "documents": documents,
             "prune.method": prune, "prune.keep": prune_keep}
    overrides += [f"data.{k}={v}" for k, v in flags.items() if v is not None]
    cfg = resolve_config(recipe=recipe, config_file=config, overrides=overrides).data
    if out is None:
        raise CramlmError("prepare needs --out DIR (the dataset dir to write)")
    if workers < 0:
        raise CramlmError(f"--workers must be 0 or more, got {workers}")
    from cramlm.data import prepare as pipeline

    start = time.perf_counter()
    if merge:
        pipeline.merge(sources, out, force=force)
    else:
        pipeline.prepare(sources, out, cfg, workers=workers, progress=not quiet, shard=_parse_shard(shard),
                         force=force)
    typer.echo(f"prepared {out} in {time.perf_counter() - start:.1f} s")
    _show(out)


def _show(root: Path) -> None:
    """The dataset's tables, then its warnings on stderr where they are not lost among the tables."""
    from cramlm.data.stats import stats_tables
    from cramlm.data.store import read_manifest

    console = Console()
    for table in stats_tables(root):
        console.print(table)
    for warning in read_manifest(root).get("warnings", []):
        Console(stderr=True).print(f"[bold yellow]warning:[/] {warning}", soft_wrap=True)


def _check_overrides(overrides: list[str]) -> None:
    """prepare reads only the data section: refuse an override it would silently ignore."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        section = key.split(".")[0]
        if section == "data":
            continue
        if section in RunConfig.model_fields:
            raise CramlmError(f"prepare reads only the data section: {text} would be ignored "
                              f"(give it to `cramlm {'eval' if section == 'eval' else 'train'}`)")
        hint = f" (did you mean data.{text}?)" if section in DataConfig.model_fields else ""
        raise CramlmError(f"prepare takes data.KEY=VALUE overrides, got {text!r}{hint}")


def _parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (0, 1)
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and int(count) >= 1):
        raise CramlmError(f"--shard must look like I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)
