"""Document iterators over every input `prepare` accepts; documents are streamed, never all held in memory.

A source spec is one of: a text file, a folder (read recursively), a glob (`data/**/*.txt`), a `.jsonl` file
(one JSON object per line, text under `text_field`), a `.parquet` file (column `text_field`), any of these
compressed (`.gz`, `.zst`, `.bz2`), a Hugging Face dataset saved with `save_to_disk`, `hf:NAME[/CONFIG]`
(streamed from the Hub, needs `datasets` and a network), `python-docs` (the embedded corpus) or
`python-docs+site-packages` (plus the docstrings of installed packages).

Plain text is split into documents at blank lines (paragraphs: WikiText's layout). Bad input a user would
rather skip (binary files, lines that are not UTF-8, JSONL lines that are not JSON or lack the field) is
skipped and counted in `skipped`; input nothing sensible can come from is a one-line `CramlmError`.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cramlm.errors import CramlmError

PYTHON_DOCS = "python-docs"
PYTHON_DOCS_SITE = "python-docs+site-packages"  # also the docstrings of installed packages (tens of MB)
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}


def _open_zst(path: Path) -> IO[bytes]:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)


def open_binary(path: Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing by suffix."""
    suffix = path.suffix.lower()
    if suffix == ".zst":
        return io.BufferedReader(_open_zst(path))
    opener = COMPRESSED.get(suffix)
    return opener(path, "rb") if opener else open(path, "rb")


def _kind(path: Path) -> str:
    """The format under any compression suffix: text, jsonl or parquet."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst", ".bz2"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}.get(last, "text")


def _is_hf_saved(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


def resolve_files(spec: str) -> list[Path]:
    """The files a spec names, sorted; a folder is walked recursively (hidden files skipped)."""
    if any(c in spec for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise CramlmError(f"no files match {spec}")
        return files
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        if not files:
            raise CramlmError(f"folder {spec} holds no files")
        return files
    raise CramlmError(f"source {spec} does not exist (expected a file, folder, glob, hf:NAME or {PYTHON_DOCS})")


def fingerprint(spec: str) -> dict:
    """What identifies a source's content cheaply: paths, sizes and mtimes (or the Python version)."""
    if spec in (PYTHON_DOCS, PYTHON_DOCS_SITE):
        import sys

        return {"spec": spec, "python": sys.version.split()[0], "prefix": sys.prefix}
    if spec.startswith("hf:"):
        return {"spec": spec}
    path = Path(spec)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if _is_hf_saved(path) else resolve_files(spec)
    return {
        "spec": spec,
        "files": [{"path": str(p), "bytes": p.stat().st_size, "mtime": int(p.stat().st_mtime)} for p in files],
    }


def source_bytes(spec: str) -> int | None:
    """Total size on disk, to size the tokenizer sample; None when unknown."""
    files = fingerprint(spec).get("files")
    return sum(f["bytes"] for f in files) if files else None


def _looks_binary(path: Path) -> bool:
    """NUL bytes in the first 8 KiB (after decompression) mean this is not text."""
    try:
        with open_binary(path) as f:
            return b"\0" in f.read(8192)
    except (OSError, EOFError) as e:
        raise CramlmError(f"cannot read {path}: {e}") from None


def _lines(path: Path, skipped: Counter) -> Iterator[str]:
    """Decoded lines; a line that is not UTF-8 is skipped and counted."""
    try:
        with open_binary(path) as f:
            for raw in f:
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError:
                    skipped["non_utf8_lines"] += 1
    except (OSError, EOFError) as e:  # a truncated gzip, a corrupt zstd frame
        raise CramlmError(f"cannot read {path}: {e}") from None


def _text_documents(path: Path, skipped: Counter) -> Iterator[str]:
    """Paragraphs: runs of non-blank lines."""
    para: list[str] = []
    for line in _lines(path, skipped):
        if line.strip():
            para.append(line)
        elif para:
            yield "".join(para).strip()
            para = []
    if para:
        yield "".join(para).strip()


def _jsonl_documents(path: Path, text_field: str, skipped: Counter) -> Iterator[str]:
    for line in _lines(path, skipped):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped["bad_json_lines"] += 1
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            skipped["missing_field_lines"] += 1
            continue
        yield text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(open_binary(path) if path.suffix.lower() in (".gz", ".zst", ".bz2") else path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise CramlmError(f"{path} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise CramlmError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}); use --text-field")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str):
                yield text


def _hf_documents(spec: str, text_field: str) -> Iterator[str]:
    """`hf:NAME[/CONFIG]` streamed from the Hub, or a dataset saved with `save_to_disk`."""
    try:
        import datasets
    except ImportError:
        raise CramlmError(f"{spec} needs the `datasets` package: pip install 'cramlm[hf]'") from None
    if spec.startswith("hf:"):
        name, _, config = spec[3:].partition("/")
        try:
            ds = datasets.load_dataset(name, config or None, split="train", streaming=True)
        except Exception as e:  # offline, unknown name...
            raise CramlmError(f"cannot load {spec}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    else:
        ds = datasets.load_from_disk(spec)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else ds[sorted(ds)[0]]
    columns = ds.column_names or []
    if columns and text_field not in columns:
        raise CramlmError(f"{spec} has no column {text_field!r} (columns: {', '.join(columns)}); use --text-field")
    for record in ds:
        text = record.get(text_field)
        if isinstance(text, str):
            yield text


def iter_documents(spec: str, text_field: str = "text", skipped: Counter | None = None) -> Iterator[str]:
    """Stream the documents of one source spec; `skipped` (if given) counts what was skipped and why."""
    skipped = Counter() if skipped is None else skipped
    if spec in (PYTHON_DOCS, PYTHON_DOCS_SITE):
        from cramlm.data.python_docs import iter_python_docs

        yield from iter_python_docs(with_site_packages=spec == PYTHON_DOCS_SITE)
        return
    if spec.startswith("hf:") or _is_hf_saved(Path(spec)):
        yield from _hf_documents(spec, text_field)
        return
    for path in resolve_files(spec):
        kind = _kind(path)
        if kind == "parquet":
            yield from _parquet_documents(path, text_field)
            continue
        if _looks_binary(path):
            skipped["binary_files"] += 1
            continue
        yield from _jsonl_documents(path, text_field, skipped) if kind == "jsonl" else _text_documents(path, skipped)


def check_sources(specs: list[str]) -> None:
    """Fail early, before any work, on a source that does not exist."""
    if not specs:
        raise CramlmError("prepare needs at least one SOURCE (a file, folder, glob, hf:NAME or python-docs)")
    for spec in specs:
        if spec not in (PYTHON_DOCS, PYTHON_DOCS_SITE) and not spec.startswith("hf:") and not _is_hf_saved(Path(spec)):
            resolve_files(spec)
        elif spec.startswith("hf:") and not spec[3:]:
            raise CramlmError("hf: needs a dataset name, e.g. hf:wikitext/wikitext-2-raw-v1")


__all__ = ["iter_documents", "fingerprint", "source_bytes", "resolve_files", "check_sources", "PYTHON_DOCS"]
