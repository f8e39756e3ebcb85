"""Document filters: each decides keep or drop for one document and counts what it dropped (for the manifest).

Cheap text filters run before tokenization (`TextFilters`); Cramming's compression filter needs token counts
and runs after it (`CompressionFilter`): a document whose tokens-per-character sits far above the corpus norm
is mostly noise for this tokenizer (tables, foreign scripts, markup) and costs tokens without teaching much;
text hidden behind [UNK] tokens counts as one token per character (`token_cost`).
"""

from __future__ import annotations

import hashlib
import string
import sys
import unicodedata
from collections import Counter
from functools import lru_cache

import numpy as np

from cramlm.config import DataConfig
from cramlm.data.tokenizer import UNK_ID

TEXT, NOT_TEXT, SPACE = 0, 1, 2


@lru_cache(maxsize=1)
def _char_classes() -> np.ndarray:
    """Class of every code point: letters and combining marks of any script are text; digits, punctuation,
    symbols, control and unassigned characters are not; whitespace counts as neither. Built once (~0.5 s)."""
    classes = np.full(sys.maxunicode + 1, NOT_TEXT, dtype=np.uint8)
    for i in range(sys.maxunicode + 1):
        c = chr(i)
        if c.isspace():
            classes[i] = SPACE
        elif unicodedata.category(c)[0] in "LM":
            classes[i] = TEXT
    return classes


_ASCII_SPACE = bytes(b for b in range(128) if chr(b).isspace())
_ASCII_KEEP = _ASCII_SPACE + string.ascii_letters.encode()  # bytes.translate deletes these at C speed
def raw_hash(text: str) -> bytes:
    """Hash of the exact text: cheaper than `text_hash`, for decisions that need no normalization."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def text_hash(text: str) -> bytes:
    """Hash of the normalized text (case and whitespace folded): equal texts up to layout collide on purpose."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def symbol_ratio(text: str) -> float:
    """Fraction of non-space characters that are not letters (in any script): digits, punctuation, symbols,
    control characters. Pure-ASCII text (the common case) takes a bytes fast path."""
    if text.isascii():
        raw = text.encode("ascii")
        visible = len(raw.translate(None, _ASCII_SPACE))
        return len(raw.translate(None, _ASCII_KEEP)) / visible if visible else 1.0
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    counts = np.bincount(_char_classes()[codes], minlength=3)
    visible = counts[TEXT] + counts[NOT_TEXT]
    return float(counts[NOT_TEXT] / visible) if visible else 1.0


class NearDuplicates:
    """MinHash-LSH over word 5-gram shingles: a document whose estimated Jaccard similarity to an earlier kept
    one reaches the threshold is a near duplicate (boilerplate, mirrored pages, templated text)."""

    def __init__(self, threshold: float, num_perm: int = 64, ngram: int = 5):
        from datasketch import MinHashLSH

        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.ngram, self.n = num_perm, ngram, 0

    def seen_before(self, text: str) -> bool:
        from datasketch import MinHash

        words = text.lower().split()
        shingles = {" ".join(words[i:i + self.ngram]) for i in range(max(1, len(words) - self.ngram + 1))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([s.encode("utf-8", "surrogatepass") for s in shingles])
        if self.lsh.query(m):
            return True
        self.lsh.insert(str(self.n), m)
        self.n += 1
        return False


class TextFilters:
    """Length, mostly-not-text, exact- and near-duplicate filters, applied in stream order (so deterministic)."""

    def __init__(self, cfg: DataConfig, dedup: bool | None = None):
        self.cfg = cfg
        self.dedup = cfg.dedup if dedup is None else dedup
        self.near = NearDuplicates(cfg.near_dedup_threshold) if cfg.near_dedup and dedup is not False else None
        self.seen: set[bytes] = set()
        self.dropped: Counter[str] = Counter()
        self.documents = 0  # documents seen, for the error when none is kept
        self.chars = 0  # characters seen, for progress

    def reason(self, text: str) -> str | None:
        """Why this document is dropped, or None to keep it. Stateless checks only (safe on samples); documents over
        max_chars never get here: they are split first."""
        if len(text.strip()) < self.cfg.min_chars:
            return "too_short"
        if symbol_ratio(text) > self.cfg.max_symbol_ratio:
            return "not_text"
        return None

    def keep(self, text: str) -> bool:
        self.documents += 1
        self.chars += len(text)
        why = self.reason(text)
        if why is None and self.dedup:
            key = text_hash(text)
            if key in self.seen:
                why = "duplicate"
            else:
                self.seen.add(key)
        if why is None and self.near is not None and self.near.seen_before(text):
            why = "near_duplicate"
        if why:
            self.dropped[why] += 1
        return why is None


def token_cost(tok, text: str, ids: list[int]) -> int:
    """Tokens a document costs the compression filter, each [UNK] charged one token per character it hides:
    WordPiece turns any word it cannot spell (a 5,000-character base64 blob, a script missing from the
    vocabulary) into a single [UNK], which would make that noise look cheap. Only documents with an [UNK] are
    encoded again (with offsets)."""
    if UNK_ID not in ids:
        return len(ids)
    enc = tok.encode(text, add_special_tokens=False)
    return len(ids) + sum(end - start - 1 for i, (start, end) in zip(enc.ids, enc.offsets) if i == UNK_ID)


class CompressionFilter:
    """Drop documents whose tokens-per-character z-score (against a sample's norm) exceeds a cut."""

    def __init__(self, z_max: float | None, sample_ratios: list[float]):
        self.z_max = z_max
        self.mean = float(np.mean(sample_ratios)) if sample_ratios else 0.0
        self.std = float(np.std(sample_ratios)) if sample_ratios else 0.0
        self.active = z_max is not None and len(sample_ratios) >= 20 and self.std > 0
        self.dropped = 0

    @classmethod
    def from_dict(cls, d: dict) -> CompressionFilter:
        """Rebuild the filter a resumed run used (its norm came from the first run's sample)."""
        f = cls(d["z_max"], [])
        f.mean, f.std, f.active = d["mean_tokens_per_char"], d["std"], d["active"]
        return f

    def keep(self, n_tokens: int, n_chars: int) -> bool:
        if not self.active or n_chars == 0:
            return True
        if (n_tokens / n_chars - self.mean) / self.std > self.z_max:
            self.dropped += 1
            return False
        return True

    def describe(self) -> dict:
        return {"active": self.active, "mean_tokens_per_char": self.mean, "std": self.std, "z_max": self.z_max}
