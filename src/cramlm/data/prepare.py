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
Documents over `max_chars` are split (`sources.split_document`) before anything else sees them. Before the
stream, a pass gathers a sample to train the tokenizer (skipped with `tokenizer_file`; when the whole
corpus fits in the sample it is kept and read from memory). Memory is bounded by the chunk size, the sample and
the dedup hash set (16 bytes per kept document).
"""

from __future__ import annotations

import heapq
import json
import os
import shutil
import time
from bisect import insort
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from cramlm import __version__
from cramlm.config import DataConfig
from cramlm.data.filters import CompressionFilter, TextFilters, raw_hash, text_hash, token_cost
from cramlm.data.prune import make_pruner
from cramlm.data.sources import check_sources, fingerprint, iter_documents, source_bytes, split_document
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


def _all_documents(sources: list[str], cfg: DataConfig, skipped: Counter) -> Iterator[str]:
    """Every source's documents in order; one over max_chars is split into pieces (counted as split_long)."""
    for spec in sources:
        for text in iter_documents(spec, cfg.text_field, skipped, cfg.documents):
            if len(text) <= cfg.max_chars:
                yield text
            else:
                skipped["split_long"] += 1
                yield from split_document(text, cfg.max_chars)


def _sample(
    sources: list[str], cfg: DataConfig, total_bytes: int | None, probe: TextFilters, skipped: Counter
) -> tuple[list[str], list[str] | None]:
    """(tokenizer sample, the whole corpus if it fit in the sample budget else None); `probe` counts what the
    stateless filters dropped and `skipped` what could not be read, for the error when nothing is usable.

    With a known size, documents are drawn by hash at the rate that fills the budget. With an unknown size (a
    streamed `hf:` source) or one larger than announced, the sample keeps the documents with the smallest hashes
    that fit the budget (evicting the largest as more arrive): the same kind of sample, in bounded memory."""
    budget = cfg.tokenizer_sample_mb * MB
    rate = 1.0 if not total_bytes else min(1.0, budget / total_bytes)
    if rate < 1.0:
        return _rate_sample(sources, cfg, rate, budget, probe, skipped), None
    kept: list[tuple[float, int, str]] = []  # a max-heap by hash: (-hash, position, text)
    corpus: list[str] | None = []
    chars = corpus_chars = 0
    for i, text in enumerate(_all_documents(sources, cfg, skipped)):
        if corpus is not None:
            corpus.append(text)
            corpus_chars += len(text)
            if corpus_chars > budget:
                corpus = None  # the corpus is larger than the sample: stream it again
        if probe.keep(text):
            heapq.heappush(kept, (-_unit_float(text_hash(text)), i, text))
            chars += len(text)
            while chars > budget and len(kept) > 1:
                chars -= len(heapq.heappop(kept)[2])
    return [text for _, _, text in sorted(kept, key=lambda item: item[1])], corpus


def _rate_sample(sources: list[str], cfg: DataConfig, rate: float, budget: float, probe: TextFilters,
                 skipped: Counter) -> list[str]:
    """Documents drawn by hash at `rate`, in input order, until `budget` characters."""
    sample: list[str] = []
    chars = 0
    for text in _all_documents(sources, cfg, skipped):
        if probe.keep(text) and _unit_float(text_hash(text)) < rate:
            sample.append(text)
            chars += len(text)
            if chars >= budget:
                break
    return sample


SKIPS = {"binary_files": ("binary file", "skipped (not text)"), "non_utf8_lines": ("line", "skipped (not UTF-8)"),
         "bad_json_lines": ("line", "skipped (not JSON)")}


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _nothing_usable(sources: list[str], cfg: DataConfig, probe: TextFilters, skipped: Counter) -> CramlmError:
    """The one-line refusal when no document passes: what was read, what each filter or skip took, the fix."""
    drops = {"too_short": f"shorter than data.min_chars={cfg.min_chars} (lower it, e.g. data.min_chars=0)",
             "not_text": f"mostly not letters (raise data.max_symbol_ratio={cfg.max_symbol_ratio:g})"}
    parts = [f"{n:,} {drops.get(k, k)}" for k, n in probe.dropped.most_common()]
    parts += [f"{_count(skipped[k], noun)} {why}" for k, (noun, why) in SKIPS.items() if skipped[k]]
    if skipped["missing_field_lines"]:
        parts.append(f"{_count(skipped['missing_field_lines'], 'record')} without the field {cfg.text_field!r} "
                     "(use --text-field)")
    found = f"{_count(probe.documents, 'document')} read" if probe.documents else "no text found"
    return CramlmError(f"no usable documents in {' '.join(sources)}: {'; '.join([found, *parts])}")


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
    """The packing state of one unit: packers, shard writers and counts, committed with units/NNNNN.json.

    A document goes to val when its hash falls below val_fraction. So that a small corpus still gets a usable val
    split, while val is short of one sequence the unit holds back its lowest-hash other documents, and at its end
    moves them to val (lowest hash first) until val packs one sequence, as long as train keeps one; of two or more
    documents at least one is held out. It all depends on the unit's content only, so resume and shards agree.
    """

    def __init__(self, out: Path, index: int, cfg: DataConfig, dtype: np.dtype, vocab_size: int):
        self.out, self.index, self.cfg, self.dtype = out, index, cfg, dtype
        self.writers = {s: ShardWriter(out, s, cfg.seq_len, dtype, 1 << 62, first=index) for s in SPLITS}
        self.packers = {s: Packer(cfg.seq_len, dtype) for s in SPLITS}
        self.counts = {s: Counter() for s in SPLITS}
        self.token_counts = np.zeros(vocab_size, dtype=np.int64)
        self.lengths: Counter = Counter()
        self.held: list[tuple[float, np.ndarray]] = []  # val candidates, lowest hash first
        self.fresh: list[np.ndarray] = []  # train documents not counted in token_counts yet

    def add(self, texts: list[str], ids_list: list[list[int]]) -> None:
        """Add a chunk of kept documents: split each by its hash, pack, count (token counts once per chunk)."""
        for text, ids in zip(texts, ids_list):
            arr = np.asarray(ids, dtype=self.dtype)
            self.lengths[len(arr).bit_length() - 1 if len(arr) else 0] += 1
            u = _unit_float(raw_hash(text))
            if u < self.cfg.val_fraction:
                self._pack("val", arr)
                if not self._val_short():
                    self._release()
            elif self._val_short():
                self._hold(u, arr)
            else:
                self._pack("train", arr)
        self._count_tokens()

    def _stream(self, split: str) -> int:
        """Tokens a split's packer was given, one [SEP] per document included."""
        return self.counts[split]["tokens"] + self.counts[split]["documents"]

    def _val_short(self) -> int:
        """Tokens val lacks for one full sequence (0 when no val split is wanted)."""
        return max(0, self.cfg.seq_len - 1 - self._stream("val")) if self.cfg.val_fraction > 0 else 0

    def _pack(self, split: str, arr: np.ndarray) -> None:
        self.counts[split]["documents"] += 1
        self.counts[split]["tokens"] += len(arr)
        if split == "train":
            self.fresh.append(arr)
        self.writers[split].write(self.packers[split].add(arr))

    def _hold(self, u: float, arr: np.ndarray) -> None:
        """Keep a val candidate; the highest-hash candidates that the others make unneeded go to train."""
        insort(self.held, (u, arr), key=lambda h: h[0])
        while len(self.held) > 1 and sum(len(a) + 1 for _, a in self.held[:-1]) >= self._val_short():
            self._pack("train", self.held.pop()[1])

    def _release(self) -> None:
        for _, arr in self.held:
            self._pack("train", arr)
        self.held = []

    def _settle(self) -> None:
        """At the unit's end, candidates go to val (lowest hash first) while it is short of a sequence and train
        keeps one, or while val has no document and one is left for train."""
        rest = sum(len(a) + 1 for _, a in self.held)
        for _, arr in self.held:
            rest -= len(arr) + 1
            train = self._stream("train") + rest  # what train keeps if this one goes to val
            first = not self.counts["val"]["documents"] and train > 0
            self._pack("val" if self._val_short() and (train >= self.cfg.seq_len - 1 or first) else "train", arr)
        self.held = []

    def _count_tokens(self) -> None:
        if self.fresh:
            self.token_counts += np.bincount(np.concatenate(self.fresh), minlength=len(self.token_counts))
            self.fresh = []

    def commit(self, dropped: Counter, skipped: Counter) -> dict[str, Any]:
        self._settle()
        self._count_tokens()
        split_long = skipped.pop("split_long", 0)  # counted with the skips as the documents are read
        record: dict[str, Any] = {"unit": self.index, "dropped": dict(dropped), "skipped": dict(skipped),
                                  "split_long": split_long,
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
    return {"sources": [fingerprint(s, cfg.documents) for s in sources], "config": cfg.model_dump(mode="json")}


def _done_units(out: Path) -> set[int]:
    return {int(p.stem) for p in (out / "units").glob("*.json")}


def _check_out(out: Path, sources: list[str], build: dict[str, Any], force: bool) -> bool:
    """Refuse, before anything is written, an --out that is an input or inside one, a file, a folder that is not
    empty and not a dataset dir, or a dataset made from other inputs or config (those two unless `force`).
    True when out_dir holds this same build: it resumes."""
    target = out.resolve()
    for spec in sources:
        path = Path(spec).resolve()
        if (path.is_file() or path.is_dir()) and (target == path or path in target.parents):
            where = "is" if target == path else "is inside"
            raise CramlmError(f"--out {out} {where} the input {spec}: write the dataset outside its inputs")
    if out.exists() and not out.is_dir():
        raise CramlmError(f"--out {out} is a file; it must be a folder (created if missing)")
    try:
        old = json.loads((out / "build.json").read_text())
    except (OSError, json.JSONDecodeError):
        old = None
    if isinstance(old, dict) and old.get("key") == build["key"] and old.get("shard") == build["shard"]:
        return True
    if force or not out.exists() or not any(out.iterdir()):
        return False
    if not isinstance(old, dict) or "key" not in old:
        raise CramlmError(f"{out} is not empty and holds no cramlm dataset: use --force to write into it, "
                          "or another --out")
    raise CramlmError(f"{out} holds a dataset made from {_difference(old, build)}: use --force to replace it, "
                      "or another --out")


def _difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What makes an existing dataset another build, in a few words: the shard, the config keys or the sources."""
    if old.get("shard") != new["shard"]:
        return f"--shard {'/'.join(map(str, old.get('shard') or []))} (this run: {new['shard'][0]}/{new['shard'][1]})"
    was, now = old["key"].get("config", {}), new["key"]["config"]
    changed = [f"data.{k}={was.get(k)} (now {v})" for k, v in now.items() if was.get(k) != v]
    if changed:
        return "another config: " + ", ".join(changed[:3])
    specs = [s.get("spec") for s in old["key"].get("sources", [])]
    if specs != [s["spec"] for s in new["key"]["sources"]]:
        return f"other sources ({' '.join(map(str, specs))})"
    return "an earlier version of the sources (file sizes or times differ)"


@contextmanager
def _no_debris(out: Path) -> Iterator[None]:
    """The folders this call creates are removed if the call fails on its input (a CramlmError), so a failed
    prepare leaves no empty or half-made --out; an interrupt keeps them, to resume."""
    top = None if out.exists() else out
    while top is not None and not top.parent.exists():
        top = top.parent
    try:
        yield
    except CramlmError:
        if top is not None:
            shutil.rmtree(top, ignore_errors=True)
        raise


def _fresh_out(out: Path) -> None:
    """Create out_dir, clearing what a previous build left (called once the input is known to be usable)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*SPLITS, "units"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("manifest.json", "build.json", "token_counts.npy"):
        (out / name).unlink(missing_ok=True)


def prepare(
    sources: list[str],
    out_dir: str | Path,
    cfg: DataConfig,
    workers: int = 0,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
    force: bool = False,
) -> dict[str, Any]:
    """Build (or resume) a dataset dir from sources; returns the manifest (also written to out_dir/manifest.json).

    With shard=(i, n), n > 1, only every n-th unit is tokenized and a partial dir is written for `merge`. An
    out_dir holding another dataset (or other files) is refused unless `force`.
    """
    check_sources(sources)
    index, n_shards = shard
    if not 0 <= index < n_shards:
        raise CramlmError(f"--shard {index}/{n_shards}: the index must be in 0..{n_shards - 1}")
    if n_shards > 1 and not cfg.tokenizer_file:
        raise CramlmError("--shard needs --tokenizer-file, so that every machine uses the same tokenizer")
    out = Path(out_dir)
    key = _build_key(sources, cfg)
    tok_path = out / "tokenizer.json"
    build_path = out / "build.json"
    resume = _check_out(out, sources, {"key": key, "shard": [index, n_shards]}, force) and tok_path.is_file()
    start = time.perf_counter()
    sizes = [source_bytes(s) for s in sources]
    total_bytes = sum(sizes) if all(s is not None for s in sizes) else None

    with _no_debris(out), _progress(progress) as bar:
        corpus: list[str] | None = None
        skipped: Counter = Counter()
        if resume:
            tok = load_tokenizer(tok_path)
            compression = CompressionFilter.from_dict(json.loads(build_path.read_text())["compression"])
        else:
            probe_filter = TextFilters(cfg, dedup=False)
            if cfg.tokenizer_file:
                tok = load_tokenizer(cfg.tokenizer_file)
                probe = _first_documents(sources, cfg, PROBE_DOCS, probe_filter, skipped)
                if not probe:
                    raise _nothing_usable(sources, cfg, probe_filter, skipped)
                _fresh_out(out)
                if Path(cfg.tokenizer_file).resolve() != tok_path.resolve():
                    shutil.copyfile(cfg.tokenizer_file, tok_path)
            else:
                task = bar.add_task("tokenizer", total=None, stats=f"sampling up to {cfg.tokenizer_sample_mb:g} MB")
                probe, corpus = _sample(sources, cfg, total_bytes, probe_filter, skipped)
                if not probe:
                    raise _nothing_usable(sources, cfg, probe_filter, skipped)
                bar.update(task, stats=f"training {cfg.tokenizer} on {sum(map(len, probe)) / MB:.1f} MB")
                tok = train_tokenizer(probe, cfg.tokenizer, cfg.vocab_size, cfg.lowercase)
                _fresh_out(out)
                save_tokenizer(tok, tok_path)
                bar.update(task, total=1, completed=1, stats=f"{cfg.tokenizer}, {tok.get_vocab_size()} tokens")
            if corpus is None:  # the stream reads the sources again and counts afresh
                skipped = Counter()
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
        docs = iter(corpus) if corpus is not None else _all_documents(sources, cfg, skipped)
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
        write_manifest(out, manifest)
    return manifest


def _spread_sample(sources: list[str], cfg: DataConfig, n: int, total_bytes: int | None) -> list[str]:
    """Up to n usable documents drawn by hash across the whole input (the pruning scorer's fitting sample)."""
    rate = 1.0 if not total_bytes else min(1.0, PRUNE_SAMPLE_MB * MB / total_bytes)
    probe = TextFilters(cfg, dedup=False)
    out: list[str] = []
    for text in _all_documents(sources, cfg, Counter()):
        if probe.reason(text) is None and (rate == 1.0 or _unit_float(text_hash(text)) < rate):
            out.append(text)
            if len(out) >= n:
                break
    return out


def _first_documents(
    sources: list[str], cfg: DataConfig, n: int, probe: TextFilters, skipped: Counter
) -> list[str]:
    """The first n usable documents: the compression filter's norm when no tokenizer sample is drawn."""
    out: list[str] = []
    for text in _all_documents(sources, cfg, skipped):
        if probe.keep(text):
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
        "split_long": sum(r.get("split_long", 0) for r in records),
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
    else:
        manifest["warnings"] = _warnings(splits, cfg)
    return manifest


def _warnings(splits: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    """What to know before training on this dataset: a validation split that was asked for but is empty."""
    val = splits["val"]
    if not cfg["val_fraction"] or val["sequences"]:
        return []
    if splits["train"]["documents"] + val["documents"] == 1:
        return ["no validation split: the corpus is a single document (cut it into several with --documents "
                "lines or paragraphs or a smaller data.max_chars, or add text)"]
    return [f"the validation split is empty: {val['documents']} held-out documents, {val['tokens']} tokens, not one "
            f"sequence of {cfg['seq_len']} (use more text or a smaller --seq-len)"]


def merge(dirs: list[str | Path], out_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Join the partial dirs of `prepare(..., shard=(i, n))` runs into one dataset dir (another dataset in
    out_dir is refused unless `force`)."""
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
    if not _check_out(out, [str(d) for d in dirs], {"key": first["key"], "shard": [0, 1]}, force):
        _fresh_out(out)
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
