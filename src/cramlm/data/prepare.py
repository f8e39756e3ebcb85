"""The data pipeline: sources -> filters -> tokenizer -> packed shards + manifest (a dataset dir).

Two passes over the input: one gathers a sample to train the tokenizer (skipped with `tokenizer_file`; when the
whole corpus fits in the sample it is kept and the second pass reads it from memory), one filters, tokenizes,
splits and packs. Documents stream through in fixed-size chunks; tokenization runs on `workers` processes with
results consumed in input order, so the shards are byte-identical whatever the number of workers. Memory is
bounded by the chunk size, the sample and the exact-dedup hash set (16 bytes per kept document).
"""

from __future__ import annotations

import math
import shutil
import time
from collections import Counter, deque
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from cramlm import __version__
from cramlm.config import DataConfig
from cramlm.data.filters import CompressionFilter, TextFilters, text_hash
from cramlm.data.sources import check_sources, fingerprint, iter_documents, source_bytes
from cramlm.data.store import FORMAT, FORMAT_VERSION, SPLITS, Packer, ShardWriter, token_dtype, write_manifest
from cramlm.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_hash, train_tokenizer
from cramlm.errors import CramlmError

CHUNK_DOCS = 2048
CHUNK_CHARS = 4_000_000
MB = 1_000_000


def _unit(key: bytes) -> float:
    """A document's hash as a number in [0, 1): decides sampling and the val split, independent of order."""
    return int.from_bytes(key[:8], "little") / 2**64


def _all_documents(sources: list[str], text_field: str, skipped: Counter) -> Iterator[str]:
    for spec in sources:
        yield from iter_documents(spec, text_field, skipped)


def _sample(sources: list[str], cfg: DataConfig, total_bytes: int | None) -> tuple[list[str], list[str] | None, Counter]:
    """(tokenizer sample, the whole corpus if it fit in the sample budget else None, skip counts of this pass)."""
    budget = cfg.tokenizer_sample_mb * MB
    rate = 1.0 if not total_bytes else min(1.0, budget / total_bytes)
    probe = TextFilters(cfg, dedup=False)
    skipped: Counter = Counter()
    sample: list[str] = []
    corpus: list[str] | None = [] if rate == 1.0 else None
    chars = 0
    for text in _all_documents(sources, cfg.text_field, skipped):
        if corpus is not None:
            corpus.append(text)
        if probe.reason(text) is None and (rate == 1.0 or _unit(text_hash(text)) < rate):
            sample.append(text)
            chars += len(text)
            if chars >= budget:
                corpus = None  # the corpus is larger than the sample: stream it again
                if rate < 1.0:
                    break
    return sample, corpus, skipped


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]


_worker_tok = None


def _worker_init(path: str) -> None:
    global _worker_tok
    import os

    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tok = Tokenizer.from_file(path)


def _worker_encode(texts: list[str]) -> list[list[int]]:
    return _encode(_worker_tok, texts)


def _chunks(docs: Iterator[str], filters: TextFilters) -> Iterator[list[str]]:
    chunk: list[str] = []
    chars = 0
    for text in docs:
        if filters.keep(text):
            chunk.append(text)
            chars += len(text)
            if len(chunk) >= CHUNK_DOCS or chars >= CHUNK_CHARS:
                yield chunk
                chunk, chars = [], 0
    if chunk:
        yield chunk


def _encoded(chunks: Iterator[list[str]], tok: Any, pool: Any, window: int = 4) -> Iterator[tuple[list[str], list[list[int]]]]:
    """(texts, ids) per chunk in input order; with a pool, a bounded window of chunks is in flight."""
    if pool is None:
        for chunk in chunks:
            yield chunk, _encode(tok, chunk)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(_worker_encode, (chunk,))))
        if len(pending) > window:
            done, result = pending.popleft()
            yield done, result.get()
    while pending:
        done, result = pending.popleft()
        yield done, result.get()


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, transient=False,
    )


def prepare(
    sources: list[str], out_dir: str | Path, cfg: DataConfig, workers: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Build a dataset dir from sources; returns the manifest (also written to out_dir/manifest.json)."""
    check_sources(sources)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    fingerprints = [fingerprint(s) for s in sources]
    sizes = [source_bytes(s) for s in sources]
    total_bytes = sum(sizes) if all(s is not None for s in sizes) else None

    with _progress(progress) as bar:
        tok_path = out / "tokenizer.json"
        corpus: list[str] | None = None
        sample_skipped: Counter = Counter()
        if cfg.tokenizer_file:
            tok = load_tokenizer(cfg.tokenizer_file)
            if Path(cfg.tokenizer_file).resolve() != tok_path.resolve():
                shutil.copyfile(cfg.tokenizer_file, tok_path)
            sample = []
        else:
            task = bar.add_task("tokenizer", total=None, stats=f"sampling {cfg.tokenizer_sample_mb:g} MB")
            sample, corpus, sample_skipped = _sample(sources, cfg, total_bytes)
            if not sample:
                raise CramlmError(f"no usable documents in {' '.join(sources)} (all empty, skipped or filtered)")
            bar.update(task, stats=f"training {cfg.tokenizer} on {sum(map(len, sample)) / MB:.1f} MB")
            tok = train_tokenizer(sample, cfg.tokenizer, cfg.vocab_size, cfg.lowercase)
            save_tokenizer(tok, tok_path)
            bar.update(task, total=1, completed=1, stats=f"{cfg.tokenizer} {tok.get_vocab_size()} tokens")
        vocab_size = tok.get_vocab_size()
        if cfg.tokenizer_file and vocab_size != cfg.vocab_size:
            cfg = cfg.model_copy(update={"vocab_size": vocab_size})
        dtype = token_dtype(vocab_size)

        probe = sample[:2000]
        ratios = [len(ids) / max(1, len(t)) for ids, t in zip(_encode(tok, probe), probe)]
        compression = CompressionFilter(cfg.max_tokens_per_char_z, ratios)
        del sample, probe

        for split in SPLITS:  # a fresh build replaces an earlier one's shards
            shutil.rmtree(out / split, ignore_errors=True)
        shard_rows = int(cfg.shard_mb * MB // (cfg.seq_len * dtype.itemsize))
        writers = {s: ShardWriter(out, s, cfg.seq_len, dtype, shard_rows) for s in SPLITS}
        packers = {s: Packer(cfg.seq_len, dtype) for s in SPLITS}
        counts = {s: Counter() for s in SPLITS}
        token_counts = np.zeros(vocab_size, dtype=np.int64)
        length_hist = Counter()
        filters = TextFilters(cfg)
        skipped: Counter = Counter()
        docs = iter(corpus) if corpus is not None else _all_documents(sources, cfg.text_field, skipped)
        if corpus is not None:
            skipped = sample_skipped

        task = bar.add_task("tokenize + pack", total=total_bytes, stats="")
        pool = get_context("spawn").Pool(workers, _worker_init, (str(tok_path),)) if workers > 1 else None
        try:
            for texts, ids_list in _encoded(_chunks(docs, filters), tok, pool, 2 * workers):
                for text, ids in zip(texts, ids_list):
                    if not compression.keep(len(ids), len(text)):
                        continue
                    split = "val" if _unit(text_hash(text)) < cfg.val_fraction else "train"
                    arr = np.asarray(ids, dtype=dtype)
                    c = counts[split]
                    c["documents"] += 1
                    c["tokens"] += len(arr)
                    length_hist[int(math.log2(max(1, len(arr))))] += 1
                    if split == "train":
                        token_counts += np.bincount(arr, minlength=vocab_size)
                    writers[split].write(packers[split].add(arr))
                done = sum(c["documents"] for c in counts.values())
                elapsed = time.perf_counter() - start
                toks = sum(c["tokens"] for c in counts.values())
                bar.update(task, advance=sum(map(len, texts)),
                           stats=f"{done:,} docs {done / elapsed:,.0f}/s {toks / elapsed / 1e3:,.0f}k tok/s")
        finally:
            if pool:
                pool.terminate()

        for split in SPLITS:
            blocks, tail = packers[split].finish()
            writers[split].write(blocks)
            counts[split]["dropped_tail_tokens"] = tail

    splits = {}
    for split in SPLITS:
        shards = writers[split].close()
        splits[split] = {**counts[split], "sequences": sum(s["sequences"] for s in shards), "shards": shards}
    if splits["train"]["sequences"] == 0:
        raise CramlmError(
            f"{' '.join(sources)} gave {splits['train']['tokens']} training tokens: "
            f"not one sequence of {cfg.seq_len} (use more text or a smaller --seq-len)"
        )
    np.save(out / "token_counts.npy", token_counts)
    dropped = dict(filters.dropped)
    dropped["compression"] = compression.dropped
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cramlm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seq_len": cfg.seq_len,
        "vocab_size": vocab_size,
        "dtype": dtype.str,
        "tokenizer": {"file": "tokenizer.json", "kind": cfg.tokenizer if not cfg.tokenizer_file else "file",
                      "sha256": tokenizer_hash(tok_path)},
        "order": cfg.order,
        "documents": sum(splits[s]["documents"] for s in SPLITS),
        "tokens": sum(splits[s]["tokens"] for s in SPLITS),
        "sequences": sum(splits[s]["sequences"] for s in SPLITS),
        "dropped": dropped,
        "skipped": dict(skipped),
        "splits": splits,
        "length_histogram_log2": {str(k): v for k, v in sorted(length_hist.items())},
        "compression_filter": compression.describe(),
        "sources": fingerprints,
        "config": cfg.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_manifest(out, manifest)
    return manifest
