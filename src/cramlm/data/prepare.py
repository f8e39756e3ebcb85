"""The data pipeline: sources -> filters -> tokenizer -> packed shards + manifest (a dataset dir).

The document stream is cut into *units* of about `shard_mb` of text (by raw characters, so the cut depends only
on the input). Each unit is packed on its own into one shard per split and committed atomically with a small
`units/NNNNN.json` record; the manifest sums the records. That one idea gives:
- resume: a re-run with the same sources and config skips committed units (their documents are still read
  and hashed, so deduplication decides exactly as in an uninterrupted run);
- `shard=(i, n)`: machine i of n tokenizes units u with u % n == i; `merge` joins their dirs into the dataset a
  single machine would have written, byte for byte;
- determinism: tokenization runs on `workers` processes but results are consumed in input order, so shards are
  byte-identical whatever the number of workers.
Before the stream, a pass gathers a sample to train the tokenizer (skipped with `tokenizer_file`; when the whole
corpus fits in the sample it is kept and read from memory). Memory is bounded by the chunk size, the sample and
the dedup hash set (16 bytes per kept document).
"""

from __future__ import annotations

import json
import os
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
from cramlm.data.filters import CompressionFilter, TextFilters, raw_hash, text_hash, token_cost
from cramlm.data.prune import make_pruner
from cramlm.data.sources import check_sources, fingerprint, iter_documents, source_bytes
from cramlm.data.store import FORMAT, FORMAT_VERSION, SPLITS, Packer, ShardWriter, token_dtype, write_manifest
from cramlm.data.tokenizer import load_tokenizer, save_tokenizer, tokenizer_hash, train_tokenizer
from cramlm.errors import CramlmError

CHUNK_DOCS = 2048
CHUNK_CHARS = 4_000_000
MB = 1_000_000
TOKENS_PER_CHAR_GUESS = 0.3  # sizes units so that a unit's shard is about shard_mb
PROBE_DOCS = 2000
PRUNE_DOCS = 5000
PRUNE_SAMPLE_MB = 20


def _unit_float(key: bytes) -> float:
    """A document's hash as a number in [0, 1): decides sampling and the val split, independent of order."""
    return int.from_bytes(key[:8], "little") / 2**64


def _all_documents(sources: list[str], text_field: str, skipped: Counter) -> Iterator[str]:
    for spec in sources:
        yield from iter_documents(spec, text_field, skipped)


def _sample(
    sources: list[str], cfg: DataConfig, total_bytes: int | None
) -> tuple[list[str], list[str] | None, Counter]:
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
        if probe.reason(text) is None and (rate == 1.0 or _unit_float(text_hash(text)) < rate):
            sample.append(text)
            chars += len(text)
            if chars >= budget:
                corpus = None  # the corpus is larger than the sample: stream it again
                if rate < 1.0:
                    break
    return sample, corpus, skipped


def _encode(tok: Any, texts: list[str]) -> list[list[int]]:
    """Token ids only: `encode_batch_fast` skips offsets (about 2x faster than `encode_batch`)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


_worker_tok = None


def _worker_init(path: str) -> None:
    global _worker_tok
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    _worker_tok = Tokenizer.from_file(path)


def _worker_encode(texts: list[str]) -> list[list[int]]:
    return _encode(_worker_tok, texts)


def _work(docs: Iterator[str], filters: TextFilters, unit_chars: float, todo) -> Iterator[tuple[int, list[str] | None]]:
    """(unit, chunk of kept texts) for units to do, and (unit, None) when a unit ends. Every document is filtered
    (so dedup state is the same whichever units are skipped); only the todo units' texts are passed on."""
    unit, chars, chunk, chunk_chars = 0, 0, [], 0
    for text in docs:
        if chars >= unit_chars:
            if chunk:
                yield unit, chunk
            yield unit, None
            unit, chars, chunk, chunk_chars = unit + 1, 0, [], 0
        chars += len(text)
        if filters.keep(text) and todo(unit):
            chunk.append(text)
            chunk_chars += len(text)
            if len(chunk) >= CHUNK_DOCS or chunk_chars >= CHUNK_CHARS:
                yield unit, chunk
                chunk, chunk_chars = [], 0
    if chunk:
        yield unit, chunk
    yield unit, None


def _encoded(items: Iterator, tok: Any, pool: Any, window: int = 4) -> Iterator:
    """(unit, texts, ids) in input order; unit ends pass through as (unit, None, None). With a pool, a bounded
    window of chunks is in flight."""
    pending: deque = deque()
    for unit, texts in items:
        if pool is None:
            yield unit, texts, (None if texts is None else _encode(tok, texts))
            continue
        pending.append((unit, texts, None if texts is None else pool.apply_async(_worker_encode, (texts,))))
        while len(pending) > window or (pending and pending[0][2] is None):
            u, t, result = pending.popleft()
            yield u, t, (None if result is None else result.get())
    while pending:
        u, t, result = pending.popleft()
        yield u, t, (None if result is None else result.get())


class _Unit:
    """The packing state of one unit: packers, shard writers and counts, committed with units/NNNNN.json."""

    def __init__(self, out: Path, index: int, cfg: DataConfig, dtype: np.dtype, vocab_size: int):
        self.out, self.index, self.cfg, self.dtype = out, index, cfg, dtype
        self.writers = {s: ShardWriter(out, s, cfg.seq_len, dtype, 1 << 62, first=index) for s in SPLITS}
        self.packers = {s: Packer(cfg.seq_len, dtype) for s in SPLITS}
        self.counts = {s: Counter() for s in SPLITS}
        self.token_counts = np.zeros(vocab_size, dtype=np.int64)
        self.lengths: Counter = Counter()

    def add(self, texts: list[str], ids_list: list[list[int]]) -> None:
        """Add a chunk of kept documents: split each by its hash, pack, count (token counts once per chunk)."""
        train = []
        for text, ids in zip(texts, ids_list):
            split = "val" if _unit_float(raw_hash(text)) < self.cfg.val_fraction else "train"
            arr = np.asarray(ids, dtype=self.dtype)
            self.counts[split]["documents"] += 1
            self.counts[split]["tokens"] += len(arr)
            self.lengths[len(arr).bit_length() - 1 if len(arr) else 0] += 1
            if split == "train":
                train.append(arr)
            self.writers[split].write(self.packers[split].add(arr))
        if train:
            self.token_counts += np.bincount(np.concatenate(train), minlength=len(self.token_counts))

    def commit(self, dropped: Counter, skipped: Counter) -> dict[str, Any]:
        record: dict[str, Any] = {"unit": self.index, "dropped": dict(dropped), "skipped": dict(skipped),
                                  "lengths_log2": {str(k): v for k, v in sorted(self.lengths.items())}}
        for split in SPLITS:
            blocks, tail = self.packers[split].finish()
            self.writers[split].write(blocks)
            shards = self.writers[split].close()
            record[split] = {**self.counts[split], "dropped_tail_tokens": tail, "shards": shards}
        units = self.out / "units"
        np.save(units / f"{self.index:05d}.npy", self.token_counts)
        tmp = units / f"{self.index:05d}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, units / f"{self.index:05d}.json")  # the unit exists once this file does
        return record


def _progress(enabled: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
    )


def _build_key(sources: list[str], cfg: DataConfig) -> dict[str, Any]:
    """What a dataset dir's content depends on; a re-run with the same key resumes."""
    return {"sources": [fingerprint(s) for s in sources], "config": cfg.model_dump(mode="json")}


def _done_units(out: Path) -> set[int]:
    return {int(p.stem) for p in (out / "units").glob("*.json")}


def prepare(
    sources: list[str],
    out_dir: str | Path,
    cfg: DataConfig,
    workers: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Build (or resume) a dataset dir from sources; returns the manifest (also written to out_dir/manifest.json).

    With shard=(i, n), n > 1, only every n-th unit is tokenized and a partial dir is written for `merge`.
    """
    check_sources(sources)
    index, n_shards = shard
    if not 0 <= index < n_shards:
        raise CramlmError(f"--shard {index}/{n_shards}: the index must be in 0..{n_shards - 1}")
    if n_shards > 1 and not cfg.tokenizer_file:
        raise CramlmError("--shard needs --tokenizer-file, so that every machine uses the same tokenizer")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sizes = [source_bytes(s) for s in sources]
    total_bytes = sum(sizes) if all(s is not None for s in sizes) else None
    key = _build_key(sources, cfg)
    tok_path = out / "tokenizer.json"
    build_path = out / "build.json"
    old = json.loads(build_path.read_text()) if build_path.is_file() else None
    resume = bool(old) and old["key"] == key and old.get("shard") == [index, n_shards] and tok_path.is_file()

    with _progress(progress) as bar:
        corpus: list[str] | None = None
        skipped: Counter = Counter()
        if resume:
            tok = load_tokenizer(tok_path)
            compression = CompressionFilter.from_dict(old["compression"])
        else:
            for name in (*SPLITS, "units"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("manifest.json", "build.json", "token_counts.npy"):
                (out / name).unlink(missing_ok=True)
            if cfg.tokenizer_file:
                tok = load_tokenizer(cfg.tokenizer_file)
                if Path(cfg.tokenizer_file).resolve() != tok_path.resolve():
                    shutil.copyfile(cfg.tokenizer_file, tok_path)
                probe = _first_documents(sources, cfg, PROBE_DOCS)
            else:
                task = bar.add_task("tokenizer", total=None, stats=f"sampling up to {cfg.tokenizer_sample_mb:g} MB")
                probe, corpus, skipped = _sample(sources, cfg, total_bytes)
                if not probe:
                    raise CramlmError(f"no usable documents in {' '.join(sources)} (all empty, skipped or filtered)")
                bar.update(task, stats=f"training {cfg.tokenizer} on {sum(map(len, probe)) / MB:.1f} MB")
                tok = train_tokenizer(probe, cfg.tokenizer, cfg.vocab_size, cfg.lowercase)
                save_tokenizer(tok, tok_path)
                bar.update(task, total=1, completed=1, stats=f"{cfg.tokenizer}, {tok.get_vocab_size()} tokens")
            probe = probe[:PROBE_DOCS]
            ratios = [token_cost(tok, t, ids) / max(1, len(t)) for ids, t in zip(_encode(tok, probe), probe)]
            compression = CompressionFilter(cfg.max_tokens_per_char_z, ratios)
            del probe
            (out / "units").mkdir()
            build = {"key": key, "shard": [index, n_shards], "compression": compression.describe()}
            build_path.write_text(json.dumps(build, indent=1) + "\n")
        pruner = None
        if cfg.prune.method != "none":  # refitted on resume: the sample and the fit are deterministic
            task = bar.add_task("prune", total=None, stats=f"fitting {cfg.prune.method} scorer")
            pruner = make_pruner(cfg.prune, str(tok_path), cfg.seq_len)
            pruner.fit(_spread_sample(sources, cfg, PRUNE_DOCS, total_bytes))
            bar.update(task, total=1, completed=1, stats=f"keeping {cfg.prune.keep:.0%}")
        vocab_size = tok.get_vocab_size()
        dtype = token_dtype(vocab_size)
        unit_chars = cfg.shard_mb * MB / (dtype.itemsize * TOKENS_PER_CHAR_GUESS)

        done = _done_units(out)
        filters = TextFilters(cfg)
        docs = iter(corpus) if corpus is not None else _all_documents(sources, cfg.text_field, skipped)
        todo = lambda u: u % n_shards == index and u not in done  # noqa: E731
        task = bar.add_task("tokenize + pack", total=total_bytes, stats="resuming" if done else "")
        pool = get_context("spawn").Pool(workers, _worker_init, (str(tok_path),)) if workers > 1 else None
        current: _Unit | None = None
        dropped_before, skipped_before = Counter(), Counter()
        n_units = 0
        n_docs = n_tokens = 0
        try:
            work = _work(docs, filters, unit_chars, todo)
            if pruner is not None:
                work = ((u, t if t is None else pruner.keep(t)) for u, t in work)
            for unit, texts, ids_list in _encoded(work, tok, pool, 2 * workers):
                if texts is None:  # end of a unit: commit it if it was ours
                    dropped_now = filters.dropped + Counter(
                        {"compression": compression.dropped, "pruned": pruner.dropped if pruner else 0})
                    if todo(unit):
                        (current or _Unit(out, unit, cfg, dtype, vocab_size)).commit(
                            dropped_now - dropped_before, skipped - skipped_before)
                    current, dropped_before, skipped_before = None, dropped_now, skipped.copy()
                    n_units = unit + 1
                    continue
                current = current or _Unit(out, unit, cfg, dtype, vocab_size)
                kept = [(t, i) for t, i in zip(texts, ids_list) if compression.keep(token_cost(tok, t, i), len(t))]
                if kept:
                    current.add(*map(list, zip(*kept)))
                    n_docs, n_tokens = n_docs + len(kept), n_tokens + sum(len(i) for _, i in kept)
                elapsed = time.perf_counter() - start
                bar.update(task, completed=filters.chars,
                           stats=f"{n_docs:,} docs {n_docs / elapsed:,.0f}/s {n_tokens / elapsed / 1e3:,.0f}k tok/s")
        finally:
            if pool:
                pool.terminate()

    manifest = assemble(out, n_units, partial=n_shards > 1)
    manifest["seconds"] = round(time.perf_counter() - start, 2)
    write_manifest(out, manifest)
    return manifest


def _spread_sample(sources: list[str], cfg: DataConfig, n: int, total_bytes: int | None) -> list[str]:
    """Up to n usable documents drawn by hash across the whole input (the pruning scorer's fitting sample)."""
    rate = 1.0 if not total_bytes else min(1.0, PRUNE_SAMPLE_MB * MB / total_bytes)
    probe = TextFilters(cfg, dedup=False)
    out: list[str] = []
    for text in _all_documents(sources, cfg.text_field, Counter()):
        if probe.reason(text) is None and (rate == 1.0 or _unit_float(text_hash(text)) < rate):
            out.append(text)
            if len(out) >= n:
                break
    return out


def _first_documents(sources: list[str], cfg: DataConfig, n: int) -> list[str]:
    """The first n usable documents: the compression filter's norm when no tokenizer sample is drawn."""
    probe = TextFilters(cfg, dedup=False)
    out: list[str] = []
    for text in _all_documents(sources, cfg.text_field, Counter()):
        if probe.reason(text) is None:
            out.append(text)
            if len(out) >= n:
                break
    return out


def assemble(out: Path, n_units: int, partial: bool = False) -> dict[str, Any]:
    """The manifest of a dataset dir from its committed unit records (and token_counts.npy, the train split's)."""
    build = json.loads((out / "build.json").read_text())
    cfg = build["key"]["config"]
    records = [json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))]
    splits: dict[str, Any] = {}
    for split in SPLITS:
        totals = {"documents": 0, "tokens": 0, "dropped_tail_tokens": 0}
        shards = []
        for r in records:
            for k in totals:
                totals[k] += r[split].get(k, 0)
            shards += r[split]["shards"]
        splits[split] = {**totals, "sequences": sum(s["sequences"] for s in shards), "shards": shards}
    dropped, skipped, lengths = Counter(), Counter(), Counter()
    for r in records:
        dropped.update(r["dropped"])
        skipped.update(r["skipped"])
        lengths.update(r["lengths_log2"])
    tok_path = out / "tokenizer.json"
    vocab_size = load_tokenizer(tok_path).get_vocab_size()
    if records:
        token_counts = sum(np.load(out / "units" / f"{r['unit']:05d}.npy") for r in records)
        np.save(out / "token_counts.npy", token_counts)
    if not partial and splits["train"]["sequences"] == 0:
        raise CramlmError(
            f"the input gave {splits['train']['tokens']} training tokens: not one sequence of "
            f"{cfg['seq_len']} (use more text or a smaller --seq-len)"
        )
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cramlm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seq_len": cfg["seq_len"],
        "vocab_size": vocab_size,
        "dtype": token_dtype(vocab_size).str,
        "tokenizer": {"file": "tokenizer.json", "kind": "file" if cfg["tokenizer_file"] else cfg["tokenizer"],
                      "sha256": tokenizer_hash(tok_path)},
        "order": cfg["order"],
        "documents": sum(splits[s]["documents"] for s in SPLITS),
        "tokens": sum(splits[s]["tokens"] for s in SPLITS),
        "sequences": sum(splits[s]["sequences"] for s in SPLITS),
        "dropped": dict(sorted(dropped.items())),
        "skipped": dict(sorted(skipped.items())),
        "splits": splits,
        "units": n_units,
        "length_histogram_log2": dict(sorted(lengths.items(), key=lambda kv: int(kv[0]))),
        "compression_filter": build["compression"],
        "prune": cfg["prune"],
        "sources": build["key"]["sources"],
        "config": cfg,
    }
    if partial:
        manifest["partial"] = {"shard": build["shard"], "units_done": [r["unit"] for r in records]}
    return manifest


def merge(dirs: list[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Join the partial dirs of `prepare(..., shard=(i, n))` runs into one dataset dir."""
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise CramlmError("--merge needs the dataset dirs written with --shard I/N")
    builds, manifests = [], []
    for d in dirs:
        if not (d / "build.json").is_file() or not (d / "manifest.json").is_file():
            raise CramlmError(f"{d} is not a finished prepare dir (no build.json / manifest.json)")
        builds.append(json.loads((d / "build.json").read_text()))
        manifests.append(json.loads((d / "manifest.json").read_text()))
    first = builds[0]
    for d, b, m in zip(dirs, builds, manifests):
        if b["key"] != first["key"] or m["tokenizer"]["sha256"] != manifests[0]["tokenizer"]["sha256"]:
            raise CramlmError(f"{d} was prepared from other sources, config or tokenizer than {dirs[0]}")
    n_shards, n_units = first["shard"][1], max(m["units"] for m in manifests)
    have = sorted(u for m in manifests for u in m.get("partial", {}).get("units_done", []))
    if have != list(range(n_units)):
        missing = sorted(set(range(n_units)) - set(have))
        raise CramlmError(
            f"the dirs do not cover all {n_units} units of a {n_shards}-way split; missing {missing[:10]}"
        )
    out = Path(out_dir)
    for name in (*SPLITS, "units"):
        (out / name).mkdir(parents=True, exist_ok=True)
    for d in dirs:
        for path in [*(d / "units").iterdir(), *(p for s in SPLITS for p in (d / s).glob("*.bin"))]:
            target = out / path.relative_to(d)
            if not target.exists():
                try:
                    os.link(path, target)
                except OSError:
                    shutil.copyfile(path, target)
    shutil.copyfile(dirs[0] / "tokenizer.json", out / "tokenizer.json")
    (out / "build.json").write_text(json.dumps({**first, "shard": [0, 1]}, indent=1) + "\n")
    manifest = assemble(out, n_units)
    write_manifest(out, manifest)
    return manifest
