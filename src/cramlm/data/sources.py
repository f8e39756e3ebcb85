"""Document iterators over every input `prepare` accepts; documents are streamed, never all held in memory.

A source spec is one of: a text file, a folder (read recursively), a glob (`data/**/*.txt`), a `.jsonl` file
(one JSON object per line, text under `text_field`), a `.json` file holding one array of records, a `.parquet`
file (column `text_field`), any of these
compressed (`.gz`, `.zst`, `.bz2`), a Hugging Face dataset saved with `save_to_disk`, `hf:NAME[/CONFIG]`
(streamed from the Hub, needs `datasets` and a network), `python-docs` (the embedded corpus) or
`python-docs+site-packages` (plus the docstrings of installed packages).

Plain text becomes documents by `documents`: `paragraphs` (runs of non-blank lines: WikiText's layout), `lines`
(one per line: Penn Treebank's), `file` (the whole file), or `auto`: lines for a file whose first MiB holds no
blank line, else paragraphs. A record (JSON, parquet, HF) is always one document. Bad input a user would rather
skip (binary files, lines that are not UTF-8, JSONL lines that are not JSON or lack the field) is skipped and
counted in `skipped`; input nothing sensible can come from (a JSON file none of whose records has the field) is
a one-line `CramlmError`.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from cramlm.errors import CramlmError

PYTHON_DOCS = "python-docs"
PYTHON_DOCS_SITE = "python-docs+site-packages"  # also the docstrings of installed packages (tens of MB)
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}
DOCUMENT_MODES = ("auto", "paragraphs", "lines", "file")
HEAD_BYTES = 1 << 20  # what `auto` and the binary check look at
BLANK_LINE = re.compile(rb"\n[ \t\r\f\v]*\n")
FIELD_CHECK = 10_000  # records without the field, none with it: the file is refused without reading on
BOUNDARIES = (("\n\n",), ("\n",), (". ", "! ", "? ", "; "), (" ", "\t"))  # paragraph, line, sentence, word


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
    """The format under any compression suffix: text, json, jsonl or parquet."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".zst", ".bz2"):
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    return {".jsonl": "jsonl", ".json": "json", ".ndjson": "jsonl", ".parquet": "parquet"}.get(last, "text")


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


def fingerprint(spec: str, documents: str | None = None) -> dict:
    """What identifies a source's content cheaply: paths, sizes and mtimes (or the Python version). With
    `documents`, each file also says how it is cut into documents (what the manifest records)."""
    if spec in (PYTHON_DOCS, PYTHON_DOCS_SITE):
        import sys

        return {"spec": spec, "python": sys.version.split()[0], "prefix": sys.prefix}
    if spec.startswith("hf:"):
        return {"spec": spec}
    path = Path(spec)
    hf = _is_hf_saved(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if hf else resolve_files(spec)
    entries = [{"path": str(p), "bytes": p.stat().st_size, "mtime": int(p.stat().st_mtime)} for p in files]
    if documents is not None and not hf:
        for entry, p in zip(entries, files):
            entry["documents"] = file_mode(p, documents)
    return {"spec": spec, "files": entries}


def source_bytes(spec: str) -> int | None:
    """Total size on disk, to size the tokenizer sample; None when unknown."""
    files = fingerprint(spec).get("files")
    return sum(f["bytes"] for f in files) if files else None


def _head(path: Path) -> bytes:
    """The first MiB after decompression: enough to tell binary from text and paragraphs from lines."""
    try:
        with open_binary(path) as f:
            return f.read(HEAD_BYTES)
    except (OSError, EOFError) as e:
        raise CramlmError(f"cannot read {path}: {e}") from None


def _text_mode(head: bytes, documents: str) -> str:
    """`auto` reads a text without a blank line as one document per line (Penn Treebank) instead of one
    paragraph that is the whole file."""
    if documents != "auto":
        return documents
    return "paragraphs" if BLANK_LINE.search(head) else "lines"


def file_mode(path: Path, documents: str) -> str:
    """How one file becomes documents: records (JSON, parquet), binary (skipped), or the text mode used."""
    if _kind(path) != "text":
        return "records"
    head = _head(path)
    return "binary" if b"\0" in head[:8192] else _text_mode(head, documents)


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


def _text_documents(path: Path, mode: str, skipped: Counter) -> Iterator[str]:
    """Paragraphs (runs of non-blank lines), non-blank lines, or the whole file."""
    if mode == "file":
        text = "".join(_lines(path, skipped)).strip()
        if text:
            yield text
        return
    if mode == "lines":
        yield from (line.strip() for line in _lines(path, skipped) if line.strip())
        return
    para: list[str] = []
    for line in _lines(path, skipped):
        if line.strip():
            para.append(line)
        elif para:
            yield "".join(para).strip()
            para = []
    if para:
        yield "".join(para).strip()


def _jsonl_records(path: Path, skipped: Counter) -> Iterator[object]:
    """One JSON value per line; a line that is not JSON is skipped and counted."""
    for line in _lines(path, skipped):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            skipped["bad_json_lines"] += 1


def _json_records(path: Path, head: bytes, skipped: Counter) -> Iterator[object]:
    """A `.json` file holding one array (read whole, as it cannot be streamed), else JSON Lines."""
    if not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        yield from _jsonl_records(path, skipped)
        return
    try:
        with open_binary(path) as f:
            records = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, EOFError) as e:
        raise CramlmError(f"cannot read {path}: {e}") from None
    except UnicodeDecodeError:
        raise CramlmError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise CramlmError(f"{path} is not valid JSON: {e}") from None
    yield from records


def _record_texts(records: Iterator[object], path: Path, text_field: str, skipped: Counter) -> Iterator[str]:
    """The text of each record (a string, or an object's `text_field`); records without it are skipped and
    counted, and a file where none has it is refused, naming the fields it does have."""
    found = missing = 0
    fields: Counter[str] = Counter()  # characters of text under each other field: the likely --text-field
    for record in records:
        text = record if isinstance(record, str) else record.get(text_field) if isinstance(record, dict) else None
        if isinstance(text, str):
            found += 1
            yield text
            continue
        missing += 1
        skipped["missing_field_lines"] += 1
        if isinstance(record, dict):
            fields.update({k: len(v) if isinstance(v, str) else 0 for k, v in record.items()})
        if not found and missing >= FIELD_CHECK:
            break
    if missing and not found:
        raise CramlmError(_field_error(path, text_field, missing, fields))


def _field_error(path: Path, text_field: str, missing: int, fields: Counter[str]) -> str:
    """'0 of N records have the field ...', naming the fields seen and the one holding the most text."""
    of = f"the first {missing:,}" if missing >= FIELD_CHECK else f"{missing:,}"
    if not fields:
        return f"{path}: 0 of {of} records have the field {text_field!r} (they are not objects or strings)"
    best = max(fields, key=lambda k: fields[k])  # ties: the first seen
    fix = f"use --text-field {best}" if fields[best] else "use --text-field with a field that holds text"
    return f"{path}: 0 of {of} records have the field {text_field!r} (fields seen: {', '.join(fields)}): {fix}"


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


def iter_documents(
    spec: str, text_field: str = "text", skipped: Counter | None = None, documents: str = "auto"
) -> Iterator[str]:
    """Stream the documents of one source spec; `skipped` (if given) counts what was skipped and why."""
    if documents not in DOCUMENT_MODES:
        raise CramlmError(f"documents must be one of {', '.join(DOCUMENT_MODES)}, got {documents!r}")
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
        head = _head(path)
        if b"\0" in head[:8192]:  # NUL bytes: not text
            skipped["binary_files"] += 1
        elif kind == "text":
            yield from _text_documents(path, _text_mode(head, documents), skipped)
        else:
            records = _json_records(path, head, skipped) if kind == "json" else _jsonl_records(path, skipped)
            yield from _record_texts(records, path, text_field, skipped)


def split_document(text: str, max_chars: int) -> list[str]:
    """Pieces of at most max_chars, each cut at the last paragraph, line, sentence or word boundary in the second
    half of its window (a hard cut only where there is none): a long document is text to keep, not to drop."""
    pieces: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        cut = _cut(text, start + max_chars // 2, start + max_chars)
        pieces.append(text[start:cut].strip())
        start = cut
    pieces.append(text[start:].strip())
    return [p for p in pieces if p]


def _cut(text: str, lo: int, hi: int) -> int:
    """Just after the strongest boundary that ends in text[lo:hi], else hi."""
    for seps in BOUNDARIES:
        ends = [i + len(s) for s in seps if (i := text.rfind(s, lo, hi)) >= 0]
        if ends:
            return max(ends)
    return hi


def check_sources(specs: list[str]) -> None:
    """Fail early, before any work, on a source that does not exist."""
    if not specs:
        raise CramlmError("prepare needs at least one SOURCE (a file, folder, glob, hf:NAME or python-docs)")
    for spec in specs:
        if spec not in (PYTHON_DOCS, PYTHON_DOCS_SITE) and not spec.startswith("hf:") and not _is_hf_saved(Path(spec)):
            resolve_files(spec)
        elif spec.startswith("hf:") and not spec[3:]:
            raise CramlmError("hf: needs a dataset name, e.g. hf:wikitext/wikitext-2-raw-v1")


__all__ = ["iter_documents", "split_document", "file_mode", "fingerprint", "source_bytes", "resolve_files",
           "check_sources", "PYTHON_DOCS", "DOCUMENT_MODES"]
