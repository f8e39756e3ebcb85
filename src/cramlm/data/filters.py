"""Document filters: each decides keep or drop for one document and counts what it dropped (for the manifest).

Cheap text filters run before tokenization (`TextFilters`); Cramming's compression filter needs token counts
and runs after it (`CompressionFilter`): a document whose tokens-per-character sits far above the corpus norm
is mostly noise for this tokenizer (tables, foreign scripts, markup) and costs tokens without teaching much.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import numpy as np

from cramlm.config import DataConfig

# letters and whitespace: what remains after removing them is digits, symbols and punctuation
_LETTERS_AND_SPACE = re.compile(r"[^\W\d_]+|\s+")
_SPACE = re.compile(r"\s+")


def text_hash(text: str) -> bytes:
    """Hash of the normalized text (case and whitespace folded): equal texts up to layout collide on purpose."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def symbol_ratio(text: str) -> float:
    """Fraction of non-space characters that are not letters."""
    visible = len(text) - sum(len(m) for m in _SPACE.findall(text))
    if visible == 0:
        return 1.0
    return len(_LETTERS_AND_SPACE.sub("", text)) / visible


class TextFilters:
    """Length, mostly-not-text and exact-duplicate filters, applied in stream order (so deterministic)."""

    def __init__(self, cfg: DataConfig, dedup: bool | None = None):
        self.cfg = cfg
        self.dedup = cfg.dedup if dedup is None else dedup
        self.seen: set[bytes] = set()
        self.dropped: Counter[str] = Counter()

    def reason(self, text: str) -> str | None:
        """Why this document is dropped, or None to keep it. Stateless checks only (safe on samples)."""
        n = len(text.strip())
        if n < self.cfg.min_chars:
            return "too_short"
        if n > self.cfg.max_chars:
            return "too_long"
        if symbol_ratio(text) > self.cfg.max_symbol_ratio:
            return "not_text"
        return None

    def keep(self, text: str) -> bool:
        why = self.reason(text)
        if why is None and self.dedup:
            key = text_hash(text)
            if key in self.seen:
                why = "duplicate"
            else:
                self.seen.add(key)
        if why:
            self.dropped[why] += 1
        return why is None


class CompressionFilter:
    """Drop documents whose tokens-per-character z-score (against a sample's norm) exceeds a cut."""

    def __init__(self, z_max: float | None, sample_ratios: list[float]):
        self.z_max = z_max
        self.mean = float(np.mean(sample_ratios)) if sample_ratios else 0.0
        self.std = float(np.std(sample_ratios)) if sample_ratios else 0.0
        self.active = z_max is not None and len(sample_ratios) >= 20 and self.std > 0
        self.dropped = 0

    def keep(self, n_tokens: int, n_chars: int) -> bool:
        if not self.active or n_chars == 0:
            return True
        if (n_tokens / n_chars - self.mean) / self.std > self.z_max:
            self.dropped += 1
            return False
        return True

    def describe(self) -> dict:
        return {"active": self.active, "mean_tokens_per_char": self.mean, "std": self.std, "z_max": self.z_max}
